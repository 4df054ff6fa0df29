#pragma once
// Private: what a `checkpoint` holds (its job queues, snapshot memory), and the
// state of a restore that its load statuses and pending restorations share.

#include <map>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "../runtime/engine.hpp"
#include "../runtime/host_memory.hpp"
#include "../runtime/serial_queue.hpp"
#include "../pipeline/common.hpp"
#include "meshckpt/api/checkpoint.hpp"
#include "meshckpt/graph/object_graph.hpp"
#include "meshckpt/tensor/convert.hpp"

namespace meshckpt::detail {

// Reports a load-status warning to the handler of set_warning_handler.
void warn(const std::string& msg);

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
  // Whether the checkpoint holds a save counter. Without one, the live counter is expected
  // only after a restore() of a checkpoint with an object graph (one written by write(), a
  // SavedModel): restore() created it and nothing fed it, as in TensorFlow. A name-based
  // restore (TF1, flat files, imports) and read() never expect it.
  bool saved_counter = true;
  bool is_restore = false;  // restore() (creates the counter), not read()
  // Per checkpoint node: whether it holds values of its own (TensorFlow: has attributes).
  // Only those must be matched; a node without (a SavedModel's signatures, a Keras input
  // layer, an empty container) is never reported, its descendants with values are.
  std::vector<char> node_has_values;
  std::map<std::string, std::string> names;  // checkpoint_options::restore_names

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

  // Whether the live save counter is expected to be restored (see `saved_counter`).
  bool counter_expected() const { return saved_counter || (is_restore && graph); }

  // The checkpoint nodes with values that nothing matched, by path (computed only when there
  // are some: a restore's hot path never builds paths).
  std::vector<std::string> unmatched_nodes() const {
    std::vector<std::string> out;
    if (!graph) return out;
    std::vector<std::string> paths;
    for (std::size_t i = 0; i < node_matched.size(); ++i)
      if (!node_matched[i] && node_has_values[i]) {
        if (paths.empty()) paths = graph::node_paths(*graph);
        out.push_back(paths[i]);
      }
    return out;
  }

  std::vector<std::string> unused_keys() const {
    std::vector<std::string> out;
    for (std::size_t i = 0; i < manifest.tensors.size(); ++i)
      // The save counter is optional for a name-based restore; with an object graph, an unused
      // saved value of it is pending (read() before the counter exists) and reported.
      if (!key_used[i] && (graph || manifest.tensors[i].key != "save_counter")) out.push_back(manifest.tensors[i].key);
    return out;
  }

  std::vector<std::string> unrestored_objects() const {
    std::vector<std::string> out;
    for (const auto& [obj, p] : live_at_restore)
      if (!restored.count(obj)) out.push_back(p);
    return out;
  }

  std::size_t tensor_index(const format::saved_tensor* t) const { return static_cast<std::size_t>(t - manifest.tensors.data()); }

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
    if (!t)
      return make_error(errc::corrupt_manifest,
                        "checkpoint " + prefix + ": object graph names value \"" + key + "\", which the manifest lacks");
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

  // Name-based: each live value is matched by its full object path. A TensorFlow checkpoint
  // names a variable by its names joined with '/', unescaped ("dense/kernel" for child
  // "kernel" of "dense", or for a state_dict entry named "dense/kernel"); so does any checkpoint
  // without an object graph that has no entry under the escaped path.
  result<void> match_by_name(graph::trackable& root, const std::vector<std::pair<std::string, graph::trackable*>>& extra, batch& out) {
    auto live = graph::walk(root, extra);
    const bool tensorflow = format::whole_slice_crc(manifest.checksum);
    for (std::size_t i = 0; i < live.objects.size(); ++i) {
      const auto& n = live.graph.nodes[i];
      if (!n.has_value) continue;
      std::string key = n.key;
      if (auto it = names.find(n.key); it != names.end()) {
        key = it->second;
      } else if (tensorflow || !manifest.find(key)) {
        // Foreign keys (TensorFlow's, or a torch or safetensors file's kept verbatim by an
        // import) are the names as they are: "model.1.weight" is child "model.1.weight".
        auto names = graph::split_key(n.key);
        if (!names) continue;
        key.clear();
        for (const auto& nm : *names) key += (key.empty() ? "" : "/") + nm;
      }
      if (!manifest.find(key)) continue;
      BOOST_OUTCOME_TRY(add_target(*live.objects[i], key, out));
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
  runtime::host_buffer bytes;
  std::size_t capacity = 0;
  // Accelerators this memory is pinned for (device shards are copied into it), and the pins.
  std::vector<device::accelerator*> pinned_for;
  std::vector<std::shared_ptr<void>> pins;
};

struct checkpoint_impl {
  explicit checkpoint_impl(mesh mm) : m(std::move(mm)) {}
  mesh m;
  // The root (child "root" of `root_edge`) and the children given to create (children of
  // `attached`): held as edges of the graph, so that they follow the objects when those move.
  bool has_root = false;  // false: the checkpoint itself is node 0
  graph::module root_edge;
  graph::module attached;
  checkpoint_options opt;
  std::shared_ptr<io::backend> backend;
  std::unique_ptr<graph::scalar<std::int64_t>> save_counter;
  // Snapshot memory, in use while a save holds a reference. Snapshots are taken one at a time,
  // in the order saves are issued (`snapshots`): a snapshot waiting for memory then only waits
  // for saves issued before it, whose writes are ahead of it in the queue (no deadlock). A
  // copy-mode save copies on the caller's thread when no snapshot is queued before it.
  std::mutex arena_mu;
  std::vector<std::shared_ptr<snapshot_arena>> arenas;
  std::uint64_t arena_releases = 0;                 // under arena_mu
  std::vector<io::completion<void>> arena_waiters;  // under arena_mu
  std::size_t snapshots_queued = 0;                 // under arena_mu
  // Saves and restores, one at a time in the order issued, as coroutines on the process-wide
  // engine; snapshots likewise, their copies on the CPU pool. No thread of its own.
  runtime::serial_queue jobs{runtime::engine().executor()};
  runtime::serial_queue snapshots{runtime::engine().executor()};

  std::mutex mu;
  std::optional<error> last_error;
};

// The edges the root of a checkpoint's graph has besides its own children: the objects
// attached to the checkpoint, and its save counter. (checkpoint.cpp)
std::vector<std::pair<std::string, graph::trackable*>> extra_edges(checkpoint_impl& impl);

// Where a job of a call with the caller's executor `where` runs: that executor, or the
// checkpoint's default (empty: the engine) for none or the system executor.
asio::any_io_executor job_place(const job_executor* where);

// The error of a blocking call (`what`) made where it would wait forever: on a thread that runs
// the executor of a job queued ahead of it (`jobs.runs_here()`).
error refuse_wait_on_caller(const checkpoint_impl& impl, std::string_view what);

// Process 0 of a multi-process checkpoint (or a single process) owns the shared files: the
// state file and retention deletions.
inline bool writes_shared_files(const checkpoint_impl& impl) {
  return !impl.opt.write.coordinator || impl.opt.write.coordinator->rank() == 0;
}

}  // namespace meshckpt::detail
