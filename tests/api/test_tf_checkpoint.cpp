// TensorFlow checkpoints through the Checkpoint API and the conversions (docs/API.md, "Restoring
// what TensorFlow wrote"): latest_checkpoint and verify on TF bundles; restores of the three real
// checkpoints (SavedModel by directory, TF1 by name, TF2 by object graph) with every value
// checked against TensorFlow's CRC-32C; not_found and damage; export to TF and import back for
// every dtype, slices and several data files; streamed exports of damaged checkpoints; name maps.

#include <catch2/catch.hpp>

#include <deque>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <set>

#include "meshckpt/api/checkpoint.hpp"
#include "meshckpt/interchange/safetensors_io.hpp"
#include "meshckpt/interchange/tf_bundle_io.hpp"
#include "meshckpt/backends/posix.hpp"
#include "meshckpt/format/crc32c.hpp"
#include "api_model.hpp"
#include "tf_files.hpp"

using namespace meshckpt;
namespace fs = std::filesystem;

using namespace api_test;

TEST_CASE("latest_checkpoint finds a checkpoint TensorFlow wrote, its absolute paths from another machine resolved",
          "[api][checkpoint][tf]") {
  testing::temp_dir tmp;
  const std::filesystem::path src = std::filesystem::path(MESHCKPT_TF_TESTDATA) / "t2t_transformer_tf1_ckpt";
  testing::copy_dir(src.string(), tmp.str());
  // As TensorFlow wrote it: a relative path.
  CHECK(latest_checkpoint(tmp.path.string()) == tmp / "model.ckpt-1");
  // As a copy from another machine holds it: absolute paths there.
  {
    std::ofstream f(tmp / "checkpoint", std::ios::trunc);
    f << "model_checkpoint_path: \"/home/someone/t2t/train/model.ckpt-1\"\n"
         "all_model_checkpoint_paths: \"/home/someone/t2t/train/model.ckpt-1\"\n";
  }
  CHECK(latest_checkpoint(tmp.path.string()) == tmp / "model.ckpt-1");
  // Its index gone: no checkpoint.
  std::filesystem::remove(tmp / "model.ckpt-1.index");
  CHECK_FALSE(latest_checkpoint(tmp.path.string()));
}

TEST_CASE("verify_tf_bundle checks every tensor of a TensorFlow checkpoint against its CRC-32C and lists the damage", "[api][tf][verify]") {
  testing::temp_dir tmp;
  const std::filesystem::path src = std::filesystem::path(MESHCKPT_TF_TESTDATA) / "bert_lite_tf2_ckpt";
  testing::copy_dir(src.string(), tmp.str());
  auto b = backends::make_posix_backend();
  const std::string prefix = tmp / "bert_lite_tf2.ckpt";
  auto ok = verify_tf_bundle(*b, prefix);
  REQUIRE(ok);
  CHECK(ok->ok());
  CHECK(ok->tensors == 25);
  CHECK(ok->files == 1);
  CHECK(ok->bytes_checked == std::filesystem::file_size(prefix + ".data-00000-of-00001"));
  // One flipped byte in a float tensor, one in the object graph (a string tensor).
  const auto idx = read_tf_bundle_index(*b, prefix).value();
  const auto* graph = idx.find("_CHECKPOINTABLE_OBJECT_GRAPH");
  const auto* gamma = idx.find("model/layer_with_weights-3/gamma/.ATTRIBUTES/VARIABLE_VALUE");
  REQUIRE(graph);
  REQUIRE(gamma);
  {
    std::fstream f(prefix + ".data-00000-of-00001", std::ios::in | std::ios::out | std::ios::binary);
    for (auto at : {gamma->offset + 1, graph->offset + graph->size - 1}) {
      f.seekg(static_cast<std::streamoff>(at));
      char c = 0;
      f.read(&c, 1);
      c ^= 0x10;
      f.seekp(static_cast<std::streamoff>(at));
      f.write(&c, 1);
    }
  }
  auto bad = verify_tf_bundle(*b, prefix).value();
  REQUIRE(bad.problems.size() == 2);
  for (const auto& p : bad.problems) CHECK(p.code == errc::checksum_mismatch);
  CHECK_THAT(bad.problems[1].what(), Catch::Contains("gamma"));
  // Truncated: the last tensors end past the file's end.
  std::filesystem::resize_file(prefix + ".data-00000-of-00001", gamma->offset);
  auto cut = verify_tf_bundle(*b, prefix).value();
  CHECK_FALSE(cut.ok());
  // No index: an error, not a report.
  CHECK(verify_tf_bundle(*b, tmp / "nothing").error().code == errc::not_found);
}

