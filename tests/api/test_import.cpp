// Imports stream: a safetensors file or a TensorFlow bundle becomes a meshckpt checkpoint with
// each tensor read from its source while the save writes it (tensors larger than the staging
// block included), every value checked after, the source's metadata kept, every TensorFlow
// CRC checked, and nothing left behind when a read or a write fails at any point.

#include <catch2/catch.hpp>

#include <cstdio>
#include <cstring>
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <tuple>

#include "meshckpt/api/checkpoint.hpp"
#include "meshckpt/interchange/safetensors_io.hpp"
#include "meshckpt/interchange/tf_bundle_io.hpp"
#include "meshckpt/backends/fault.hpp"
#include "meshckpt/format/safetensors.hpp"
#include "meshckpt/graph/object_graph.hpp"
#include "support.hpp"

using namespace meshckpt;
using namespace meshckpt::testing;
namespace fs = std::filesystem;

namespace {

// The tensors of the tests: one spans two 8 MiB staging blocks at an unaligned size.
struct source_state {
  std::deque<dtensor> keep;
  std::vector<std::pair<std::string, const dtensor*>> list;
  source_state() {
    keep.push_back(whole_tensor(dtype::float64, {1050, 1001}, "big", 3));
    keep.push_back(whole_tensor(dtype::bfloat16, {5, 3, 4}, "small", 3));
    keep.push_back(whole_tensor(dtype::int64, {}, "scalar", 3));
    keep.push_back(whole_tensor(dtype::float32, {0, 4}, "empty", 3));
    list = {{"big", &keep[0]}, {"small", &keep[1]}, {"scalar", &keep[2]}, {"empty", &keep[3]}};
  }
};

// Restores checkpoint `prefix` onto a 2x2 mesh (resharded) and checks every value.
void check_values(io::backend& be, const std::string& prefix) {
  auto m = mesh::create({{"x", 2}, {"y", 2}}).value();
  auto big = dtensor::create(dtype::float64, {1050, 1001}, layout::create({"x", "y"}, m).value()).value();
  auto small = dtensor::create(dtype::bfloat16, {5, 3, 4}, layout::create({"y", "unsharded", "x"}, m).value()).value();
  auto scalar = dtensor::create(dtype::int64, {}, layout::create(std::vector<std::string>{}, m).value()).value();
  auto empty = dtensor::create(dtype::float32, {0, 4}, layout::create({"x", "unsharded"}, m).value()).value();
  std::vector<named_tensor> targets = {{"big", big.view()}, {"small", small.view()}, {"scalar", scalar.view()}, {"empty", empty.view()}};
  auto r = read_tensors(be, prefix, targets);
  REQUIRE(r);
  CHECK(matches(big.view(), "big", 3));
  CHECK(matches(small.view(), "small", 3));
  CHECK(matches(scalar.view(), "scalar", 3));
  auto v = verify(be, prefix);
  REQUIRE(v);
  CHECK(v->ok());
}

// The files of the checkpoint named `base` in `dir` (its manifest, data files, temp manifests).
std::vector<std::string> files_of(const std::string& dir, const std::string& base) {
  std::vector<std::string> out;
  if (!fs::exists(dir)) return out;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().filename().string().rfind(base + ".", 0) == 0) out.push_back(e.path().filename().string());
  return out;
}

}  // namespace

TEST_CASE("import_safetensors streams every tensor into a checkpoint and keeps __metadata__", "[import]") {
  auto be = test_backend();
  temp_dir dir;
  source_state src;
  const std::map<std::string, std::string> meta = {{"format", "pt"}, {"origin", "test_import"}};
  write_safetensors_file(dir / "one.safetensors", src.list, meta);
  write_safetensors_file(dir / "model-00001-of-00002.safetensors", {src.list[0]}, meta);
  write_safetensors_file(dir / "model-00002-of-00002.safetensors", {src.list[1], src.list[2], src.list[3]}, meta);
  format::safetensors_index idx;
  for (const auto& [k, d] : src.list)
    idx.weight_map[k] = k == "big" ? "model-00001-of-00002.safetensors" : "model-00002-of-00002.safetensors";
  std::ofstream(dir / "model.safetensors.index.json") << format::encode_safetensors_index(idx);

  for (const char* from : {"one.safetensors", "model.safetensors.index.json"}) {
    INFO(from);
    const std::string to = dir / (std::string("ck-") + from[0]);
    auto w = import_safetensors(*be, dir / from, to);
    REQUIRE(w);
    CHECK(w->tensors == 4);
    CHECK(w->bytes == 1050u * 1001 * 8 + 5 * 3 * 4 * 2 + 8);
    check_values(*be, to);
    auto m = read_manifest(*be, to).value();
    auto ext =
        std::find_if(m.extensions.begin(), m.extensions.end(), [](const auto& e) { return e.name == safetensors_metadata_extension; });
    REQUIRE(ext != m.extensions.end());
    CHECK(format::decode_string_map(ext->bytes).value() == meta);
  }

  // Errors say where; nothing is written.
  auto r = import_safetensors(*be, dir / "absent.safetensors", dir / "x");
  REQUIRE_FALSE(r);
  CHECK(r.error().code == errc::not_found);
  CHECK(files_of(dir.str(), "x").empty());
}

