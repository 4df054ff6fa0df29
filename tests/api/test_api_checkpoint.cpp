// The Checkpoint API, one or more tests per behaviour of docs/API.md (TensorFlow's semantics): construction
// errors, save_counter numbering across restarts, write vs save, read vs restore, the state
// file and latest_checkpoint, every load-status assertion passing and failing, the warning,
// deferred restoration, most-recent-restore-wins, mismatches, name-based restore, resharding.
// The asynchronous and lazy forms are in test_api_async.cpp.

#include <catch2/catch.hpp>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/use_future.hpp>

#include <filesystem>
#include <fstream>
#include <deque>
#include <map>
#include <set>
#include <sstream>

#include "meshckpt/api/checkpoint_async.hpp"
#include "meshckpt/api/safetensors_io.hpp"
#include "meshckpt/api/tf_bundle_io.hpp"
#include "meshckpt/format/crc32c.hpp"
#include "meshckpt/backends/posix.hpp"
#include "meshckpt/graph/object_graph.hpp"
#include "meshckpt/tensor/convert.hpp"
#include "api_model.hpp"

using namespace meshckpt;
namespace fs = std::filesystem;
namespace asio = boost::asio;

using namespace api_test;

TEST_CASE("object names with / and . round-trip through key escaping", "[graph][keys]") {
  for (std::string n : {"a", "a.b", "a/b", "..", "./.S", ".S", "x..y//z"}) CHECK(graph::unescape_name(graph::escape_name(n)).value() == n);
  CHECK(graph::escape_name("dense/2") == "dense.S2");
  CHECK(graph::join_key({"model", "dense/2", "kernel"}) == "model/dense.S2/kernel");
  CHECK(graph::split_key("model/dense.S2/k..x").value() == std::vector<std::string>{"model", "dense/2", "k.x"});
  CHECK_FALSE(graph::unescape_name("bad.q"));
  CHECK_FALSE(graph::unescape_name("trailing."));
}

TEST_CASE("the object graph encoding round-trips and rejects malformed input", "[graph][format]") {
  model m;
  auto live = graph::walk(m);
  auto bytes = graph::encode_object_graph(live.graph);
  CHECK(graph::decode_object_graph(bytes).value() == live.graph);
  CHECK(live.graph.nodes[0].children.size() == 4);
  for (std::size_t len = 0; len < bytes.size(); ++len) CHECK_FALSE(graph::decode_object_graph(std::span(bytes).first(len)));
  auto bad = bytes;
  bad.push_back(std::byte{0});
  CHECK_THAT(graph::decode_object_graph(bad).error().what(), Catch::Contains("trailing"));
}

TEST_CASE("constructing a Checkpoint validates its children and root", "[api][checkpoint][construct]") {
  model m, other;
  auto null_child = checkpoint::create(mesh24(), nullptr, {{"model", nullptr}});
  REQUIRE_FALSE(null_child);
  CHECK_THAT(null_child.error().what(), Catch::Contains("child 'model' is not a trackable object"));
  auto clash = checkpoint::create(mesh24(), &m, {{"dense1", &other.d1}});
  REQUIRE_FALSE(clash);
  CHECK_THAT(clash.error().what(), Catch::Contains("cannot create a Checkpoint with child dense1: root.dense1 already exists"));
  CHECK(checkpoint::create(mesh24(), &m, {{"dense1", &m.d1}}));  // same object: fine
  CHECK_FALSE(checkpoint::create(mesh24(), nullptr, {{"a", &m}, {"a", &other}}));
  CHECK_FALSE(checkpoint::create(mesh24(), nullptr, {{"save_counter", &m}}));
  CHECK_FALSE(checkpoint::create(mesh24(), nullptr, {{"", &m}}));
}

