#pragma once
// Private: an io_context with threads of its own, named, and marked as the library's threads:
// the process-wide engine and CPU pool (runtime/engine.hpp) and the POSIX backend's blocking
// pool (io_backends/posix) are each one of these. A handler that throws
// (std::bad_alloc) does not end a thread. Process-wide instances live for the process, and a
// child of fork() — which has none of its parent's threads — starts fresh ones on first use.

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>

#include <pthread.h>

#include <atomic>
#include <thread>
#include <vector>

namespace meshckpt::runtime {

namespace detail {
inline thread_local int library_thread_depth = 0;
}

// While alive, marks the calling thread as running one of the library's executors: the
// blocking bridge (runtime/bridge.hpp) refuses to wait there.
class library_thread_scope {
 public:
  library_thread_scope() noexcept { ++detail::library_thread_depth; }
  ~library_thread_scope() { --detail::library_thread_depth; }
  library_thread_scope(const library_thread_scope&) = delete;
  library_thread_scope& operator=(const library_thread_scope&) = delete;
};

inline bool on_library_thread() noexcept { return detail::library_thread_depth > 0; }

class executor_thread {
 public:
  // `name`: the threads' name in ps/top (at most 15 characters).
  explicit executor_thread(unsigned threads, const char* name) : ctx_(static_cast<int>(threads)), work_(ctx_.get_executor()) {
    for (unsigned i = 0; i < threads; ++i)
      threads_.emplace_back([this, name] {
        ::pthread_setname_np(::pthread_self(), name);
        run();
      });
  }
  executor_thread(const executor_thread&) = delete;
  executor_thread& operator=(const executor_thread&) = delete;
  // Runs what is queued, then stops.
  ~executor_thread() { join(); }

  boost::asio::io_context& context() { return ctx_; }
  boost::asio::io_context::executor_type executor() { return ctx_.get_executor(); }
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

  boost::asio::io_context ctx_;
  boost::asio::executor_work_guard<boost::asio::io_context::executor_type> work_;
  std::vector<std::thread> threads_;
};

// The process-wide instance kept in `Slot`: created on first use (one, even when first used by
// several threads at once), never destroyed (work may run during exit), forgotten in a child
// of fork().
template <std::atomic<executor_thread*>* Slot>
executor_thread& process_wide(unsigned threads, const char* name) {
  static const bool fork_aware = (::pthread_atfork(nullptr, nullptr, [] { Slot->store(nullptr); }), true);
  (void)fork_aware;
  if (auto* e = Slot->load(std::memory_order_acquire)) return *e;
  auto* fresh = new executor_thread(threads, name);
  executor_thread* expected = nullptr;
  if (Slot->compare_exchange_strong(expected, fresh, std::memory_order_acq_rel)) return *fresh;
  delete fresh;  // another thread won the race
  return *expected;
}

}  // namespace meshckpt::runtime