TEST_CASE("the metadata map codec is strict", "[import]") {
  const std::map<std::string, std::string> m = {{"", "empty key"}, {"k", std::string("\0v", 2)}};
  auto bytes = format::encode_string_map(m);
  CHECK(format::decode_string_map(bytes).value() == m);
  CHECK(format::decode_string_map(format::encode_string_map({})).value().empty());
  for (std::size_t n = 0; n < bytes.size(); ++n) CHECK_FALSE(format::decode_string_map(std::span(bytes).first(n)));
  auto longer = bytes;
  longer.push_back(std::byte{0});
  auto r = format::decode_string_map(longer);
  REQUIRE_FALSE(r);
  CHECK_THAT(r.error().what(), Catch::Contains("trailing"));
  std::vector<std::byte> twice = {std::byte{2}, std::byte{1}, std::byte{'a'}, std::byte{0}, std::byte{1}, std::byte{'a'}, std::byte{0}};
  CHECK_FALSE(format::decode_string_map(twice));
  std::vector<std::byte> lying = {std::byte{0xff}, std::byte{0xff}, std::byte{0x7f}};
  CHECK_FALSE(format::decode_string_map(lying));
}

TEST_CASE("import_tf_checkpoint streams whole and row-partitioned tensors and checks every CRC", "[import]") {
  auto be = test_backend();
  temp_dir dir;
  // A meshckpt checkpoint, exported as a TensorFlow bundle: "big" whole, "rows" partitioned
  // along its first dimension (streamed), "cols" along its second (through memory).
  source_state src;
  auto m2 = mesh::create({{"x", 2}}).value();
  auto rows = dtensor::create(dtype::float64, {6, 5}, layout::create({"x", "unsharded"}, m2).value()).value();
  auto cols = dtensor::create(dtype::int32, {3, 4}, layout::create({"unsharded", "x"}, m2).value()).value();
  fill(rows.view(), "rows", 3);
  fill(cols.view(), "cols", 3);
  std::vector<named_tensor> tensors = {{"rows", rows.view()}, {"cols", cols.view()}};
  for (const auto& [k, d] : src.list) tensors.push_back({k, d->view()});
  REQUIRE(write_tensors(*be, dir / "src", tensors));
  REQUIRE(export_tf_bundle(*be, dir / "src", dir / "tf", {2}));

  auto w = import_tf_checkpoint(*be, dir / "tf", dir / "ck");
  REQUIRE(w);
  CHECK(w->tensors == 6);
  check_values(*be, dir / "ck");
  auto back_rows = dtensor::create(dtype::float64, {6, 5}, layout::create({"unsharded", "x"}, m2).value()).value();
  auto back_cols = dtensor::create(dtype::int32, {3, 4}, layout::create({"x", "unsharded"}, m2).value()).value();
  std::vector<named_tensor> back = {{"rows", back_rows.view()}, {"cols", back_cols.view()}};
  REQUIRE(read_tensors(*be, dir / "ck", back));
  CHECK(matches(back_rows.view(), "rows", 3));
  CHECK(matches(back_cols.view(), "cols", 3));

  // One flipped byte in the middle of "big": the import fails on its CRC, naming the tensor and
  // the file, and leaves no checkpoint.
  auto idx = read_tf_bundle_index(*be, dir / "tf").value();
  const auto* e = idx.find("big");
  REQUIRE(e);
  const std::string data = dir / format::tf::data_file_name("tf", e->shard, idx.num_shards);
  {
    std::fstream f(data, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(e->offset + e->size / 2));
    char c = 0;
    f.seekg(static_cast<std::streamoff>(e->offset + e->size / 2));
    f.get(c);
    f.seekp(static_cast<std::streamoff>(e->offset + e->size / 2));
    f.put(static_cast<char>(c ^ 0x10));
  }
  auto bad = import_tf_checkpoint(*be, dir / "tf", dir / "bad");
  REQUIRE_FALSE(bad);
  CHECK(bad.error().code == errc::checksum_mismatch);
  CHECK_THAT(bad.error().what(), Catch::Contains("\"big\"") && Catch::Contains(fs::path(data).filename().string()));
  CHECK(files_of(dir.str(), "bad").empty());
}