TEST_CASE("save numbers checkpoints from the save counter, across restarts", "[api][checkpoint][save_counter]") {
  testing::temp_dir tmp;
  model m;
  m.fill(1);
  {
    auto c = ckpt_of(m);
    CHECK_FALSE(c->has_save_counter());
    CHECK(c->save(tmp / "ckpt").value() == tmp / "ckpt-1");
    CHECK(c->save_counter() == 1);
    CHECK(c->save(tmp / "ckpt").value() == tmp / "ckpt-2");
    CHECK(fs::exists(tmp / "ckpt-2.manifest"));
    auto state = slurp(tmp / "checkpoint");
    CHECK_THAT(state, Catch::Contains("model_checkpoint_path: \"ckpt-2\""));  // relative
    CHECK(latest_checkpoint(tmp.str()) == tmp / "ckpt-2");
  }
  model fresh;
  auto c = ckpt_of(fresh);
  REQUIRE(c->restore(latest_checkpoint(tmp.str())));
  CHECK(c->save_counter() == 2);
  CHECK(same(m, fresh));
  CHECK(c->save(tmp / "ckpt").value() == tmp / "ckpt-3");
  fs::remove(tmp / "ckpt-3.manifest");
  CHECK_FALSE(latest_checkpoint(tmp.str()));  // the state file names a checkpoint that is gone
}

TEST_CASE("write neither numbers nor touches the save counter or the state file; read does not create it", "[api][checkpoint][write]") {
  testing::temp_dir tmp;
  model m;
  m.fill(3);
  auto c = ckpt_of(m);
  CHECK(c->write(tmp / "plain").value() == tmp / "plain");
  CHECK_FALSE(c->has_save_counter());
  CHECK_FALSE(fs::exists(tmp / "checkpoint"));
  model fresh;
  auto c2 = ckpt_of(fresh);
  auto st = c2->read(tmp / "plain").value();
  CHECK(st.assert_consumed());
  CHECK(same(m, fresh));
  CHECK_FALSE(c2->has_save_counter());
  // restore() of a saved checkpoint creates the counter with the saved value; read() does not
  // create it, but keeps the saved value pending like any deferred restoration: reported
  // unused until the counter is created, which then takes it (SEMANTICS.md, save_counter).
  REQUIRE(c->save(tmp / "s"));
  model third;
  auto c3 = ckpt_of(third);
  auto st3 = c3->read(tmp / "s-1").value();
  CHECK_FALSE(c3->has_save_counter());
  CHECK(st3.assert_existing_objects_matched());
  auto pending = st3.assert_consumed();
  REQUIRE_FALSE(pending);
  CHECK_THAT(pending.error().what(), Catch::Contains("save_counter"));
  CHECK(c3->save_counter() == 1);  // created now: the saved value lands in it
  CHECK(st3.assert_consumed());
  // A counter that exists already is read like any object.
  model fourth;
  auto c4 = ckpt_of(fourth);
  c4->set_save_counter(7);
  CHECK(c4->read(tmp / "s-1").value().assert_consumed());
  CHECK(c4->save_counter() == 1);
}

TEST_CASE("restore of a missing path is not_found with a hint about the -N suffix", "[api][checkpoint][errors]") {
  testing::temp_dir tmp;
  model m;
  auto c = ckpt_of(m);
  REQUIRE(c->save(tmp / "ckpt"));
  auto r = c->restore(tmp / "ckpt");
  REQUIRE_FALSE(r);
  CHECK(r.error().code == errc::not_found);
  CHECK_THAT(r.error().what(), Catch::Contains("did you mean ckpt-1?"));
}

