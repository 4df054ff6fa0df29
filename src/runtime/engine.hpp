#pragma once
// Private: the process-wide executors of the library's coroutines and CPU work, each an
// runtime::executor_thread (executor_thread.hpp, shared with the POSIX backend's blocking pool).

#include <boost/asio/post.hpp>

#include <algorithm>
#include <atomic>
#include <thread>

#include "bridge.hpp"
#include "executor_thread.hpp"

namespace meshckpt::runtime {

namespace detail {
inline std::atomic<executor_thread*> cpu_pool_instance{nullptr};
inline std::atomic<executor_thread*> engine_instance{nullptr};
}  // namespace detail

// The process-wide pool for CPU work that would otherwise queue behind IO completions: verifying
// and scattering the pieces of a restore as they arrive, and the copies of snapshots. Its size
// is fixed: min(4, max(2, hardware threads)).
inline unsigned cpu_pool_threads() { return std::max(2u, std::min(4u, std::thread::hardware_concurrency())); }
inline executor_thread& cpu_pool() { return process_wide<&detail::cpu_pool_instance>(cpu_pool_threads(), "meshckpt-cpu"); }

// The process-wide executor of the library's coroutines: every checkpoint's jobs (saves,
// restores, snapshots) run on it, and the IO completions they await come back to it. One
// thread: the heavy work (copies, checksums, scatter) goes to the CPU pool, and blocking system
// calls to the backends' pool, so the number of threads is fixed whatever the number of
// checkpoints.
inline executor_thread& engine() { return process_wide<&detail::engine_instance>(1, "meshckpt-engine"); }

// Runs `f` on the CPU pool; the awaiting coroutine resumes on its own executor afterwards. An
// allocation failure in `f` is its result.
template <class F>
task<void> on_cpu_pool(F f) {
  auto ex = co_await asio::this_coro::executor;
  auto done = io::async_op<void>(
      ex,
      [&f](io::completion<void> c) {
        asio::post(cpu_pool().executor(), [&f, c = std::move(c)]() mutable {
          result<void> r = success();
          try {
            f();
          } catch (const std::bad_alloc&) {
            r = out_of_memory("CPU pool work");
          }
          c(std::move(r));
        });
      },
      use_awaitable);
  co_return co_await std::move(done);
}

}  // namespace meshckpt::runtime
