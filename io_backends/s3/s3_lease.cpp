// The S3 backend, part 3: the writer lease of a prefix (s3_backend_interface::acquire_lease), the
// object store's counterpart of the directory lock. The lease object PREFIX/meshckpt.lease
// reads "HOLDER\nexpires_unix_ms: E\n".

#include <cerrno>
#include <cstdio>
#include <cstdlib>

#include "meshckpt/format/describe.hpp"
#include "s3_backend.hpp"

namespace meshckpt::backends {

using s3::put_if_match;
using s3::unquoted;

namespace {

std::uint64_t now_ms() {
  return static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count());
}

std::string lease_body(const std::string& holder, std::chrono::milliseconds ttl) {
  return holder + "\nexpires_unix_ms: " + std::to_string(now_ms() + static_cast<std::uint64_t>(ttl.count())) + "\n";
}

}  // namespace

struct s3_backend::lease {
  s3_backend* b;
  std::string bucket, key, holder;
  std::chrono::milliseconds ttl;
  std::string etag;  // of our latest write; only the backend's thread touches it
  bool released = false;
  bool finished = false;         // renew() returned
  bool release_counted = false;  // the token's release is counted in running_ until renew() returns
  std::optional<asio::steady_timer> timer;
};

asio::awaitable<void> s3_backend::renew(std::shared_ptr<lease> l) {
  // A release in progress counts as an operation in flight: shutdown() and the destructor wait
  // for its deletion.
  struct finish {
    lease& l;
    ~finish() {
      l.finished = true;
      if (l.release_counted) l.b->op_done();
    }
  } at_end{*l};
  while (!l->released) {
    boost::system::error_code ec;
    l->timer->expires_after(l->ttl / 3);
    co_await l->timer->async_wait(asio::redirect_error(use_awaitable, ec));
    if (l->released) break;
    const std::string body = lease_body(l->holder, l->ttl);
    auto next = co_await put_if_match(*l->b->http_, l->bucket, l->key, std::as_bytes(std::span(body.data(), body.size())), l->etag);
    if (next && *next) {
      l->etag = **next;
      continue;
    }
    // Another writer took it over (ours had expired): nothing to renew or to release.
    std::fprintf(stderr, "meshckpt: lost the writer lease s3://%s/%s: %s\n", l->bucket.c_str(), l->key.c_str(),
                 next ? "another writer took it over" : next.error().what().c_str());
    l->released = true;
    co_return;
  }
  // Released: delete it, if it is still ours.
  auto head = request("HEAD", l->bucket, l->key);
  auto res = co_await l->b->http_->send(head, request_kind::get);
  if (res && res->status == 200 && unquoted(res->headers["etag"]) == unquoted(l->etag)) {
    auto del = request("DELETE", l->bucket, l->key);
    (void)co_await l->b->http_->send(del, request_kind::del);
  }
}

task<std::shared_ptr<const void>> s3_backend::do_acquire_lease(std::string path, std::string holder, std::chrono::milliseconds ttl,
                                                               std::function<bool(const std::string&)> breakable) {
  BOOST_OUTCOME_CO_TRY(auto d, parse_dir(path));
  const std::string key = d.prefix + "meshckpt.lease";
  std::optional<std::string> etag;
  std::string why = "another writer took it at the same moment";
  for (int attempt = 0; attempt < 3 && !etag; ++attempt) {
    const std::string body = lease_body(holder, ttl);
    auto create = request("PUT", d.bucket, key);
    create.body = std::as_bytes(std::span(body.data(), body.size()));
    create.headers["if-none-match"] = "*";
    BOOST_OUTCOME_CO_TRY(auto res, co_await http_->send(create, request_kind::put));
    if (res.status == 200) {
      etag = res.headers["etag"];
      break;
    }
    if (res.status != 412) co_return http_client::response_error(create, res, res.status == 403 ? EACCES : EIO);
    // Held: by whom, until when?
    auto get = request("GET", d.bucket, key);
    BOOST_OUTCOME_CO_TRY(auto held, co_await http_->send(get, request_kind::get));
    if (held.status == 404) continue;  // released meanwhile
    if (held.status != 200) co_return http_client::response_error(get, held, EIO);
    const std::string other = held.body.substr(0, held.body.find('\n'));
    std::uint64_t expires = 0;
    if (auto at = held.body.find("expires_unix_ms: "); at != std::string::npos)
      expires = std::strtoull(held.body.c_str() + at + 17, nullptr, 10);
    if (now_ms() < expires && !breakable(other)) {
      co_return make_error(errc::locked, path + " is being written by " + other + " (its lease s3://" + d.bucket + "/" + key +
                                             " runs until " + format::iso_time(expires) + " and is renewed while it writes)");
    }
    // Expired, or its writer is gone: take it over, unless someone else does first.
    BOOST_OUTCOME_CO_TRY(auto swapped, co_await put_if_match(*http_, d.bucket, key, std::as_bytes(std::span(body.data(), body.size())),
                                                             held.headers["etag"]));
    if (swapped) etag = *swapped;
  }
  if (!etag) co_return make_error(errc::locked, path + ": its writer lease changed hands while taking it (" + why + ")");
  auto l = std::make_shared<lease>();
  l->b = this;
  l->bucket = d.bucket;
  l->key = key;
  l->holder = std::move(holder);
  l->ttl = ttl;
  l->etag = *etag;
  l->timer.emplace(ctx_);
  asio::co_spawn(ctx_, renew(l), asio::detached);
  // The token: its last copy ends the renewals (on the backend's thread), which then delete it.
  co_return std::shared_ptr<const void>(nullptr, [l, ex = ctx_.get_executor()](const void*) {
    l->b->op_started();
    asio::post(ex, [l] {
      l->released = true;
      l->timer->cancel();
      if (l->finished)
        l->b->op_done();
      else
        l->release_counted = true;
    });
  });
}

}  // namespace meshckpt::backends
