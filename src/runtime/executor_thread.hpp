#pragma once
// Private: an executor with threads of its own (a checkpoint's IO thread and snapshot thread;
// the process-wide CPU pool), each marked as a library thread so that the blocking bridge
// refuses to wait on it.

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>

#include <algorithm>

#include <optional>
#include <thread>
#include <vector>

#include "bridge.hpp"

namespace meshckpt::runtime {

class executor_thread {
 public:
  explicit executor_thread(unsigned threads = 1) : ctx_(static_cast<int>(threads)), work_(ctx_.get_executor()) {
    for (unsigned i = 0; i < threads; ++i) threads_.emplace_back([this] { run(); });
  }
  executor_thread(const executor_thread&) = delete;
  executor_thread& operator=(const executor_thread&) = delete;
  // Runs what is queued, then stops.
  ~executor_thread() { join(); }

  asio::io_context::executor_type executor() { return ctx_.get_executor(); }
  // Lets the threads finish the work queued and in flight, and waits for them.
  void join() {
    work_.reset();
    for (auto& t : threads_)
      if (t.joinable()) t.join();
  }

 private:
  void run() {
    library_thread_scope mark;
    while (true) {
      try {
        ctx_.run();
        return;
      } catch (...) {
        // A handler threw (std::bad_alloc): its operation reported it where it could; keep
        // serving the others.
      }
    }
  }

  asio::io_context ctx_;
  asio::executor_work_guard<asio::io_context::executor_type> work_;
  std::vector<std::thread> threads_;
};

// The process-wide pool for CPU work that would otherwise queue behind IO completions: verifying
// and scattering the pieces of a restore as they arrive, and the second copier of a large
// snapshot. Its size is fixed: min(4, max(2, hardware threads)).
inline unsigned cpu_pool_threads() { return std::max(2u, std::min(4u, std::thread::hardware_concurrency())); }
inline executor_thread& cpu_pool() {
  static auto* pool = new executor_thread(cpu_pool_threads());  // never destroyed: work may run during exit
  return *pool;
}

}  // namespace meshckpt::runtime