TEST_CASE("verify_tf_bundle checks an empty tensor's CRC-32C too: over no bytes it is 0", "[api][tf][verify]") {
  testing::temp_dir tmp;
  const std::filesystem::path src = std::filesystem::path(MESHCKPT_TF_TESTDATA) / "bert_lite_tf2_ckpt";
  testing::copy_dir(src.string(), tmp.str());
  auto b = backends::make_posix_backend();
  const std::string prefix = tmp / "bert_lite_tf2.ckpt";
  auto rewrite_gamma = [&](std::uint32_t crc) {
    auto idx = read_tf_bundle_index(*b, prefix).value();
    for (auto& e : idx.entries)
      if (e.key == "model/layer_with_weights-3/gamma/.ATTRIBUTES/VARIABLE_VALUE") {
        e.global = {0};
        e.size = 0;
        e.crc32c = crc;
      }
    const auto bytes = format::tf::encode_bundle_index(idx).value();
    std::ofstream(prefix + ".index", std::ios::binary | std::ios::trunc)
        .write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  };
  rewrite_gamma(0);
  auto ok = verify_tf_bundle(*b, prefix).value();
  CHECK(ok.ok());
  CHECK(ok.tensors == 25);
  rewrite_gamma(0x1234);
  auto bad = verify_tf_bundle(*b, prefix).value();
  REQUIRE(bad.problems.size() == 1);
  CHECK(bad.problems[0].code == errc::checksum_mismatch);
  CHECK_THAT(bad.problems[0].what(), Catch::Contains("CRC-32C mismatch in tensor") && Catch::Contains("gamma"));
}

namespace {

// The global tensor's row-major bytes, gathered from the shards by their boxes.
std::vector<std::byte> gather(const dtensor_view& v) {
  const auto es = static_cast<std::size_t>(dtype_size(v.type()));
  const auto& g = v.global_shape();
  std::vector<std::byte> out(static_cast<std::size_t>(v.global_bytes()));
  for (const auto& sh : v.shards()) {
    auto b = v.layout().shard_box(g, sh.device).value();
    if (b.empty()) continue;
    const std::size_t rank = g.size();
    const std::size_t run = es * static_cast<std::size_t>(rank ? b.extent[rank - 1] : 1);
    std::int64_t rows = 1;
    for (std::size_t d = 0; d + 1 < rank; ++d) rows *= b.extent[d];
    for (std::int64_t r = 0; r < rows; ++r) {
      std::vector<std::int64_t> at(rank, 0);
      for (std::int64_t rem = r, d = static_cast<std::int64_t>(rank) - 2; d >= 0; --d) {
        at[static_cast<std::size_t>(d)] = rem % b.extent[static_cast<std::size_t>(d)];
        rem /= b.extent[static_cast<std::size_t>(d)];
      }
      std::int64_t flat = 0;
      for (std::size_t d = 0; d < rank; ++d) flat = flat * g[d] + b.origin[d] + at[d];
      std::memcpy(out.data() + static_cast<std::size_t>(flat) * es, sh.data.data() + static_cast<std::size_t>(r) * run, run);
    }
  }
  return out;
}

float scalar_float(const graph::variable& v) {
  float f;
  std::memcpy(&f, v.view().shards()[0].data.data(), 4);
  return f;
}

const std::filesystem::path tf_data = MESHCKPT_TF_TESTDATA;

}  // namespace

