#pragma once
/// \file
/// `checkpoint`: TensorFlow's `tf.train.Checkpoint` / DTensorCheckpoint in C++. Bound to a
/// mesh, it saves an object graph of trackable values and restores it structurally, with load
/// statuses, deferred restoration and a save counter. See docs/API.md (with its table of
/// TensorFlow calls and their meshckpt forms). Asynchronous forms (completion tokens) are in
/// api/checkpoint_async.hpp; the blocking forms here are thin wrappers over them.

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "meshckpt/api/lazy_save.hpp"
#include "meshckpt/api/tensor_io.hpp"
#include "meshckpt/graph/trackable.hpp"
#include "meshckpt/io/backend.hpp"

namespace meshckpt {

class checkpoint_manager;

namespace detail {
struct status_state;
struct checkpoint_impl;
struct after_commit;
}  // namespace detail

/// Options of a `checkpoint`.
struct checkpoint_options {
  /// IO backend; null means `backends::make_backend(automatic)`: io_uring when the kernel
  /// allows it, else POSIX.
  std::shared_ptr<io::backend> backend{};
  write_options write{};
  read_options read{};
  /// Run, in order, with the written path after each successful `save`/`write` commit.
  std::vector<std::function<void(const std::string& path)>> write_callbacks{};
  /// Snapshot (copy) the tensors when a save is issued, so the caller may modify them as soon as
  /// `async_save`/`async_write` returns; the save then writes from the copy. The copy is one
  /// memcpy of the distinct slices (replicas are copied once) into reusable host memory.
  bool snapshot = true;
  /// Most bytes of snapshot memory kept (0: no limit). A save whose state does not fit waits, on
  /// the calling thread, for earlier saves to release theirs; one larger than the whole budget is
  /// not snapshotted: the call then returns only after its write completed (so the caller may
  /// still modify the tensors right after it returns).
  std::uint64_t snapshot_budget_bytes = 0;
};

/// The outcome of `restore`/`read`: which checkpoint values were used and which live objects
/// were restored. A cheap handle; copies share state. Assertions can start passing later, as
/// deferred restorations fire when children are tracked.
///
/// When the last handle is destroyed, a warning lists checkpoint values never used and live
/// objects never restored — unless `expect_partial()` was called (see `set_warning_handler`).
class load_status {
 public:
  /// Every live object reachable from the root that holds a value was restored by this status;
  /// extra checkpoint values are fine. Also fails if a deferred restoration failed.
  result<load_status> assert_existing_objects_matched() const;
  /// The above, plus every checkpoint object was matched and every checkpoint value used.
  result<load_status> assert_consumed() const;
  /// Something besides the root (and the save counter) was matched.
  result<load_status> assert_nontrivial_match() const;
  /// Silences the destruction warning; returns this status.
  load_status expect_partial() const;

  /// Keys of checkpoint values not used (so far).
  std::vector<std::string> unused_keys() const;
  /// Paths of live objects (reachable at restore time) not restored (so far).
  std::vector<std::string> unrestored_objects() const;
  /// Errors of deferred restorations (dtype/shape mismatches found when a child was tracked).
  std::vector<error> deferred_errors() const;
  /// The checkpoint path, or empty for `restore(std::nullopt)`.
  std::string path() const;

  explicit load_status(std::shared_ptr<detail::status_state> s) : s_(std::move(s)) {}

 private:
  std::shared_ptr<detail::status_state> s_;
};

/// Where load-status warnings go; the default prints them to stderr. Returns the old handler.
std::function<void(std::string_view)> set_warning_handler(std::function<void(std::string_view)> h);

/// A checkpoint of an object graph on a mesh.
///
/// Node 0 of the saved graph is `root` when given (the named children become extra edges of
/// it), else the checkpoint itself with the children hanging off it in sorted name order. The
/// save counter is an extra edge "save_counter" of node 0.
///
/// Thread-safety: calls on one checkpoint must not race with each other or with mutation of
/// the object graph. Tensors being saved must not be modified until the save completes.
class checkpoint : public graph::trackable {
 public:
  /// Creates a checkpoint. Errors (`errc::invalid_argument`): a null root or child ("child
  /// 'k' is not a trackable object"), an empty or duplicate child name, a child named
  /// "save_counter", or a root that already has a different child called `k` ("cannot create
  /// a Checkpoint with child k: root.k already exists"; the same object is fine).
  static result<std::unique_ptr<checkpoint>> create(mesh m, graph::trackable* root = nullptr,
                                                    std::vector<std::pair<std::string, graph::trackable*>> children = {},
                                                    checkpoint_options opt = {});
  /// Creates a checkpoint without a root (no `nullptr` placeholder): the checkpoint itself is
  /// node 0 and `children` are its named edges. Errors as above.
  static result<std::unique_ptr<checkpoint>> create(mesh m, std::vector<std::pair<std::string, graph::trackable*>> children,
                                                    checkpoint_options opt = {}) {
    return create(std::move(m), nullptr, std::move(children), std::move(opt));
  }
  /// Waits for writes in flight (their errors are reported to their own completions).
  ~checkpoint() override;

  const mesh& mesh_ref() const;
  io::backend& backend() const;
  /// False on every process but process 0 of a multi-process checkpoint
  /// (`checkpoint_options::write.coordinator`): process 0 alone writes the directory's
  /// `checkpoint` state file and deletes old checkpoints; the others keep the same bookkeeping
  /// in memory. Every process saves, restores and gets the same outcomes.
  bool writes_shared_files() const;
  /// Node 0 of the graph: the root, or this checkpoint.
  graph::trackable& root();