TEST_CASE("an import failing at any read or write of its source or checkpoint leaves nothing", "[import][faults]") {
  auto inner = std::shared_ptr<io::backend>(test_backend());
  // Every operation of an import of 2.4 MB, failed in turn (and every read and write cut short);
  // then every read of an import of 8.4 MB, whose big tensor streams in two reads (the second
  // fails mid-tensor).
  for (const auto& cfg : {std::pair{std::int64_t{300}, false}, std::pair{std::int64_t{1050}, true}}) {
    const std::int64_t rows = cfg.first;  // not a structured binding: clang 14 cannot capture those
    const bool only_reads = cfg.second;
    INFO(rows << " rows" << (only_reads ? ", reads only" : ""));
    temp_dir dir;
    auto big = whole_tensor(dtype::float64, {rows, 1000}, "big", 3);
    auto tiny = whole_tensor(dtype::int16, {7}, "tiny", 3);
    write_safetensors_file(dir / "in.safetensors", {{"big", &big}, {"tiny", &tiny}}, {{"format", "pt"}});
    std::vector<named_tensor> tensors = {{"big", big.view()}, {"tiny", tiny.view()}};
    REQUIRE(write_tensors(*inner, dir / "src", tensors));
    REQUIRE(export_tf_bundle(*inner, dir / "src", dir / "tf"));

    // The checkpoint imported: every value, read back and verified.
    auto holds = [&](const std::string& prefix) {
      auto one = mesh::create({{"x", 1}}).value();
      auto b = dtensor::create(dtype::float64, {rows, 1000}, layout::create({"unsharded", "unsharded"}, one).value()).value();
      auto t = dtensor::create(dtype::int16, {7}, layout::create({"unsharded"}, one).value()).value();
      std::vector<named_tensor> back = {{"big", b.view()}, {"tiny", t.view()}};
      auto v = verify(*inner, prefix);
      auto same = [](const dtensor& x, const dtensor& y) {
        const auto& a = x.view().shards().front().data;
        const auto& c = y.view().shards().front().data;
        return a.size() == c.size() && std::memcmp(a.data(), c.data(), a.size()) == 0;
      };
      return read_tensors(*inner, prefix, back) && same(b, big) && same(t, tiny) && v && v->ok();
    };
    for (const bool tf : {false, true}) {
      for (const bool short_read : {false, true}) {
        INFO((tf ? "TensorFlow" : "safetensors") << (short_read ? ", short transfers" : ", failures"));
        auto run = [&](io::backend& b, const std::string& to) {
          return tf ? import_tf_checkpoint(b, dir / "tf", to) : import_safetensors(b, dir / "in.safetensors", to);
        };
        backends::fault_backend counting(inner);
        REQUIRE(run(counting, dir / "count"));
        const auto ops = counting.ops();
        const auto log = counting.log();
        std::size_t failed = 0;
        for (std::uint64_t n = 0; n < ops; ++n) {
          INFO("operation " << n << " of " << ops);
          // A short transfer is a read's or a write's; any other operation just fails, as above.
          const auto k = n < log.size() ? log[n].k : backends::fault_op::read;
          if (short_read && k != backends::fault_op::read && k != backends::fault_op::write) continue;
          if (only_reads && k != backends::fault_op::read) continue;
          backends::fault_plan plan;
          plan.fail_at = n;
          plan.short_transfer = short_read;
          backends::fault_backend fb(inner, plan);
          const std::string base = "ck" + std::to_string(n) + (tf ? "t" : "s") + (short_read ? "r" : "f");
          auto r = run(fb, dir / base);
          if (r) {
            CHECK(holds(dir / base));  // the failed operation was cleanup (a failed close or unlink)
            continue;
          }
          ++failed;
          CHECK_FALSE(r.error().what().empty());
          // Failed before its commit: no file of it is left. Failed in the commit's last steps
          // (the rename's directory fsync): the checkpoint may be visible, and then it is whole.
          if (fs::exists(dir / (base + ".manifest")))
            CHECK(holds(dir / base));
          else
            CHECK(files_of(dir.str(), base).empty());
        }
        CHECK(failed >= (only_reads ? 2u : 5u));
      }
    }
  }
}