TEST_CASE("a SavedModel directory restores through its object graph: y = 0.5 x + 2", "[api][checkpoint][tf]") {
  struct half_plus_two : graph::module {
    graph::variable a{make(dtype::float32, {}, {})}, b{make(dtype::float32, {}, {})}, c{make(dtype::float32, {}, {})};
    half_plus_two() {
      track("a", a);
      track("b", b);
      track("c", c);
    }
  } m;
  auto ck = checkpoint::create(mesh24(), &m).value();
  // Its 20 signature and function nodes hold no values: TensorFlow's assert_consumed passes
  // without them, and so does ours (SEMANTICS.md, load status).
  auto st = ck->read((tf_data / "half_plus_two_tf2_savedmodel").string());
  REQUIRE(st);
  {
    auto ok = st->assert_consumed();
    INFO((ok ? std::string() : ok.error().what()));
    CHECK(ok);
  }
  {
    // restore() creates the save counter, which a SavedModel has no value for: as in
    // TensorFlow, that restore is not consumed, and the message says why.
    half_plus_two again;
    auto ck2 = checkpoint::create(mesh24(), &again).value();
    auto st2 = ck2->restore((tf_data / "half_plus_two_tf2_savedmodel").string());
    REQUIRE(st2);
    CHECK(scalar_float(again.b) == 2.f);
    auto r = st2->assert_consumed();
    REQUIRE_FALSE(r);
    CHECK_THAT(r.error().what(), Catch::Contains("save_counter") && !Catch::Contains("node "));
    st2->expect_partial();
  }
  for (float x : {0.f, 1.f, 4.f, -6.f}) CHECK(scalar_float(m.a) * x + scalar_float(m.b) == 0.5f * x + 2.f);
  CHECK(scalar_float(m.c) == 3.f);  // half_plus_three's offset
  // The bundle inside it, named by its prefix or by its .index file, restores the same way.
  for (const char* p : {"variables/variables", "variables/variables.index"}) {
    half_plus_two again;
    auto ck2 = checkpoint::create(mesh24(), &again).value();
    REQUIRE(ck2->restore((tf_data / "half_plus_two_tf2_savedmodel" / p).string()));
    CHECK(scalar_float(again.b) == 2.f);
  }
}

TEST_CASE("a TF1 checkpoint restores by name onto sharded layouts, every value checked against TensorFlow's CRC-32C",
          "[api][checkpoint][tf]") {
  const auto prefix = (tf_data / "t2t_transformer_tf1_ckpt" / "model.ckpt-1").string();
  auto idx = read_tf_bundle_index(*backends::make_posix_backend(), prefix).value();
  // Every tensor, by its TensorFlow name: matrices split over x and y, vectors over y.
  graph::state_dict sharded, whole;
  std::map<std::string, std::pair<graph::variable*, graph::variable*>> vars;
  for (const auto& e : idx.entries) {
    if (!e.type) continue;
    std::vector<std::string> l(e.global.size(), "unsharded"), u = l;
    if (l.size() == 2) l = {"x", "y"};
    if (l.size() == 1) l = {"y"};
    vars[e.key] = {sharded.emplace(e.key, *e.type, e.global, layout::create(l, mesh24()).value()).value(),
                   whole.emplace(e.key, *e.type, e.global, layout::create(u, mesh24()).value()).value()};
  }
  REQUIRE(vars.size() == 250);
  auto a = checkpoint::create(mesh24(), &sharded).value();
  auto st = a->restore(prefix);
  REQUIRE(st);
  {
    auto ok = st->assert_consumed();
    INFO((ok ? std::string() : ok.error().what()));
    CHECK(ok);
  }
  auto b = checkpoint::create(mesh24(), &whole).value();
  REQUIRE(b->restore(prefix));
  std::size_t checked = 0;
  for (const auto& [key, v] : vars) {
    INFO(key);
    const auto* e = idx.find(key);
    const auto& one = v.second->view().shards()[0].data;
    CHECK(format::crc32c::value(one) == e->crc32c);  // TensorFlow's checksum of the bytes it wrote
    auto g = gather(v.first->view());
    CHECK(std::equal(g.begin(), g.end(), one.begin(), one.end()));
    ++checked;
  }
  CHECK(checked == 250);
}

