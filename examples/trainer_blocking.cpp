// A plain (blocking) trainer: the same toy model as trainer_coro, checkpointed every few steps
// with `checkpoint_manager::save()`, which returns once the checkpoint is durable. Started on a
// directory that already holds checkpoints, it resumes from the latest one.
//
//   trainer_blocking [--dir DIR] [--steps N | --until STEP] [--every N] [--keep N] [--kill-at STEP]

#include <signal.h>

#include <filesystem>

#include "meshckpt/api/checkpoint_manager.hpp"
#include "toy_model.hpp"

using namespace meshckpt;

int main(int argc, char** argv) {
  toy::options o;
  if (int rc = toy::parse(argc, argv, o, "trainer_blocking"); rc >= 0) return rc;
  if (o.dir.empty()) o.dir = "trainer_blocking_ckpts";
  auto m = toy::make_mesh();
  toy::train_state state(m);
  auto ckpt = checkpoint::create(m, &state).value();
  manager_options mo;
  mo.max_to_keep = o.keep;
  auto mgr = checkpoint_manager::create(*ckpt, o.dir, mo).value();
  if (auto r = mgr->restore_or_initialize(); !r) {
    std::fprintf(stderr, "trainer_blocking: resume failed: %s\n", r.error().what().c_str());
    return 1;
  } else if (*r) {
    std::printf("resumed from %s at step %lld\n", r->value().c_str(), static_cast<long long>(state.step.get()));
  }
  const std::int64_t target = o.until.value_or(state.step.get() + o.steps);
  while (state.step.get() < target) {
    double loss = state.train_step();
    if (state.step.get() % o.every == 0) {
      auto saved = mgr->save();
      if (!saved) {
        std::fprintf(stderr, "trainer_blocking: checkpoint failed: %s\n", saved.error().what().c_str());
        return 1;
      }
      if (!o.quiet)
        std::printf("step %4lld  loss %+.5f  saved %s\n", static_cast<long long>(state.step.get()), loss, saved->value().c_str());
    }
    if (o.kill_at && state.step.get() == *o.kill_at) {
      std::fflush(stdout);
      ::kill(::getpid(), SIGKILL);
    }
  }
  std::printf("finished at step %lld\nstate digest %016llx\n", static_cast<long long>(state.step.get()),
              static_cast<unsigned long long>(state.digest()));
  return 0;
}