  /// The save counter, created (at 0) on first use.
  std::int64_t save_counter();
  /// Sets the save counter (creating it); the next `save()` writes `prefix-(v+1)`.
  void set_save_counter(std::int64_t v);
  /// True once the save counter exists.
  bool has_save_counter() const;

  /// Increments the save counter, writes `prefix-N`, and after the commit updates the
  /// `checkpoint` state file of the prefix's directory. Returns "prefix-N".
  result<std::string> save(std::string_view prefix);
  /// Writes exactly `prefix` (no numbering, no state file). Returns `prefix`.
  result<std::string> write(std::string_view prefix);
  /// Restores a checkpoint written by `write` (does not create the save counter).
  result<load_status> read(std::string_view path);
  /// Restores a checkpoint written by `save`; creates the save counter (holding the saved value
  /// when the checkpoint has one). `std::nullopt` gives an initialization-only status whose
  /// assertions all fail with "no checkpoint specified".
  result<load_status> restore(std::optional<std::string> path);
  /// Waits for every write queued so far; returns the error of the last one, if it failed.
  result<void> sync();

  /// Lazy `save`: returns at once (after capturing the graph and host values), with two
  /// completions (see api/lazy_save.hpp): `snapshot_taken` — the tensors were copied and may be
  /// modified — and `committed` — "prefix-N" is durable and the state file updated. Until the
  /// snapshot is taken the caller may read its tensors (forward and backward passes) but not
  /// write them. Numbering happens at the call, like `save`.
  lazy_save<std::string> save_lazy(std::string_view prefix);
  /// Lazy `write` (no numbering, no state file).
  lazy_save<std::string> write_lazy(std::string_view prefix);

  std::string describe() const override { return "checkpoint"; }

  /// Asynchronous entry points used by api/checkpoint_async.hpp and the lazy forms. `done` runs
  /// on an internal thread; at most one write runs at a time, later ones queue behind it. With
  /// `snapshot_taken` the save is lazy: the call returns at once and `snapshot_taken` runs (on
  /// the snapshot thread, or with the error) once the tensors may be modified. Without it, in
  /// snapshot mode, the call returns once the tensors are copied.
  void start_save(std::string prefix, bool numbered, io::completion<std::string> done,
                  io::completion<void> snapshot_taken = {});
  void start_restore(std::optional<std::string> path, bool is_restore, io::completion<load_status> done);

 private:
  friend class checkpoint_manager;
  explicit checkpoint(std::unique_ptr<detail::checkpoint_impl> impl);
  // start_save with work run inside the save's job once it committed (a manager's state file
  // and retention).
  void start_save(std::string prefix, bool numbered, io::completion<std::string> done, io::completion<void> snapshot_taken,
                  std::shared_ptr<detail::after_commit> after);
  std::unique_ptr<detail::checkpoint_impl> impl_;
};

/// The path of the latest checkpoint recorded in `dir`'s `checkpoint` state file, if that
/// checkpoint's manifest exists; otherwise nullopt.
std::optional<std::string> latest_checkpoint(std::string_view dir);

/// The `checkpoint` state file of a directory (TensorFlow's CheckpointState, as text).
struct checkpoint_state {
  std::string model_checkpoint_path;                ///< relative to the directory
  std::vector<std::string> all_model_checkpoint_paths;  ///< oldest to newest
  std::vector<double> all_model_checkpoint_timestamps;  ///< seconds since the epoch
  double last_preserved_timestamp = 0;
};

/// Reads `dir/checkpoint`. `errc::not_found` when absent; `errc::corrupt_manifest` when
/// malformed (the message names the line).
result<checkpoint_state> read_checkpoint_state(io::backend& b, std::string_view dir);
/// `read_checkpoint_state` through the default POSIX backend (as `latest_checkpoint` does).
result<checkpoint_state> read_checkpoint_state(std::string_view dir);
/// Writes `dir/checkpoint` atomically: temp file, fsync, rename, directory fsync.
result<void> write_checkpoint_state(io::backend& b, std::string_view dir, const checkpoint_state& s);
/// Parses the text form (exposed for tests and tools).
result<checkpoint_state> parse_checkpoint_state(std::string_view text);
/// The text form.
std::string format_checkpoint_state(const checkpoint_state& s);

/// Deletes the checkpoint `prefix`: its manifest first, then a directory fsync, then the data
/// files the manifest named (and leftovers of that name). Never touches other files.
/// `errc::locked` while another process writes into the directory (it holds DIR/meshckpt.lock).
result<void> delete_checkpoint(io::backend& b, std::string_view prefix);

/// Removes the leftovers in `dir` of checkpoints named `<name>-<number>`: data files and temp
/// manifests of such a name that has no manifest (what an interrupted save or deletion leaves).
/// Never touches a committed checkpoint or a file of another pattern. Call it only while no
/// save of such a name is in progress: `checkpoint_manager` does after each of its saves (which
/// run one at a time, under the directory's writer lock). Returns the number of files removed;
/// stops at the first error; `errc::locked` while another process writes into the directory.
result<std::size_t> remove_orphans(io::backend& b, std::string_view dir, std::string_view name);

}  // namespace meshckpt