TEST_CASE("a TF2 checkpoint restores through its object graph into a live graph of the same structure", "[api][checkpoint][tf]") {
  const auto prefix = (tf_data / "bert_lite_tf2_ckpt" / "bert_lite_tf2.ckpt").string();
  auto be = backends::make_posix_backend();
  auto idx = read_tf_bundle_index(*be, prefix).value();
  // The live graph, built from TensorFlow's object graph: a module per object, a variable per
  // saved value (sharded over y where it divides).
  auto tg = tf_files::read_object_graph(prefix, idx).value();
  std::deque<graph::module> mods;
  std::deque<graph::variable> values;
  std::map<std::uint32_t, graph::trackable*> built;
  std::map<std::string, graph::variable*> by_key;
  std::function<graph::trackable*(std::uint32_t)> build = [&](std::uint32_t n) -> graph::trackable* {
    if (auto it = built.find(n); it != built.end()) return it->second;
    for (const auto& at : tg.nodes[n].attributes)
      if (at.name == "VARIABLE_VALUE") {
        const auto* e = idx.find(at.checkpoint_key);
        REQUIRE(e);
        std::vector<std::string> l(e->global.size(), "unsharded");
        if (!l.empty() && e->global.back() % 4 == 0) l.back() = "y";
        auto& v = values.emplace_back(dtensor::create(*e->type, e->global, layout::create(l, mesh24()).value()).value());
        by_key[at.checkpoint_key] = &v;
        return built[n] = &v;
      }
    auto& m = mods.emplace_back();
    built[n] = &m;
    for (const auto& [name, child] : tg.nodes[n].children)
      if (!(n == 0 && name == "save_counter")) m.add_child(name, *build(child));
    return &m;
  };
  auto* root = build(0);
  auto ck = checkpoint::create(mesh24(), root).value();
  auto st = ck->restore(prefix);
  REQUIRE(st);
  CHECK(st->assert_existing_objects_matched());
  CHECK(by_key.size() + 1 == 24);  // every numeric entry but the save counter, which the checkpoint's own takes
  for (const auto& [key, v] : by_key) {
    INFO(key);
    CHECK(format::crc32c::value(gather(v->view())) == idx.find(key)->crc32c);
  }
  CHECK(ck->save_counter() == [&] {
    const auto* e = idx.find("save_counter/.ATTRIBUTES/VARIABLE_VALUE");
    std::ifstream f(prefix + ".data-00000-of-00001", std::ios::binary);
    std::int64_t n = 0;
    f.seekg(static_cast<std::streamoff>(e->offset));
    f.read(reinterpret_cast<char*>(&n), 8);
    return n;
  }());
}

TEST_CASE("a TF2 checkpoint restored onto a graph that mirrors only its variables passes assert_consumed, as in TensorFlow",
          "[api][checkpoint][tf][status][regression]") {
  const auto prefix = (tf_data / "bert_lite_tf2_ckpt" / "bert_lite_tf2.ckpt").string();
  auto idx = read_tf_bundle_index(*backends::make_posix_backend(), prefix).value();
  auto tg = tf_files::read_object_graph(prefix, idx).value();
  // The live graph: only the objects on a path to a saved value (Keras' attribute-less nodes,
  // such as its layer-N input layers and keras_api containers, have no live counterpart).
  // `skip` leaves out one variable, to see how the status names it.
  auto build_live = [&](const std::string& skip, std::deque<graph::module>& mods, std::deque<graph::variable>& values) {
    std::map<std::uint32_t, graph::trackable*> built;
    std::function<graph::trackable*(std::uint32_t, const std::string&)> build = [&](std::uint32_t n,
                                                                                    const std::string& path) -> graph::trackable* {
      if (auto it = built.find(n); it != built.end()) return it->second;
      for (const auto& at : tg.nodes[n].attributes)
        if (at.name == "VARIABLE_VALUE") {
          if (path == skip) return nullptr;
          const auto* e = idx.find(at.checkpoint_key);
          return built[n] = &values.emplace_back(
                     dtensor::create(*e->type, e->global,
                                     layout::create(std::vector<std::string>(e->global.size(), "unsharded"), mesh24()).value())
                         .value());
        }
      std::vector<std::pair<std::string, graph::trackable*>> kids;
      for (const auto& [name, child] : tg.nodes[n].children)
        if (!(n == 0 && name == "save_counter"))
          if (auto* k = build(child, path.empty() ? name : path + "/" + name)) kids.emplace_back(name, k);
      if (kids.empty() && n != 0) return nullptr;
      auto& m = mods.emplace_back();
      for (auto& [name, k] : kids) m.add_child(name, *k);
      return built[n] = &m;
    };
    return build(0, "");
  };
  std::size_t valueless = 0;
  for (const auto& n : tg.nodes) valueless += n.attributes.empty();
  CHECK(valueless > 0);
  {
    std::deque<graph::module> mods;
    std::deque<graph::variable> values;
    auto* root = build_live("", mods, values);
    CHECK(values.size() + 1 == 24);  // every numeric entry but the save counter
    auto ck = checkpoint::create(mesh24(), root).value();
    auto st = ck->restore(prefix);
    REQUIRE(st);
    auto ok = st->assert_consumed();
    INFO((ok ? std::string() : ok.error().what()));
    CHECK(ok);
  }
  {
    // One variable left out: the status names its path and its key, not a node number.
    const std::string victim = "model/layer_with_weights-5/kernel", victim_key = victim + "/.ATTRIBUTES/VARIABLE_VALUE";
    REQUIRE(idx.find(victim_key));
    std::deque<graph::module> mods;
    std::deque<graph::variable> values;
    auto* root = build_live(victim, mods, values);
    auto ck = checkpoint::create(mesh24(), root).value();
    auto st = ck->restore(prefix);
    REQUIRE(st);
    st->expect_partial();
    CHECK(st->assert_existing_objects_matched());
    auto r = st->assert_consumed();
    REQUIRE_FALSE(r);
    INFO(r.error().what());
    CHECK_THAT(r.error().what(), Catch::Contains("unused values: " + victim_key) && Catch::Contains("unmatched objects: " + victim) &&
                                     !Catch::Contains("node "));
  }
}

