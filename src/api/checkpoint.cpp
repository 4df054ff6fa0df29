// checkpoint: object-graph saves and structural restores on top of the low-level tensor API.
//
// Saving walks the live graph on the caller's thread (so the graph and the replicated host
// values are captured at the call), then queues the write; one write runs at a time, on the
// checkpoint's own IO thread. Restoring matches checkpoint node 0 to the root and then children
// by edge name, breadth-first; children the live graph does not have yet are left pending on
// their live parent and restored when tracked (graph::detail::pending_restore).

#include "meshckpt/api/checkpoint.hpp"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <future>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "../runtime/executor_thread.hpp"
#include "../runtime/serial_queue.hpp"
#include "common.hpp"
#include "state_file.hpp"
#include "meshckpt/api/lazy_save.hpp"
#include "meshckpt/api/tensor_io_async.hpp"
#include "meshckpt/backends/uring.hpp"
#include "meshckpt/format/names.hpp"
#include "meshckpt/graph/object_graph.hpp"
#include "meshckpt/tensor/convert.hpp"

namespace meshckpt {

namespace asio = boost::asio;

namespace {

std::mutex warning_mu;
std::function<void(std::string_view)> warning_handler = [](std::string_view msg) {
  std::fprintf(stderr, "meshckpt warning: %.*s\n", static_cast<int>(msg.size()), msg.data());
};

void warn(const std::string& msg) {
  std::function<void(std::string_view)> h;
  {
    std::lock_guard lk(warning_mu);
    h = warning_handler;
  }
  if (h) h(msg);
}

std::atomic<std::uint64_t> restore_seq{0};

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

}  // namespace

std::function<void(std::string_view)> set_warning_handler(std::function<void(std::string_view)> h) {
  std::lock_guard lk(warning_mu);
  std::swap(h, warning_handler);
  return h;
}

namespace detail {

// One restore: the checkpoint's manifest and graph, what has been matched and used so far.
struct session : std::enable_shared_from_this<session> {
  std::shared_ptr<io::backend> backend;
  std::string prefix;
  format::manifest manifest;
  std::optional<graph::object_graph> graph;  // nullopt: a name-based checkpoint
  mesh m;
  read_options ropt;
  std::uint64_t seq = 0;
  std::uint32_t save_counter_node = UINT32_MAX;
  bool leave_save_counter = false;  // read(): never restores into (or creates) the save counter

  std::mutex mu;
  std::vector<char> node_matched;
  std::vector<char> key_used;  // per manifest tensor
  std::set<const graph::trackable*> restored;
  std::vector<error> deferred_errors;
  std::vector<std::pair<const graph::trackable*, std::string>> live_at_restore;  // value holders and paths
  bool expect_partial = false;

  session(std::shared_ptr<io::backend> b, std::string p, format::manifest man, mesh mm, read_options ro)
      : backend(std::move(b)), prefix(std::move(p)), manifest(std::move(man)), m(std::move(mm)), ropt(ro) {}

  // The session ends when no status handle and no pending restore refers to it any more: only
  // then can nothing else be restored, so only then does an incomplete restore warn (as
  // TensorFlow's restore coordinator does). Paths were captured at restore time, so this never
  // touches live objects, which may be gone.
  ~session() {
    if (expect_partial) return;
    auto unused = unused_keys();
    auto unrestored = unrestored_objects();
    if (unused.empty() && unrestored.empty()) return;
    std::string msg = "restore of " + prefix + " was incomplete and its status was not marked expect_partial().";
    auto add = [&](const char* what, const std::vector<std::string>& v) {
      if (v.empty()) return;
      msg += std::string(" ") + what + ":";
      for (std::size_t i = 0; i < v.size() && i < 20; ++i) msg += " " + v[i];
      if (v.size() > 20) msg += " (and " + std::to_string(v.size() - 20) + " more)";
      msg += ".";
    };
    add("Unused checkpoint values", unused);
    add("Live objects not restored", unrestored);
    warn(msg);
  }

  std::vector<std::string> unused_keys() const {
    std::vector<std::string> out;
    for (std::size_t i = 0; i < manifest.tensors.size(); ++i)
      if (!key_used[i] && manifest.tensors[i].key != "save_counter") out.push_back(manifest.tensors[i].key);
    return out;
  }

