// Concurrency stress: many asynchronous saves and restores in flight at once on one io_context
// run by several threads, lazy and copy-mode checkpoint saves racing with training-like
// mutation, cancellation from another thread at random moments, and shutdown (checkpoint and
// backend destruction) with IO in flight. Every outcome is checked bit-exact. Built and run
// under ThreadSanitizer by `make test-tsan` (.ci/run); see docs/ARCHITECTURE.md for why the
// io_uring buffers need no annotation.

#include <catch2/catch.hpp>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/use_future.hpp>

#include <atomic>
#include <cstdio>
#include <deque>
#include <filesystem>
#include <random>
#include <thread>

#include "meshckpt/api/checkpoint_async.hpp"
#include "meshckpt/pipeline/tensor_io_async.hpp"
#include "meshckpt/format/names.hpp"
#include "support.hpp"

using namespace meshckpt;
namespace fs = std::filesystem;
namespace asio = boost::asio;

namespace {

mesh mesh24() { return mesh::create({{"x", 2}, {"y", 4}}).value(); }

struct state {
  std::deque<dtensor> storage;
  std::vector<named_tensor> named;
};

// A few tensors of mixed layouts; `big` makes a slice span several 8 MiB staging blocks.
state make_state(std::optional<std::uint64_t> seed, bool big = false) {
  state s;
  auto add = [&](std::string key, dtype t, shape sh, std::vector<std::string> l) {
    s.storage.push_back(dtensor::create(t, std::move(sh), layout::create(std::move(l), mesh24()).value()).value());
    if (seed) testing::fill(s.storage.back().view(), key, *seed);
    s.named.push_back({std::move(key), s.storage.back().view()});
  };
  add("emb", dtype::float32, {64, 48}, {"x", "y"});
  add("dense/kernel", dtype::bfloat16, {48, 40}, {"unsharded", "y"});
  add("uneven", dtype::float64, {7, 5}, {"y", "x"});
  add("step", dtype::int64, {}, {});
  if (big) add("big", dtype::float32, {4096, 2048}, {"x", "y"});  // 4 MiB slices, 32 MiB: several staging blocks
  return s;
}

bool matches(const state& s, std::uint64_t seed) {
  for (const auto& n : s.named)
    if (!testing::matches(n.tensor, n.key, seed)) return false;
  return true;
}

std::vector<std::string> backends_to_test() {
  std::vector<std::string> v = {"posix"};
  if (backends::make_uring_backend()) v.push_back("uring");
  return v;
}

std::shared_ptr<io::backend> make(const std::string& kind) {
  if (kind == "uring") return backends::make_uring_backend().value();
  return backends::make_posix_backend();
}

// Runs `ctx` on `n` threads until it has no more work.
void run_on_threads(asio::io_context& ctx, int n) {
  std::vector<std::thread> ts;
  for (int i = 0; i < n; ++i) ts.emplace_back([&] { ctx.run(); });
  for (auto& t : ts) t.join();
}

}  // namespace

TEST_CASE("many saves and restores in flight on one io_context run by three threads", "[concurrency]") {
  for (const auto& kind : backends_to_test()) {
    INFO("backend " << kind);
    testing::temp_dir tmp;
    auto be = make(kind);
    constexpr int n = 16;
    std::deque<state> src, dst;
    for (int i = 0; i < n; ++i) {
      src.push_back(make_state(200 + static_cast<std::uint64_t>(i), i % 4 == 0));
      dst.push_back(make_state(std::nullopt, i % 4 == 0));
    }
    asio::io_context ctx;
    std::atomic<int> ok{0}, failed{0};
    for (int i = 0; i < n; ++i)
      asio::co_spawn(
          ctx,
          [&, i]() -> asio::awaitable<void> {
            auto e = co_await asio::this_coro::executor;
            auto k = static_cast<std::size_t>(i);
            std::string prefix = tmp / ("c" + std::to_string(i % 8));  // pairs share a directory, not a name
            prefix += i < 8 ? "a" : "b";
            for (int round = 0; round < 2; ++round) {
              auto w = co_await async_write_tensors(e, *be, prefix, src[k].named, {}, asio::use_awaitable);
              if (!w) {
                ++failed;
                co_return;
              }
              auto r = co_await async_read_tensors(e, *be, prefix, dst[k].named, {}, asio::use_awaitable);
              if (!r) {
                ++failed;
                co_return;
              }
              auto v = co_await async_verify(e, *be, prefix, asio::use_awaitable);
              if (!v || !v->ok()) {
                ++failed;
                co_return;
              }
            }
            ++ok;
          },
          asio::detached);
    run_on_threads(ctx, 3);
    CHECK(failed == 0);
    CHECK(ok == n);
    for (int i = 0; i < n; ++i) CHECK(matches(dst[static_cast<std::size_t>(i)], 200 + static_cast<std::uint64_t>(i)));
  }
}