TEST_CASE("restoring from a path that holds no checkpoint of any kind is not_found and says what was looked for", "[api][checkpoint][tf]") {
  testing::temp_dir tmp;
  model m;
  auto ck = checkpoint::create(mesh24(), &m).value();
  auto r = ck->restore(tmp / "nothing");
  REQUIRE_FALSE(r);
  CHECK(r.error().code == errc::not_found);
  CHECK_THAT(r.error().what(),
             Catch::Contains("nothing.manifest") && Catch::Contains("TensorFlow checkpoint") && Catch::Contains("SavedModel directory"));
  // A TF bundle missing a data file says which.
  const auto src = tf_data / "t2t_transformer_tf1_ckpt";
  testing::copy_dir(src.string(), tmp.str());
  std::filesystem::remove(tmp / "model.ckpt-1.data-00001-of-00002");
  graph::state_dict sd;
  auto idx = read_tf_bundle_index(*backends::make_posix_backend(), tmp / "model.ckpt-1").value();
  const auto& e = *std::find_if(idx.entries.begin(), idx.entries.end(), [](const auto& x) { return x.type && x.shard == 1; });
  (void)sd.emplace(e.key, *e.type, e.global, layout::create(std::vector<std::string>(e.global.size(), "unsharded"), mesh24()).value());
  auto ck2 = checkpoint::create(mesh24(), &sd).value();
  auto missing = ck2->restore(tmp / "model.ckpt-1");
  REQUIRE_FALSE(missing);
  CHECK(missing.error().code == errc::not_found);
  CHECK_THAT(missing.error().what(), Catch::Contains("model.ckpt-1.data-00001-of-00002 of TensorFlow checkpoint"));
}

TEST_CASE("a damaged TensorFlow tensor fails its restore with a CRC-32C mismatch naming tensor, file and offset", "[api][checkpoint][tf]") {
  testing::temp_dir tmp;
  const auto src = tf_data / "half_plus_two_tf2_savedmodel" / "variables";
  testing::copy_dir(src.string(), tmp / "sm/variables");
  auto idx = read_tf_bundle_index(*backends::make_posix_backend(), tmp / "sm/variables/variables").value();
  const auto* b = idx.find("b/.ATTRIBUTES/VARIABLE_VALUE");
  REQUIRE(b);
  {
    std::fstream f(tmp / "sm/variables/variables.data-00000-of-00001", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(b->offset + 1));
    f.put('\x55');
  }
  struct one : graph::module {
    graph::variable b{make(dtype::float32, {}, {})};
    one() { track("b", b); }
  } m;
  auto ck = checkpoint::create(mesh24(), &m).value();
  auto r = ck->restore(tmp / "sm");
  REQUIRE_FALSE(r);
  CHECK(r.error().code == errc::checksum_mismatch);
  CHECK_THAT(r.error().what(), Catch::Contains("b/.ATTRIBUTES/VARIABLE_VALUE") && Catch::Contains("variables.data-00000-of-00001") &&
                                   Catch::Contains("[" + std::to_string(b->offset) + ", "));
}