TEST_CASE("assert_consumed and assert_existing_objects_matched pass on a full match and fail on a partial one", "[api][status]") {
  testing::temp_dir tmp;
  warnings w;
  model m;
  m.fill(5);
  auto c = ckpt_of(m);
  auto path = c->save(tmp / "ck").value();

  model full;
  auto cf = ckpt_of(full);
  auto st = cf->restore(path).value();
  CHECK(st.assert_consumed());
  CHECK(st.assert_existing_objects_matched());
  CHECK(st.assert_nontrivial_match());
  CHECK(st.unused_keys().empty());

  // A live object the checkpoint lacks: existing objects not matched.
  model extra;
  graph::variable more(make(dtype::float32, {3}, {"unsharded"}));
  extra.add_child("more", more);
  auto ce = ckpt_of(extra);
  auto s2 = ce->restore(path).value();
  auto e = s2.assert_existing_objects_matched();
  REQUIRE_FALSE(e);
  CHECK_THAT(e.error().what(), Catch::Contains("model/more"));
  CHECK_FALSE(s2.assert_consumed());
  CHECK(s2.assert_nontrivial_match());
  s2.expect_partial();

  // A checkpoint value without a live object: existing objects matched, not consumed.
  {
    model partial(false);
    auto cp = ckpt_of(partial);
    auto s3 = cp->restore(path).value();
    CHECK(s3.assert_existing_objects_matched());
    auto cons = s3.assert_consumed();
    REQUIRE_FALSE(cons);
    CHECK_THAT(cons.error().what(), Catch::Contains("model/dense.S2/kernel"));
    CHECK(s3.unused_keys().size() == 2);
  }
  // Not marked expect_partial: once nothing can be restored any more (the status and the object
  // holding the pending restore are gone), a warning lists the unused values.
  REQUIRE(w.got->size() == 1);
  CHECK_THAT(w.got->front(), Catch::Contains("Unused checkpoint values") && Catch::Contains("model/dense.S2/bias"));
}

TEST_CASE("expect_partial silences the warning", "[api][status]") {
  testing::temp_dir tmp;
  warnings w;
  model m;
  auto path = ckpt_of(m)->save(tmp / "ck").value();
  model partial(false);
  auto cp = ckpt_of(partial);
  cp->restore(path).value().expect_partial();
  CHECK(w.got->empty());
}

TEST_CASE("assert_nontrivial_match fails when only the root matched", "[api][status]") {
  testing::temp_dir tmp;
  model m;
  auto path = ckpt_of(m)->save(tmp / "ck").value();
  graph::module empty;
  auto c = checkpoint::create(mesh24(), nullptr, {{"other", &empty}}).value();
  auto st = c->restore(path).value().expect_partial();
  auto r = st.assert_nontrivial_match();
  REQUIRE_FALSE(r);
  CHECK_THAT(r.error().what(), Catch::Contains("matched nothing besides the root"));
}

TEST_CASE("restore(nullopt) gives an initialization-only status", "[api][status]") {
  model m;
  auto c = ckpt_of(m);
  auto st = c->restore(std::nullopt).value();
  for (auto r : {st.assert_consumed(), st.assert_existing_objects_matched(), st.assert_nontrivial_match()}) {
    REQUIRE_FALSE(r);
    CHECK_THAT(r.error().what(), Catch::Contains("no checkpoint specified"));
  }
  CHECK(c->has_save_counter());
}

TEST_CASE("children tracked after restore receive their values when tracked", "[api][deferred]") {
  testing::temp_dir tmp;
  model m;
  m.fill(9);
  auto path = ckpt_of(m)->save(tmp / "ck").value();
  model late(false);
  auto c = ckpt_of(late);
  auto st = c->restore(path).value();
  CHECK_FALSE(same(m.d2.kernel, late.d2.kernel));
  CHECK_FALSE(st.assert_consumed());
  late.add_child("dense/2", late.d2);  // now the pending restore fires
  CHECK(same(m.d2.kernel, late.d2.kernel));
  CHECK(same(m.d2.bias, late.d2.bias));
  CHECK(st.assert_consumed());
  CHECK(same(m, late));
}

TEST_CASE("a deferred restore fires even when the status was dropped at once", "[api][deferred][regression]") {
  testing::temp_dir tmp;
  warnings w;
  model m;
  m.fill(13);
  auto path = ckpt_of(m)->save(tmp / "ck").value();
  model late(false);
  auto c = ckpt_of(late);
  (void)c->restore(path).value();  // status discarded, as trainers often do
  late.add_child("dense/2", late.d2);
  CHECK(same(m, late));
  CHECK(w.got->empty());  // everything ended up restored: no warning
}

TEST_CASE("the most recent restore wins for pending children", "[api][deferred]") {
  testing::temp_dir tmp;
  model a, b;
  a.fill(11);
  b.fill(12);
  auto pa = ckpt_of(a)->write(tmp / "a").value();
  auto pb = ckpt_of(b)->write(tmp / "b").value();
  model late(false);
  auto c = ckpt_of(late);
  auto s1 = c->read(pa).value().expect_partial();
  auto s2 = c->read(pb).value().expect_partial();
  late.add_child("dense/2", late.d2);
  CHECK(same(b.d2.kernel, late.d2.kernel));
  CHECK(same(b.d1.kernel, late.d1.kernel));
}