TEST_CASE("an export failing at any operation leaves no file, or the whole file", "[export][faults][regression]") {
  auto inner = std::shared_ptr<io::backend>(test_backend());
  temp_dir dir;
  // Sources: tensors stored whole (copied slice by slice) and sharded in two (assembled in
  // blocks of rows); 2.4 MB.
  auto two = mesh::create({{"x", 2}}).value();
  auto big = dtensor::create(dtype::float64, {300, 1000}, layout::create({"x", "unsharded"}, two).value()).value();
  auto tiny = whole_tensor(dtype::int16, {7}, "tiny", 3);
  fill(big.view(), "big", 3);
  REQUIRE(write_tensors(*inner, dir / "sharded", std::vector<named_tensor>{{"big", big.view()}, {"tiny", tiny.view()}}));
  auto whole = whole_tensor(dtype::float64, {300, 1000}, "big", 3);
  REQUIRE(write_tensors(*inner, dir / "whole", std::vector<named_tensor>{{"big", whole.view()}, {"tiny", tiny.view()}}));
  // The files of `base`, by their names after it.
  auto bytes_of = [&](const std::string& base) {
    std::map<std::string, std::string> out;
    for (const auto& f : files_of(dir.str(), base)) {
      std::ifstream in(dir / f, std::ios::binary);
      out[f.substr(base.size())] = std::string(std::istreambuf_iterator<char>(in), {});
    }
    return out;
  };
  for (const bool sharded : {false, true}) {
    const std::string src = dir / (sharded ? "sharded" : "whole");
    auto m = read_manifest(*inner, src).value();
    REQUIRE(m.find("big")->slices.size() == (sharded ? 2u : 1u));
    for (const bool tf : {false, true}) {
      INFO((sharded ? "sharded" : "whole") << " source, to " << (tf ? "TensorFlow" : "safetensors"));
      auto run = [&](io::backend& b, const std::string& base) -> result<void> {
        if (tf) {
          auto r = export_tf_bundle(b, src, dir / base, {2});
          if (!r) return r.error();
          return success();
        }
        return export_safetensors(b, src, m, {"big", "tiny"}, {{"format", "pt"}}, dir / (base + ".safetensors"));
      };
      const std::string ref = std::string("ref") + (sharded ? "s" : "w") + (tf ? "t" : "s");
      backends::fault_backend counting(inner);
      REQUIRE(run(counting, ref));
      const auto expect = bytes_of(ref);
      REQUIRE(expect.size() == (tf ? 3u : 1u));
      const auto ops = counting.ops();
      const auto log = counting.log();
      for (const bool short_transfer : {false, true}) {
        std::size_t failed = 0;
        for (std::uint64_t n = 0; n < ops; ++n) {
          const auto k = n < log.size() ? log[n].k : backends::fault_op::read;
          if (short_transfer && k != backends::fault_op::read && k != backends::fault_op::write) continue;
          INFO("operation " << n << " of " << ops << (short_transfer ? ", cut short" : ", failed"));
          backends::fault_plan plan;
          plan.fail_at = n;
          plan.short_transfer = short_transfer;
          backends::fault_backend fb(inner, plan);
          const std::string base = ref + "-" + std::to_string(n) + (short_transfer ? "r" : "f");
          auto r = run(fb, base);
          if (!r) {
            ++failed;
            CHECK_FALSE(r.error().what().empty());
          }
          // No temp file is ever left; the output is absent or whole (a failed directory fsync
          // after the rename reports an error with the new file in place). A TensorFlow bundle
          // exists once its index does: data files without it are not a bundle.
          auto got = bytes_of(base);
          for (const auto& [f, b] : got) CHECK(f.find(".tmp-") == std::string::npos);
          const bool present = tf ? got.count(".index") > 0 : !got.empty();
          if (r || present) CHECK(got == expect);
          // A failed TensorFlow export leaves nothing: no data file without its index.
          if (!present) CHECK(got.empty());
        }
        CHECK(failed >= (short_transfer ? 2u : 5u));
      }
    }
  }
}