namespace {

// One variable per dtype TensorFlow has, some split over x and y (stored as several slices),
// some whole, a scalar and an empty tensor, under a module tree.
struct every_dtype : graph::module {
  std::deque<graph::module> groups;
  std::deque<graph::variable> vars;
  std::vector<std::string> keys;
  explicit every_dtype(std::uint64_t seed) {
    auto& sharded = groups.emplace_back();
    auto& whole = groups.emplace_back();
    track("sharded", sharded);
    track("whole", whole);
    for (int k = 1; k <= 15; ++k) {
      const auto t = static_cast<dtype>(k);
      if (!format::tf::to_tf_dtype(t)) continue;
      const std::string n = "v" + std::to_string(k);
      auto& a = vars.emplace_back(make(t, {10, 12}, {"x", "y"}));
      sharded.add_child(n, a);
      auto& b = vars.emplace_back(make(t, {7, 3}, {"unsharded", "unsharded"}));
      whole.add_child(n, b);
      testing::fill(a.view(), n + "a", seed);
      testing::fill(b.view(), n + "b", seed);
    }
    auto& s = vars.emplace_back(make(dtype::int64, {}, {}));
    whole.add_child("scalar", s);
    testing::fill(s.view(), "scalar", seed);
    auto& e = vars.emplace_back(make(dtype::float32, {0, 4}, {"unsharded", "y"}));
    whole.add_child("empty", e);
  }
};

bool same_values(const every_dtype& a, const every_dtype& b) {
  for (std::size_t i = 0; i < a.vars.size(); ++i)
    if (!same(a.vars[i], b.vars[i])) return false;
  return true;
}

}  // namespace

TEST_CASE("export to TensorFlow and back is bit-exact for every dtype, with partitioned slices and several data files",
          "[api][tf][export]") {
  testing::temp_dir tmp;
  auto be = backends::make_posix_backend();
  every_dtype src(11);
  auto ck = checkpoint::create(mesh24(), &src).value();
  const auto saved = ck->write(tmp / "ck").value();
  auto rep = export_tf_bundle(*be, saved, tmp / "tf", {3}).value();
  CHECK(rep.files == 3);
  CHECK(rep.object_graph);
  CHECK(rep.opaque == 0);
  // What TensorFlow would read: three data files, partitioned variables for the sharded ones.
  for (int k = 0; k < 3; ++k) CHECK(std::filesystem::exists(tmp / ("tf.data-0000" + std::to_string(k) + "-of-00003")));
  auto idx = read_tf_bundle_index(*be, tmp / "tf").value();
  CHECK(idx.num_shards == 3);
  const auto* part = idx.find("sharded/v12");
  REQUIRE(part);
  CHECK(part->slices.size() == 8);  // the 2 x 4 shard boxes
  const auto* whole = idx.find("whole/v12");
  REQUIRE(whole);
  CHECK(whole->slices.empty());
  CHECK(idx.find(format::tf::object_graph_key));
  std::set<int> used;
  for (const auto& e : idx.entries)
    if (e.size) used.insert(e.shard);
  CHECK(used.size() == 3);
  auto v = verify_tf_bundle(*be, tmp / "tf").value();
  CHECK(v.problems.empty());

  // TensorFlow's way back: a read through the object graph, onto the same structure (a
  // write() has no save counter, which restore() would expect).
  every_dtype back(0);
  auto ck2 = checkpoint::create(mesh24(), &back).value();
  auto st = ck2->read(tmp / "tf");
  REQUIRE(st);
  CHECK(st->assert_consumed());
  CHECK(same_values(src, back));

  // Import (partitioned variables joined, whole on one device) and export again: the same
  // values, whole entries stored as they were; once more, and the bundle is the same byte for
  // byte.
  auto imported = import_tf_checkpoint(*be, tmp / "tf", tmp / "imported");
  INFO((imported ? std::string() : imported.error().what()));
  REQUIRE(imported);
  REQUIRE(export_tf_bundle(*be, tmp / "imported", tmp / "again", {3}));
  auto again = read_tf_bundle_index(*be, tmp / "again").value();
  for (const auto& e : idx.entries) {
    if (e.key[0] == '\0' || !e.type) continue;  // slices; the object graph
    const auto* a = again.find(e.key);
    REQUIRE(a);
    CHECK(a->slices.empty());
    if (e.slices.empty()) CHECK(a->crc32c == e.crc32c);
  }
  every_dtype fourth(0);
  auto ck4 = checkpoint::create(mesh24(), &fourth).value();
  REQUIRE(ck4->restore(tmp / "again"));
  CHECK(same_values(src, fourth));
  REQUIRE(import_tf_checkpoint(*be, tmp / "again", tmp / "imported2"));
  REQUIRE(export_tf_bundle(*be, tmp / "imported2", tmp / "third", {3}));
  CHECK(tf_files::read_all(tmp / "third.index") == tf_files::read_all(tmp / "again.index"));
  for (int k = 0; k < 3; ++k) {
    const std::string suffix = ".data-0000" + std::to_string(k) + "-of-00003";
    CHECK(tf_files::read_all(tmp / ("third" + suffix)) == tf_files::read_all(tmp / ("again" + suffix)));
  }
  // The imported checkpoint restores by structure too, with its TensorFlow keys.
  every_dtype third(0);
  auto ck3 = checkpoint::create(mesh24(), &third).value();
  REQUIRE(ck3->restore(tmp / "imported"));
  CHECK(same_values(src, third));
}