TEST_CASE("shape and dtype mismatches are errors naming the key and both shapes", "[api][errors]") {
  testing::temp_dir tmp;
  model m;
  auto path = ckpt_of(m)->save(tmp / "ck").value();
  struct wrong : graph::module {
    dense d1{8, 17};
    wrong() { track("dense1", d1); }
  } w;
  auto c = checkpoint::create(mesh24(), nullptr, {{"model", &w}}).value();
  auto r = c->restore(path);
  REQUIRE_FALSE(r);
  CHECK(r.error().code == errc::shape_mismatch);
  CHECK_THAT(r.error().what(), Catch::Contains("model/dense1/kernel") && Catch::Contains("[8, 16]") && Catch::Contains("[8, 17]"));

  struct wrong_type : graph::module {
    graph::variable kernel{make(dtype::bfloat16, {8, 16}, {"unsharded", "y"})};
    wrong_type() { track("kernel", kernel); }
  };
  struct holder : graph::module {
    wrong_type d1;
    holder() { track("dense1", d1); }
  } h;
  auto c2 = checkpoint::create(mesh24(), nullptr, {{"model", &h}}).value();
  auto r2 = c2->restore(path);
  REQUIRE_FALSE(r2);
  CHECK(r2.error().code == errc::dtype_mismatch);
  CHECK_THAT(r2.error().what(), Catch::Contains("model/dense1/kernel") && Catch::Contains("float32") && Catch::Contains("bfloat16"));

  // A mismatch found by a deferred restore lands in the status.
  warnings wn;
  model late(false);
  auto c3 = ckpt_of(late);
  auto st = c3->restore(path).value().expect_partial();
  dense bad{16, 5};
  late.add_child("dense/2", bad);
  REQUIRE(st.deferred_errors().size() == 1);
  CHECK(st.deferred_errors()[0].code == errc::shape_mismatch);
  CHECK_FALSE(st.assert_existing_objects_matched());
}

TEST_CASE("name-based restore matches flat checkpoints by full variable path", "[api][namebased]") {
  testing::temp_dir tmp;
  model src;
  src.fill(21);
  // A checkpoint without an object graph: flat named tensors.
  auto be = backends::make_posix_backend();
  std::vector<named_tensor> flat = {{"model/dense1/kernel", src.d1.kernel.view()}, {"model/dense1/bias", src.d1.bias.view()},
                                    {"unrelated", src.d2.bias.view()}};
  REQUIRE(write_tensors(*be, tmp / "flat", flat));
  model dst;
  auto c = ckpt_of(dst);
  auto st = c->read(tmp / "flat").value();
  CHECK(same(src.d1.kernel, dst.d1.kernel));
  CHECK(same(src.d1.bias, dst.d1.bias));
  CHECK(st.assert_nontrivial_match());
  CHECK_FALSE(st.assert_existing_objects_matched());  // dense/2, step and rng were not in it
  CHECK(st.unused_keys() == std::vector<std::string>{"unrelated"});
  st.expect_partial();
}

TEST_CASE("with a root, node 0 is the root and children are extra edges", "[api][checkpoint][root]") {
  testing::temp_dir tmp;
  model m;
  m.fill(41);
  graph::scalar<double> lr{0.5};
  auto c = checkpoint::create(mesh24(), &m, {{"lr", &lr}}).value();
  auto path = c->save(tmp / "r").value();
  auto man = read_manifest(c->backend(), path).value();
  CHECK(man.find("dense1/kernel"));
  CHECK(man.find("lr"));
  CHECK(man.find("save_counter"));
  model back;
  graph::scalar<double> lr2{0};
  auto c2 = checkpoint::create(mesh24(), &back, {{"lr", &lr2}}).value();
  REQUIRE(c2->restore(path).value().assert_consumed());
  CHECK(lr2.get() == 0.5);
  CHECK(same(m, back));
}

