// Exports of meshckpt checkpoints to TensorFlow and imports back (api/tf_bundle_io.hpp):
// streamed exports of damaged checkpoints; opaque values as DT_STRING scalars and back; a
// string whose size lies beyond its file; TensorFlow's own object graph kept on re-export.

#include <catch2/catch.hpp>

#include <atomic>
#include <filesystem>
#include <fstream>

#include "meshckpt/api/checkpoint.hpp"
#include "meshckpt/interchange/safetensors_io.hpp"
#include "meshckpt/interchange/tf_bundle_io.hpp"
#include "meshckpt/backends/posix.hpp"
#include "meshckpt/format/crc32c.hpp"
#include "api_model.hpp"
#include "tf_files.hpp"

using namespace meshckpt;
using namespace api_test;

TEST_CASE("a damaged checkpoint fails a streamed export, to TensorFlow or safetensors, and leaves no file", "[api][tf][export]") {
  testing::temp_dir tmp;
  auto be = backends::make_posix_backend();
  graph::state_dict sd;
  auto* w = sd.emplace("w", dtype::float32, {512, 1024}, layout::create({"unsharded", "unsharded"}, mesh24()).value()).value();
  testing::fill(w->view(), "w", 3);
  auto ck = checkpoint::create(mesh24(), &sd).value();
  const auto saved = ck->write(tmp / "ck").value();
  auto m = read_manifest(*be, saved).value();
  REQUIRE(m.find("w")->slices.size() == 1);  // stored whole: the streamed path
  // Undamaged, both exports hold exactly the tensor's bytes.
  REQUIRE(export_tf_bundle(*be, saved, tmp / "tf"));
  auto idx = read_tf_bundle_index(*be, tmp / "tf").value();
  CHECK(idx.find("w")->crc32c == format::crc32c::value(w->view().shards()[0].data));
  REQUIRE(export_safetensors(*be, saved, m, {"w"}, {}, tmp / "w.safetensors"));
  auto st = tf_files::read_all(tmp / "w.safetensors");
  const auto& bytes = w->view().shards()[0].data;
  REQUIRE(st.size() >= bytes.size());
  CHECK(std::equal(bytes.begin(), bytes.end(), st.end() - static_cast<std::ptrdiff_t>(bytes.size())));
  // From the TensorFlow bundle, whose tensor is one piece under one CRC-32C: copied in one pass,
  // the CRC checked at its last byte. Undamaged, the same bytes; one flipped byte fails the
  // export and leaves no file.
  auto tf_src = read_tf_checkpoint(*be, tmp / "tf").value();
  struct counting_reads final : io::forwarding_backend {
    using io::forwarding_backend::forwarding_backend;
    std::atomic<std::uint64_t> bytes{0};
    void read(io::handle f, std::uint64_t o, std::span<std::byte> b, io::completion<std::size_t> d) override {
      inner_->read(f, o, b, [this, d = std::move(d)](result<std::size_t> r) {
        if (r) bytes += *r;
        d(std::move(r));
      });
    }
  } counted(backends::make_posix_backend());
  REQUIRE(export_safetensors(counted, tf_src.prefix, tf_src.manifest, {"w"}, {}, tmp / "from-tf.safetensors"));
  CHECK(counted.bytes == tf_src.manifest.find("w")->slices.at(0).length);  // each byte read once
  CHECK(tf_files::read_all(tmp / "from-tf.safetensors") == st);
  {
    const auto& ts = tf_src.manifest.find("w")->slices.at(0);
    std::fstream f(tmp / tf_src.manifest.files[ts.file].name, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(ts.offset + ts.length - 3));
    f.put('\x5a');
  }
  auto bad = export_safetensors(*be, tf_src.prefix, tf_src.manifest, {"w"}, {}, tmp / "from-tf2.safetensors");
  REQUIRE_FALSE(bad);
  CHECK(bad.error().code == errc::checksum_mismatch);
  CHECK(bad.error().message.find("CRC-32C mismatch in tensor \"w\"") != std::string::npos);
  CHECK_FALSE(std::filesystem::exists(tmp / "from-tf2.safetensors"));
  // One flipped byte in the middle of the stored slice.
  const auto& sl = m.find("w")->slices[0];
  {
    std::fstream f(tmp / m.files[sl.file].name, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(sl.offset + sl.length / 2));
    f.put('\x5a');
  }
  std::filesystem::remove(tmp / "tf.index");
  auto tf = export_tf_bundle(*be, saved, tmp / "tf2");
  REQUIRE_FALSE(tf);
  CHECK(tf.error().code == errc::checksum_mismatch);
  CHECK_FALSE(std::filesystem::exists(tmp / "tf2.index"));
  auto sf = export_safetensors(*be, saved, m, {"w"}, {}, tmp / "w2.safetensors");
  REQUIRE_FALSE(sf);
  CHECK(sf.error().code == errc::checksum_mismatch);
  CHECK_FALSE(std::filesystem::exists(tmp / "w2.safetensors"));
  for (const auto& e : std::filesystem::directory_iterator(tmp.path))
    CHECK(e.path().filename().string().find(".tmp-") == std::string::npos);
}