namespace {

// True when `bytes` hold box `b` of tensor `key` as `fill` writes it.
bool box_holds(std::span<const std::byte> bytes, dtype t, const shape& global, const box& b, const std::string& key, std::uint64_t seed) {
  const auto es = static_cast<std::size_t>(dtype_size(t));
  bool ok = bytes.size() == static_cast<std::size_t>(b.volume().value_or(0)) * es;
  for_each_element(global, b, [&](std::int64_t flat, std::int64_t local) {
    const std::uint64_t bits = element_bits(seed, key, flat);
    if (ok && std::memcmp(bytes.data() + static_cast<std::size_t>(local) * es, &bits, es) != 0) ok = false;
  });
  return ok;
}

}  // namespace

TEST_CASE("read_tensor_box reads one box of a tensor, only the chunks that hold it, from meshckpt and TensorFlow", "[box]") {
  auto be = test_backend();
  temp_dir dir;
  auto m22 = mesh::create({{"x", 2}, {"y", 2}}).value();
  auto w = dtensor::create(dtype::float32, {300, 200}, layout::create({"x", "y"}, m22).value()).value();
  auto v = dtensor::create(dtype::int16, {1000}, layout::create({"unsharded"}, m22).value()).value();
  fill(w.view(), "w", 4);
  fill(v.view(), "v", 4);
  std::vector<named_tensor> tensors = {{"w", w.view()}, {"v", v.view()}};
  write_options opt;
  opt.chunk_bytes = 4096;
  REQUIRE(write_tensors(*be, dir / "ck", tensors, opt));
  REQUIRE(export_tf_bundle(*be, dir / "ck", dir / "tf"));
  auto mc = read_manifest(*be, dir / "ck").value();
  auto tf = read_tf_checkpoint(*be, dir / "tf").value();

  const std::vector<box> boxes = {box{{0, 0}, {300, 200}}, box{{298, 198}, {2, 2}}, box{{140, 90}, {20, 30}}, box{{0, 99}, {300, 2}},
                                  box{{5, 5}, {0, 3}}};
  for (int source = 0; source < 2; ++source) {
    const std::string prefix = source ? tf.prefix : dir / "ck";
    const auto& m = source ? tf.manifest : mc;
    for (const auto& b : boxes) {
      INFO((source ? "TensorFlow " : "meshckpt ") << to_string(b));
      std::vector<std::byte> out(static_cast<std::size_t>(b.volume().value()) * 4);
      auto r = read_tensor_box(*be, prefix, m, "w", b, out);
      REQUIRE(r);
      CHECK(box_holds(out, dtype::float32, {300, 200}, b, "w", 4));
      if (source == 0 && b.extent == shape{2, 2}) CHECK(r->bytes_read <= 2 * 4096);  // the last two rows' ends: a chunk or two
    }
    std::vector<std::byte> last(2 * 2);
    REQUIRE(read_tensor_box(*be, prefix, m, "v", box{{998}, {2}}, last));
    CHECK(box_holds(last, dtype::int16, {1000}, box{{998}, {2}}, "v", 4));
    CHECK(verify_tensor(*be, prefix, m, "w"));
    // Boxes outside the tensor, of another rank, buffers of another size, unknown keys.
    std::vector<std::byte> four(4);
    CHECK(read_tensor_box(*be, prefix, m, "w", box{{300, 0}, {1, 1}}, four).error().code == errc::invalid_argument);
    CHECK(read_tensor_box(*be, prefix, m, "w", box{{-1, 0}, {1, 1}}, four).error().code == errc::invalid_argument);
    CHECK(read_tensor_box(*be, prefix, m, "w", box{{0}, {1}}, four).error().code == errc::invalid_argument);
    CHECK(read_tensor_box(*be, prefix, m, "w", box{{0, 0}, {1, 2}}, four).error().code == errc::invalid_argument);
    CHECK(read_tensor_box(*be, prefix, m, "nope", box{{0}, {1}}, four).error().code == errc::not_found);
    CHECK(verify_tensor(*be, prefix, m, "nope").error().code == errc::not_found);
  }

  // Exported to safetensors from the sharded checkpoint and from TensorFlow: assembled in blocks
  // of rows, every value in place.
  for (int source = 0; source < 2; ++source) {
    INFO((source ? "from TensorFlow" : "from meshckpt"));
    const std::string out = dir / (source ? "from-tf.safetensors" : "from-ck.safetensors");
    REQUIRE(export_safetensors(*be, source ? tf.prefix : dir / "ck", source ? tf.manifest : mc, {"w", "v"}, {{"format", "pt"}}, out));
    auto bw = whole_tensor(dtype::float32, {300, 200}, "x", 0);
    auto bv = whole_tensor(dtype::int16, {1000}, "x", 0);
    std::vector<named_tensor> back = {{"w", bw.view()}, {"v", bv.view()}};
    REQUIRE(read_safetensors(*be, out, back));
    CHECK(matches(bw.view(), "w", 4));
    CHECK(matches(bv.view(), "v", 4));
  }

  // A damaged byte: a box that reads its chunk fails, one that does not succeeds; the TensorFlow
  // tensor's CRC covers it whole, so every box of it fails, and so does verify_tensor.
  const auto& ws = *mc.find("w");
  const auto& first = ws.slices.front();  // the slice that holds [0, 150) x [0, 100)
  REQUIRE(first.where == box{{0, 0}, {150, 100}});
  auto flip = [](const std::string& path, std::uint64_t at) {
    std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(static_cast<std::streamoff>(at));
    char c = 0;
    f.get(c);
    f.seekp(static_cast<std::streamoff>(at));
    f.put(static_cast<char>(c ^ 1));
  };
  flip(dir / mc.files[first.file].name, first.offset + 5);  // element (0, 1)
  std::vector<std::byte> out(4);
  auto bad = read_tensor_box(*be, dir / "ck", mc, "w", box{{0, 0}, {1, 1}}, out);
  REQUIRE_FALSE(bad);
  CHECK(bad.error().code == errc::checksum_mismatch);
  CHECK(read_tensor_box(*be, dir / "ck", mc, "w", box{{299, 199}, {1, 1}}, out));
  read_options unchecked;
  unchecked.verify_checksums = false;
  CHECK(read_tensor_box(*be, dir / "ck", mc, "w", box{{0, 0}, {1, 1}}, out, unchecked));
  CHECK(verify_tensor(*be, dir / "ck", mc, "w").error().code == errc::checksum_mismatch);

  // The stored piece (a partition of the exported variable) that holds element (299, 199).
  const auto& tw = *tf.manifest.find("w");
  auto holder = std::find_if(tw.slices.begin(), tw.slices.end(), [](const auto& sl) { return sl.where == box{{150, 100}, {150, 100}}; });
  REQUIRE(holder != tw.slices.end());
  flip(dir / tf.manifest.files[holder->file].name, holder->offset + 5);  // its element (150, 101), not in the box read
  auto bad_tf = read_tensor_box(*be, tf.prefix, tf.manifest, "w", box{{299, 199}, {1, 1}}, out);
  REQUIRE_FALSE(bad_tf);
  CHECK(bad_tf.error().code == errc::checksum_mismatch);
  CHECK_THAT(bad_tf.error().what(), Catch::Contains("CRC-32C"));
  CHECK(verify_tensor(*be, tf.prefix, tf.manifest, "w").error().code == errc::checksum_mismatch);
  CHECK(read_tensor_box(*be, tf.prefix, tf.manifest, "w", box{{299, 199}, {1, 1}}, out, unchecked));
}

