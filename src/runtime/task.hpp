#pragma once
// Private: the coroutine vocabulary of the library. Everything that waits is a `task<T>` (an
// Asio awaitable yielding result<T>) run by `spawn` on an executor; the blocking API faces reach
// it through the one bridge, runtime/bridge.hpp.

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/execution/outstanding_work.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/prefer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <exception>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>

#include "meshckpt/io/backend.hpp"

namespace meshckpt::runtime {

namespace asio = boost::asio;
using asio::use_awaitable;

template <class T>
using task = asio::awaitable<result<T>>;

namespace detail {
template <class T>
asio::awaitable<void> store_result(task<T> coro, std::shared_ptr<std::optional<result<T>>> out) {
  out->emplace(co_await std::move(coro));
}
}  // namespace detail

// The private io_context of the blocking call running on this thread (bridge.hpp), if any.
inline thread_local const asio::io_context* blocking_context = nullptr;

// Where coroutines spawned on `ex` run: a strand of it, or `ex` itself for the private
// io_context of a blocking call (see `spawn`).
inline asio::any_io_executor serialized(asio::any_io_executor ex) {
  const auto* own = ex.target<asio::io_context::executor_type>();
  return own && &own->context() == blocking_context ? ex : asio::any_io_executor(asio::make_strand(ex));
}

// Whether the calling thread is running `ex` (an io_context's run(), or a strand of one, is on
// this thread's stack): work queued on `ex` cannot progress while this thread waits. Executors
// of other kinds are never taken to run here.
inline bool runs_in_this_thread(const asio::any_io_executor& ex) {
  using plain = asio::io_context::executor_type;
  using tracked = std::decay_t<decltype(asio::prefer(std::declval<plain>(), asio::execution::outstanding_work.tracked))>;
  if (!ex) return false;
  if (const auto* e = ex.target<plain>()) return e->running_in_this_thread();
  if (const auto* e = ex.target<tracked>()) return e->running_in_this_thread();
  if (const auto* s = ex.target<asio::strand<plain>>())
    return s->running_in_this_thread() || s->get_inner_executor().running_in_this_thread();
  if (const auto* s = ex.target<asio::strand<asio::any_io_executor>>())
    return s->running_in_this_thread() || runs_in_this_thread(s->get_inner_executor());
  return false;
}

// Spawns `coro` on a strand of `ex` and hands its result to `done` (on that strand). The strand
// matters when several threads run the io_context: the coroutine and the IO completions it
// counts (op_window) then never run at the same time. An exception escaping the coroutine (a
// bug, or std::bad_alloc) is turned into an error rather than lost.
//
// The private io_context of a blocking call (bridge.hpp) is run by its calling thread alone:
// no strand there. Besides saving the work, this keeps blocking calls clear of an Asio 1.81
// bug: when the allocation of a strand's shared_ptr control block fails, the half-built strand
// is destroyed through an unset mutex pointer (a crash instead of std::bad_alloc; found by
// tests/reliability/test_alloc.cpp).
template <class T>
void spawn(asio::any_io_executor ex, task<T> coro, io::completion<T> done) {
  auto out = std::make_shared<std::optional<result<T>>>();
  asio::co_spawn(serialized(std::move(ex)), detail::store_result<T>(std::move(coro), out),
                 [out, done = std::move(done)](std::exception_ptr e) mutable {
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

// Runs `f` when destroyed unless disarmed: closes handles (io::close_detached) when an exception
// — an allocation failure — destroys a coroutine's frame before its awaited cleanup ran
// (tests/reliability/test_alloc.cpp). Disarm it, or remove each handle from what `f` closes, as the awaited
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

}  // namespace meshckpt::runtime
