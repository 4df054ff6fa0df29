#pragma once
/// \file
/// Asio face of the backend interface: every backend operation as an asynchronous operation
/// with a completion token (`asio::use_awaitable`, `asio::use_future`, a callback), completing
/// with `result<T>` on the handler's associated executor. Include this only where you await IO
/// (it pulls in Asio).

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/associated_executor.hpp>
#include <boost/asio/associated_cancellation_slot.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/cancellation_type.hpp>
#include <boost/asio/execution/outstanding_work.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/prefer.hpp>

#include <memory>
#include <optional>
#include <stop_token>

#include "meshckpt/io/backend.hpp"

namespace meshckpt::io {

namespace asio = boost::asio;

namespace detail {
template <class Handler, class Executor>
struct op_state {
  Handler h;
  Executor ex;
};
}  // namespace detail

namespace detail {

// What a cancellation slot runs: a stop request to the operation's stop token.
struct request_stop {
  std::shared_ptr<std::stop_source> source;
  void operator()(asio::cancellation_type type) const {
    if (type != asio::cancellation_type::none) source->request_stop();
  }
};

// The initiation of every operation below: `start(completion, stop_token)`, or, with
// `WithExecutor`, `start(completion, stop_token, executor)` where `executor` is the handler's
// associated executor (the caller's: a coroutine's own, a bound one), `ex` when it has none.
template <class T, bool WithExecutor = false>
struct initiate_op {
  asio::any_io_executor ex;

