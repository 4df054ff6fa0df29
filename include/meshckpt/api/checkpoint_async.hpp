#pragma once
/// \file
/// Asynchronous forms of `checkpoint::save`, `write` and `restore`/`read` with completion tokens:
///
///     auto path = co_await async_save(ckpt, "ckpts/run", asio::use_awaitable);  // result<std::string>
///     auto fut  = async_save(ckpt, "ckpts/run", asio::use_future);             // future<result<std::string>>
///     async_save(ckpt, "ckpts/run", [](result<std::string> r) { ... });
///
/// The graph and host values (scalars, bytes) are captured when the call is made; tensors must
/// not be modified until completion. At most one write runs at a time per checkpoint; later
/// ones queue behind it. Errors of a background write reach its completion, and `sync()`.
///
/// Each runs as one coroutine chain on the caller's executor: the awaiting coroutine's, or the
/// one bound to the handler (`asio::bind_executor`); with none (`asio::use_future`, a plain
/// callback) on the library's engine. The copies, checksums and IO go to the library's CPU
/// pool and backends as always. That executor must keep running until the call completes, and
/// a thread running it must not block on this checkpoint meanwhile: a blocking `save`,
/// `restore`, `sync` (or a copy-mode `async_save`) made there while such a call is unfinished
/// fails with `errc::unsupported` instead of waiting forever, and destroying the checkpoint
/// there then aborts with a message (as a joinable std::thread does).
///
/// Saves honour Asio per-operation cancellation as well as `write_options::stop`: a save whose
/// handler has a cancellation slot (`asio::bind_cancellation_slot(signal.slot(), token)`, or an
/// `awaitable_operators` `||` with a timer) and is cancelled before its commit completes with
/// `errc::cancelled` and leaves no new file (the previous checkpoint of that name stands); once
/// committed, the checkpoint stands and the save reports it.

#include <boost/asio/system_executor.hpp>

#include "meshckpt/api/checkpoint.hpp"
#include "meshckpt/api/checkpoint_manager.hpp"
#include "meshckpt/io/async.hpp"

