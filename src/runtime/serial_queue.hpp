#pragma once
// Private: jobs run one at a time, in the order queued, as coroutines on one executor (a
// checkpoint's writes and restores on the process-wide engine: a restore queued after a save
// sees its commit). It replaces
// a queue of callbacks with condition variables: a job is a coroutine, and waiting for the
// queue is awaiting a job of its own.

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>

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
  // executor is shared and outlives the queue).
  ~serial_queue() {
    std::unique_lock lk(mu_);
    idle_.wait(lk, [&] { return !running_; });
  }

  // Queues `j` behind every job queued before it, or throws std::bad_alloc having queued
  // nothing. A job must not throw (it reports its own errors).
  void push(job j) {
    std::lock_guard lk(mu_);
    jobs_.push_back(std::move(j));
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

 private:
  asio::awaitable<void> drain() {
    while (true) {
      job next;
      {
        std::lock_guard lk(mu_);
        if (jobs_.empty()) {
          running_ = false;
          idle_.notify_all();  // under the lock: `this` may be gone once it is released
          co_return;
        }
        next = std::move(jobs_.front());
        jobs_.pop_front();
      }
      try {
        co_await next();
      } catch (...) {
        // A job ended by an exception (std::bad_alloc before it could report): the next runs.
      }
    }
  }

  asio::any_io_executor ex_;
  std::mutex mu_;
  std::condition_variable idle_;
  std::deque<job> jobs_;
  bool running_ = false;
};

}  // namespace meshckpt::runtime
