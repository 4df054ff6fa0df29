#pragma once
// Private: a window of asynchronous operations in flight (one save's writes, one restore's
// reads), and a way to wait until fewer than n are.

#include <optional>
#include <utility>

#include "meshckpt/io/async.hpp"
#include "task.hpp"

namespace meshckpt::runtime {

// Operations of one save or restore in flight, and a way to wait until fewer than n are. Their
// completions run on the coroutine's executor (io::async_op posts them there): no locking.
class op_window {
 public:
  explicit op_window(asio::any_io_executor ex) : ex_(std::move(ex)) {}
  std::size_t in_flight() const { return in_flight_; }
  const asio::any_io_executor& executor() const { return ex_; }

  // Call when an operation starts; its completion must call `finished` exactly once.
  void started() { ++in_flight_; }
  // Starts an operation with `initiate()`, which either launches it (its completion then calls
  // `finished`) or throws without launching it (backends allocate before they submit).
  // TRICKY: a throw must not leave the operation counted, or `drain` would wait forever for a
  // completion that never comes (an allocation failure did: tests/reliability/test_alloc.cpp).
  template <class F>
  void launch(F&& initiate) {
    started();
    try {
      std::forward<F>(initiate)();
    } catch (...) {
      --in_flight_;
      throw;
    }
  }
  void finished(result<void> r) {
    --in_flight_;
    if (!r && !first_error_) first_error_ = r.error();
    if (waiter_) std::exchange(waiter_, nullptr)(success());
  }

  // Waits until fewer than `n` operations are in flight (n = 1: all done), then reports the
  // first failure. It always waits, error or not, so buffers can be freed afterwards.
  // Waits until every operation completed, whatever happens meanwhile: an allocation failure
  // while waiting is retried, since the buffers of the operations in flight may only be freed
  // afterwards.
  task<void> drain() {
    while (true) {
      try {
        co_return co_await wait_below(1);
      } catch (const std::bad_alloc&) {
      }
    }
  }

  task<void> wait_below(std::size_t n) {
    while (in_flight_ >= n && in_flight_ > 0)
      (void)co_await io::async_op<void>(
          ex_, [this](io::completion<void> c) { waiter_ = std::move(c); }, use_awaitable);
    if (first_error_) co_return *first_error_;
    co_return success();
  }

 private:
  asio::any_io_executor ex_;
  std::size_t in_flight_ = 0;
  std::optional<error> first_error_;
  io::completion<void> waiter_;
};

}  // namespace meshckpt::runtime
