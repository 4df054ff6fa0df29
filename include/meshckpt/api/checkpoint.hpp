#pragma once
/// \file
/// `checkpoint`: TensorFlow's `tf.train.Checkpoint` / DTensorCheckpoint in C++. Bound to a
/// mesh, it saves an object graph of trackable values and restores it structurally, with load
/// statuses, deferred restoration and a save counter. See docs/API.md (with its table of
/// TensorFlow calls and their meshckpt forms). Asynchronous forms (completion tokens) are in
/// api/checkpoint_async.hpp; the blocking forms here are thin wrappers over them. Its options,
/// load status and directory files have headers of their own (checkpoint_options.hpp,
/// load_status.hpp, checkpoint_files.hpp), included here.

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <stop_token>
#include <string>
#include <string_view>
#include <vector>

#include "meshckpt/api/checkpoint_files.hpp"
#include "meshckpt/api/checkpoint_options.hpp"
#include "meshckpt/api/lazy_save.hpp"
#include "meshckpt/api/load_status.hpp"
#include "meshckpt/pipeline/tensor_io.hpp"
#include "meshckpt/graph/trackable.hpp"
#include "meshckpt/io/backend.hpp"

namespace meshckpt {

class checkpoint_manager;

namespace detail {
struct checkpoint_impl;
struct after_commit;
struct job_executor;
struct async_entry;
}  // namespace detail

/// A checkpoint of an object graph on a mesh.
///
/// Node 0 of the saved graph is `root` when given (the named children become extra edges of
/// it), else the checkpoint itself with the children hanging off it in sorted name order. The
/// save counter is an extra edge "save_counter" of node 0. The root and the children are held
/// as edges of the graph: when they move (graph::trackable), the checkpoint follows them; the
/// root must outlive the checkpoint.
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
  /// Creates a checkpoint without a root (the children are the second argument): the checkpoint itself is
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
  /// Turns `checkpoint_options::snapshot` on or off for the saves started from now on: a
  /// caller that waits for its save anyway (a blocking save) has nothing to gain from the copy,
  /// one that goes on training while it flushes needs it.
  void set_snapshot(bool on);
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

  /// Asynchronous entry points used by the lazy forms (api/checkpoint_async.hpp's calls run
  /// the same work on the caller's executor). The work runs on the library's engine and `done`
  /// on an internal thread; at most one write runs at a time, later ones queue behind it. With
  /// `snapshot_taken` the save is lazy: the call returns at once and `snapshot_taken` runs (on
  /// a library thread, or with the error) once the tensors may be modified. Without it, in
  /// snapshot mode, the call returns once the tensors are copied. A stop requested on `stop`
  /// (as on `checkpoint_options::write.stop`) before the commit ends the save with
  /// `errc::cancelled` and no new file; after the commit the checkpoint stands.
  void start_save(std::string prefix, bool numbered, io::completion<std::string> done, io::completion<void> snapshot_taken = {},
                  std::stop_token stop = {});
  void start_restore(std::optional<std::string> path, bool is_restore, io::completion<load_status> done);

 private:
  friend class checkpoint_manager;
  friend struct detail::async_entry;
  explicit checkpoint(std::unique_ptr<detail::checkpoint_impl> impl);
  // start_save with work run inside the save's job once it committed (a manager's state file
  // and retention), the job on `where` (the engine when null).
  void start_save(std::string prefix, bool numbered, io::completion<std::string> done, io::completion<void> snapshot_taken,
                  std::stop_token stop, std::shared_ptr<detail::after_commit> after, const detail::job_executor* where);
  void start_restore(std::optional<std::string> path, bool is_restore, io::completion<load_status> done, const detail::job_executor* where);
  std::unique_ptr<detail::checkpoint_impl> impl_;
};

}  // namespace meshckpt