  std::vector<std::string> unrestored_objects() const {
    std::vector<std::string> out;
    for (const auto& [obj, p] : live_at_restore)
      if (!restored.count(obj)) out.push_back(p);
    return out;
  }

  std::size_t tensor_index(const format::saved_tensor* t) const {
    return static_cast<std::size_t>(t - manifest.tensors.data());
  }

  struct target {
    graph::trackable* obj;
    std::size_t tensor;
  };

  // The values one restore step reads in one batch.
  struct batch {
    std::vector<target> targets;
    std::vector<named_tensor> views;
  };

  // The manifest, shared with the reads (which keep the session alive).
  std::shared_ptr<const format::manifest> shared_manifest() { return {shared_from_this(), &manifest}; }

  // Marks the values of a batch that was read as restored.
  void mark_restored(batch& b) {
    for (auto& t : b.targets) {
      t.obj->value_restored();
      restored.insert(t.obj);
      key_used[t.tensor] = 1;
    }
  }

  // Reads a batch on the calling thread: a deferred restoration, which happens when the caller
  // tracks a child (a blocking API face, through the one bridge).
  result<void> read_blocking(batch& b) {
    if (b.views.empty()) return success();
    auto m = shared_manifest();
    auto r = runtime::run_blocking<read_report>("deferred restore", [&](auto ex, auto done) {
      runtime::spawn<read_report>(ex, detail::read_into(*backend, prefix, b.views, ropt, m), std::move(done));
    });
    if (!r) return r.error();
    mark_restored(b);
    return success();
  }

  // Prepares a value read into `obj` for saved tensor `key`; errors name the key and shapes.
  result<void> add_target(graph::trackable& obj, const std::string& key, batch& into) {
    const auto* t = manifest.find(key);
    if (!t) return make_error(errc::corrupt_manifest, "checkpoint " + prefix + ": object graph names value \"" + key + "\", which the manifest lacks");
    dtype as = t->type;
    // With read_options::convert_dtypes, a variable of another floating dtype takes the value
    // converted (read_tensors does the conversion; the variable keeps its dtype).
    if (auto* var = dynamic_cast<graph::variable*>(&obj); var && ropt.convert_dtypes && convertible(t->type, var->view().type()))
      as = var->view().type();
    auto v = obj.value_for_restore(as, t->global, m);
    if (!v) return with_context(v.error(), "restore " + prefix + ": value \"" + key + "\"");
    into.targets.push_back({&obj, tensor_index(t)});
    into.views.push_back({key, std::move(*v)});
    return success();
  }

  // Structural restore of checkpoint node `node` into `obj` and their subtrees: matches them
  // and collects the values to read into `out`. `extra` are additional edges of `obj` (a
  // checkpoint's attached children, when `obj` is node 0).
  result<void> match_subtree(std::uint32_t node, graph::trackable& obj, batch& out,
                             const std::vector<std::pair<std::string, graph::trackable*>>& extra = {}) {
    std::deque<std::pair<std::uint32_t, graph::trackable*>> queue{{node, &obj}};
    std::set<std::uint32_t> seen{node};
    bool first = true;
    while (!queue.empty()) {
      auto [n, o] = queue.front();
      queue.pop_front();
      node_matched[n] = 1;
      const auto& cn = graph->nodes[n];
      if (cn.has_value && o->has_value()) {
        BOOST_OUTCOME_TRY(add_target(*o, cn.key, out));
      }
      for (const auto& [name, cid] : cn.children) {
        graph::trackable* live = o->child(name);
        if (!live && first)
          for (const auto& [en, eo] : extra)
            if (en == name) live = eo;
        if (first && name == "save_counter" && leave_save_counter) continue;
        if (live) {
          if (seen.insert(cid).second) queue.emplace_back(cid, live);
          continue;
        }
        auto p = std::make_shared<graph::detail::pending_restore>();
        p->seq = seq;
        // A strong reference: the restore must still happen if every status handle is gone.
        std::shared_ptr<session> self = shared_from_this();
        std::uint32_t child_node = cid;
        p->apply = [self, child_node](graph::trackable& c) { self->restore_deferred(child_node, c); };
        graph::detail::set_pending(*o, name, std::move(p));
      }
      first = false;
    }
    return success();
  }