TEST_CASE("a state_dict holds named tensors for trainers without a model class", "[api][state_dict]") {
  testing::temp_dir tmp;
  auto l = layout::create({"x", "unsharded"}, mesh24()).value();
  graph::state_dict sd;
  auto* w = sd.emplace("encoder/layer.0/w", dtype::float32, {8, 4}, l).value();
  testing::fill(w->view(), "w", 1);
  graph::scalar<std::int64_t> epoch{3};
  sd.insert("epoch", epoch);
  auto c = checkpoint::create(mesh24(), &sd).value();
  auto path = c->save(tmp / "sd").value();
  graph::state_dict back;
  auto* w2 = back.emplace("encoder/layer.0/w", dtype::float32, {8, 4}, l).value();
  graph::scalar<std::int64_t> epoch2;
  back.insert("epoch", epoch2);
  auto c2 = checkpoint::create(mesh24(), &back).value();
  REQUIRE(c2->restore(path).value().assert_consumed());
  CHECK(testing::matches(w2->view(), "w", 1));
  CHECK(epoch2.get() == 3);
  CHECK(back.find_variable("encoder/layer.0/w") == w2);
}

TEST_CASE("the checkpoint state file round-trips and rejects hostile content", "[api][statefile]") {
  checkpoint_state s;
  s.model_checkpoint_path = "ckpt-3";
  s.all_model_checkpoint_paths = {"ckpt-1", "ckpt-3"};
  s.all_model_checkpoint_timestamps = {100.5, 200.25};
  s.last_preserved_timestamp = 50;
  auto back = parse_checkpoint_state(format_checkpoint_state(s)).value();
  CHECK(back.model_checkpoint_path == "ckpt-3");
  CHECK(back.all_model_checkpoint_paths == s.all_model_checkpoint_paths);
  CHECK(back.all_model_checkpoint_timestamps == s.all_model_checkpoint_timestamps);
  CHECK(back.last_preserved_timestamp == 50);
  CHECK_THAT(parse_checkpoint_state("model_checkpoint_path: \"../../etc/x\"\n").error().what(), Catch::Contains("not a plain name"));
  // Absolute paths (TensorFlow writes them) stand for their base names in the directory.
  auto abs = parse_checkpoint_state("model_checkpoint_path: \"/mnt/job7/train/model.ckpt-9\"\n"
                                    "all_model_checkpoint_paths: \"/mnt/job7/train/model.ckpt-8\"\n"
                                    "all_model_checkpoint_paths: \"/mnt/job7/train/model.ckpt-9\"\n").value();
  CHECK(abs.model_checkpoint_path == "model.ckpt-9");
  CHECK(abs.all_model_checkpoint_paths == std::vector<std::string>{"model.ckpt-8", "model.ckpt-9"});
  CHECK_FALSE(parse_checkpoint_state("model_checkpoint_path: \"/\"\n"));
  CHECK_FALSE(parse_checkpoint_state("model_checkpoint_path: \"/a/..\"\n"));
  CHECK_THAT(parse_checkpoint_state("model_checkpoint_path: \"a\"\nbogus: 1\n").error().what(), Catch::Contains("line 2"));
  CHECK_FALSE(parse_checkpoint_state("all_model_checkpoint_paths: \"a\"\n"));
  CHECK_FALSE(parse_checkpoint_state("model_checkpoint_path: \"a\"\nall_model_checkpoint_paths: \"a\"\nall_model_checkpoint_timestamps: 1\nall_model_checkpoint_timestamps: 2\n"));
  CHECK_FALSE(parse_checkpoint_state("model_checkpoint_path: \"a\"\nlast_preserved_timestamp: x\n"));
}

// ---------------------------------------------------------------- lazy saves

