#pragma once
// Private: the S3 backend's HTTP/1.1 client. Requests are signed (SigV4), sent over keep-alive
// connections from a pool (plain TCP or TLS), and retried with exponential backoff and jitter
// when the failure is one a retry can cure: 5xx and 429 (SlowDown), resets, timeouts. Each
// request is a coroutine on the backend's io_context.

#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/asio/steady_timer.hpp>

#include "meshckpt/backends/s3.hpp"
#include "meshckpt/error.hpp"

namespace meshckpt::backends::s3 {

namespace asio = boost::asio;

struct http_request {
  std::string method;  // GET, HEAD, PUT, POST, DELETE
  std::string bucket;
  std::string key;  // empty: the bucket itself
  std::map<std::string, std::string> query;
  std::map<std::string, std::string> headers;  // lowercase names
  std::span<const std::byte> body;
  bool sign_payload = true;  // false: "UNSIGNED-PAYLOAD" (large parts: no second pass over the bytes)
};

struct http_response {
  unsigned status = 0;
  std::map<std::string, std::string> headers;  // lowercase names
  std::string body;
};

// Which counter a request adds to.
enum class request_kind { put, get, list, del };

class http_client {
 public:
  static result<std::unique_ptr<http_client>> make(const s3_options& opt, asio::io_context& ctx);
  ~http_client();

  // Sends `r`, retried as the options allow; a response of any status that was not retried is
  // returned as a value (the caller decides what it means), a transport failure after the last
  // try as an error naming the request.
  asio::awaitable<result<http_response>> send(http_request r, request_kind kind);

  // "PUT s3://BUCKET/KEY" (with the query's subresource, e.g. "?uploads"), for messages.
  static std::string describe(const http_request& r);
  // The error for response `res` to `r`: HTTP status, S3 error code and message, e.g.
  // "PUT s3://b/k: HTTP 412 PreconditionFailed: At least one of the preconditions you specified
  // did not hold". `code` is the errno to report (ENOENT for 404, ...).
  static error response_error(const http_request& r, const http_response& res, int code, std::string_view tries = {});

  s3_request_counts counts() const;

 private:
  struct connection;
  http_client(const s3_options& opt, asio::io_context& ctx);
  asio::awaitable<result<std::unique_ptr<connection>>> connect();
  asio::awaitable<result<http_response>> exchange(connection& c, const http_request& r);
  asio::awaitable<result<http_response>> attempt(http_request r, request_kind kind);  // the retry loop
  std::unique_ptr<connection> take_idle();
  void put_idle(std::unique_ptr<connection> c);

  s3_options opt_;
  asio::io_context& ctx_;
  bool tls_ = false;
  std::string host_, port_;
  std::optional<asio::ssl::context> ssl_;
  std::mutex mu_;
  std::vector<std::unique_ptr<connection>> idle_;
  // Requests in flight, at most `connections`; the rest wait their turn (on the backend's one
  // thread: no lock).
  std::size_t active_ = 0;
  std::vector<asio::steady_timer*> queued_;
  std::atomic<std::uint64_t> put_{0}, get_{0}, list_{0}, del_{0}, retries_{0};
};

// The text of the first <TAG>...</TAG> in `xml` at or after `from` (entities decoded), or
// nullopt; `from` moves past it.
std::optional<std::string> xml_tag(std::string_view xml, std::string_view tag, std::size_t* from = nullptr);

}  // namespace meshckpt::backends::s3
