// The Checkpoint API, one or more tests per behaviour of docs/API.md (TensorFlow's semantics): construction
// errors, save_counter numbering across restarts, write vs save, read vs restore, the state
// file and latest_checkpoint, every load-status assertion passing and failing, the warning,
// deferred restoration, most-recent-restore-wins, mismatches, name-based restore, async forms.

#include <catch2/catch.hpp>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/use_future.hpp>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "meshckpt/api/checkpoint_async.hpp"
#include "meshckpt/backends/posix.hpp"
#include "meshckpt/graph/object_graph.hpp"
#include "meshckpt/tensor/convert.hpp"
#include "support.hpp"

using namespace meshckpt;
namespace fs = std::filesystem;
namespace asio = boost::asio;

namespace {

mesh mesh24() { return mesh::create({{"x", 2}, {"y", 4}}).value(); }

dtensor make(dtype t, shape s, std::vector<std::string> l) {
  return dtensor::create(t, std::move(s), layout::create(std::move(l), mesh24()).value()).value();
}

struct dense : graph::module {
  graph::variable kernel, bias;
  dense(std::int64_t in, std::int64_t out)
      : kernel(make(dtype::float32, {in, out}, {"unsharded", "y"})), bias(make(dtype::float32, {out}, {"y"})) {
    track("kernel", kernel);
    track("bias", bias);
  }
};

struct model : graph::module {
  dense d1{8, 16};
  dense d2{16, 4};
  graph::scalar<std::int64_t> step{0};
  graph::bytes_state rng;
  explicit model(bool with_d2 = true) {
    track("dense1", d1);
    if (with_d2) track("dense/2", d2);  // a name with '/' round-trips
    track("step", step);
    track("rng.state", rng);
  }
  void fill(std::uint64_t seed) {
    std::uint64_t j = 0;
    for (auto* v : {&d1.kernel, &d1.bias, &d2.kernel, &d2.bias}) testing::fill(v->view(), "v" + std::to_string(j++), seed);
    step.set(static_cast<std::int64_t>(seed));
    rng.set(std::vector<std::byte>(seed % 50 + 1, static_cast<std::byte>(seed)));
  }
};

bool same(const graph::variable& a, const graph::variable& b) {
  for (std::size_t i = 0; i < a.view().shards().size(); ++i) {
    auto x = a.view().shards()[i].data, y = b.view().shards()[i].data;
    if (!std::equal(x.begin(), x.end(), y.begin(), y.end())) return false;
  }
  return true;
}

bool same(const model& a, const model& b) {
  return same(a.d1.kernel, b.d1.kernel) && same(a.d1.bias, b.d1.bias) && same(a.d2.kernel, b.d2.kernel) &&
         same(a.d2.bias, b.d2.bias) && a.step.get() == b.step.get() && a.rng.get() == b.rng.get();
}

// Collects warnings for the duration of a test.
struct warnings {
  std::shared_ptr<std::vector<std::string>> got = std::make_shared<std::vector<std::string>>();
  std::function<void(std::string_view)> old;
  warnings() {
    auto g = got;
    old = set_warning_handler([g](std::string_view m) { g->emplace_back(m); });
  }
  ~warnings() { set_warning_handler(old); }
};

std::unique_ptr<checkpoint> ckpt_of(model& m) { return checkpoint::create(mesh24(), nullptr, {{"model", &m}}).value(); }

std::string slurp(const std::string& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

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
  // restore() of a saved checkpoint creates the counter with the saved value; read() leaves it alone.
  REQUIRE(c->save(tmp / "s"));
  model third;
  auto c3 = ckpt_of(third);
  c3->read(tmp / "s-1").value().expect_partial();
  CHECK_FALSE(c3->has_save_counter());
  CHECK(c3->save_counter() == 0);
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

TEST_CASE("async save, write and restore complete through futures, coroutines and callbacks", "[api][async]") {
  testing::temp_dir tmp;
  model m;
  m.fill(31);
  auto c = ckpt_of(m);
  auto f1 = async_save(*c, tmp / "ck", asio::use_future);
  auto f2 = async_save(*c, tmp / "ck", asio::use_future);  // queued behind the first
  CHECK(f1.get().value() == tmp / "ck-1");
  CHECK(f2.get().value() == tmp / "ck-2");
  CHECK(c->sync());

  asio::io_context ctx;
  model back;
  auto cb = ckpt_of(back);
  bool ok = false;
  asio::co_spawn(ctx, [&]() -> asio::awaitable<void> {
    auto w = co_await async_write(*c, tmp / "w", asio::use_awaitable);
    REQUIRE(w);
    auto st = co_await async_restore(*cb, std::string(tmp / "ck-2"), asio::use_awaitable);
    REQUIRE(st);
    ok = st->assert_consumed().has_value();
  }, asio::detached);
  ctx.run();
  CHECK(ok);
  CHECK(same(m, back));

  std::promise<std::string> got;
  async_read(*cb, tmp / "w", [&](result<load_status> r) { got.set_value(r ? r->path() : r.error().what()); });
  CHECK(got.get_future().get() == tmp / "w");
}

TEST_CASE("host values are captured when a save is issued, not when it runs", "[api][async][regression]") {
  // Regression (found by ASan): queued saves shared one staging copy of a scalar; the second
  // save freed the first one's bytes while it was being written.
  testing::temp_dir tmp;
  model m;
  auto c = ckpt_of(m);
  std::vector<std::future<result<std::string>>> saves;
  for (std::int64_t i = 0; i < 8; ++i) {
    m.step.set(100 + i);
    saves.push_back(async_save(*c, tmp / "ck", asio::use_future));
  }
  for (auto& f : saves) REQUIRE(f.get());
  for (std::int64_t i = 0; i < 8; ++i) {
    model back;
    auto cb = ckpt_of(back);
    REQUIRE(cb->restore(tmp / ("ck-" + std::to_string(i + 1))));
    CHECK(back.step.get() == 100 + i);
  }
}

TEST_CASE("tensors may be modified as soon as async_save returns: the save writes its snapshot", "[api][async][snapshot]") {
  for (std::uint64_t budget : {std::uint64_t{0}, std::uint64_t{1}}) {  // unlimited; and too small, so the call blocks instead
    INFO("snapshot budget " << budget);
    testing::temp_dir tmp;
    model m;
    checkpoint_options opt;
    opt.snapshot_budget_bytes = budget;
    auto c = checkpoint::create(mesh24(), nullptr, {{"model", &m}}, opt).value();
    std::vector<std::future<result<std::string>>> saves;
    for (std::uint64_t i = 0; i < 4; ++i) {
      m.fill(50 + i);
      saves.push_back(async_save(*c, tmp / "ck", asio::use_future));
      m.fill(99);  // scribble right away: must not reach the checkpoint
    }
    for (auto& f : saves) REQUIRE(f.get());
    for (std::uint64_t i = 0; i < 4; ++i) {
      model expect, back;
      expect.fill(50 + i);
      auto cb = ckpt_of(back);
      REQUIRE(cb->restore(tmp / ("ck-" + std::to_string(i + 1))));
      CHECK(same(expect.d1.kernel, back.d1.kernel));
      CHECK(same(expect.d2.bias, back.d2.bias));
    }
  }
}

TEST_CASE("snapshots handle empty shards and empty tensors", "[api][async][snapshot][regression]") {
  // Regression (UBSan): the snapshot memcpy'd from the null data of an empty shard.
  testing::temp_dir tmp;
  graph::state_dict sd;
  auto* a = sd.emplace("uneven", dtype::int8, {3}, layout::create({"y"}, mesh24()).value()).value();  // 1,1,1,0
  auto* e = sd.emplace("empty", dtype::float32, {0, 4}, layout::create({"x", "unsharded"}, mesh24()).value()).value();
  testing::fill(a->view(), "uneven", 5);
  auto c = checkpoint::create(mesh24(), &sd).value();
  auto f = async_save(*c, tmp / "ck", asio::use_future);
  testing::fill(a->view(), "uneven", 6);
  REQUIRE(f.get());
  testing::fill(a->view(), "uneven", 7);
  REQUIRE(c->restore(tmp / "ck-1").value().assert_consumed());
  CHECK(testing::matches(a->view(), "uneven", 5));
  CHECK(e->view().global_bytes() == 0);
}

TEST_CASE("an error in a background write reaches the caller and sync", "[api][async][errors]") {
  testing::temp_dir tmp;
  model m;
  auto c = ckpt_of(m);
  std::ofstream(tmp / "file") << "not a directory";
  auto f = async_save(*c, tmp / "file/ck", asio::use_future);
  auto r = f.get();
  REQUIRE_FALSE(r);
  CHECK_THAT(r.error().what(), Catch::Contains("file"));
  auto s = c->sync();
  REQUIRE_FALSE(s);
  CHECK(s.error().code == r.error().code);
  REQUIRE(c->save(tmp / "ok"));
  CHECK(c->sync());
}

TEST_CASE("write callbacks run with the path after each commit", "[api][callbacks]") {
  testing::temp_dir tmp;
  model m;
  std::vector<std::string> seen;
  checkpoint_options opt;
  opt.write_callbacks.push_back([&](const std::string& p) {
    CHECK(fs::exists(p + ".manifest"));  // committed before the callback runs
    seen.push_back(p);
  });
  auto c = checkpoint::create(mesh24(), nullptr, {{"model", &m}}, opt).value();
  REQUIRE(c->save(tmp / "a"));
  REQUIRE(c->write(tmp / "b"));
  CHECK(seen == std::vector<std::string>{tmp / "a-1", tmp / "b"});
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
  CHECK_THAT(parse_checkpoint_state("model_checkpoint_path: \"a\"\nbogus: 1\n").error().what(), Catch::Contains("line 2"));
  CHECK_FALSE(parse_checkpoint_state("all_model_checkpoint_paths: \"a\"\n"));
  CHECK_FALSE(parse_checkpoint_state("model_checkpoint_path: \"a\"\nall_model_checkpoint_paths: \"a\"\nall_model_checkpoint_timestamps: 1\nall_model_checkpoint_timestamps: 2\n"));
  CHECK_FALSE(parse_checkpoint_state("model_checkpoint_path: \"a\"\nlast_preserved_timestamp: x\n"));
}

// ---------------------------------------------------------------- lazy saves

TEST_CASE("a lazy save returns before its IO; tensors are free once the snapshot is taken", "[api][lazy]") {
  for (std::uint64_t budget : {std::uint64_t{0}, std::uint64_t{1}}) {  // snapshot; and over budget: the write reads the tensors
    INFO("snapshot budget " << budget);
    testing::temp_dir tmp;
    auto gate = std::make_shared<testing::gated_backend>(testing::test_backend());
    model m;
    checkpoint_options opt;
    opt.backend = gate;
    opt.snapshot_budget_bytes = budget;
    auto c = checkpoint::create(mesh24(), nullptr, {{"model", &m}}, opt).value();
    m.fill(61);
    auto pending = c->save_lazy(tmp / "lazy");
    // No data has been written yet (the gate holds every write), yet the call returned.
    CHECK_FALSE(pending.committed());
    if (budget == 0) {
      REQUIRE(pending.wait_snapshot());  // the copy needs no IO
    } else {
      CHECK_FALSE(pending.snapshot_taken());  // here the write itself reads the tensors
    }
    gate->release();
    REQUIRE(pending.wait_snapshot());
    m.fill(62);  // modify after the snapshot: must not reach the checkpoint
    auto path = pending.wait_committed();
    REQUIRE(path);
    CHECK(*path == tmp / "lazy-1");
    CHECK(latest_checkpoint(tmp.str()) == tmp / "lazy-1");
    model expect, back;
    expect.fill(61);
    auto cb = ckpt_of(back);
    REQUIRE(cb->restore(*path).value().assert_consumed());
    CHECK(same(expect, back));
  }
}

TEST_CASE("lazy saves queue in order and each writes the values of its own call", "[api][lazy]") {
  testing::temp_dir tmp;
  model m;
  checkpoint_options opt;
  opt.snapshot_budget_bytes = 64 << 10;  // room for about one snapshot: later ones wait for memory
  auto c = checkpoint::create(mesh24(), nullptr, {{"model", &m}}, opt).value();
  std::vector<lazy_save<std::string>> saves;
  for (std::uint64_t i = 0; i < 6; ++i) {
    m.fill(70 + i);
    saves.push_back(c->write_lazy(tmp / ("w" + std::to_string(i))));
    REQUIRE(saves.back().wait_snapshot());
  }
  for (std::uint64_t i = 0; i < 6; ++i) {
    REQUIRE(saves[i].wait_committed());
    model expect, back;
    expect.fill(70 + i);
    REQUIRE(ckpt_of(back)->read(tmp / ("w" + std::to_string(i))).value().assert_existing_objects_matched());
    CHECK(same(expect, back));
  }
  CHECK(c->sync());
}

TEST_CASE("a lazy save that fails completes both events with the error", "[api][lazy][errors]") {
  testing::temp_dir tmp;
  model m;
  auto c = ckpt_of(m);
  std::ofstream(tmp / "file") << "not a directory";
  auto pending = c->save_lazy(tmp / "file/ck");
  auto committed = pending.wait_committed();
  REQUIRE_FALSE(committed);
  CHECK(pending.wait_snapshot());  // the snapshot itself was taken: the tensors are free
  CHECK_FALSE(c->sync());

  // A failure before the snapshot (a value that cannot be saved) fails both.
  struct unsaveable : graph::trackable {
    bool has_value() const override { return true; }
    result<graph::value_snapshot> value_for_save(const mesh&) override { return make_error(errc::invalid_argument, "no value today"); }
  } bad;
  graph::state_dict sd;
  sd.insert("bad", bad);
  auto c2 = checkpoint::create(mesh24(), &sd).value();
  auto p2 = c2->save_lazy(tmp / "bad");
  REQUIRE_FALSE(p2.wait_snapshot());
  REQUIRE_FALSE(p2.wait_committed());
  CHECK(p2.wait_committed().error().code == p2.wait_snapshot().error().code);
}

TEST_CASE("lazy saves from a coroutine: co_await the snapshot, then the commit", "[api][lazy][async]") {
  testing::temp_dir tmp;
  model m;
  auto c = ckpt_of(m);
  auto mgr = checkpoint_manager::create(*c, tmp.str(), [] {
    manager_options o;
    o.max_to_keep = 2;
    return o;
  }()).value();
  asio::io_context ctx;
  std::vector<std::string> saved;
  bool ok = true;
  asio::co_spawn(ctx, [&]() -> asio::awaitable<void> {
    std::optional<lazy_save<std::optional<std::string>>> prev;
    for (std::uint64_t i = 0; i < 5; ++i) {
      m.fill(80 + i);
      if (prev) {
        auto r = co_await async_wait_committed(*prev, asio::use_awaitable);
        ok = ok && r && *r;
        if (r && *r) saved.push_back(**r);
      }
      auto s = mgr->save_lazy();
      // ... a forward and backward pass would run here, reading the weights ...
      ok = ok && co_await async_wait_snapshot(s, asio::use_awaitable);
      m.fill(999);  // the optimizer step
      prev = s;
    }
    auto r = co_await async_wait_committed(*prev, asio::use_awaitable);
    ok = ok && r && *r;
    if (r && *r) saved.push_back(**r);
  }, asio::detached);
  ctx.run();
  CHECK(ok);
  REQUIRE(saved.size() == 5);
  CHECK(mgr->checkpoints() == std::vector<std::string>{saved[3], saved[4]});
  model expect, back;
  expect.fill(84);
  REQUIRE(ckpt_of(back)->restore(saved[4]).value().assert_consumed());
  CHECK(same(expect, back));
}

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