TEST_CASE("checkpoint saves and restores as coroutine chains on an io_context run by three threads", "[concurrency][executor]") {
  // Each call's job runs on a strand of the caller's io_context, with its IO completions and
  // the queue's hand-offs crossing threads.
  for (const auto& kind : backends_to_test()) {
    INFO("backend " << kind);
    testing::temp_dir tmp;
    constexpr int n = 4;
    std::deque<graph::state_dict> src, dst;
    std::vector<graph::variable*> restored;
    std::deque<graph::scalar<std::int64_t>> steps;
    std::vector<std::unique_ptr<checkpoint>> saving, restoring;
    auto l = layout::create({"x", "y"}, mesh24()).value();
    for (int i = 0; i < n; ++i) {
      checkpoint_options opt;
      opt.backend = make(kind);
      auto* w = src.emplace_back().emplace("w", dtype::float32, {256, 64}, l).value();
      testing::fill(w->view(), "w", 300 + static_cast<std::uint64_t>(i));
      steps.emplace_back(i);
      src.back().insert("step", steps.back());
      restored.push_back(dst.emplace_back().emplace("w", dtype::float32, {256, 64}, l).value());
      saving.push_back(checkpoint::create(mesh24(), &src.back(), {}, opt).value());
      restoring.push_back(checkpoint::create(mesh24(), &dst.back(), {}, opt).value());
    }
    asio::io_context ctx;
    std::atomic<int> ok{0};
    for (int i = 0; i < n; ++i)
      asio::co_spawn(
          ctx,
          [&, i]() -> asio::awaitable<void> {
            auto k = static_cast<std::size_t>(i);
            for (int round = 0; round < 3; ++round) {
              auto saved = co_await async_save(*saving[k], tmp / ("d" + std::to_string(i) + "/c"), asio::use_awaitable);
              if (!saved) co_return;
              auto back = co_await async_restore(*restoring[k], *saved, asio::use_awaitable);
              if (!back) co_return;
            }
            ++ok;
          },
          asio::detached);
    run_on_threads(ctx, 3);
    CHECK(ok == n);
    for (int i = 0; i < n; ++i) {
      CHECK(testing::matches(restored[static_cast<std::size_t>(i)]->view(), "w", 300 + static_cast<std::uint64_t>(i)));
      const std::string dir = tmp / ("d" + std::to_string(i));
      CHECK(latest_checkpoint(dir) == dir + "/c-3");
    }
  }
}

TEST_CASE("cancellation from another thread at random moments: cancelled or committed, never half", "[concurrency][cancel]") {
  for (const auto& kind : backends_to_test()) {
    INFO("backend " << kind);
    testing::temp_dir tmp;
    auto be = make(kind);
    auto base = make_state(1, true);
    REQUIRE(write_tensors(*be, tmp / "ck", base.named));
    std::mt19937_64 rng(42);
    int cancelled = 0, committed = 0;
    for (int i = 0; i < 12; ++i) {
      auto neu = make_state(100 + static_cast<std::uint64_t>(i), true);
      std::stop_source stop;
      write_options wo;
      wo.stop = stop.get_token();
      auto delay = std::chrono::microseconds(rng() % 80000);  // a save here takes tens of ms: both outcomes occur
      asio::io_context ctx;
      auto fut = async_write_tensors(ctx.get_executor(), *be, tmp / "ck", neu.named, wo, asio::use_future);
      std::thread canceller([&] {
        std::this_thread::sleep_for(delay);
        stop.request_stop();
      });
      run_on_threads(ctx, 2);
      canceller.join();
      auto r = fut.get();
      if (r) {
        ++committed;
        auto back = make_state(std::nullopt, true);
        REQUIRE(read_tensors(*be, tmp / "ck", back.named));
        CHECK(matches(back, 100 + static_cast<std::uint64_t>(i)));
      } else {
        REQUIRE(r.error().code == errc::cancelled);
        ++cancelled;
      }
      // Whatever happened, the directory holds exactly one committed checkpoint and no leftovers.
      auto scan = scan_directory(*be, tmp.str()).value();
      CHECK(scan.checkpoints == std::vector<std::string>{"ck"});
      CHECK(scan.leftovers.empty());
      auto v = verify(*be, tmp / "ck").value();
      CHECK(v.ok());
    }
    std::printf("cancellation (%s): %d cancelled, %d committed, 0 half-done\n", kind.c_str(), cancelled, committed);
    CHECK(cancelled + committed == 12);
  }
}