TEST_CASE("a checkpoint restores into another mesh and layout (resharding through the API)", "[api][reshard]") {
  testing::temp_dir tmp;
  graph::state_dict sd;
  auto* w = sd.emplace("enc/w", dtype::float32, {64, 40}, layout::create({"x", "y"}, mesh24()).value()).value();
  auto* b = sd.emplace("enc/b", dtype::bfloat16, {40}, layout::create({"y"}, mesh24()).value()).value();
  testing::fill(w->view(), "enc/w", 21);
  testing::fill(b->view(), "enc/b", 21);
  auto c = checkpoint::create(mesh24(), &sd).value();
  auto path = c->save(tmp / "ck").value();
  struct target {
    std::vector<mesh_dim> dims;
    std::vector<std::string> wl, bl;
  };
  for (const auto& t : {target{{{"x", 4}, {"y", 2}}, {"y", "x"}, {"x"}}, target{{{"x", 8}}, {"unsharded", "x"}, {"unsharded"}},
                        target{{{"x", 1}}, {"unsharded", "unsharded"}, {"x"}}, target{{{"x", 3}}, {"x", "unsharded"}, {"x"}}}) {
    auto m = mesh::create(t.dims).value();
    INFO("restoring onto " << m.to_string());
    graph::state_dict back;
    auto* w2 = back.emplace("enc/w", dtype::float32, {64, 40}, layout::create(t.wl, m).value()).value();
    auto* b2 = back.emplace("enc/b", dtype::bfloat16, {40}, layout::create(t.bl, m).value()).value();
    auto c2 = checkpoint::create(m, &back).value();
    REQUIRE(c2->restore(path).value().assert_consumed());
    CHECK(testing::matches(w2->view(), "enc/w", 21));
    CHECK(testing::matches(b2->view(), "enc/b", 21));
  }
}

TEST_CASE("a checkpoint restores float32 into bfloat16 variables only when asked", "[api][reshard][convert]") {
  testing::temp_dir tmp;
  graph::state_dict sd;
  auto* w = sd.emplace("w", dtype::float32, {16, 8}, layout::create({"x", "y"}, mesh24()).value()).value();
  for (const auto& sh : w->view().shards()) {
    auto* f = reinterpret_cast<float*>(sh.data.data());
    for (std::size_t i = 0; i < sh.data.size() / 4; ++i) f[i] = 1.5f + static_cast<float>(i);
  }
  auto path = checkpoint::create(mesh24(), &sd).value()->save(tmp / "ck").value();
  graph::state_dict back;
  auto* b = back.emplace("w", dtype::bfloat16, {16, 8}, layout::create({"x", "y"}, mesh24()).value()).value();
  auto refused = checkpoint::create(mesh24(), &back).value()->restore(path);
  REQUIRE_FALSE(refused);
  CHECK(refused.error().code == errc::dtype_mismatch);
  checkpoint_options opt;
  opt.read.convert_dtypes = true;
  auto c = checkpoint::create(mesh24(), &back, {}, opt).value();
  REQUIRE(c->restore(path).value().assert_consumed());
  for (std::size_t k = 0; k < b->view().shards().size(); ++k) {
    const auto& sh = b->view().shards()[k];
    const auto* hs = reinterpret_cast<const std::uint16_t*>(sh.data.data());
    for (std::size_t i = 0; i < sh.data.size() / 2; ++i) REQUIRE(hs[i] == float_to_bfloat16(1.5f + static_cast<float>(i)));
  }
}