  void restore_deferred(std::uint32_t node, graph::trackable& obj) {
    std::lock_guard lk(mu);
    batch b;
    auto r = match_subtree(node, obj, b);
    if (r) r = read_blocking(b);
    if (!r) {
      warn(r.error().what());
      deferred_errors.push_back(r.error());
    }
  }

  // Name-based: each live value is matched by its full object path.
  result<void> match_by_name(graph::trackable& root, const std::vector<std::pair<std::string, graph::trackable*>>& extra, batch& out) {
    auto live = graph::walk(root, extra);
    for (std::size_t i = 0; i < live.objects.size(); ++i) {
      const auto& n = live.graph.nodes[i];
      if (!n.has_value || !manifest.find(n.key)) continue;
      BOOST_OUTCOME_TRY(add_target(*live.objects[i], n.key, out));
    }
    return success();
  }
};

struct status_state {
  std::shared_ptr<session> s;  // null: initialization-only
  std::string path;
  graph::trackable* root = nullptr;
  std::vector<std::pair<std::string, graph::trackable*>> extra;
};

// Host memory for snapshots, reused across saves so its pages are touched once.
struct snapshot_arena {
  std::unique_ptr<std::byte[]> bytes;
  std::size_t capacity = 0;
};

struct checkpoint_impl {
  explicit checkpoint_impl(mesh mm) : m(std::move(mm)) {}
  mesh m;
  graph::trackable* root = nullptr;  // null: the checkpoint itself is node 0
  std::vector<std::pair<std::string, graph::trackable*>> attached;
  checkpoint_options opt;
  std::shared_ptr<io::backend> backend;
  std::unique_ptr<graph::scalar<std::int64_t>> save_counter;
  // Snapshot memory, in use while a save holds a reference. Snapshots are taken one at a time,
  // in the order saves are issued, on `snapshot_thread`: a snapshot waiting for memory then only
  // waits for saves issued before it, whose writes are ahead of it in the queue (no deadlock).
  std::mutex arena_mu;
  std::condition_variable arena_freed;
  std::vector<std::shared_ptr<snapshot_arena>> arenas;
  runtime::executor_thread snapshot_thread;
  runtime::executor_thread io_thread;
  // Saves and restores, one at a time in the order issued, as coroutines on the IO thread.
  runtime::serial_queue jobs{io_thread.executor()};

