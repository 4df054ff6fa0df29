#pragma once
// Private helpers shared by the api/ implementation files.

#include <boost/asio/awaitable.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
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

// Spawns `coro` on `ex` and hands its result to `done` (on `ex`). An exception escaping the
// coroutine (a bug, or std::bad_alloc) is turned into an error rather than lost.
template <class T>
void spawn(asio::any_io_executor ex, task<T> coro, io::completion<T> done) {
  auto out = std::make_shared<std::optional<result<T>>>();
  asio::co_spawn(ex, store_result<T>(std::move(coro), out), [out, done = std::move(done)](std::exception_ptr e) mutable {
    if (e) {
      try {
        std::rethrow_exception(e);
      } catch (const std::bad_alloc&) {
        done(make_error(errc::limit_exceeded, "out of memory"));
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
  start(ctx.get_executor(), io::completion<T>([&out](result<T> r) { out.emplace(std::move(r)); }));
  ctx.run();
  if (!out) return make_error(errc::invalid_argument, "internal error: operation did not complete");
  return std::move(*out);
}

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
