#include "http.hpp"

#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>

#include <cerrno>
#include <limits>
#include <random>

#include "sigv4.hpp"

namespace meshckpt::backends::s3 {

namespace beast = boost::beast;
namespace http = beast::http;
using asio::use_awaitable;
using asio::ip::tcp;

struct http_client::connection {
  std::unique_ptr<beast::tcp_stream> plain;
  std::unique_ptr<beast::ssl_stream<beast::tcp_stream>> tls;
  beast::flat_buffer buffer;
  beast::tcp_stream& lowest() { return plain ? *plain : beast::get_lowest_layer(*tls); }
};

namespace {

// host and port of "http://HOST[:PORT][/]" / "https://...".
struct endpoint {
  bool tls = false;
  std::string host, port;
};

result<endpoint> parse_endpoint(const s3_options& opt) {
  std::string url = opt.endpoint.empty() ? "https://s3." + opt.region + ".amazonaws.com" : opt.endpoint;
  endpoint e;
  std::string_view rest = url;
  if (rest.starts_with("https://")) {
    e.tls = true;
    rest.remove_prefix(8);
  } else if (rest.starts_with("http://")) {
    rest.remove_prefix(7);
  } else {
    return make_error(errc::invalid_argument, "S3 endpoint \"" + url + "\" is not an http:// or https:// URL");
  }
  while (rest.ends_with('/')) rest.remove_suffix(1);
  if (rest.find('/') != std::string_view::npos)
    return make_error(errc::invalid_argument, "S3 endpoint \"" + url + "\" has a path; give only scheme, host and port");
  auto colon = rest.rfind(':');
  if (colon != std::string_view::npos && rest.find(']') == std::string_view::npos) {
    e.host = std::string(rest.substr(0, colon));
    e.port = std::string(rest.substr(colon + 1));
  } else {
    e.host = std::string(rest);
    e.port = e.tls ? "443" : "80";
  }
  if (e.host.empty() || e.port.empty() || e.port.find_first_not_of("0123456789") != std::string::npos)
    return make_error(errc::invalid_argument, "S3 endpoint \"" + url + "\": bad host or port");
  return e;
}

std::string decode_entities(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '&') {
      out += s[i];
      continue;
    }
    auto semi = s.find(';', i);
    if (semi == std::string_view::npos) {
      out += s[i];
      continue;
    }
    std::string_view ent = s.substr(i + 1, semi - i - 1);
    if (ent == "amp")
      out += '&';
    else if (ent == "lt")
      out += '<';
    else if (ent == "gt")
      out += '>';
    else if (ent == "quot")
      out += '"';
    else if (ent == "apos")
      out += '\'';
    else if (ent.starts_with("#x") || ent.starts_with("#")) {
      unsigned long cp = std::strtoul(std::string(ent.substr(ent[1] == 'x' ? 2 : 1)).c_str(), nullptr, ent[1] == 'x' ? 16 : 10);
      if (cp < 0x80) {
        out += static_cast<char>(cp);
      } else if (cp < 0x800) {
        out += static_cast<char>(0xC0 | (cp >> 6));
        out += static_cast<char>(0x80 | (cp & 0x3F));
      } else {
        out += static_cast<char>(0xE0 | ((cp >> 12) & 0x0F));
        out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        out += static_cast<char>(0x80 | (cp & 0x3F));
      }
    } else {
      out.append(s.substr(i, semi - i + 1));
    }
    i = semi;
  }
  return out;
}

bool retryable_status(unsigned s) { return s == 429 || s == 500 || s == 502 || s == 503 || s == 504; }

}  // namespace

std::optional<std::string> xml_tag(std::string_view xml, std::string_view tag, std::size_t* from) {
  std::size_t start = from ? *from : 0;
  const std::string open = "<" + std::string(tag) + ">", close = "</" + std::string(tag) + ">";
  auto a = xml.find(open, start);
  if (a == std::string_view::npos) return std::nullopt;
  auto b = xml.find(close, a + open.size());
  if (b == std::string_view::npos) return std::nullopt;
  if (from) *from = b + close.size();
  return decode_entities(xml.substr(a + open.size(), b - a - open.size()));
}

http_client::http_client(const s3_options& opt, asio::io_context& ctx) : opt_(opt), ctx_(ctx) {}
http_client::~http_client() = default;

result<std::unique_ptr<http_client>> http_client::make(const s3_options& opt, asio::io_context& ctx) {
  BOOST_OUTCOME_TRY(auto e, parse_endpoint(opt));
  std::unique_ptr<http_client> c(new http_client(opt, ctx));
  c->tls_ = e.tls;
  c->host_ = e.host;
  c->port_ = e.port;
  if (e.tls) {
    c->ssl_.emplace(asio::ssl::context::tls_client);
    boost::system::error_code ec;
    c->ssl_->set_default_verify_paths(ec);
    if (!opt.ca_bundle.empty()) {
      c->ssl_->load_verify_file(opt.ca_bundle, ec);
      if (ec) return make_error(errc::invalid_argument, "AWS_CA_BUNDLE " + opt.ca_bundle + ": " + ec.message());
    }
    c->ssl_->set_verify_mode(opt.verify_tls ? asio::ssl::verify_peer : asio::ssl::verify_none);
  }
  return c;
}