TEST_CASE("opaque values export to TensorFlow as DT_STRING scalars that the object graph names, and import back as the same bytes",
          "[api][tf][export][regression]") {
  testing::temp_dir tmp;
  auto be = backends::make_posix_backend();
  model m;
  m.fill(7);
  REQUIRE(m.rng.get().size() > 1);
  const auto saved = ckpt_of(m)->write(tmp / "ck").value();
  auto rep = export_tf_bundle(*be, saved, tmp / "tf");
  REQUIRE(rep);
  CHECK(rep->opaque == 1);
  auto idx = read_tf_bundle_index(*be, tmp / "tf").value();
  const auto* e = idx.find("model/rng..state");
  REQUIRE(e);
  CHECK(e->tf_type == format::tf::tf_string);
  CHECK(e->global.empty());
  // Every key TensorFlow's object graph names is in the bundle (a TensorFlow restore finds it).
  auto g = tf_files::read_object_graph(tmp / "tf", idx).value();
  std::size_t named = 0;
  for (const auto& n : g.nodes)
    for (const auto& a : n.attributes) {
      INFO(a.checkpoint_key);
      CHECK(idx.find(a.checkpoint_key));
      ++named;
    }
  CHECK(named == 6);  // four variables, the step, the rng
  CHECK(verify_tf_bundle(*be, tmp / "tf").value().problems.empty());
  // Back into meshckpt: the same opaque bytes, restored by structure.
  REQUIRE(import_tf_checkpoint(*be, tmp / "tf", tmp / "back"));
  auto back_manifest = read_manifest(*be, tmp / "back").value();
  REQUIRE(back_manifest.find("model/rng..state"));
  CHECK(back_manifest.find("model/rng..state")->type == dtype::blob);
  model back;
  auto cb = ckpt_of(back);
  auto st = cb->read(tmp / "back").value();
  auto ok = st.assert_consumed();
  INFO((ok ? std::string() : ok.error().what()));
  CHECK(ok);
  CHECK(same(m, back));
}

TEST_CASE("an import refuses a TensorFlow string whose size lies beyond its data file, before allocating it",
          "[api][tf][hostile][regression]") {
  testing::temp_dir tmp;
  auto be = backends::make_posix_backend();
  // Checksums right, the size hostile: 512 MiB claimed, 10 bytes stored.
  auto s = tf_files::string_scalar("s", "hello");
  s.size = std::uint64_t{1} << 29;
  REQUIRE(tf_files::write_bundle(tmp / "h", {s}));
  auto r = import_tf_checkpoint(*be, tmp / "h", tmp / "out");
  REQUIRE_FALSE(r);
  CHECK(r.error().code == errc::short_read);
  CHECK_THAT(r.error().what(), Catch::Contains("\"s\"") && Catch::Contains("beyond the end of the file"));
  CHECK_FALSE(std::filesystem::exists(tmp / "out.manifest"));
}

TEST_CASE("re-exporting an imported TF2 checkpoint keeps TensorFlow's graph but drops attributes whose values were not imported",
          "[api][tf][export][regression]") {
  testing::temp_dir tmp;
  auto be = backends::make_posix_backend();
  // root -> layer (a config string, a rank-1 DT_STRING meshckpt leaves out) -> kernel (a
  // variable); an optimizer with slot "m" of the kernel.
  format::tf::trackable_graph g;
  g.nodes.resize(5);
  g.nodes[0].children = {{"layer", 1}, {"optimizer", 3}};
  g.nodes[1].children = {{"kernel", 2}};
  g.nodes[1].attributes = {{"OBJECT_CONFIG_JSON", "layer/.ATTRIBUTES/OBJECT_CONFIG_JSON", "layer/.ATTRIBUTES/OBJECT_CONFIG_JSON"}};
  g.nodes[2].attributes = {{"VARIABLE_VALUE", "layer/kernel", "layer/kernel/.ATTRIBUTES/VARIABLE_VALUE"}};
  g.nodes[3].slot_variables = {{2, "m", 4}};
  g.nodes[4].attributes = {{"VARIABLE_VALUE", "m", "layer/kernel/.OPTIMIZER_SLOT/optimizer/m/.ATTRIBUTES/VARIABLE_VALUE"}};
  std::uint32_t crc = 0;
  std::vector<std::string> config{"{\"a\":1}", "{\"b\":2}"};
  auto config_bytes = format::tf::encode_string_tensor(config, crc);
  REQUIRE(tf_files::write_bundle(
      tmp / "k",
      {tf_files::string_scalar(std::string(format::tf::object_graph_key), format::tf::encode_trackable_graph(g)),
       {"layer/.ATTRIBUTES/OBJECT_CONFIG_JSON", format::tf::tf_string, {2}, config_bytes, crc},
       {"layer/kernel/.ATTRIBUTES/VARIABLE_VALUE", 1, {2}, std::vector<std::byte>(8, std::byte{1})},
       {"layer/kernel/.OPTIMIZER_SLOT/optimizer/m/.ATTRIBUTES/VARIABLE_VALUE", 1, {2}, std::vector<std::byte>(8, std::byte{2})}}));
  auto imp = import_tf_checkpoint(*be, tmp / "k", tmp / "imported");
  INFO((imp ? std::string() : imp.error().what()));
  REQUIRE(imp);
  REQUIRE(export_tf_bundle(*be, tmp / "imported", tmp / "again"));
  auto out = read_tf_bundle_index(*be, tmp / "again").value();
  auto back = tf_files::read_object_graph(tmp / "again", out).value();
  REQUIRE(back.nodes.size() == 5);
  CHECK(back.nodes[3].slot_variables == g.nodes[3].slot_variables);  // TensorFlow's own graph, slots included
  CHECK(back.nodes[1].attributes.empty());                           // the config string was not imported
  for (const auto& n : back.nodes)
    for (const auto& a : n.attributes) CHECK(out.find(a.checkpoint_key));
}
