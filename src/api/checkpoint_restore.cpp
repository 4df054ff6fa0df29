// checkpoint's restores: the checkpoint read (meshckpt's own, or a foreign one as a
// restorable), its object graph matched to the live one (or its names), one batch of reads,
// and the load status. See checkpoint.cpp for the saves.

#include "meshckpt/api/checkpoint.hpp"

#include <atomic>

#include <boost/asio/use_awaitable.hpp>

#include "checkpoint_impl.hpp"
#include "../interchange/restorable.hpp"
#include "state_file.hpp"
#include "meshckpt/pipeline/tensor_io_async.hpp"
#include "meshckpt/graph/object_graph.hpp"

namespace meshckpt {

namespace asio = boost::asio;

namespace {

std::atomic<std::uint64_t> restore_seq{0};

}  // namespace

namespace {

// The steps of a restore job: the manifest, the match of the object graph (or of names), one
// batch of reads, and the load status.
runtime::task<load_status> restore_steps(checkpoint& c, detail::checkpoint_impl& impl, std::string p, bool is_restore) {
  // meshckpt's own checkpoint, or TensorFlow's (a bundle, a SavedModel directory) read as one.
  auto loaded = detail::load_restorable(*impl.backend, p);
  BOOST_OUTCOME_CO_TRY(auto found, co_await std::move(loaded));
  p = std::move(found.prefix);
  auto g = std::move(found.graph);
  auto s = std::make_shared<detail::session>(impl.backend, p, std::move(found.manifest), impl.m, impl.opt.read);
  s->seq = ++restore_seq;
  s->key_used.assign(s->manifest.tensors.size(), 0);
  if (g) {
    s->node_matched.assign(g->nodes.size(), 0);
    for (const auto& [name, id] : g->nodes[0].children)
      if (name == "save_counter") s->save_counter_node = id;
    s->node_has_values.assign(g->nodes.size(), 0);
    for (std::size_t i = 0; i < g->nodes.size(); ++i)
      s->node_has_values[i] =
          found.tf_graph ? i < found.tf_graph->nodes.size() && !found.tf_graph->nodes[i].attributes.empty() : g->nodes[i].has_value;
    s->graph = std::move(g);
  }
  s->saved_counter = s->graph ? s->save_counter_node != UINT32_MAX : s->manifest.find("save_counter") != nullptr;
  s->is_restore = is_restore;
  s->names = impl.opt.restore_names;
  if (is_restore) c.save_counter();  // restore() creates the counter; the saved value lands in it
  auto st = std::make_shared<detail::status_state>();
  st->s = s;
  st->path = p;
  st->root = &c.root();
  st->extra = detail::extra_edges(impl);
  detail::session::batch values;
  {
    auto live = graph::walk(c.root(), st->extra);
    std::lock_guard lk(s->mu);
    for (std::size_t i = 0; i < live.objects.size(); ++i)
      if (live.graph.nodes[i].has_value && live.objects[i] != impl.save_counter.get())
        s->live_at_restore.emplace_back(live.objects[i], live.graph.nodes[i].key);
    auto r = s->graph ? s->match_subtree(0, c.root(), values, st->extra) : s->match_by_name(c.root(), st->extra, values);
    if (!r) {
      s->expect_partial = true;  // the error is the report; no second warning
      co_return r.error();
    }
  }
  if (!values.views.empty()) {
    auto read = detail::read_into(*impl.backend, p, values.views, impl.opt.read, s->shared_manifest());
    auto r = co_await std::move(read);
    if (!r) {
      std::lock_guard lk(s->mu);
      s->expect_partial = true;
      co_return r.error();
    }
  }
  {
    std::lock_guard lk(s->mu);
    s->mark_restored(values);
  }
  co_return load_status(std::move(st));
}

}  // namespace

void checkpoint::start_restore(std::optional<std::string> path, bool is_restore, io::completion<load_status> done) {
  start_restore(std::move(path), is_restore, std::move(done), nullptr);
}

void checkpoint::start_restore(std::optional<std::string> path, bool is_restore, io::completion<load_status> done,
                               const detail::job_executor* where) {
  auto& impl = *impl_;
  if (!path) {
    if (is_restore) save_counter();
    auto st = std::make_shared<detail::status_state>();
    done(load_status(std::move(st)));
    return;
  }
  // Restores run behind queued writes, on the IO thread, so a save followed by a restore of it
  // sees the committed files.
  auto job = [this, &impl, p = std::move(*path), is_restore, done = std::move(done)]() -> asio::awaitable<void> {
    std::optional<result<load_status>> r;
    try {
      auto steps = restore_steps(*this, impl, p, is_restore);
      r = co_await std::move(steps);
    } catch (const std::bad_alloc&) {
      r = out_of_memory("restoring " + p);
    }
    done(std::move(*r));
  };
  try {
    impl.jobs.push(std::move(job), detail::job_place(where));
  } catch (const std::bad_alloc&) {
    // `done` went with the job: nothing else can report.
    throw;
  }
}

}  // namespace meshckpt