TEST_CASE("latest_checkpoint finds a checkpoint TensorFlow wrote, its absolute paths from another machine resolved", "[api][checkpoint][tf]") {
  testing::temp_dir tmp;
  const std::filesystem::path src = std::filesystem::path(MESHCKPT_TF_TESTDATA) / "t2t_transformer_tf1_ckpt";
  for (const auto& e : std::filesystem::directory_iterator(src)) std::filesystem::copy_file(e.path(), tmp.path / e.path().filename());
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
  for (const auto& e : std::filesystem::directory_iterator(src)) std::filesystem::copy_file(e.path(), tmp.path / e.path().filename());
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
  auto st = ck->restore((tf_data / "half_plus_two_tf2_savedmodel").string());
  REQUIRE(st);
  {
    auto ok = st->assert_existing_objects_matched();
    INFO((ok ? std::string() : ok.error().what()));
    CHECK(ok);
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

TEST_CASE("a TF1 checkpoint restores by name onto sharded layouts, every value checked against TensorFlow's CRC-32C", "[api][checkpoint][tf]") {
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
  std::vector<std::byte> graph_bytes;
  {
    const auto* e = idx.find(format::tf::object_graph_key);
    REQUIRE(e);
    std::ifstream f(prefix + ".data-00000-of-00001", std::ios::binary);
    graph_bytes.resize(e->size);
    f.seekg(static_cast<std::streamoff>(e->offset));
    f.read(reinterpret_cast<char*>(graph_bytes.data()), static_cast<std::streamsize>(e->size));
    auto s = format::tf::decode_string_tensor(graph_bytes, 1, e->crc32c).value();
    auto bytes = std::as_bytes(std::span(s[0].data(), s[0].size()));
    graph_bytes.assign(bytes.begin(), bytes.end());
  }
  auto tg = format::tf::decode_trackable_graph(graph_bytes).value();
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

TEST_CASE("restoring from a path that holds no checkpoint of any kind is not_found and says what was looked for", "[api][checkpoint][tf]") {
  testing::temp_dir tmp;
  model m;
  auto ck = checkpoint::create(mesh24(), &m).value();
  auto r = ck->restore(tmp / "nothing");
  REQUIRE_FALSE(r);
  CHECK(r.error().code == errc::not_found);
  CHECK_THAT(r.error().what(), Catch::Contains("nothing.manifest") && Catch::Contains("TensorFlow checkpoint") &&
                                   Catch::Contains("SavedModel directory"));
  // A TF bundle missing a data file says which.
  const auto src = tf_data / "t2t_transformer_tf1_ckpt";
  for (const auto& e : std::filesystem::directory_iterator(src)) std::filesystem::copy_file(e.path(), tmp.path / e.path().filename());
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
  std::filesystem::create_directories(tmp.path / "sm" / "variables");
  for (const auto& e : std::filesystem::directory_iterator(src)) std::filesystem::copy_file(e.path(), tmp.path / "sm" / "variables" / e.path().filename());
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

std::vector<std::byte> read_all(const std::filesystem::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::string s((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  return std::vector<std::byte>(reinterpret_cast<const std::byte*>(s.data()), reinterpret_cast<const std::byte*>(s.data()) + s.size());
}

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

TEST_CASE("export to TensorFlow and back is bit-exact for every dtype, with partitioned slices and several data files", "[api][tf][export]") {
  testing::temp_dir tmp;
  auto be = backends::make_posix_backend();
  every_dtype src(11);
  auto ck = checkpoint::create(mesh24(), &src).value();
  const auto saved = ck->write(tmp / "ck").value();
  auto rep = export_tf_bundle(*be, saved, tmp / "tf", {3}).value();
  CHECK(rep.files == 3);
  CHECK(rep.object_graph);
  CHECK(rep.skipped.empty());
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

  // TensorFlow's way back: a restore through the object graph, onto the same structure.
  every_dtype back(0);
  auto ck2 = checkpoint::create(mesh24(), &back).value();
  auto st = ck2->restore(tmp / "tf");
  REQUIRE(st);
  CHECK(st->assert_consumed());
  CHECK(same_values(src, back));

  // Import (partitioned variables joined, whole on one device) and export again: the same
  // values, whole entries stored as they were; once more, and the bundle is the same byte for
  // byte.
  REQUIRE(import_tf_checkpoint(*be, tmp / "tf", tmp / "imported"));
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
  CHECK(read_all(tmp / "third.index") == read_all(tmp / "again.index"));
  for (int k = 0; k < 3; ++k) {
    const std::string suffix = ".data-0000" + std::to_string(k) + "-of-00003";
    CHECK(read_all(tmp / ("third" + suffix)) == read_all(tmp / ("again" + suffix)));
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
  auto st = read_all(tmp / "w.safetensors");
  const auto& bytes = w->view().shards()[0].data;
  REQUIRE(st.size() >= bytes.size());
  CHECK(std::equal(bytes.begin(), bytes.end(), st.end() - static_cast<std::ptrdiff_t>(bytes.size())));
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
  for (const auto& e : std::filesystem::directory_iterator(tmp.path)) CHECK(e.path().filename().string().find(".tmp-") == std::string::npos);
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