TEST_CASE("the real TensorFlow checkpoints import and export back with every value and the header kept", "[api][tf][export]") {
  testing::temp_dir tmp;
  auto be = backends::make_posix_backend();
  for (const char* p : {"t2t_transformer_tf1_ckpt/model.ckpt-1", "bert_lite_tf2_ckpt/bert_lite_tf2.ckpt", "half_plus_two_tf2_savedmodel"}) {
    INFO(p);
    const auto src = (tf_data / p).string();
    auto imported = import_tf_checkpoint(*be, src, tmp / "imp");
    REQUIRE(imported);
    auto orig = read_tf_bundle_index(*be, std::string(p) == "half_plus_two_tf2_savedmodel" ? src + "/variables/variables" : src).value();
    auto m = read_manifest(*be, tmp / "imp").value();
    for (const auto& e : orig.entries)
      if (e.type) CHECK(m.find(e.key));
    auto rep = export_tf_bundle(*be, tmp / "imp", tmp / "out", {2}).value();
    CHECK(rep.object_graph == (orig.find(format::tf::object_graph_key) != nullptr));
    auto back = read_tf_bundle_index(*be, tmp / "out").value();
    CHECK(back.producer == orig.producer);
    CHECK(back.min_consumer == orig.min_consumer);
    for (const auto& e : orig.entries) {
      if (!e.type) continue;
      const auto* b = back.find(e.key);
      REQUIRE(b);
      CHECK(b->global == e.global);
      CHECK(b->tf_type == e.tf_type);
      CHECK(b->crc32c == e.crc32c);  // the same bytes
    }
    CHECK(verify_tf_bundle(*be, tmp / "out").value().problems.empty());
  }
}

TEST_CASE("a name map restores TF1 variables whose live paths differ from TensorFlow's names", "[api][checkpoint][tf]") {
  const auto prefix = (tf_data / "t2t_transformer_tf1_ckpt" / "model.ckpt-1").string();
  auto idx = read_tf_bundle_index(*backends::make_posix_backend(), prefix).value();
  const format::tf::bundle_entry* e = nullptr;
  for (const auto& x : idx.entries)
    if (x.type == dtype::float32 && x.global.size() == 2 && (!e || x.size > e->size)) e = &x;
  REQUIRE(e);
  struct net : graph::module {
    graph::module enc;
    graph::variable w;
    explicit net(const format::tf::bundle_entry& x) : w(make(dtype::float32, x.global, {"x", "y"})) {
      track("enc", enc);
      enc.add_child("w", w);
    }
  };
  {
    net plain(*e);
    auto ck = checkpoint::create(mesh24(), &plain).value();
    auto st = ck->restore(prefix).value();
    auto ok = st.assert_existing_objects_matched();
    REQUIRE_FALSE(ok);  // "enc/w" is no TensorFlow name
    CHECK_THAT(ok.error().what(), Catch::Contains("enc/w"));
    st.expect_partial();
  }
  net mapped(*e);
  checkpoint_options o;
  o.restore_names = {{"enc/w", e->key}};
  auto ck = checkpoint::create(mesh24(), &mapped, {}, o).value();
  auto st = ck->restore(prefix).value();
  CHECK(st.assert_existing_objects_matched());
  CHECK(format::crc32c::value(gather(mapped.w.view())) == e->crc32c);
  st.expect_partial();
}
