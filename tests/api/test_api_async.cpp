// The Checkpoint API's asynchronous forms (docs/API.md): async save, write and restore through
// futures, coroutines and callbacks; host values captured at the call; tensors free once the
// snapshot is taken; background errors; write callbacks; lazy saves (ordering, errors,
// coroutines).

#include <catch2/catch.hpp>

#include <thread>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/use_future.hpp>

#include <boost/asio/thread_pool.hpp>

#include "meshckpt/api/checkpoint_async.hpp"
#include "meshckpt/interchange/torch_io.hpp"
#include "meshckpt/backends/posix.hpp"
#include "api_model.hpp"

using namespace meshckpt;
using namespace api_test;
namespace fs = std::filesystem;
namespace asio = boost::asio;

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
  asio::co_spawn(
      ctx,
      [&]() -> asio::awaitable<void> {
        auto w = co_await async_write(*c, tmp / "w", asio::use_awaitable);
        REQUIRE(w);
        auto st = co_await async_restore(*cb, std::string(tmp / "ck-2"), asio::use_awaitable);
        REQUIRE(st);
        ok = st->assert_consumed().has_value();
      },
      asio::detached);
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

TEST_CASE("a lazy save returns before its IO; tensors are free once the snapshot is taken", "[api][lazy]") {
  for (std::uint64_t budget : {std::uint64_t{0}, std::uint64_t{1}}) {  // snapshot; and over budget: the write reads the tensors
    INFO("snapshot budget " << budget);
    testing::temp_dir tmp;
    // Opens wait too: a small model fits the staging pool, so the write could otherwise read
    // it all (and release the tensors) before any write, racing the check below.
    auto gate = std::make_shared<testing::gated_backend>(testing::test_backend(), /*hold_opens=*/budget != 0);
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
      // Here the write itself reads the tensors, after opening its file. The pause gives a save
      // that wrongly released them (or read them without the open) the time to show it.
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      CHECK_FALSE(pending.snapshot_taken());
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
  auto mgr = checkpoint_manager::create(*c, tmp.str(),
                                        [] {
                                          manager_options o;
                                          o.max_to_keep = 2;
                                          return o;
                                        }())
                 .value();
  asio::io_context ctx;
  std::vector<std::string> saved;
  bool ok = true;
  asio::co_spawn(
      ctx,
      [&]() -> asio::awaitable<void> {
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
      },
      asio::detached);
  ctx.run();
  CHECK(ok);
  REQUIRE(saved.size() == 5);
  CHECK(mgr->checkpoints() == std::vector<std::string>{saved[3], saved[4]});
  model expect, back;
  expect.fill(84);
  REQUIRE(ckpt_of(back)->restore(saved[4]).value().assert_consumed());
  CHECK(same(expect, back));
}

TEST_CASE("torch.save files are read and imported through futures, coroutines and callbacks", "[api][async][torch]") {
  testing::temp_dir tmp;
  auto be = backends::make_posix_backend();
  auto v = make(dtype::float32, {8, 16}, {"unsharded", "y"});
  testing::fill(v.view(), "w", 1);
  REQUIRE(write_tensors(*be, tmp / "flat", std::vector<named_tensor>{{"w", v.view()}}));
  auto m = read_manifest(*be, tmp / "flat").value();
  REQUIRE(export_torch(*be, tmp / "flat", m, {"w"}, tmp / "m.pt"));

  asio::thread_pool pool(1);
  auto read = async_read_torch_checkpoint(pool.get_executor(), *be, tmp / "m.pt", asio::use_future).get();
  REQUIRE(read);
  CHECK(read->tensors == 1);
  REQUIRE(read->manifest.find("w"));
  CHECK(read->manifest.find("w")->global == shape{8, 16});
  CHECK(read->manifest.checksum == format::checksum_kind::crc32_whole);

  asio::io_context ctx;
  std::optional<result<write_report>> imported;
  asio::co_spawn(
      ctx,
      [&]() -> asio::awaitable<void> {
        imported = co_await async_import_torch_checkpoint(ctx.get_executor(), *be, tmp / "m.pt", tmp / "imp", {}, asio::use_awaitable);
      },
      asio::detached);
  ctx.run();
  REQUIRE(imported);
  REQUIRE(*imported);
  auto back = make(dtype::float32, {8, 16}, {"unsharded", "y"});
  REQUIRE(read_tensors(*be, tmp / "imp", std::vector<named_tensor>{{"w", back.view()}}));
  CHECK(same(v, back));

  std::promise<errc> missing;
  async_read_torch_checkpoint(pool.get_executor(), *be, tmp / "none.pt", [&](result<torch_checkpoint> r) {
    missing.set_value(r ? errc::ok : static_cast<errc>(r.error().code.value()));
  });
  CHECK(missing.get_future().get() == errc::not_found);
  // The backend's thread still holds a tracked copy of the pool's executor for
  // a moment after posting the completion: join, as Asio asks, before the pool
  // is destroyed (CI's ASan run caught the destructor racing it).
  pool.join();
}
