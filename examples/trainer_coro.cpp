// A coroutine trainer: trains a toy model sharded over an x=2,y=4 mesh and, every few steps,
// checkpoints it through a CheckpointManager with a lazy save that flushes while training goes
// on (the step only waits for the snapshot before its optimizer update). Started on a directory that already
// holds checkpoints, it resumes from the latest one. `make demo` runs it.
//
//   trainer_coro [--dir DIR] [--steps N | --until STEP] [--every N] [--keep N] [--kill-at STEP]

#include <signal.h>

#include <chrono>
#include <filesystem>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "meshckpt/api/checkpoint_async.hpp"
#include "meshckpt/format/describe.hpp"
#include "toy_model.hpp"

namespace asio = boost::asio;
using namespace meshckpt;

int main(int argc, char** argv) {
  toy::options o;
  if (int rc = toy::parse(argc, argv, o, "trainer_coro"); rc >= 0) return rc;
  if (o.dir.empty()) {
    std::string tmpl = (std::filesystem::temp_directory_path() / "meshckpt-demo-XXXXXX").string();
    if (!::mkdtemp(tmpl.data())) return 1;
    o.dir = tmpl;
  }
  auto m = toy::make_mesh();
  toy::train_state state(m);
  auto ckpt = checkpoint::create(m, &state).value();
  manager_options mo;
  mo.max_to_keep = o.keep;
  mo.step_counter = [&] { return state.step.get(); };
  mo.checkpoint_interval = o.every;
  mo.init_fn = [&] { std::printf("no checkpoint in %s: starting from step 0\n", o.dir.c_str()); };
  auto manager = checkpoint_manager::create(*ckpt, o.dir, mo);
  if (!manager) {
    std::fprintf(stderr, "trainer_coro: %s\n", manager.error().what().c_str());
    return 1;
  }
  auto& mgr = **manager;
  std::printf("meshckpt coroutine trainer: mesh x=2,y=4 (8 simulated devices), %s of state in %zu tensors\n",
              format::human_bytes(state.state_bytes()).c_str(), state.net.variables().size() + 3);
  std::printf("directory %s\n", o.dir.c_str());
  auto resumed = mgr.restore_or_initialize();
  if (!resumed) {
    std::fprintf(stderr, "trainer_coro: resume failed: %s\n", resumed.error().what().c_str());
    return 1;
  }
  if (*resumed) std::printf("resumed from %s at step %lld\n", resumed->value().c_str(), static_cast<long long>(state.step.get()));
  const std::int64_t target = o.until.value_or(state.step.get() + o.steps);

  int rc = 0;
  asio::io_context ctx;
  asio::co_spawn(
      ctx,
      [&]() -> asio::awaitable<void> {
        // Lazy saves: the call returns at once; the weights are copied while the next forward and
        // backward pass runs (it only reads them); the optimizer waits for the snapshot before it
        // writes them; the flush and commit run in the background while training goes on.
        using clock = std::chrono::steady_clock;
        auto ms_since = [](clock::time_point t) { return std::chrono::duration<double, std::milli>(clock::now() - t).count(); };
        std::optional<lazy_save<std::optional<std::string>>> pending;
        std::int64_t pending_step = 0;
        double pending_call_ms = 0;
        clock::time_point pending_t0;
        auto finish_pending = [&]() -> asio::awaitable<bool> {
          auto saved = co_await async_wait_committed(*pending, asio::use_awaitable);
          pending.reset();
          if (!saved) {
            std::fprintf(stderr, "trainer_coro: checkpoint of step %lld failed: %s\n", static_cast<long long>(pending_step),
                         saved.error().what().c_str());
            co_return false;
          }
          if (*saved && !o.quiet)
            std::printf("          saved %s (step %lld): the call took %.2f ms; durable %.0f ms later, while training went on\n",
                        std::filesystem::path(**saved).filename().c_str(), static_cast<long long>(pending_step), pending_call_ms,
                        ms_since(pending_t0));
          co_return true;
        };
        while (state.step.get() < target) {
          double loss = state.forward_backward();
          if (pending && !pending->snapshot_taken()) {
            if (auto snap = co_await async_wait_snapshot(*pending, asio::use_awaitable); !snap) {
              std::fprintf(stderr, "trainer_coro: snapshot failed: %s\n", snap.error().what().c_str());
              rc = 1;
              co_return;
            }
          }
          state.apply_update();
          std::int64_t step = state.step.get();
          if (!o.quiet) std::printf("step %4lld  loss %+.5f\n", static_cast<long long>(step), loss);
          if (pending && pending->committed() && !co_await finish_pending()) {
            rc = 1;
            co_return;
          }
          if (step % o.every == 0) {
            if (pending && !co_await finish_pending()) {  // one save in flight at a time
              rc = 1;
              co_return;
            }
            pending_t0 = clock::now();
            pending = mgr.save_lazy();
            pending_call_ms = ms_since(pending_t0);
            pending_step = step;
          }
          if (o.kill_at && step == *o.kill_at) {
            std::printf("step %4lld  killing the trainer (SIGKILL) to simulate a crash\n", static_cast<long long>(step));
            std::fflush(stdout);
            ::kill(::getpid(), SIGKILL);
          }
        }
        if (pending && !co_await finish_pending()) rc = 1;
      },
      asio::detached);
  ctx.run();
  if (rc) return rc;
  std::string kept;
  for (const auto& c : mgr.checkpoints()) kept += " " + std::filesystem::path(c).filename().string();
  std::printf("finished at step %lld; checkpoints kept (max_to_keep %d):%s; latest %s\n", static_cast<long long>(state.step.get()), o.keep,
              kept.c_str(), mgr.latest_checkpoint() ? std::filesystem::path(*mgr.latest_checkpoint()).filename().c_str() : "none");
  std::printf("state digest %016llx\n", static_cast<unsigned long long>(state.digest()));
  std::printf("Run again with --dir %s to resume from the latest checkpoint; inspect it with\n  build/bin/meshckpt verify %s\n",
              o.dir.c_str(), o.dir.c_str());
  return 0;
}
