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
#include "meshckpt/pipeline/tensor_io.hpp"
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

TEST_CASE("restore() of a write() checkpoint fails assert_consumed on the save counter; read() and name-based restores do not",
          "[api][status][counter][regression]") {
  // SEMANTICS.md, save_counter: restore() creates the counter; a checkpoint with an object
  // graph and no counter value (written by write()) leaves it unrestored, as in TensorFlow.
  testing::temp_dir tmp;
  warnings w;
  model m;
  m.fill(4);
  REQUIRE(ckpt_of(m)->write(tmp / "plain"));
  {
    model back;
    auto c = ckpt_of(back);
    auto st = c->restore(tmp / "plain").value();
    CHECK(same(m, back));  // every value arrived
    CHECK(c->has_save_counter());
    for (auto r : {st.assert_existing_objects_matched(), st.assert_consumed()}) {
      REQUIRE_FALSE(r);
      CHECK_THAT(r.error().what(),
                 Catch::Contains("save_counter") && Catch::Contains("written by write()") && Catch::Contains("read() does not expect it"));
    }
    CHECK(st.assert_nontrivial_match());
    st.expect_partial();
  }
  {
    model back;
    auto c = ckpt_of(back);
    auto st = c->read(tmp / "plain").value();
    CHECK(st.assert_consumed());
    c->set_save_counter(3);  // a counter created later is still not expected by read()
    CHECK(st.assert_consumed());
  }
  {
    // A counter that existed before read(): read() does not expect it either.
    model back;
    auto c = ckpt_of(back);
    c->set_save_counter(5);
    CHECK(c->read(tmp / "plain").value().assert_consumed());
    CHECK(c->save_counter() == 5);
  }
  {
    // A flat checkpoint of named tensors (no object graph): the counter is optional.
    auto one = mesh24();
    auto v = make(dtype::float32, {8, 16}, {"unsharded", "y"});
    testing::fill(v.view(), "flat", 1);
    REQUIRE(write_tensors(*backends::make_posix_backend(), tmp / "flat", std::vector<named_tensor>{{"w", v.view()}}));
    graph::state_dict sd;
    REQUIRE(sd.emplace("w", dtype::float32, {8, 16}, layout::create({"unsharded", "y"}, one).value()));
    auto c = checkpoint::create(one, &sd).value();
    auto st = c->restore(tmp / "flat").value();
    auto ok = st.assert_consumed();
    INFO((ok ? std::string() : ok.error().what()));
    CHECK(ok);
  }
  CHECK(w.got->empty());
}

TEST_CASE("load status messages name checkpoint objects by path and values by key, and skip nodes without values",
          "[api][status][regression]") {
  testing::temp_dir tmp;
  model m;
  m.fill(6);
  auto path = ckpt_of(m)->save(tmp / "ck").value();
  // The live graph lacks the checkpoint's "dense/2": its node holds no value of its own and is
  // not reported; its kernel and bias are, by path and by key, never as "node N".
  model partial(false);
  auto c = ckpt_of(partial);
  auto st = c->restore(path).value().expect_partial();
  auto r = st.assert_consumed();
  REQUIRE_FALSE(r);
  const std::string msg = r.error().what();
  CHECK_THAT(msg, Catch::Contains("unused values: model/dense.S2/bias, model/dense.S2/kernel"));
  CHECK_THAT(msg, Catch::Contains("unmatched objects: model/dense.S2/bias, model/dense.S2/kernel") ||
                      Catch::Contains("unmatched objects: model/dense.S2/kernel, model/dense.S2/bias"));
  CHECK_THAT(msg, !Catch::Contains("node ") && !Catch::Contains("unmatched objects: model/dense.S2,") &&
                      !Catch::Contains("unmatched objects: model/dense.S2;"));
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
  std::vector<named_tensor> flat = {
      {"model/dense1/kernel", src.d1.kernel.view()}, {"model/dense1/bias", src.d1.bias.view()}, {"unrelated", src.d2.bias.view()}};
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
  auto abs = parse_checkpoint_state(
                 "model_checkpoint_path: \"/mnt/job7/train/model.ckpt-9\"\n"
                 "all_model_checkpoint_paths: \"/mnt/job7/train/model.ckpt-8\"\n"
                 "all_model_checkpoint_paths: \"/mnt/job7/train/model.ckpt-9\"\n")
                 .value();
  CHECK(abs.model_checkpoint_path == "model.ckpt-9");
  CHECK(abs.all_model_checkpoint_paths == std::vector<std::string>{"model.ckpt-8", "model.ckpt-9"});
  CHECK_FALSE(parse_checkpoint_state("model_checkpoint_path: \"/\"\n"));
  CHECK_FALSE(parse_checkpoint_state("model_checkpoint_path: \"/a/..\"\n"));
  CHECK_THAT(parse_checkpoint_state("model_checkpoint_path: \"a\"\nbogus: 1\n").error().what(), Catch::Contains("line 2"));
  CHECK_FALSE(parse_checkpoint_state("all_model_checkpoint_paths: \"a\"\n"));
  CHECK_FALSE(
      parse_checkpoint_state("model_checkpoint_path: \"a\"\nall_model_checkpoint_paths: \"a\"\nall_model_checkpoint_timestamps: "
                             "1\nall_model_checkpoint_timestamps: 2\n"));
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
