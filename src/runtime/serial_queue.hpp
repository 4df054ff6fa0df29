#pragma once
// Private: jobs run one at a time, in the order queued, as coroutines (a checkpoint's writes
// and restores: a restore queued after a save sees its commit). It replaces a queue of
// callbacks with condition variables: a job is a coroutine, and waiting for the queue is
// awaiting a job of its own.
//
// The queue's own coroutine runs on one executor (the process-wide engine). Each job runs on
// the executor it was queued with — the caller's, for an asynchronous call made from a
// coroutine or with a handler bound to an executor — or on the queue's executor when it names
// none. A caller that would then block until a later job ends, on a thread that runs the
// executor of a job ahead of it, would wait forever: `runs_here` tells it so beforehand.

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>

#include "task.hpp"

namespace meshckpt::runtime {

class serial_queue {
 public:
  using job = std::function<asio::awaitable<void>()>;

  explicit serial_queue(asio::any_io_executor ex) : ex_(std::move(ex)) {}
  serial_queue(const serial_queue&) = delete;
  serial_queue& operator=(const serial_queue&) = delete;
  // Waits until the last job has finished and the queue's coroutine has let go of it (the
  // executor is shared and outlives the queue). The caller must not be running the executor
  // of a job still queued (`runs_here`): that job could never finish.
  ~serial_queue() {
    std::unique_lock lk(mu_);
    idle_.wait(lk, [&] { return !running_; });
  }

  // Queues `j` behind every job queued before it, to run on `where` (the queue's executor when
  // empty), or throws std::bad_alloc having queued nothing. A job must not throw (it reports
  // its own errors).
  void push(job j, asio::any_io_executor where = {}) {
    entry e{std::move(j), where, where ? serialized(where) : asio::any_io_executor()};
    std::lock_guard lk(mu_);
    jobs_.push_back(std::move(e));
    if (running_) return;
    running_ = true;
    try {
      asio::co_spawn(ex_, drain(), asio::detached);
    } catch (...) {
      running_ = false;
      jobs_.pop_back();
      throw;
    }
  }

  // Whether a job queued or running now runs on an executor that the calling thread is
  // running: a blocking wait here for a job queued later would then never end.
  bool runs_here() const {
    std::lock_guard lk(mu_);
    if (runs_in_this_thread(current_)) return true;
    for (const auto& e : jobs_)
      if (runs_in_this_thread(e.caller)) return true;
    return false;
  }

 private:
  struct entry {
    job run;
    asio::any_io_executor caller;  // what the caller gave (checked by runs_here)
    asio::any_io_executor where;   // where the job runs: a strand of `caller`, or empty
  };

  asio::awaitable<void> drain() {
    while (true) {
      entry next;
      {
        std::lock_guard lk(mu_);
        if (jobs_.empty()) {
          running_ = false;
          current_ = {};
          idle_.notify_all();  // under the lock: `this` may be gone once it is released
          co_return;
        }
        next = std::move(jobs_.front());
        jobs_.pop_front();
        current_ = next.caller;
      }
      try {
        if (next.where) {
          // On the caller's executor; this coroutine resumes here once the job has ended.
          auto ran = asio::co_spawn(next.where, next.run(), asio::use_awaitable);
          co_await std::move(ran);
        } else {
          co_await next.run();
        }
      } catch (...) {
        // A job ended by an exception (std::bad_alloc before it could report): the next runs.
      }
    }
  }

  asio::any_io_executor ex_;
  mutable std::mutex mu_;
  std::condition_variable idle_;
  std::deque<entry> jobs_;
  asio::any_io_executor current_;  // the caller's executor of the running job, under mu_
  bool running_ = false;
};

}  // namespace meshckpt::runtime
