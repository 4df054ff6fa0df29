#pragma once
// Private: an executor with threads of its own (the process-wide engine and CPU pool), each marked as a library thread so that the blocking bridge
// refuses to wait on it.

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>

#include <pthread.h>

#include <algorithm>
#include <atomic>

#include <optional>
#include <thread>
#include <vector>

#include "bridge.hpp"

namespace meshckpt::runtime {

class executor_thread {
 public:
  // `name`: the threads' name in ps/top (at most 15 characters).
  explicit executor_thread(unsigned threads, const char* name) : ctx_(static_cast<int>(threads)), work_(ctx_.get_executor()) {
    for (unsigned i = 0; i < threads; ++i) threads_.emplace_back([this, name] {
      ::pthread_setname_np(::pthread_self(), name);
      run();
    });
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

namespace detail {

// The process-wide executors. A child of fork() has none of the parent's threads: it starts
// fresh ones on first use (the parent's are left alone, not destroyed: their threads are gone).
inline std::atomic<executor_thread*> cpu_pool_instance{nullptr};
inline std::atomic<executor_thread*> engine_instance{nullptr};

inline void forget_after_fork() {
  cpu_pool_instance.store(nullptr);
  engine_instance.store(nullptr);
}

inline executor_thread& process_wide(std::atomic<executor_thread*>& slot, unsigned threads, const char* name) {
  static const bool fork_aware = (::pthread_atfork(nullptr, nullptr, forget_after_fork), true);
  (void)fork_aware;
  if (auto* e = slot.load(std::memory_order_acquire)) return *e;
  auto* fresh = new executor_thread(threads, name);  // never destroyed: work may run during exit
  executor_thread* expected = nullptr;
  if (slot.compare_exchange_strong(expected, fresh, std::memory_order_acq_rel)) return *fresh;
  delete fresh;  // another thread won the race
  return *expected;
}

}  // namespace detail

// The process-wide pool for CPU work that would otherwise queue behind IO completions: verifying
// and scattering the pieces of a restore as they arrive, and the copies of snapshots. Its size
// is fixed: min(4, max(2, hardware threads)).
inline unsigned cpu_pool_threads() { return std::max(2u, std::min(4u, std::thread::hardware_concurrency())); }
inline executor_thread& cpu_pool() { return detail::process_wide(detail::cpu_pool_instance, cpu_pool_threads(), "meshckpt-cpu"); }

// The process-wide executor of the library's coroutines: every checkpoint's jobs (saves,
// restores, snapshots) run on it, and the IO completions they await come back to it. One
// thread: the heavy work (copies, checksums, scatter) goes to the CPU pool, and blocking system
// calls to the backends' pool, so the number of threads is fixed whatever the number of
// checkpoints.
inline executor_thread& engine() { return detail::process_wide(detail::engine_instance, 1, "meshckpt-engine"); }

// Runs `f` on the CPU pool; the awaiting coroutine resumes on its own executor afterwards. An
// allocation failure in `f` is its result.
template <class F>
task<void> on_cpu_pool(F f) {
  auto ex = co_await asio::this_coro::executor;
  auto done = io::async_op<void>(ex, [&f](io::completion<void> c) {
    asio::post(cpu_pool().executor(), [&f, c = std::move(c)]() mutable {
      result<void> r = success();
      try {
        f();
      } catch (const std::bad_alloc&) {
        r = out_of_memory("CPU pool work");
      }
      c(std::move(r));
    });
  }, use_awaitable);
  co_return co_await std::move(done);
}

}  // namespace meshckpt::runtime
