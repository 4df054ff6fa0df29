// checkpoint: object-graph saves and structural restores on top of the low-level tensor API.
//
// Saving walks the live graph on the caller's thread (so the graph and the replicated host
// values are captured at the call), then queues the write; one write runs at a time, on the
// checkpoint's own IO thread. Restoring matches checkpoint node 0 to the root and then children
// by edge name, breadth-first; children the live graph does not have yet are left pending on
// their live parent and restored when tracked (graph::detail::pending_restore): the restore job
// is in checkpoint_restore.cpp.

#include "meshckpt/api/checkpoint.hpp"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <future>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/system_executor.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "checkpoint_impl.hpp"
#include "../interchange/restorable.hpp"
#include "snapshot.hpp"
#include "state_file.hpp"
#include "meshckpt/api/checkpoint_async.hpp"
#include "meshckpt/api/lazy_save.hpp"
#include "meshckpt/pipeline/tensor_io_async.hpp"
#include "meshckpt/io/make_backend.hpp"
#include "meshckpt/format/names.hpp"
#include "meshckpt/graph/object_graph.hpp"
#include "meshckpt/tensor/convert.hpp"

namespace meshckpt {

namespace asio = boost::asio;

namespace {

double now_seconds() { return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count(); }

}  // namespace

// ---------------------------------------------------------------- checkpoint

checkpoint::checkpoint(std::unique_ptr<detail::checkpoint_impl> impl) : impl_(std::move(impl)) {}

checkpoint::~checkpoint() {
  if (impl_->jobs.runs_here()) {
    // A job of this checkpoint runs on an executor this thread runs: it cannot finish while
    // the destructor waits for it. A hang would hide the cause.
    std::fprintf(stderr,
                 "meshckpt: checkpoint destroyed on a thread that runs the executor of its own unfinished asynchronous "
                 "save or restore; await it before destroying the checkpoint\n");
    std::abort();
  }
  (void)sync();  // waits for the queued jobs (refused, and not waited for, on a library thread)
  // The queues' destructors then wait until their last job has let go of them.
}

result<std::unique_ptr<checkpoint>> checkpoint::create(mesh m, graph::trackable* root,
                                                       std::vector<std::pair<std::string, graph::trackable*>> children,
                                                       checkpoint_options opt) {
  std::sort(children.begin(), children.end(), [](auto& a, auto& b) { return a.first < b.first; });
  for (std::size_t i = 0; i < children.size(); ++i) {
    const auto& [name, c] = children[i];
    if (!c) return make_error(errc::invalid_argument, "child '" + name + "' is not a trackable object (null)");
    if (name.empty()) return make_error(errc::invalid_argument, "a child of a Checkpoint needs a non-empty name");
    if (name == "save_counter") return make_error(errc::invalid_argument, "child 'save_counter' is reserved for the save counter");
    if (i && children[i - 1].first == name) return make_error(errc::invalid_argument, "child '" + name + "' is given twice");
    if (root) {
      auto* existing = root->child(name);
      if (existing && existing != c)
        return make_error(errc::invalid_argument, "cannot create a Checkpoint with child " + name + ": root." + name + " already exists");
    }
  }
  auto impl = std::make_unique<detail::checkpoint_impl>(std::move(m));
  if (root) {
    impl->has_root = true;
    impl->root_edge.add_child("root", *root);
  }
  for (auto& [name, c] : children) impl->attached.add_child(name, *c);
  impl->opt = std::move(opt);
  if (impl->opt.backend) {
    impl->backend = impl->opt.backend;
  } else {
    BOOST_OUTCOME_TRY(auto b, backends::make_backend(backends::backend_kind::automatic));
    impl->backend = std::move(b);
  }
  return std::unique_ptr<checkpoint>(new checkpoint(std::move(impl)));
}

const mesh& checkpoint::mesh_ref() const { return impl_->m; }
io::backend& checkpoint::backend() const { return *impl_->backend; }
bool checkpoint::writes_shared_files() const { return detail::writes_shared_files(*impl_); }
void checkpoint::set_snapshot(bool on) { impl_->opt.snapshot = on; }
graph::trackable& checkpoint::root() {
  if (!impl_->has_root) return *this;
  auto* r = impl_->root_edge.child("root");
  if (!r) {
    // A broken precondition, not an IO condition: nothing sensible can be saved or restored.
    std::fprintf(stderr, "meshckpt: the root object of a checkpoint was destroyed before the checkpoint\n");
    std::abort();
  }
  return *r;
}

bool checkpoint::has_save_counter() const { return impl_->save_counter != nullptr; }

std::int64_t checkpoint::save_counter() {
  if (!impl_->save_counter) {
    impl_->save_counter = std::make_unique<graph::scalar<std::int64_t>>(0);
    // A restore that ran before the counter existed left its value pending on node 0.
    if (auto p = graph::detail::take_pending(root(), "save_counter")) p->apply(*impl_->save_counter);
  }
  return impl_->save_counter->get();
}

void checkpoint::set_save_counter(std::int64_t v) {
  save_counter();
  impl_->save_counter->set(v);
}

std::vector<std::pair<std::string, graph::trackable*>> detail::extra_edges(checkpoint_impl& impl) {
  auto e = impl.attached.children();
  if (impl.save_counter) e.emplace_back("save_counter", impl.save_counter.get());
  return e;
}

namespace {

using detail::snapshot_plan;

// One save between its call and its completion.
struct save_job {
  std::string path;
  bool numbered = false;
  std::vector<named_tensor> tensors;
  std::vector<std::shared_ptr<const void>> owners;  // host-value copies and the snapshot arena
  write_options wopt;
  io::completion<std::string> done;
  // Set once the tensors may be modified (snapshot copied, or the write read them all), or the
  // save failed first.
  std::shared_ptr<detail::one_shot<void>> released = std::make_shared<detail::one_shot<void>>();
  // The write may start once the snapshot (if any) is taken.
  std::shared_ptr<detail::one_shot<void>> gate = std::make_shared<detail::one_shot<void>>();
  // A stop of this call (per-operation cancellation) or of the checkpoint's options stops the
  // write: both forward to `stop`.
  std::stop_source stop;
  std::optional<std::stop_callback<std::function<void()>>> on_call_stop, on_options_stop;
};

// The job of one save on the checkpoint's queue: once the snapshot is taken, write and commit;
// then the state file (numbered saves), the manager's work, the write callbacks; then `done`.
asio::awaitable<void> run_save(detail::checkpoint_impl& impl, std::shared_ptr<save_job> job, std::shared_ptr<detail::after_commit> after) {
  auto ex = co_await asio::this_coro::executor;
  auto steps = [&]() -> runtime::task<std::string> {
    // Named awaitables throughout: GCC 12 destroys non-trivial temporaries of a co_await
    // expression twice (docs/ARCHITECTURE.md).
    auto snapshot_taken = io::async_op<void>(
        ex, [job](io::completion<void> c) { job->gate->then(std::move(c)); }, runtime::use_awaitable);
    (void)co_await std::move(snapshot_taken);
    auto written = async_write_tensors(ex, *impl.backend, job->path, std::move(job->tensors), std::move(job->wopt), runtime::use_awaitable);
    BOOST_OUTCOME_CO_TRY(co_await std::move(written));
    if (job->numbered && detail::writes_shared_files(impl)) {
      auto [dir, base] = split_prefix(job->path);
      checkpoint_state st;
      st.model_checkpoint_path = base;
      st.all_model_checkpoint_paths = {base};
      double now = now_seconds();
      st.all_model_checkpoint_timestamps = {now};
      st.last_preserved_timestamp = now - 1;
      auto recorded = detail::write_state(*impl.backend, dir, std::move(st));
      BOOST_OUTCOME_CO_TRY(co_await std::move(recorded));
    }
    if (after) {
      auto managed = after->run();
      BOOST_OUTCOME_CO_TRY(co_await std::move(managed));
    }
    co_return job->path;
  };
  std::optional<result<std::string>> out;
  try {
    out = co_await steps();
  } catch (const std::bad_alloc&) {
    out = out_of_memory("saving " + job->path);
  }
  if (*out)
    for (const auto& cb : impl.opt.write_callbacks) cb(job->path);
  {
    std::lock_guard lk(impl.mu);
    impl.last_error = *out ? std::nullopt : std::optional<error>(out->error());
  }
  detail::release_arena(impl, job->owners);  // the snapshot memory is free for the next save
  job->done(std::move(*out));
}

// A snapshot taken behind the ones queued before it: its memory awaited on the engine (no
// thread waits), the copy on the CPU pool; then the write may start.
void queue_snapshot(detail::checkpoint_impl& impl, const std::shared_ptr<save_job>& job, const std::shared_ptr<snapshot_plan>& plan,
                    unsigned copiers, std::shared_ptr<detail::snapshot_arena> ready) {
  auto open_gate = [job] { job->gate->set(success()); };
  auto unsnapped = [job] {
    // No memory for a snapshot: the write reads the tensors themselves.
    job->wopt.sources_released = [released = job->released] { released->set(success()); };
  };
  {
    std::lock_guard lk(impl.arena_mu);
    ++impl.snapshots_queued;
  }
  try {
    impl.snapshots.push([&impl, job, plan, open_gate, unsnapped, copiers, ready]() -> asio::awaitable<void> {
      bool copied = false;
      try {
        auto arena = ready;
        if (!arena) {
          auto memory = detail::acquire_arena(impl, plan->need);
          arena = (co_await std::move(memory)).value();
        }
        // TRICKY: the arena joins the save's owners before the copy: a copy that fails half-way
        // may already have re-pointed views at it, and those must stay valid for the fallback
        // write.
        job->owners.push_back(arena);
        auto copy = detail::copy_snapshot(*plan, *arena, job->tensors, copiers);
        copied = (co_await std::move(copy)).has_value();
      } catch (const std::bad_alloc&) {
      }
      // The count drops before `released` is set: the caller that waits for it may start its
      // next save at once, and that save must not see this snapshot as still queued.
      {
        std::lock_guard lk(impl.arena_mu);
        --impl.snapshots_queued;
      }
      if (copied)
        job->released->set(success());
      else
        unsnapped();
      open_gate();
    });
  } catch (...) {
    std::lock_guard lk(impl.arena_mu);
    --impl.snapshots_queued;
    throw;
  }
}

// The snapshot of a save: the distinct slices copied into snapshot memory; the write starts
// once it is taken (the job's gate). Without snapshot, or when the state exceeds the whole
// budget, the write reads the tensors itself, and they are released once it has read them all.
// With `now_or_never`, only a copy made here and now will do: `refused`, having done nothing,
// when there is none.
enum class snapshot_outcome { copied_or_queued, write_releases, refused };
snapshot_outcome take_snapshot(detail::checkpoint_impl& impl, const std::shared_ptr<save_job>& job, bool lazy, bool must_wait,
                               bool now_or_never) {
  auto plan = std::make_shared<snapshot_plan>();
  const std::uint64_t budget = impl.opt.snapshot_budget_bytes;
  bool take = impl.opt.snapshot;
  if (take) {
    *plan = detail::plan_snapshot(job->tensors);
    take = !budget || plan->need <= budget;
  }
  auto open_gate = [job] { job->gate->set(success()); };
  auto unsnapped = [job] {
    // No memory for a snapshot: the write reads the tensors themselves.
    job->wopt.sources_released = [released = job->released] { released->set(success()); };
  };
  // Copy mode with no snapshot queued before this one: its memory is taken here and now (a
  // caller on the executor of an earlier job must not wait for memory that job holds), and the
  // copy is queued at once: it runs on the CPU pool while the caller waits for `released`.
  std::shared_ptr<detail::snapshot_arena> ready;
  if (take && must_wait) {
    std::unique_lock lk(impl.arena_mu);
    if (impl.snapshots_queued == 0) {
      lk.unlock();
      ready = detail::try_acquire_arena(impl, plan->need);
    }
  }
  if (now_or_never && !ready) return snapshot_outcome::refused;
  // In copy mode the copy is the caller's stall: large ones get two copiers (memory bandwidth,
  // not one core, is the limit). A lazy snapshot copies on one: the caller computes meanwhile.
  const unsigned copiers = !lazy && plan->need >= (64u << 20) && std::thread::hardware_concurrency() > 1 ? 2 : 1;
  if (take) {
    queue_snapshot(impl, job, plan, copiers, std::move(ready));
  } else {
    unsnapped();
    open_gate();
    return snapshot_outcome::write_releases;
  }
  return snapshot_outcome::copied_or_queued;
}

// The values of the object graph `live`, captured now on the caller's thread (host values
// copied by their objects), and the graph itself as the save's extension.
result<void> capture_state(detail::checkpoint_impl& impl, save_job& job, const graph::live_graph& live) {
  for (std::size_t i = 0; i < live.objects.size(); ++i) {
    const auto& n = live.graph.nodes[i];
    if (!n.has_value) continue;
    auto v = live.objects[i]->value_for_save(impl.m);
    if (!v) return with_context(v.error(), "save " + job.path + ": value \"" + n.key + "\"");
    job.tensors.push_back({n.key, v->view});
    if (v->owner) job.owners.push_back(std::move(v->owner));
  }
  job.wopt.extensions.push_back({std::string(graph::object_graph_extension), graph::encode_object_graph(live.graph)});
  return success();
}

// A stop of this call or of the checkpoint's options stops the write: both forward to the
// job's own stop source.
void forward_stops(detail::checkpoint_impl& impl, save_job& job, std::stop_token stop) {
  if (!stop.stop_possible()) return;
  job.on_call_stop.emplace(std::move(stop), std::function<void()>([s = &job.stop] { s->request_stop(); }));
  if (impl.opt.write.stop.stop_possible())
    job.on_options_stop.emplace(impl.opt.write.stop, std::function<void()>([s = &job.stop] { s->request_stop(); }));
  job.wopt.stop = job.stop.get_token();
}

// The job's completion: settles `released` (a save that failed before releasing its tensors
// reports that too; after success they are free in any case), then calls `done`. `done` moves
// in only once nothing can fail (moving a std::function does not allocate), so that the
// failure path still has it.
void bind_done(save_job& job, io::completion<std::string>& done) {
  auto user_done = std::make_shared<io::completion<std::string>>();
  job.done = [released = job.released, user_done](result<std::string> r) {
    released->set(r ? result<void>(success()) : result<void>(r.error()));
    (*user_done)(std::move(r));
  };
  *user_done = std::move(done);
}

}  // namespace

void checkpoint::start_save(std::string prefix, bool numbered, io::completion<std::string> done, io::completion<void> snapshot_taken,
                            std::stop_token stop) {
  start_save(std::move(prefix), numbered, std::move(done), std::move(snapshot_taken), std::move(stop), nullptr, nullptr);
}

void checkpoint::start_save(std::string prefix, bool numbered, io::completion<std::string> done, io::completion<void> snapshot_taken,
                            std::stop_token stop, std::shared_ptr<detail::after_commit> after, const detail::job_executor* where) {
  auto& impl = *impl_;
  const bool lazy = static_cast<bool>(snapshot_taken);
  const bool must_wait = !lazy && impl.opt.snapshot;  // copy mode: return once the tensors are free
  if (must_wait && runtime::on_library_thread()) {
    // Copy mode waits for the copy; on a library thread that wait could hold up the very work
    // it waits for. Refused before anything is queued.
    done(runtime::refuse_blocking("async_save in copy mode (it returns once the tensors are copied)"));
    return;
  }
  // Copy mode on a thread that runs the executor of an earlier job: it may copy here, now, but
  // not wait for snapshot memory or for the write, which the earlier job holds up.
  const bool copy_now_or_refuse = must_wait && impl.jobs.runs_here();
  // An allocation failure before the job is queued fails the save through `done`, like any
  // error; nothing after the enqueue allocates, so a queued save always reports through it.
  std::shared_ptr<save_job> job;
  std::shared_ptr<detail::one_shot<void>> released;
  try {
    job = std::make_shared<save_job>();
    job->numbered = numbered;
    job->path = prefix;
    if (lazy) job->released->then(std::move(snapshot_taken));
    auto fail = [&](error e) {
      job->released->set(e);
      done(std::move(e));
    };
    if (numbered) {
      save_counter();
      impl.save_counter->set(impl.save_counter->get() + 1);
      job->path = prefix + "-" + std::to_string(impl.save_counter->get());
    }
    job->wopt = impl.opt.write;
    auto live = graph::walk(root(), detail::extra_edges(impl));
    if (auto captured = capture_state(impl, *job, live); !captured) return fail(captured.error());
    forward_stops(impl, *job, std::move(stop));
    bind_done(*job, done);

    auto snap = take_snapshot(impl, job, lazy, must_wait, copy_now_or_refuse);
    if (snap == snapshot_outcome::refused) {
      if (numbered) impl.save_counter->set(impl.save_counter->get() - 1);  // nothing was saved under that number
      job->done(detail::refuse_wait_on_caller(impl, "async_save in copy mode (it returns once the tensors are copied)"));
      return;
    }
    released = job->released;
    // A copy-mode save not snapshotted returns once its write has read the tensors: the caller
    // waits for its own job, which then runs on the engine rather than on an executor that the
    // waiting thread may be the one to run.
    auto place = must_wait && snap == snapshot_outcome::write_releases ? asio::any_io_executor() : detail::job_place(where);
    impl.jobs.push([&impl, job, after]() { return run_save(impl, job, after); }, std::move(place));
  } catch (const std::bad_alloc&) {
    auto e = out_of_memory("starting save " + prefix);
    if (!job || !job->done) {  // `done` and `snapshot_taken` are still ours
      if (job)
        job->released->set(e);
      else if (snapshot_taken)
        snapshot_taken(e);
      done(std::move(e));
    } else {
      job->done(std::move(e));  // it also settles `released`, hence `snapshot_taken`
    }
    return;
  }
  if (must_wait) {
    (void)runtime::run_blocking<void>("save (copy mode)", [&](auto, io::completion<void> d) { released->then(std::move(d)); });
    // The bridge ends early only when it could not allocate. The tensors must still not be
    // handed back before they are copied: the last resort waits on the event itself, which
    // allocates nothing (tests/reliability/test_alloc.cpp).
    released->wait_set();
  }
}

}  // namespace meshckpt
