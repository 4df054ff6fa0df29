#pragma once
/// \file
/// `checkpoint_manager`: TensorFlow's `tf.train.CheckpointManager` — numbered saves into a
/// directory, the `checkpoint` state file, retention (`max_to_keep`,
/// `keep_checkpoint_every_n_hours`), step intervals, and restore-or-initialize.

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <stop_token>
#include <string>
#include <vector>

#include "meshckpt/api/checkpoint.hpp"

namespace meshckpt {

/// Options of a `checkpoint_manager` (TensorFlow's keyword arguments).
struct manager_options {
  /// Keep at most this many managed checkpoints (>= 1); nullopt keeps all.
  std::optional<int> max_to_keep = 5;
  /// A checkpoint at least this many hours newer than the last preserved one is preserved
  /// forever instead of deleted.
  std::optional<double> keep_checkpoint_every_n_hours{};
  std::string checkpoint_name = "ckpt";
  /// Reads the current training step; with `checkpoint_interval`, `save()` skips steps.
  std::function<std::int64_t()> step_counter{};
  std::optional<std::int64_t> checkpoint_interval{};
  /// Called by `restore_or_initialize()` when there is no checkpoint.
  std::function<void()> init_fn{};
  /// The manager is the directory's writer: from `create` on it holds the directory's writer
  /// lock (DIR/meshckpt.lock; process 0 of a multi-process job), so that a second job saving
  /// into the same directory (a restarted job while its predecessor still flushes, two jobs given
  /// the same path) cannot remove the other's files as leftovers. When another process holds
  /// the lock, `create` waits up to this long, then fails with `errc::locked` naming the holder.
  std::chrono::milliseconds lock_timeout{0};
};

/// Manages numbered checkpoints of one `checkpoint` in a directory.
class checkpoint_manager {
 public:
  /// Creates a manager and recovers its state from `directory/checkpoint`: managed checkpoints
  /// newer than `last_preserved_timestamp` are subject to deletion; older ones are preserved.
  /// Creates `directory` (durably) and takes its writer lock (see `manager_options::lock_timeout`).
  /// Errors: max_to_keep <= 0; checkpoint_interval without step_counter; an unreadable state
  /// file; `errc::locked` when another process writes into the directory.
  static result<std::unique_ptr<checkpoint_manager>> create(checkpoint& ckpt, std::string directory, manager_options opt = {});
  /// Waits for this manager's saves in flight (`checkpoint::sync`).
  ~checkpoint_manager();

  /// Saves `DIR/NAME-N` (N = `checkpoint_number`, else the incremented save counter), unless an
  /// interval is set and the step has not advanced enough (then returns nullopt;
  /// `check_interval = false` waives the interval but, as in TensorFlow, not the rule that a
  /// step is saved once: a save at the last saved step returns nullopt). After the
  /// commit: records it as latest, writes the state file (which no longer lists the checkpoints
  /// retention drops), then deletes the oldest managed checkpoints beyond `max_to_keep`
  /// (manifest first). The state file never names a checkpoint that is gone.
  result<std::optional<std::string>> save(std::optional<std::int64_t> checkpoint_number = std::nullopt, bool check_interval = true);

  /// The asynchronous form behind `save` and the lazy save: the interval check, numbering and
  /// graph capture happen now, on the calling thread; the write, the state file and retention
  /// run on the library's engine thread, and `done` runs there afterwards
  /// (`async_save(manager, ...)` runs them on the caller's executor).
  /// A stop requested on `stop` before the commit cancels it (`errc::cancelled`, no new file).
  void start_save(std::optional<std::int64_t> checkpoint_number, bool check_interval, io::completion<std::optional<std::string>> done,
                  io::completion<void> snapshot_taken = {}, std::stop_token stop = {});

  /// Lazy `save` (see `checkpoint::save_lazy` and api/lazy_save.hpp): returns at once; the
  /// snapshot completion says when the tensors may be modified, the commit completion yields
  /// what `save` returns (nullopt when the interval skipped this step: both complete at once).
  lazy_save<std::optional<std::string>> save_lazy(std::optional<std::int64_t> checkpoint_number = std::nullopt, bool check_interval = true);

  /// The newest checkpoint path, or nullopt.
  std::optional<std::string> latest_checkpoint() const;
  /// Managed (deletable) checkpoints, oldest to newest.
  std::vector<std::string> checkpoints() const;
  const std::string& directory() const { return dir_; }

  /// Restores the latest checkpoint if there is one (returns its path), else calls `init_fn`
  /// (returns nullopt).
  result<std::optional<std::string>> restore_or_initialize();

 private:
  friend struct detail::async_entry;
  checkpoint_manager(checkpoint& c, std::string dir, manager_options opt) : ckpt_(c), dir_(std::move(dir)), opt_(std::move(opt)) {}
  // start_save with the save's job on `where` (the engine when null).
  void start_save(std::optional<std::int64_t> checkpoint_number, bool check_interval, io::completion<std::optional<std::string>> done,
                  io::completion<void> snapshot_taken, std::stop_token stop, const detail::job_executor* where);
  checkpoint_state state() const;  // what the state file records now
  // Applies retention to the bookkeeping; returns the base names to delete, which the state
  // written next no longer lists.
  std::vector<std::string> plan_sweep();
  std::string full(const std::string& base) const { return dir_ + "/" + base; }

  checkpoint& ckpt_;
  std::string dir_;
  manager_options opt_;
  std::optional<std::string> latest_;
  std::vector<std::pair<std::string, double>> maybe_delete_;  // base name, timestamp; oldest first
  double last_preserved_ = 0;
  std::optional<std::int64_t> last_step_;
  std::optional<std::string> state_version_;  // of the state file as last read or written (object stores)
  mutable std::mutex mu_;                     // bookkeeping is updated where the save's job runs
  std::shared_ptr<const void> lock_;          // the directory's writer lock (null on processes other than 0)
};

}  // namespace meshckpt