  template <class Handler, class Start>
  void operator()(Handler handler, Start st) const {
    auto caller = asio::get_associated_executor(handler, ex);
    auto hex = asio::prefer(caller, asio::execution::outstanding_work.tracked);
    auto slot = asio::get_associated_cancellation_slot(handler);
    using state = detail::op_state<Handler, decltype(hex)>;
    // TRICKY: with use_awaitable, Asio 1.81 runs this initiation after the coroutine has
    // suspended; an exception thrown here escapes to the executor and destroys the
    // coroutine's frames, buffers of IO in flight included. So an allocation failure is
    // delivered to the handler as an error instead (tests/reliability/test_alloc.cpp). Allocate
    // before moving the handler, so that it survives a failure.
    std::shared_ptr<std::optional<state>> s;
    std::shared_ptr<std::stop_source> stop;
    try {
      s = std::make_shared<std::optional<state>>();
      // Per-operation cancellation (bind_cancellation_slot, awaitable_operators' ||): the
      // slot's signal becomes a stop request the operation honours where it can.
      if (slot.is_connected()) {
        stop = std::make_shared<std::stop_source>();
        slot.template emplace<request_stop>(request_stop{stop});
      }
    } catch (const std::bad_alloc&) {
      std::move(handler)(result<T>(out_of_memory("starting an IO operation")));
      return;
    }
    s->emplace(state{std::move(handler), std::move(hex)});
    try {
      completion<T> done([s, slot, connected = static_cast<bool>(stop)](result<T> r) mutable {
        auto ex2 = (*s)->ex;
        asio::post(ex2, [s, slot, connected, r = std::move(r)]() mutable {
          if (connected) slot.clear();  // on the handler's executor, before the handler runs
          std::move((*s)->h)(std::move(r));
        });
      });
      if constexpr (WithExecutor)
        st(std::move(done), stop ? stop->get_token() : std::stop_token(), asio::any_io_executor(caller));
      else
        st(std::move(done), stop ? stop->get_token() : std::stop_token());
    } catch (const std::bad_alloc&) {
      // A backend throws only before it took the operation (io/backend.hpp): the completion
      // is gone unless someone still holds it, in which case it will be called.
      if (s.use_count() != 1) throw;
      if (stop) slot.clear();
      auto h = std::move((*s)->h);
      s.reset();
      std::move(h)(result<T>(out_of_memory("starting an IO operation")));
    }
  }
};

}  // namespace detail

/// Runs `start(completion<T>, std::stop_token)` and completes `token` with its result on the
/// handler's associated executor (default `ex`). Outstanding work is tracked on that executor
/// until the completion is delivered, so `io_context::run()` does not return early while the
/// backend works on another thread. When the handler has a cancellation slot
/// (`asio::bind_cancellation_slot`, `awaitable_operators`), a cancellation signal requests a
/// stop on the token passed to `start`; otherwise the token can never stop.
template <class T, class Start, class Token>
auto async_stoppable_op(asio::any_io_executor ex, Start start, Token&& token) {
  return asio::async_initiate<Token, void(result<T>)>(detail::initiate_op<T>{ex}, token, std::move(start));
}

/// `async_stoppable_op` whose work runs where the caller runs:
/// `start(completion<T>, std::stop_token, asio::any_io_executor caller)`, with `caller` the
/// handler's associated executor (`ex` when the handler has none: `asio::use_future`, a plain
/// callback).
template <class T, class Start, class Token>
auto async_stoppable_op_at_caller(asio::any_io_executor ex, Start start, Token&& token) {
  return asio::async_initiate<Token, void(result<T>)>(detail::initiate_op<T, true>{ex}, token, std::move(start));
}

/// `async_stoppable_op` for operations that cannot stop half-way (single backend calls):
/// `start(completion<T>)`.
template <class T, class Start, class Token>
auto async_op(asio::any_io_executor ex, Start start, Token&& token) {
  return async_stoppable_op<T>(
      ex, [start = std::move(start)](completion<T> c, std::stop_token) mutable { start(std::move(c)); }, std::forward<Token>(token));
}

/// `backend::open_dir` as an asynchronous operation.
template <class Token>
auto async_open_dir(backend& b, asio::any_io_executor ex, std::string path, bool create, Token&& t) {
  return async_op<handle>(
      ex, [&b, path = std::move(path), create](completion<handle> c) mutable { b.open_dir(std::move(path), create, std::move(c)); },
      std::forward<Token>(t));
}

/// `backend::open` as an asynchronous operation.
template <class Token>
auto async_open(backend& b, asio::any_io_executor ex, handle dir, std::string name, open_mode m, Token&& t) {
  return async_op<handle>(
      ex, [&b, dir, name = std::move(name), m](completion<handle> c) mutable { b.open(dir, std::move(name), m, std::move(c)); },
      std::forward<Token>(t));
}

/// `backend::size` as an asynchronous operation.
template <class Token>
auto async_size(backend& b, asio::any_io_executor ex, handle f, Token&& t) {
  return async_op<std::uint64_t>(
      ex, [&b, f](completion<std::uint64_t> c) { b.size(f, std::move(c)); }, std::forward<Token>(t));
}

/// `backend::read` as an asynchronous operation.
template <class Token>
auto async_read(backend& b, asio::any_io_executor ex, handle f, std::uint64_t off, std::span<std::byte> buf, Token&& t) {
  return async_op<std::size_t>(
      ex, [&b, f, off, buf](completion<std::size_t> c) { b.read(f, off, buf, std::move(c)); }, std::forward<Token>(t));
}

/// `backend::write` as an asynchronous operation.
template <class Token>
auto async_write(backend& b, asio::any_io_executor ex, handle f, std::uint64_t off, std::span<const std::byte> buf, Token&& t) {
  return async_op<void>(
      ex, [&b, f, off, buf](completion<void> c) { b.write(f, off, buf, std::move(c)); }, std::forward<Token>(t));
}

/// `backend::truncate` as an asynchronous operation.
template <class Token>
auto async_truncate(backend& b, asio::any_io_executor ex, handle f, std::uint64_t size, Token&& t) {
  return async_op<void>(
      ex, [&b, f, size](completion<void> c) { b.truncate(f, size, std::move(c)); }, std::forward<Token>(t));
}

/// `backend::fsync` as an asynchronous operation.
template <class Token>
auto async_fsync(backend& b, asio::any_io_executor ex, handle f, Token&& t) {
  return async_op<void>(
      ex, [&b, f](completion<void> c) { b.fsync(f, std::move(c)); }, std::forward<Token>(t));
}

/// `backend::close` as an asynchronous operation.
template <class Token>
auto async_close(backend& b, asio::any_io_executor ex, handle f, Token&& t) {
  return async_op<void>(
      ex, [&b, f](completion<void> c) { b.close(f, std::move(c)); }, std::forward<Token>(t));
}

/// `backend::rename` as an asynchronous operation.
template <class Token>
auto async_rename(backend& b, asio::any_io_executor ex, handle dir, std::string from, std::string to, Token&& t) {
  return async_op<void>(
      ex,
      [&b, dir, from = std::move(from), to = std::move(to)](completion<void> c) mutable {
        b.rename(dir, std::move(from), std::move(to), std::move(c));
      },
      std::forward<Token>(t));
}

/// `backend::unlink` as an asynchronous operation.
template <class Token>
auto async_unlink(backend& b, asio::any_io_executor ex, handle dir, std::string name, Token&& t) {
  return async_op<void>(
      ex, [&b, dir, name = std::move(name)](completion<void> c) mutable { b.unlink(dir, std::move(name), std::move(c)); },
      std::forward<Token>(t));
}

/// `backend::list` as an asynchronous operation.
template <class Token>
auto async_list(backend& b, asio::any_io_executor ex, handle dir, Token&& t) {
  return async_op<std::vector<dir_entry>>(
      ex, [&b, dir](completion<std::vector<dir_entry>> c) { b.list(dir, std::move(c)); }, std::forward<Token>(t));
}

}  // namespace meshckpt::io