TEST_CASE("lazy and copy-mode saves race with training-like mutation across threads", "[concurrency][lazy]") {
  for (const auto& kind : backends_to_test()) {
    INFO("backend " << kind);
    testing::temp_dir tmp;
    graph::state_dict sd;
    auto l = layout::create({"x", "y"}, mesh24()).value();
    auto* w = sd.emplace("w", dtype::float32, {256, 128}, l).value();
    graph::scalar<std::int64_t> step{0};
    sd.insert("step", step);
    checkpoint_options opt;
    opt.backend = make(kind);
    opt.snapshot_budget_bytes = 300 << 10;  // about two snapshots: later saves wait for memory
    auto c = checkpoint::create(mesh24(), &sd, {}, opt).value();
    std::vector<std::pair<lazy_save<std::string>, std::uint64_t>> lazies;
    std::vector<std::pair<std::future<result<std::string>>, std::uint64_t>> copies;
    for (std::uint64_t i = 1; i <= 20; ++i) {
      testing::fill(w->view(), "w", i);
      step.set(static_cast<std::int64_t>(i));
      if (i % 2) {
        auto p = c->write_lazy(tmp / ("s" + std::to_string(i)));
        REQUIRE(p.wait_snapshot());
        lazies.emplace_back(p, i);
      } else {
        copies.emplace_back(async_write(*c, tmp / ("s" + std::to_string(i)), asio::use_future), i);
      }
      testing::fill(w->view(), "w", 9999);  // the optimizer scribbles right away
    }
    auto check = [&](const std::string& path, std::uint64_t seed) {
      graph::state_dict back;
      auto* w2 = back.emplace("w", dtype::float32, {256, 128}, l).value();
      graph::scalar<std::int64_t> step2{0};
      back.insert("step", step2);
      auto c2 = checkpoint::create(mesh24(), &back, {}, {}).value();
      REQUIRE(c2->read(path).value().assert_consumed());
      CHECK(testing::matches(w2->view(), "w", seed));
      CHECK(step2.get() == static_cast<std::int64_t>(seed));
    };
    for (auto& [p, seed] : lazies) check(p.wait_committed().value(), seed);
    for (auto& [f, seed] : copies) check(f.get().value(), seed);
    CHECK(c->sync());
  }
}

TEST_CASE("shutdown with IO in flight: destroying a checkpoint waits for its queued saves", "[concurrency][shutdown]") {
  for (const auto& kind : backends_to_test()) {
    INFO("backend " << kind);
    testing::temp_dir tmp;
    std::vector<lazy_save<std::string>> pending;
    {
      graph::state_dict sd;
      auto* w = sd.emplace("w", dtype::float32, {1024, 1024}, layout::create({"x", "unsharded"}, mesh24()).value()).value();
      testing::fill(w->view(), "w", 5);
      checkpoint_options opt;
      opt.backend = make(kind);
      auto c = checkpoint::create(mesh24(), &sd, {}, opt).value();
      for (int i = 0; i < 6; ++i) pending.push_back(c->save_lazy(tmp / "ck"));
      // c (and its backend) go away here, with saves queued and IO in flight.
    }
    for (auto& p : pending) {
      CHECK(p.snapshot_taken());
      CHECK(p.committed());
      CHECK(p.wait_committed());
    }
    CHECK(latest_checkpoint(tmp.str()) == tmp / "ck-6");
  }
}

TEST_CASE("an IO error in the middle of a background flush completes the save with that error", "[concurrency][errors]") {
  for (const auto& kind : backends_to_test()) {
    for (int err : {EIO, ENOSPC}) {
      INFO("backend " << kind << ", errno " << err);
      testing::temp_dir tmp;
      graph::state_dict sd;
      auto* w = sd.emplace("w", dtype::float32, {4096, 2048}, layout::create({"x", "y"}, mesh24()).value()).value();  // 32 MiB: 4 blocks
      testing::fill(w->view(), "w", 1);
      checkpoint_options opt;
      opt.backend = std::make_shared<testing::failing_writes>(make(kind), 2, err);  // the third block fails
      auto c = checkpoint::create(mesh24(), &sd, {}, opt).value();
      // Copy mode through a future, and lazy mode: both complete with the injected error.
      auto f = async_save(*c, tmp / "ck", asio::use_future).get();
      REQUIRE_FALSE(f);
      CHECK(f.error().code == static_cast<std::errc>(err));
      CHECK_THAT(f.error().what(), Catch::Contains("injected"));
      CHECK_THAT(f.error().what(), Catch::Contains("ck-1"));
      auto lazy = c->save_lazy(tmp / "ck");
      CHECK(lazy.wait_snapshot());  // the snapshot itself succeeded
      auto r = lazy.wait_committed();
      REQUIRE_FALSE(r);
      CHECK(r.error().code == static_cast<std::errc>(err));
      CHECK_FALSE(c->sync());
      // Nothing was committed and nothing is left behind.
      auto scan = scan_directory(c->backend(), tmp.str()).value();
      CHECK(scan.checkpoints.empty());
      CHECK(scan.leftovers.empty());
    }
  }
}
