#pragma once
// Private helpers shared by the api/ implementation files.

#include <boost/asio/awaitable.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <memory>
#include <optional>

#include "meshckpt/api/tensor_io.hpp"
#include "meshckpt/io/async.hpp"

namespace meshckpt::detail {

namespace asio = boost::asio;
using asio::use_awaitable;

template <class T>
using task = asio::awaitable<result<T>>;

template <class T>
asio::awaitable<void> store_result(task<T> coro, std::shared_ptr<std::optional<result<T>>> out) {
  out->emplace(co_await std::move(coro));
}

// Spawns `coro` on a strand of `ex` and hands its result to `done` (on that strand). The strand
// matters when several threads run the io_context: the coroutine and the IO completions it
// counts (op_window) then never run at the same time. An exception escaping the coroutine (a
// bug, or std::bad_alloc) is turned into an error rather than lost.
//
// The private io_context of a blocking call (run_blocking) is run by its calling thread alone:
// no strand there. Besides saving the work, this keeps blocking calls clear of an Asio 1.81
// bug: when the allocation of a strand's shared_ptr control block fails, the half-built strand
// is destroyed through an unset mutex pointer (a crash instead of std::bad_alloc; found by
// tests/test_alloc.cpp).
inline thread_local const asio::io_context* blocking_context = nullptr;

template <class T>
void spawn(asio::any_io_executor ex, task<T> coro, io::completion<T> done) {
  auto out = std::make_shared<std::optional<result<T>>>();
  const auto* own = ex.target<asio::io_context::executor_type>();
  asio::any_io_executor where = own && &own->context() == blocking_context ? ex : asio::any_io_executor(asio::make_strand(ex));
  asio::co_spawn(where, store_result<T>(std::move(coro), out), [out, done = std::move(done)](std::exception_ptr e) mutable {
    if (e) {
      try {
        std::rethrow_exception(e);
      } catch (const std::bad_alloc&) {
        done(out_of_memory("running an operation"));
      } catch (const std::exception& x) {
        done(make_error(errc::invalid_argument, std::string("internal error: ") + x.what()));
      }
      return;
    }
    done(std::move(**out));
  });
}

// The blocking form of an asynchronous operation: a private io_context run to completion on
// the calling thread (sync_wait).
template <class T, class Start>
result<T> run_blocking(Start start) {
  asio::io_context ctx;
  std::optional<result<T>> out;
  const auto* outer = blocking_context;
  blocking_context = &ctx;
  try {
    start(ctx.get_executor(), io::completion<T>([&out](result<T> r) { out.emplace(std::move(r)); }));
  } catch (...) {
    blocking_context = outer;
    throw;
  }
  blocking_context = outer;
  // A handler that throws (std::bad_alloc) leaves ctx.run(); the context must still run until
  // every operation in flight has completed — they hold buffers and post back to it — before
  // it may be destroyed. The operation then reports running out of memory.
  bool oom = false;
  while (true) {
    try {
      ctx.run();
      break;
    } catch (const std::bad_alloc&) {
      oom = true;
      ctx.restart();
    }
  }
  if (!out || (oom && *out)) return out_of_memory("running a blocking operation");
  if (!out) return make_error(errc::invalid_argument, "internal error: operation did not complete");
  return std::move(*out);
}

// Runs `f` when destroyed unless disarmed: closes handles (io::close_detached) when an exception
// — an allocation failure — destroys a coroutine's frame before its awaited cleanup ran
// (tests/test_alloc.cpp). Disarm it, or remove each handle from what `f` closes, as the awaited
// cleanup closes them, so that nothing is closed twice.
template <class F>
class on_unwind {
 public:
  explicit on_unwind(F f) : f_(std::move(f)) {}
  on_unwind(const on_unwind&) = delete;
  on_unwind& operator=(const on_unwind&) = delete;
  ~on_unwind() {
    if (armed_) f_();
  }
  void disarm() { armed_ = false; }

 private:
  F f_;
  bool armed_ = true;
};

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
  // completion that never comes (an allocation failure did: tests/test_alloc.cpp).
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
      (void)co_await io::async_op<void>(ex_, [this](io::completion<void> c) { waiter_ = std::move(c); }, use_awaitable);
    if (first_error_) co_return *first_error_;
    co_return success();
  }

 private:
  asio::any_io_executor ex_;
  std::size_t in_flight_ = 0;
  std::optional<error> first_error_;
  io::completion<void> waiter_;
};

// The directory handle and base name of a prefix, opened for reading.
struct opened_prefix {
  io::handle dir;
  std::string dir_path;
  std::string base;
};

// Opens the directory of `prefix` (not creating it). not_found when it does not exist.
task<opened_prefix> open_prefix_dir(io::backend& b, std::string_view prefix);

// Reads and decodes the manifest of `base` in an open directory.
task<format::manifest> load_manifest(io::backend& b, const opened_prefix& p, std::string_view prefix);

// Closes a handle, ignoring errors (used on paths that already failed or only read).
asio::awaitable<void> close_quietly(io::backend& b, io::handle h);

}  // namespace meshckpt::detail