std::string http_client::describe(const http_request& r) {
  std::string s = r.method + " s3://" + r.bucket + (r.key.empty() ? "" : "/" + r.key);
  for (const char* sub : {"uploads", "uploadId", "list-type"})
    if (r.query.contains(sub)) {
      s += std::string(" (") + (std::string_view(sub) == "list-type" ? "list" : sub) + ")";
      break;
    }
  return s;
}

error http_client::response_error(const http_request& r, const http_response& res, int code, std::string_view tries) {
  std::string msg = describe(r) + ": HTTP " + std::to_string(res.status);
  if (auto c = xml_tag(res.body, "Code")) msg += " " + *c;
  if (auto m = xml_tag(res.body, "Message"); m && !m->empty()) msg += ": " + *m;
  if (!tries.empty()) msg += " (" + std::string(tries) + ")";
  return error{std::error_code(code, std::system_category()), std::move(msg)};
}

s3_request_counts http_client::counts() const { return {put_.load(), get_.load(), list_.load(), del_.load(), retries_.load()}; }

std::unique_ptr<http_client::connection> http_client::take_idle() {
  std::lock_guard lk(mu_);
  if (idle_.empty()) return nullptr;
  auto c = std::move(idle_.back());
  idle_.pop_back();
  return c;
}

void http_client::put_idle(std::unique_ptr<connection> c) {
  std::lock_guard lk(mu_);
  if (idle_.size() < opt_.connections) idle_.push_back(std::move(c));
}

asio::awaitable<result<std::unique_ptr<http_client::connection>>> http_client::connect() {
  auto ex = co_await asio::this_coro::executor;
  boost::system::error_code ec;
  tcp::resolver resolver(ex);
  auto found = co_await resolver.async_resolve(host_, port_, asio::redirect_error(use_awaitable, ec));
  if (ec) co_return make_error(errc::not_found, "S3 endpoint " + host_ + ":" + port_ + ": cannot resolve: " + ec.message());
  auto c = std::make_unique<connection>();
  if (tls_)
    c->tls = std::make_unique<beast::ssl_stream<beast::tcp_stream>>(ex, *ssl_);
  else
    c->plain = std::make_unique<beast::tcp_stream>(ex);
  c->lowest().expires_after(opt_.request_timeout);
  co_await c->lowest().async_connect(found, asio::redirect_error(use_awaitable, ec));
  if (ec) co_return error{ec, "connect to S3 endpoint " + host_ + ":" + port_ + ": " + ec.message()};
  c->lowest().socket().set_option(tcp::no_delay(true), ec);
  if (tls_) {
    if (!SSL_set_tlsext_host_name(c->tls->native_handle(), host_.c_str()))
      co_return make_error(errc::invalid_argument, "TLS: cannot set the server name " + host_);
    // verify_peer alone checks the chain, not whom it names: a certificate for another host
    // would pass.
    if (opt_.verify_tls) c->tls->set_verify_callback(asio::ssl::host_name_verification(host_));
    co_await c->tls->async_handshake(asio::ssl::stream_base::client, asio::redirect_error(use_awaitable, ec));
    if (ec) co_return error{ec, "TLS handshake with " + host_ + ":" + port_ + ": " + ec.message()};
  }
  co_return std::move(c);
}

