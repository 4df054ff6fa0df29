// A coroutine trainer: trains a toy model sharded over an x=2,y=4 mesh and, every few steps,
// `co_await`s a checkpoint through a CheckpointManager. Started on a directory that already
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
  asio::co_spawn(ctx, [&]() -> asio::awaitable<void> {
    while (state.step.get() < target) {
      double loss = state.train_step();
      std::int64_t step = state.step.get();
      if (step % o.every == 0) {
        auto t0 = std::chrono::steady_clock::now();
        auto saved = co_await async_save(mgr, asio::use_awaitable);
        double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
        if (!saved) {
          std::fprintf(stderr, "trainer_coro: checkpoint at step %lld failed: %s\n", static_cast<long long>(step), saved.error().what().c_str());
          rc = 1;
          co_return;
        }
        if (*saved && !o.quiet)
          std::printf("step %4lld  loss %+.5f  saved %s (%.0f ms, durable)\n", static_cast<long long>(step), loss,
                      std::filesystem::path(**saved).filename().c_str(), ms);
      }
      if (o.kill_at && step == *o.kill_at) {
        std::printf("step %4lld  killing the trainer (SIGKILL) to simulate a crash\n", static_cast<long long>(step));
        std::fflush(stdout);
        ::kill(::getpid(), SIGKILL);
      }
    }
  }, asio::detached);
  ctx.run();
  if (rc) return rc;
  std::string kept;
  for (const auto& c : mgr.checkpoints()) kept += " " + std::filesystem::path(c).filename().string();
  std::printf("finished at step %lld; checkpoints kept (max_to_keep %d):%s; latest %s\n", static_cast<long long>(state.step.get()),
              o.keep, kept.c_str(), mgr.latest_checkpoint() ? std::filesystem::path(*mgr.latest_checkpoint()).filename().c_str() : "none");
  std::printf("state digest %016llx\n", static_cast<unsigned long long>(state.digest()));
  std::printf("Run again with --dir %s to resume from the latest checkpoint; inspect it with\n  build/bin/meshckpt verify %s\n",
              o.dir.c_str(), o.dir.c_str());
  return 0;
}
