#pragma once
/// \file
/// `lazy_save<T>`: the two completions of a lazy save (`checkpoint::save_lazy`,
/// `checkpoint_manager::save_lazy`). The call returns at once; the save then
///
///   1. copies the tensors into snapshot memory on a background thread — once
///      `snapshot_taken()` the caller may modify its tensors again (reading them before that is
///      always fine, e.g. a forward and backward pass);
///   2. writes and commits the copy — `committed()` yields what the blocking form returns.
///
/// A failure before the snapshot completes both events with the error. Coroutine forms are
/// `async_wait_snapshot` / `async_wait_committed` in api/checkpoint_async.hpp.

#include <atomic>
#include <memory>
#include <mutex>
#include <optional>
#include <vector>

#include "meshckpt/error.hpp"
#include "meshckpt/io/backend.hpp"

namespace meshckpt {

namespace detail {

// Blocks the calling thread, through the library's one blocking bridge, until `subscribe`'s
// completion runs. Refused on a thread that runs the library's executors.
result<void> block_until(std::function<void(io::completion<void>)> subscribe, const char* what);

// A result set once, awaited by any number of waiters (blocking or by callback).
template <class T>
class one_shot {
 public:
  void set(result<T> r) {
    std::vector<io::completion<T>> ws;
    {
      std::lock_guard lk(mu_);
      if (value_) return;  // first outcome wins
      value_.emplace(std::move(r));
      ws.swap(waiters_);
    }
    set_flag_.store(true, std::memory_order_release);
    set_flag_.notify_all();
    for (auto& w : ws) w(*value_);
  }
  // Blocks the calling thread until set, allocating nothing: the last resort of a blocking call
  // whose bridge could not be built (out of memory).
  void wait_set() const { set_flag_.wait(false, std::memory_order_acquire); }
  bool ready() const {
    std::lock_guard lk(mu_);
    return value_.has_value();
  }
  // The outcome; only once ready().
  result<T> get() const {
    std::lock_guard lk(mu_);
    return *value_;
  }
  // Runs `f` with the outcome: now (on this thread) when it is known, else on the thread that
  // sets it.
  void then(io::completion<T> f) {
    {
      std::lock_guard lk(mu_);
      if (!value_) {
        waiters_.push_back(std::move(f));
        return;
      }
    }
    f(*value_);
  }

 private:
  mutable std::mutex mu_;
  std::optional<result<T>> value_;  // never changes once set
  std::vector<io::completion<T>> waiters_;
  std::atomic<bool> set_flag_{false};
};

}  // namespace detail

/// A save in progress, started by a `save_lazy` call. Cheap to copy; copies share state.
/// `T` is what the commit yields: the path for `checkpoint`, an optional path for
/// `checkpoint_manager` (nullopt when the interval skipped the save).
template <class T>
class lazy_save {
 public:
  lazy_save() : snap_(std::make_shared<detail::one_shot<void>>()), commit_(std::make_shared<detail::one_shot<T>>()) {}

  /// True once the tensors have been copied (or the save failed).
  bool snapshot_taken() const { return snap_->ready(); }
  /// True once the save committed (or failed).
  bool committed() const { return commit_->ready(); }
  /// Blocks until the tensors may be modified; the error when the save failed before that.
  /// Refused (`errc::unsupported`; an abort in debug builds) on a thread running the library's
  /// executors, such as inside a completion handler, where it would deadlock.
  result<void> wait_snapshot() const {
    auto s = snap_;
    BOOST_OUTCOME_TRY(detail::block_until([s](io::completion<void> d) { s->then(std::move(d)); }, "lazy_save::wait_snapshot"));
    return s->get();
  }
  /// Blocks until the commit is durable; its outcome. Refused like `wait_snapshot` on a
  /// library thread.
  result<T> wait_committed() const {
    auto c = commit_;
    BOOST_OUTCOME_TRY(detail::block_until([c](io::completion<void> d) { c->then([d = std::move(d)](const result<T>&) { d(success()); }); },
                                          "lazy_save::wait_committed"));
    return c->get();
  }
  /// Calls `f` once with the snapshot outcome (at once, on this thread, if it is known).
  void on_snapshot(io::completion<void> f) const { snap_->then(std::move(f)); }
  /// Calls `f` once with the commit outcome (at once, on this thread, if it is known).
  void on_committed(io::completion<T> f) const { commit_->then(std::move(f)); }

  /// For the implementation: the two completions to hand to the save.
  io::completion<void> snapshot_completion() const {
    return [s = snap_](result<void> r) { s->set(std::move(r)); };
  }
  io::completion<T> commit_completion() const {
    return [s = snap_, c = commit_](result<T> r) {
      if (!r) s->set(r.error());  // a save that failed early never took its snapshot
      c->set(std::move(r));
    };
  }

 private:
  std::shared_ptr<detail::one_shot<void>> snap_;
  std::shared_ptr<detail::one_shot<T>> commit_;
};

}  // namespace meshckpt