  std::mutex mu;
  std::optional<error> last_error;
};

// Process 0 of a multi-process checkpoint (or a single process) owns the shared files: the
// state file and retention deletions.
bool writes_shared_files(const checkpoint_impl& impl) {
  return !impl.opt.write.coordinator || impl.opt.write.coordinator->rank() == 0;
}

}  // namespace detail

// ---------------------------------------------------------------- load_status

namespace {

error no_checkpoint() { return make_error(errc::invalid_argument, "no checkpoint specified (restore(std::nullopt) only initializes)"); }

std::string list(const std::vector<std::string>& v) {
  std::string out;
  for (std::size_t i = 0; i < v.size() && i < 20; ++i) out += (i ? ", " : "") + v[i];
  if (v.size() > 20) out += ", and " + std::to_string(v.size() - 20) + " more";
  return out;
}

}  // namespace

result<load_status> load_status::assert_existing_objects_matched() const {
  if (!s_->s) return no_checkpoint();
  if (auto e = deferred_errors(); !e.empty()) return e.front();
  auto live = graph::walk(*s_->root, s_->extra);
  std::vector<std::string> missing;
  {
    std::lock_guard lk(s_->s->mu);
    for (std::size_t i = 0; i < live.objects.size(); ++i)
      if (live.graph.nodes[i].has_value && !s_->s->restored.count(live.objects[i])) missing.push_back(live.graph.nodes[i].key);
  }
  if (!missing.empty())
    return make_error(errc::not_found, "restore of " + s_->path + ": " + std::to_string(missing.size()) +
                                           " existing object(s) not matched to the checkpoint: " + list(missing));
  return *this;
}

result<load_status> load_status::assert_consumed() const {
  BOOST_OUTCOME_TRY(assert_existing_objects_matched());
  auto unused = unused_keys();
  std::vector<std::string> unmatched;
  {
    std::lock_guard lk(s_->s->mu);
    if (s_->s->graph)
      for (std::size_t i = 0; i < s_->s->node_matched.size(); ++i)
        if (!s_->s->node_matched[i] && i != s_->s->save_counter_node) {
          const auto& n = s_->s->graph->nodes[i];
          unmatched.push_back(n.has_value ? n.key : "node " + std::to_string(i));
        }
  }
  if (!unused.empty() || !unmatched.empty())
    return make_error(errc::not_found, "restore of " + s_->path + " did not consume the checkpoint: " +
                                           (unused.empty() ? std::string() : "unused values: " + list(unused)) +
                                           (unused.empty() || unmatched.empty() ? "" : "; ") +
                                           (unmatched.empty() ? std::string() : "unmatched objects: " + list(unmatched)));
  return *this;
}

result<load_status> load_status::assert_nontrivial_match() const {
  if (!s_->s) return no_checkpoint();
  std::lock_guard lk(s_->s->mu);
  if (s_->s->graph) {
    for (std::size_t i = 1; i < s_->s->node_matched.size(); ++i)
      if (s_->s->node_matched[i] && i != s_->s->save_counter_node) return *this;
  } else {
    for (std::size_t i = 0; i < s_->s->key_used.size(); ++i)
      if (s_->s->key_used[i] && s_->s->manifest.tensors[i].key != "save_counter") return *this;
  }
  return make_error(errc::not_found, "restore of " + s_->path + " matched nothing besides the root object");
}

load_status load_status::expect_partial() const {
  if (s_->s) {
    std::lock_guard lk(s_->s->mu);
    s_->s->expect_partial = true;
  }
  return *this;
}

std::vector<std::string> load_status::unused_keys() const {
  if (!s_->s) return {};
  std::lock_guard lk(s_->s->mu);
  return s_->s->unused_keys();
}

std::vector<std::string> load_status::unrestored_objects() const {
  if (!s_->s) return {};
  std::lock_guard lk(s_->s->mu);
  return s_->s->unrestored_objects();
}
std::vector<error> load_status::deferred_errors() const {
  if (!s_->s) return {};
  std::lock_guard lk(s_->s->mu);
  return s_->s->deferred_errors;
}
std::string load_status::path() const { return s_->path; }

// ---------------------------------------------------------------- checkpoint

checkpoint::checkpoint(std::unique_ptr<detail::checkpoint_impl> impl) : impl_(std::move(impl)) {}

checkpoint::~checkpoint() {
  (void)sync();  // waits for the queued jobs (refused, and not waited for, on a library thread)
  impl_->snapshot_thread.join();
  impl_->io_thread.join();
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
  impl->root = root;
  impl->attached = std::move(children);
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
graph::trackable& checkpoint::root() { return impl_->root ? *impl_->root : *this; }

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

namespace {

std::vector<std::pair<std::string, graph::trackable*>> extra_edges(detail::checkpoint_impl& impl) {
  auto e = impl.attached;
  if (impl.save_counter) e.emplace_back("save_counter", impl.save_counter.get());
  return e;
}

}  // namespace

namespace {

// The distinct slices of a save's tensors (replicas once): what a snapshot copies.
struct snapshot_plan {
  struct piece {
    std::size_t tensor;
    std::span<std::byte> src;
    std::vector<std::size_t> shards;  // indices into the tensor's shards with this box
  };
  std::vector<piece> pieces;
  std::uint64_t need = 0;  // bytes of snapshot memory (each piece 64-byte aligned)
};

snapshot_plan plan_snapshot(const std::vector<named_tensor>& tensors) {
  snapshot_plan p;
  for (std::size_t t = 0; t < tensors.size(); ++t) {
    const auto& v = tensors[t].tensor;
    std::map<std::vector<std::int64_t>, std::size_t> seen;
    for (std::size_t k = 0; k < v.shards().size(); ++k) {
      auto b = v.layout().shard_box(v.global_shape(), v.shards()[k].device);
      if (!b) continue;
      auto key = b->origin;
      key.insert(key.end(), b->extent.begin(), b->extent.end());
      auto [it, fresh] = seen.emplace(std::move(key), p.pieces.size());
      if (fresh) {
        p.pieces.push_back({t, v.shards()[k].data, {}});
        p.need += (v.shards()[k].data.size() + 63) / 64 * 64;
      }
      p.pieces[it->second].shards.push_back(k);
    }
  }
  return p;
}

// Takes snapshot memory of `need` bytes, reusing an idle arena; waits (on the snapshot thread)
// while the budget is held by saves in flight.
std::shared_ptr<detail::snapshot_arena> acquire_arena(detail::checkpoint_impl& impl, std::uint64_t need) {
  const std::uint64_t budget = impl.opt.snapshot_budget_bytes;
  std::unique_lock lk(impl.arena_mu);
  while (true) {
    for (auto& a : impl.arenas)
      if (a.use_count() == 1 && a->capacity >= need) return a;
    std::erase_if(impl.arenas, [](auto& a) { return a.use_count() == 1; });  // too small: drop idle ones
    std::uint64_t busy = 0;
    for (auto& a : impl.arenas) busy += a->capacity;
    if (!budget || busy + need <= budget) {
      auto a = std::make_shared<detail::snapshot_arena>();
      a->bytes.reset(new std::byte[need]);
      a->capacity = need;
      impl.arenas.push_back(a);
      return a;
    }
    impl.arena_freed.wait(lk);
  }
}

// Copies the planned slices into `arena` and re-points the views at the copy; `helper` adds a
// second copying thread.
void copy_snapshot(const snapshot_plan& p, detail::snapshot_arena& arena, std::vector<named_tensor>& tensors, bool helper) {
  std::vector<std::vector<local_shard>> shards(tensors.size());
  for (std::size_t t = 0; t < tensors.size(); ++t) shards[t] = tensors[t].tensor.shards();
  std::uint64_t off = 0;
  // In copy mode the copy is the caller's stall: large ones are split across two threads (memory
  // bandwidth, not one core, is the limit), in 16 MiB pieces handed out through an atomic cursor.
  // A lazy snapshot copies on one thread: the caller is computing meanwhile.
  constexpr std::size_t piece_bytes = 16u << 20;
  std::vector<std::pair<std::byte*, std::span<std::byte>>> work;  // destination, source
  for (const auto& pc : p.pieces) {
    std::byte* dst = arena.bytes.get() + off;
    for (auto k : pc.shards) shards[pc.tensor][k].data = std::span<std::byte>(dst, pc.src.size());
    for (std::size_t o = 0; o < pc.src.size(); o += piece_bytes)
      work.emplace_back(dst + o, pc.src.subspan(o, std::min(piece_bytes, pc.src.size() - o)));
    off += (pc.src.size() + 63) / 64 * 64;
  }
  std::atomic<std::size_t> next{0};
  auto run = [&] {
    for (std::size_t i; (i = next.fetch_add(1)) < work.size();) std::memcpy(work[i].first, work[i].second.data(), work[i].second.size());
  };
  if (helper && p.need >= (64u << 20) && std::thread::hardware_concurrency() > 1) {
    // The second copier comes from the process-wide CPU pool, not a thread of its own.
    std::promise<void> second_done;
    asio::post(runtime::cpu_pool().executor(), [&] {
      run();
      second_done.set_value();
    });
    run();
    second_done.get_future().wait();
  } else {
    run();
  }
  for (std::size_t t = 0; t < tensors.size(); ++t) {
    const auto& v = tensors[t].tensor;
    tensors[t].tensor = dtensor_view::create(v.type(), v.global_shape(), v.layout(), std::move(shards[t])).value();
  }
}

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
};

// The job of one save on the checkpoint's queue: once the snapshot is taken, write and commit;
// then the state file (numbered saves), the manager's work, the write callbacks; then `done`.
asio::awaitable<void> run_save(detail::checkpoint_impl& impl, std::shared_ptr<save_job> job, std::shared_ptr<detail::after_commit> after) {
  auto ex = co_await asio::this_coro::executor;
  auto steps = [&]() -> runtime::task<std::string> {
    // Named awaitables throughout: GCC 12 destroys non-trivial temporaries of a co_await
    // expression twice (docs/ARCHITECTURE.md).
    auto snapshot_taken = io::async_op<void>(ex, [job](io::completion<void> c) { job->gate->then(std::move(c)); }, runtime::use_awaitable);
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
  {
    // The snapshot memory is free for the next save.
    std::lock_guard lk(impl.arena_mu);
    job->owners.clear();
  }
  impl.arena_freed.notify_all();
  job->done(std::move(*out));
}

}  // namespace

void checkpoint::start_save(std::string prefix, bool numbered, io::completion<std::string> done, io::completion<void> snapshot_taken) {
  start_save(std::move(prefix), numbered, std::move(done), std::move(snapshot_taken), nullptr);
}

void checkpoint::start_save(std::string prefix, bool numbered, io::completion<std::string> done, io::completion<void> snapshot_taken,
                            std::shared_ptr<detail::after_commit> after) {
  auto& impl = *impl_;
  const bool lazy = static_cast<bool>(snapshot_taken);
  const bool must_wait = !lazy && impl.opt.snapshot;  // copy mode: return once the tensors are free
  if (must_wait && runtime::on_library_thread()) {
    // Copy mode waits for the copy; on a library thread that wait could hold up the very work
    // it waits for. Refused before anything is queued.
    done(runtime::refuse_blocking("async_save in copy mode (it returns once the tensors are copied)"));
    return;
  }
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
  // Capture the graph and the host values now, on the caller's thread.
  auto live = graph::walk(root(), extra_edges(impl));
  for (std::size_t i = 0; i < live.objects.size(); ++i) {
    const auto& n = live.graph.nodes[i];
    if (!n.has_value) continue;
    auto v = live.objects[i]->value_for_save(impl.m);
    if (!v) return fail(with_context(v.error(), "save " + job->path + ": value \"" + n.key + "\""));
    job->tensors.push_back({n.key, v->view});
    if (v->owner) job->owners.push_back(std::move(v->owner));
  }
  job->wopt = impl.opt.write;
  job->wopt.extensions.push_back({std::string(graph::object_graph_extension), graph::encode_object_graph(live.graph)});
  // `done` moves in only once nothing can fail (moving a std::function does not allocate), so
  // that the failure path still has it.
  auto user_done = std::make_shared<io::completion<std::string>>();
  job->done = [released = job->released, user_done](result<std::string> r) {
    // A save that failed before releasing its tensors reports that too; after success they are
    // free in any case.
    released->set(r ? result<void>(success()) : result<void>(r.error()));
    (*user_done)(std::move(r));
  };
  *user_done = std::move(done);

  // Snapshot: copy the distinct slices into snapshot memory on the snapshot thread; the write
  // starts once it is done. Without snapshot, or when the state exceeds the whole budget, the
  // write reads the tensors itself, and they are released once it has read them all.
  auto plan = std::make_shared<snapshot_plan>();
  const std::uint64_t budget = impl.opt.snapshot_budget_bytes;
  bool take = impl.opt.snapshot;
  if (take) {
    *plan = plan_snapshot(job->tensors);
    take = !budget || plan->need <= budget;
  }
  auto open_gate = [job] { job->gate->set(success()); };
  if (take) {
    asio::post(impl.snapshot_thread.executor(), [&impl, job, plan, open_gate, lazy] {
      try {
        auto arena = acquire_arena(impl, plan->need);
        copy_snapshot(*plan, *arena, job->tensors, !lazy);
        job->owners.push_back(std::move(arena));
        job->released->set(success());
      } catch (const std::bad_alloc&) {
        // No memory for a snapshot: fall back to writing from the tensors themselves.
        job->wopt.sources_released = [released = job->released] { released->set(success()); };
      }
      open_gate();
    });
  } else {
    job->wopt.sources_released = [released = job->released] { released->set(success()); };
    open_gate();
  }
  released = job->released;
  impl.jobs.push([&impl, job, after]() { return run_save(impl, job, after); });
  } catch (const std::bad_alloc&) {
    auto e = out_of_memory("starting save " + prefix);
    if (!job || !job->done) {  // `done` and `snapshot_taken` are still ours
      if (job) job->released->set(e);
      else if (snapshot_taken) snapshot_taken(e);
      done(std::move(e));
    } else {
      job->done(std::move(e));  // it also settles `released`, hence `snapshot_taken`
    }
    return;
  }
  if (must_wait) {
    (void)runtime::run_blocking<void>("save (copy mode)", [&](auto, io::completion<void> d) { released->then(std::move(d)); });
    // The bridge ends early only when it could not allocate. The tensors must still not be
    // handed back before they are copied: the last resort polls (tests/test_alloc.cpp).
    while (!released->ready()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

namespace {

// The steps of a restore job: the manifest, the match of the object graph (or of names), one
// batch of reads, and the load status.
runtime::task<load_status> restore_steps(checkpoint& c, detail::checkpoint_impl& impl, std::string p, bool is_restore) {
  auto ex = co_await asio::this_coro::executor;
  auto loaded = async_read_manifest(ex, *impl.backend, p, runtime::use_awaitable);
  BOOST_OUTCOME_CO_TRY(auto man, co_await std::move(loaded));
  std::optional<graph::object_graph> g;
  for (const auto& e : man.extensions)
    if (e.name == graph::object_graph_extension) {
      auto d = graph::decode_object_graph(e.bytes);
      if (!d) co_return with_context(d.error(), "restore " + p);
      g = std::move(*d);
    }
  auto s = std::make_shared<detail::session>(impl.backend, p, std::move(man), impl.m, impl.opt.read);
  s->seq = ++restore_seq;
  s->key_used.assign(s->manifest.tensors.size(), 0);
  if (g) {
    s->node_matched.assign(g->nodes.size(), 0);
    for (const auto& [name, id] : g->nodes[0].children)
      if (name == "save_counter") s->save_counter_node = id;
    s->graph = std::move(g);
  }
  if (is_restore) c.save_counter();  // restore() creates the counter; the saved value lands in it
  s->leave_save_counter = !is_restore;
  auto st = std::make_shared<detail::status_state>();
  st->s = s;
  st->path = p;
  st->root = &c.root();
  st->extra = extra_edges(impl);
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
    impl.jobs.push(std::move(job));
  } catch (const std::bad_alloc&) {
    // `done` went with the job: nothing else can report.
    throw;
  }
}

namespace detail {

result<void> block_until(std::function<void(io::completion<void>)> subscribe, const char* what) {
  return runtime::run_blocking<void>(what, [&](auto, io::completion<void> done) { subscribe(std::move(done)); });
}

}  // namespace detail

result<std::string> checkpoint::save(std::string_view prefix) {
  return runtime::run_blocking<std::string>("checkpoint::save", [&](auto, auto d) { start_save(std::string(prefix), true, std::move(d)); });
}

result<std::string> checkpoint::write(std::string_view prefix) {
  return runtime::run_blocking<std::string>("checkpoint::write", [&](auto, auto d) { start_save(std::string(prefix), false, std::move(d)); });
}

lazy_save<std::string> checkpoint::save_lazy(std::string_view prefix) {
  lazy_save<std::string> ls;
  start_save(std::string(prefix), true, ls.commit_completion(), ls.snapshot_completion());
  return ls;
}

lazy_save<std::string> checkpoint::write_lazy(std::string_view prefix) {
  lazy_save<std::string> ls;
  start_save(std::string(prefix), false, ls.commit_completion(), ls.snapshot_completion());
  return ls;
}

result<load_status> checkpoint::read(std::string_view path) {
  return runtime::run_blocking<load_status>("checkpoint::read", [&](auto, auto d) { start_restore(std::string(path), false, std::move(d)); });
}

result<load_status> checkpoint::restore(std::optional<std::string> path) {
  return runtime::run_blocking<load_status>("checkpoint::restore", [&](auto, auto d) { start_restore(std::move(path), true, std::move(d)); });
}

result<void> checkpoint::sync() {
  auto& impl = *impl_;
  // A job of its own, behind every job queued so far.
  return runtime::run_blocking<void>("checkpoint::sync", [&impl](auto, io::completion<void> done) {
    impl.jobs.push([&impl, done = std::move(done)]() -> asio::awaitable<void> {
      std::optional<error> e;
      {
        std::lock_guard lk(impl.mu);
        e = impl.last_error;
      }
      done(e ? result<void>(*e) : result<void>(success()));
      co_return;
    });
  });
}

}  // namespace meshckpt