asio::awaitable<result<http_response>> http_client::exchange(connection& c, const http_request& r) {
  // Path-style: /BUCKET/KEY on the endpoint's host; virtual-hosted: /KEY on BUCKET.HOST.
  std::string host = opt_.path_style ? host_ : r.bucket + "." + host_;
  if (port_ != (tls_ ? "443" : "80")) host += ":" + port_;
  std::string path = opt_.path_style ? "/" + uri_encode(r.bucket, false) : std::string();
  path += "/" + uri_encode(r.key, true);
  if (opt_.path_style && r.key.empty()) path = "/" + uri_encode(r.bucket, false);

  auto headers = r.headers;
  headers["host"] = host;
  const std::string payload = r.sign_payload ? sha256_hex(r.body) : "UNSIGNED-PAYLOAD";
  credentials cred{opt_.access_key, opt_.secret_key, opt_.session_token, opt_.region};
  request_to_sign s{r.method, path, &r.query, &headers, payload};
  sign(s, cred, std::chrono::system_clock::now());

  std::string target = path;
  if (!r.query.empty()) target += "?" + canonical_query(r.query);
  http::request<http::buffer_body> req{http::string_to_verb(r.method), target, 11};
  for (const auto& [k, v] : headers) req.set(k, v);
  req.set(http::field::user_agent, "meshckpt");
  req.body().data = const_cast<std::byte*>(r.body.data());
  req.body().size = r.body.size();
  req.body().more = false;
  // A length, never chunked: RGW refuses chunked requests (501), and S3 wants a length.
  if (!r.body.empty() || r.method == "PUT" || r.method == "POST") req.content_length(r.body.size());

  boost::system::error_code ec;
  c.lowest().expires_after(opt_.request_timeout);
  if (c.plain)
    co_await http::async_write(*c.plain, req, asio::redirect_error(use_awaitable, ec));
  else
    co_await http::async_write(*c.tls, req, asio::redirect_error(use_awaitable, ec));
  if (ec) co_return error{ec, describe(r) + ": sending: " + ec.message()};

  http::response_parser<http::string_body> parser;
  parser.body_limit(std::numeric_limits<std::uint64_t>::max());
  if (r.method == "HEAD") parser.skip(true);
  c.lowest().expires_after(opt_.request_timeout);
  if (c.plain)
    co_await http::async_read(*c.plain, c.buffer, parser, asio::redirect_error(use_awaitable, ec));
  else
    co_await http::async_read(*c.tls, c.buffer, parser, asio::redirect_error(use_awaitable, ec));
  if (ec) co_return error{ec, describe(r) + ": receiving: " + ec.message()};
  auto res = parser.release();
  http_response out;
  out.status = res.result_int();
  for (const auto& f : res) {
    std::string name(f.name_string());
    for (auto& ch : name) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    out.headers[name] = std::string(f.value());
  }
  out.body = std::move(res.body());
  if (!res.keep_alive()) out.headers["connection"] = "close";
  co_return out;
}

asio::awaitable<result<http_response>> http_client::send(http_request r, request_kind kind) {
  auto ex = co_await asio::this_coro::executor;
  // At most `connections` requests at once: more would only queue inside the server (and time
  // out there), as the writers' many parts in flight would otherwise make them.
  while (active_ >= opt_.connections) {
    asio::steady_timer turn(ex, std::chrono::hours(24));
    queued_.push_back(&turn);
    boost::system::error_code ec;
    co_await turn.async_wait(asio::redirect_error(use_awaitable, ec));
    std::erase(queued_, &turn);
  }
  ++active_;
  struct release {
    http_client* self;
    ~release() {
      --self->active_;
      if (!self->queued_.empty()) self->queued_.front()->cancel();
    }
  } done_with_turn{this};
  auto res = co_await attempt(std::move(r), kind);
  co_return res;
}

asio::awaitable<result<http_response>> http_client::attempt(http_request r, request_kind kind) {
  auto ex = co_await asio::this_coro::executor;
  const auto first = std::chrono::steady_clock::now();
  thread_local std::minstd_rand jitter(std::random_device{}());
  std::optional<error> last_error;
  http_response last;
  int tries = 0;
  for (;;) {
    ++tries;
    (kind == request_kind::put ? put_ : kind == request_kind::get ? get_ : kind == request_kind::list ? list_ : del_)++;
    auto c = take_idle();
    bool reused = c != nullptr;
    result<http_response> res = make_error(errc::unsupported, "unreached");
    if (!c) {
      auto made = co_await connect();
      if (made)
        c = std::move(*made);
      else
        res = made.error();
    }
    if (c) res = co_await exchange(*c, r);
    if (res && !retryable_status(res->status)) {
      if (res->headers.count("connection") == 0) put_idle(std::move(c));
      co_return res;
    }
    // A reused connection the server closed while idle fails on its first request: try again
    // at once on a new one, without counting it as a retry.
    if (!res && reused && tries == 1) {
      --tries;
      continue;
    }
    if (res) {
      last = std::move(*res);
      last_error.reset();
      if (last.headers.count("connection") == 0 && c) put_idle(std::move(c));
    } else {
      last_error = res.error();
    }
    auto elapsed = std::chrono::steady_clock::now() - first;
    if (tries >= opt_.max_attempts || elapsed >= opt_.retry_budget) break;
    ++retries_;
    // Exponential backoff from 50 ms, capped at 5 s, with full jitter.
    auto cap = std::min<std::int64_t>(5000, 50LL << std::min(tries - 1, 10));
    std::uniform_int_distribution<std::int64_t> pick(cap / 2, cap);
    asio::steady_timer t(ex, std::chrono::milliseconds(pick(jitter)));
    boost::system::error_code ec;
    co_await t.async_wait(asio::redirect_error(use_awaitable, ec));
  }
  const std::string tries_text = "after " + std::to_string(tries) + (tries == 1 ? " try" : " tries");
  if (last_error) co_return with_context(*last_error, tries_text);
  co_return response_error(r, last, EIO, tries_text);
}

}  // namespace meshckpt::backends::s3