TEST_CASE("TensorFlow optimizer slots restore by structure, and survive import and export verbatim", "[import][tf][slots]") {
  auto be = test_backend();
  temp_dir dir;
  const std::string K = "model/kernel/.ATTRIBUTES/VARIABLE_VALUE",
                    M = "model/kernel/.OPTIMIZER_SLOT/optimizer/m/.ATTRIBUTES/VARIABLE_VALUE",
                    V = "model/kernel/.OPTIMIZER_SLOT/optimizer/v/.ATTRIBUTES/VARIABLE_VALUE",
                    I = "optimizer/iter/.ATTRIBUTES/VARIABLE_VALUE", C = "save_counter/.ATTRIBUTES/VARIABLE_VALUE";
  // A Keras-like state as TensorFlow saves it: Adam's slots m and v of the kernel are listed on
  // the optimizer (node 3), not among its children.
  std::deque<dtensor> keep;
  std::vector<named_tensor> tensors;
  for (const auto& [key, t, s] :
       {std::tuple{K, dtype::float32, shape{4, 2}}, std::tuple{M, dtype::float32, shape{4, 2}}, std::tuple{V, dtype::float32, shape{4, 2}},
        std::tuple{I, dtype::int64, shape{}}, std::tuple{C, dtype::int64, shape{}}}) {
    keep.push_back(whole_tensor(t, s, key, 6));
    tensors.push_back({key, keep.back().view()});
  }
  format::tf::trackable_graph tg;
  tg.nodes.resize(8);
  tg.nodes[0].children = {{"model", 1}, {"optimizer", 3}, {"save_counter", 5}};
  tg.nodes[1].children = {{"kernel", 2}};
  tg.nodes[2].attributes = {{"VARIABLE_VALUE", "kernel", K}};
  tg.nodes[3].children = {{"iter", 4}};
  tg.nodes[3].slot_variables = {{2, "m", 6}, {2, "v", 7}};
  tg.nodes[4].attributes = {{"VARIABLE_VALUE", "iter", I}};
  tg.nodes[5].attributes = {{"VARIABLE_VALUE", "save_counter", C}};
  tg.nodes[6].attributes = {{"VARIABLE_VALUE", "m", M}};
  tg.nodes[7].attributes = {{"VARIABLE_VALUE", "v", V}};
  const std::string tg_bytes = format::tf::encode_trackable_graph(tg);
  write_options opt;
  graph::object_graph root_only;
  root_only.nodes.resize(1);
  opt.extensions.push_back({std::string(graph::object_graph_extension), graph::encode_object_graph(root_only)});
  opt.extensions.push_back({std::string(tf_object_graph_extension),
                            std::vector<std::byte>(reinterpret_cast<const std::byte*>(tg_bytes.data()),
                                                   reinterpret_cast<const std::byte*>(tg_bytes.data()) + tg_bytes.size())});
  REQUIRE(write_tensors(*be, dir / "src", tensors, opt));
  REQUIRE(export_tf_bundle(*be, dir / "src", dir / "tf"));  // TensorFlow's graph written verbatim
  REQUIRE(import_tf_checkpoint(*be, dir / "tf", dir / "imported"));
  {
    auto m = read_manifest(*be, dir / "imported").value();
    auto it = std::find_if(m.extensions.begin(), m.extensions.end(), [](const auto& e) { return e.name == tf_object_graph_extension; });
    REQUIRE(it != m.extensions.end());
    CHECK(format::tf::decode_trackable_graph(it->bytes).value() == tg);
  }
  REQUIRE(export_tf_bundle(*be, dir / "imported", dir / "tf2"));

  // The live state: an optimizer that tracks slot "m" of the variable at "model/kernel" as its
  // child "m"'s child "model/kernel" (docs/API.md).
  auto one = mesh::create({{"x", 2}}).value();
  auto var = [&](dtype t, shape s) {
    std::vector<std::string> l(s.size(), "unsharded");
    if (!s.empty()) l[0] = "x";
    return std::make_unique<graph::variable>(dtensor::create(t, s, layout::create(l, one).value()).value());
  };
  for (const char* from : {"tf", "imported", "tf2"}) {
    INFO(from);
    graph::module root, model, optimizer, m_slots, v_slots;
    auto kernel = var(dtype::float32, {4, 2}), m = var(dtype::float32, {4, 2}), v = var(dtype::float32, {4, 2}),
         iter = var(dtype::int64, {});
    root.add_child("model", model);
    root.add_child("optimizer", optimizer);
    model.add_child("kernel", *kernel);
    optimizer.add_child("iter", *iter);
    optimizer.add_child("m", m_slots);
    optimizer.add_child("v", v_slots);
    m_slots.add_child("model/kernel", *m);
    v_slots.add_child("model/kernel", *v);
    auto ck = checkpoint::create(mesh::create({{"x", 2}}).value(), &root).value();
    auto st = ck->restore(dir / from);
    REQUIRE(st);
    CHECK(st->assert_consumed());
    CHECK(matches(kernel->view(), K, 6));
    CHECK(matches(m->view(), M, 6));
    CHECK(matches(v->view(), V, 6));
    CHECK(matches(iter->view(), I, 6));
  }
}
