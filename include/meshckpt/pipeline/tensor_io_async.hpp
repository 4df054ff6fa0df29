#pragma once
/// \file
/// Asynchronous forms of pipeline/tensor_io.hpp. Each takes an executor and a completion token and
/// completes with `result<T>`:
///
///     auto r = co_await async_write_tensors(ex, backend, "ckpts/step", tensors, {}, asio::use_awaitable);
///     std::future<result<write_report>> f = async_write_tensors(ex, backend, p, t, {}, asio::use_future);
///
/// The tensors' memory must stay valid and unmodified until completion. The backend must outlive
/// the operation.

#include <memory>
#include <string>
#include <vector>

#include "meshckpt/pipeline/tensor_io.hpp"
#include "meshckpt/io/async.hpp"

namespace meshckpt {

namespace detail {
void start_write_tensors(boost::asio::any_io_executor ex, io::backend& b, std::string prefix, std::vector<named_tensor> tensors,
                         write_options opt, io::completion<write_report> done);
void start_read_tensors(boost::asio::any_io_executor ex, io::backend& b, std::string prefix, std::vector<named_tensor> targets,
                        read_options opt, io::completion<read_report> done);
void start_read_manifest(boost::asio::any_io_executor ex, io::backend& b, std::string prefix, io::completion<format::manifest> done);
void start_read_tensor_box(boost::asio::any_io_executor ex, io::backend& b, std::string prefix, std::shared_ptr<const format::manifest> m,
                           std::string key, box where, std::span<std::byte> out, read_options opt, io::completion<read_report> done);
void start_verify(boost::asio::any_io_executor ex, io::backend& b, std::string prefix, io::completion<verify_report> done,
                  verify_progress progress = {});
}  // namespace detail

/// Asynchronous `write_tensors`.
template <class Token>
auto async_write_tensors(boost::asio::any_io_executor ex, io::backend& b, std::string prefix, std::vector<named_tensor> tensors,
                         write_options opt, Token&& token) {
  return io::async_op<write_report>(
      ex,
      [ex, &b, prefix = std::move(prefix), tensors = std::move(tensors), opt = std::move(opt)](io::completion<write_report> done) mutable {
        detail::start_write_tensors(ex, b, std::move(prefix), std::move(tensors), std::move(opt), std::move(done));
      },
      std::forward<Token>(token));
}

/// Asynchronous `read_tensors`.
template <class Token>
auto async_read_tensors(boost::asio::any_io_executor ex, io::backend& b, std::string prefix, std::vector<named_tensor> targets,
                        read_options opt, Token&& token) {
  return io::async_op<read_report>(
      ex,
      [ex, &b, prefix = std::move(prefix), targets = std::move(targets), opt](io::completion<read_report> done) mutable {
        detail::start_read_tensors(ex, b, std::move(prefix), std::move(targets), opt, std::move(done));
      },
      std::forward<Token>(token));
}

/// Asynchronous `read_manifest`.
template <class Token>
auto async_read_manifest(boost::asio::any_io_executor ex, io::backend& b, std::string prefix, Token&& token) {
  return io::async_op<format::manifest>(
      ex,
      [ex, &b, prefix = std::move(prefix)](io::completion<format::manifest> done) mutable {
        detail::start_read_manifest(ex, b, std::move(prefix), std::move(done));
      },
      std::forward<Token>(token));
}

/// Asynchronous `read_tensor_box`; `m` is shared with the operation, `out` must outlive it.
template <class Token>
auto async_read_tensor_box(boost::asio::any_io_executor ex, io::backend& b, std::string prefix, std::shared_ptr<const format::manifest> m,
                           std::string key, box where, std::span<std::byte> out, read_options opt, Token&& token) {
  return io::async_op<read_report>(
      ex,
      [ex, &b, prefix = std::move(prefix), m = std::move(m), key = std::move(key), where = std::move(where), out,
       opt = std::move(opt)](io::completion<read_report> done) mutable {
        detail::start_read_tensor_box(ex, b, std::move(prefix), std::move(m), std::move(key), std::move(where), out, std::move(opt),
                                      std::move(done));
      },
      std::forward<Token>(token));
}

/// Asynchronous `verify`.
template <class Token>
auto async_verify(boost::asio::any_io_executor ex, io::backend& b, std::string prefix, Token&& token) {
  return io::async_op<verify_report>(
      ex,
      [ex, &b, prefix = std::move(prefix)](io::completion<verify_report> done) mutable {
        detail::start_verify(ex, b, std::move(prefix), std::move(done));
      },
      std::forward<Token>(token));
}

}  // namespace meshckpt