namespace meshckpt {

namespace detail {
void start_latest_checkpoint(boost::asio::any_io_executor ex, std::string dir, io::completion<std::optional<std::string>> done);

/// Where a checkpoint's job runs: the caller's executor (the engine when it is the system
/// executor, as for `asio::use_future` or a plain callback).
struct job_executor {
  boost::asio::any_io_executor ex;
};

/// The calls below, with the job on the caller's executor `where`.
struct async_entry {
  static void save(checkpoint& c, boost::asio::any_io_executor where, std::string prefix, bool numbered, io::completion<std::string> done,
                   std::stop_token stop);
  static void restore(checkpoint& c, boost::asio::any_io_executor where, std::optional<std::string> path, bool is_restore,
                      io::completion<load_status> done);
  static void save(checkpoint_manager& m, boost::asio::any_io_executor where, std::optional<std::int64_t> checkpoint_number,
                   bool check_interval, io::completion<std::optional<std::string>> done, std::stop_token stop);
};
}  // namespace detail

/// Asynchronous `latest_checkpoint(dir)`: reads `dir`'s `checkpoint` state file and checks that
/// the checkpoint it names has its manifest (or, written by TensorFlow, its index), as
/// coroutines on `ex`; completes with the path or
/// nullopt (`result<std::optional<std::string>>`).
template <class Token>
auto async_latest_checkpoint(boost::asio::any_io_executor ex, std::string dir, Token&& token) {
  return io::async_op<std::optional<std::string>>(
      ex,
      [ex, dir = std::move(dir)](io::completion<std::optional<std::string>> done) mutable {
        detail::start_latest_checkpoint(ex, std::move(dir), std::move(done));
      },
      std::forward<Token>(token));
}

/// Asynchronous `checkpoint::save`: completes with "prefix-N" after the commit and the state
/// file update.
template <class Token>
auto async_save(checkpoint& c, std::string prefix, Token&& token) {
  return io::async_stoppable_op_at_caller<std::string>(
      boost::asio::system_executor(),
      [&c, prefix = std::move(prefix)](io::completion<std::string> done, std::stop_token stop, boost::asio::any_io_executor where) mutable {
        detail::async_entry::save(c, std::move(where), std::move(prefix), true, std::move(done), std::move(stop));
      },
      std::forward<Token>(token));
}

/// Asynchronous `checkpoint::write`.
template <class Token>
auto async_write(checkpoint& c, std::string prefix, Token&& token) {
  return io::async_stoppable_op_at_caller<std::string>(
      boost::asio::system_executor(),
      [&c, prefix = std::move(prefix)](io::completion<std::string> done, std::stop_token stop, boost::asio::any_io_executor where) mutable {
        detail::async_entry::save(c, std::move(where), std::move(prefix), false, std::move(done), std::move(stop));
      },
      std::forward<Token>(token));
}

/// Asynchronous `checkpoint::restore` (runs after writes queued before it).
template <class Token>
auto async_restore(checkpoint& c, std::optional<std::string> path, Token&& token) {
  return io::async_stoppable_op_at_caller<load_status>(
      boost::asio::system_executor(),
      [&c, path = std::move(path)](io::completion<load_status> done, std::stop_token, boost::asio::any_io_executor where) mutable {
        detail::async_entry::restore(c, std::move(where), std::move(path), true, std::move(done));
      },
      std::forward<Token>(token));
}

/// Asynchronous `checkpoint::read`.
template <class Token>
auto async_read(checkpoint& c, std::string path, Token&& token) {
  return io::async_stoppable_op_at_caller<load_status>(
      boost::asio::system_executor(),
      [&c, path = std::move(path)](io::completion<load_status> done, std::stop_token, boost::asio::any_io_executor where) mutable {
        detail::async_entry::restore(c, std::move(where), std::move(path), false, std::move(done));
      },
      std::forward<Token>(token));
}

/// Asynchronous `checkpoint_manager::save(checkpoint_number, check_interval)`: completes with
/// the path, or nullopt when the interval skipped this step, after the commit, the state file
/// and retention. The completion token comes last, as in every async call.
template <class Token>
auto async_save(checkpoint_manager& m, std::optional<std::int64_t> checkpoint_number, bool check_interval, Token&& token) {
  return io::async_stoppable_op_at_caller<std::optional<std::string>>(
      boost::asio::system_executor(),
      [&m, checkpoint_number, check_interval](io::completion<std::optional<std::string>> done, std::stop_token stop,
                                              boost::asio::any_io_executor where) mutable {
        detail::async_entry::save(m, std::move(where), checkpoint_number, check_interval, std::move(done), std::move(stop));
      },
      std::forward<Token>(token));
}

/// Asynchronous `checkpoint_manager::save()` (the next number, interval checked).
template <class Token>
auto async_save(checkpoint_manager& m, Token&& token) {
  return async_save(m, std::nullopt, true, std::forward<Token>(token));
}

/// Waits, as an asynchronous operation, until a lazy save's snapshot is taken (the tensors may
/// be modified): `co_await async_wait_snapshot(pending, asio::use_awaitable)` → `result<void>`.
template <class T, class Token>
auto async_wait_snapshot(const lazy_save<T>& s, Token&& token) {
  return io::async_op<void>(
      boost::asio::system_executor(), [s](io::completion<void> done) { s.on_snapshot(std::move(done)); }, std::forward<Token>(token));
}

/// Waits, as an asynchronous operation, until a lazy save committed; completes with its
/// outcome (`result<T>`).
template <class T, class Token>
auto async_wait_committed(const lazy_save<T>& s, Token&& token) {
  return io::async_op<T>(
      boost::asio::system_executor(), [s](io::completion<T> done) { s.on_committed(std::move(done)); }, std::forward<Token>(token));
}

}  // namespace meshckpt
