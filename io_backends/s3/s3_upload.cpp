// The S3 backend, part 2: writers. Bytes are collected into parts; full parts are uploaded as
// the parts of a multipart upload while later bytes arrive; `fsync` publishes the object whole
// (one PUT, create-only unless `replace`, or CompleteMultipartUpload).

#include <cerrno>
#include <cstring>

#include "s3_backend.hpp"

#include <mutex>
#include <set>

namespace meshckpt::backends {

namespace {

struct live_uploads {
  std::mutex mu;
  std::set<std::string> ids;
};
live_uploads& live() {
  static live_uploads l;
  return l;
}

}  // namespace

void s3::upload_started(const std::string& id) {
  std::lock_guard lk(live().mu);
  live().ids.insert(id);
}
void s3::upload_ended(const std::string& id) {
  std::lock_guard lk(live().mu);
  live().ids.erase(id);
}
bool s3::upload_live(const std::string& id) {
  std::lock_guard lk(live().mu);
  return live().ids.contains(id);
}

void s3_backend::write(io::handle fh, std::uint64_t off, std::span<const std::byte> buf, io::completion<void> done) {
  auto f = find_file(fh);
  if (!f || !f->writer) return done(errno_error(EBADF, "write: bad handle"));
  const std::uint64_t P = opt_.part_bytes;
  std::vector<std::uint64_t> ready;
  {
    std::lock_guard lk(mu_);
    if (f->failed) return done(*f->failed);
    if (f->published) return done(errno_error(EBADF, "write " + f->name + ": already published"));
    std::uint64_t at = off;
    std::size_t from = 0;
    while (from < buf.size()) {
      std::uint64_t idx = at / P, in = at % P;
      std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(P - in, buf.size() - from));
      auto& p = f->parts[idx];
      if (p.started) return done(make_error(errc::invalid_argument, "write " + f->name + ": rewrites bytes already uploaded"));
      if (p.data.empty()) p.data.resize(static_cast<std::size_t>(P));
      std::memcpy(p.data.data() + in, buf.data() + from, n);
      p.received += n;
      at += n;
      from += n;
    }
    f->max_end = std::max(f->max_end, off + buf.size());
    // A full part is uploaded once a byte beyond it arrived: until then it may be the last
    // part, which a truncate still trims.
    for (auto& [idx, p] : f->parts)
      if (!p.started && p.received >= P && f->max_end > (idx + 1) * P) {
        p.started = true;
        ++f->uploading;
        ready.push_back(idx);
      }
  }
  if (ready.empty()) return done(success());
  spawn(upload_parts(f, std::move(ready)), std::move(done));  // back-pressure: the write completes with its parts
}

void s3_backend::truncate(io::handle fh, std::uint64_t n, io::completion<void> done) {
  auto f = find_file(fh);
  if (!f || !f->writer) return done(errno_error(EBADF, "truncate: bad handle"));
  {
    std::lock_guard lk(mu_);
    for (auto& [idx, p] : f->parts)
      if (p.started && (idx + 1) * opt_.part_bytes > n)
        return done(make_error(errc::invalid_argument, "truncate " + f->name + ": below bytes already uploaded"));
    f->truncated = n;
  }
  done(success());
}

task<std::string> s3_backend::upload_id(std::shared_ptr<file> f) {
  for (;;) {
    bool create = false;
    {
      std::lock_guard lk(mu_);
      if (!f->upload_id.empty()) co_return f->upload_id;
      if (f->failed) co_return *f->failed;
      if (!f->creating_upload) create = f->creating_upload = true;
    }
    if (!create) {
      co_await park(f->wake);
      continue;
    }
    auto r = request("POST", f->bucket, f->key);
    r.query = {{"uploads", ""}};
    auto res = co_await http_->send(r, request_kind::put);
    result<std::string> id = make_error(errc::unsupported, "unreached");
    if (!res)
      id = res.error();
    else if (res->status != 200)
      id = http_client::response_error(r, *res, res->status == 403 ? EACCES : EIO);
    else if (auto got = s3::xml_tag(res->body, "UploadId"))
      id = *got;
    else
      id = make_error(errc::corrupt_manifest, http_client::describe(r) + ": the response has no UploadId");
    {
      std::lock_guard lk(mu_);
      f->creating_upload = false;
      if (id) {
        f->upload_id = *id;
        s3::upload_started(*id);
      } else if (!f->failed)
        f->failed = id.error();
    }
    f->wake.wake_all();
    co_return id;
  }
}

task<void> s3_backend::upload_part(std::shared_ptr<file> f, std::uint64_t index, std::size_t bytes) {
  BOOST_OUTCOME_CO_TRY(auto id, co_await upload_id(f));
  std::span<const std::byte> body;
  {
    std::lock_guard lk(mu_);
    auto& p = f->parts[index];
    if (p.data.empty()) p.data.resize(bytes);  // never written: a hole reads as zeros
    body = std::span<const std::byte>(p.data).first(bytes);
  }
  auto r = request("PUT", f->bucket, f->key);
  r.query = {{"partNumber", std::to_string(index + 1)}, {"uploadId", id}};
  r.body = body;
  r.sign_payload = false;
  BOOST_OUTCOME_CO_TRY(auto res, co_await http_->send(r, request_kind::put));
  if (res.status != 200) co_return http_client::response_error(r, res, res.status == 404 ? ENOENT : EIO);
  std::lock_guard lk(mu_);
  f->etags[static_cast<int>(index + 1)] = res.headers["etag"];
  std::vector<std::byte>().swap(f->parts[index].data);
  co_return success();
}

task<void> s3_backend::upload_parts(std::shared_ptr<file> f, std::vector<std::uint64_t> ready) {
  result<void> out = success();
  for (auto idx : ready) {
    auto r = co_await upload_part(f, idx, opt_.part_bytes);
    if (!r && out) out = r;
  }
  {
    std::lock_guard lk(mu_);
    f->uploading -= static_cast<int>(ready.size());
    if (!out && !f->failed) f->failed = out.error();
  }
  f->wake.wake_all();
  co_return out;
}

// Ceph RGW 16 matches `If-Match` only with the ETag unquoted and S3 only with it quoted, so a
// 412 on one form is tried with the other.
asio::awaitable<result<std::optional<std::string>>> s3::put_if_match(http_client& http, const std::string& bucket, const std::string& key,
                                                                     std::span<const std::byte> body, const std::string& etag) {
  for (const std::string& form : {unquoted(etag), "\"" + unquoted(etag) + "\""}) {
    auto r = request("PUT", bucket, key);
    r.body = body;
    r.sign_payload = body.size() <= (1u << 20);
    r.headers["if-match"] = form;
    BOOST_OUTCOME_CO_TRY(auto res, co_await http.send(r, request_kind::put));
    if (res.status == 200) co_return std::optional<std::string>(res.headers["etag"]);
    if (res.status == 404) break;  // deleted meanwhile (RGW answers 404, not 412): no match either
    if (res.status != 412) co_return http_client::response_error(r, res, EIO);
  }
  co_return std::optional<std::string>();
}

task<void> s3_backend::publish(std::shared_ptr<file> f) {
  const std::uint64_t P = opt_.part_bytes;
  for (;;) {
    {
      std::lock_guard lk(mu_);
      if (f->failed) co_return *f->failed;
      if (f->uploading == 0) break;
    }
    co_await park(f->wake);
  }
  std::uint64_t final_size;
  bool multipart;
  {
    std::lock_guard lk(mu_);
    final_size = f->truncated.value_or(f->max_end);
    multipart = !f->upload_id.empty() || final_size > P;
  }
  if (!multipart) {
    // One PUT: the object appears whole, and create_exclusive is honoured by the server.
    std::span<const std::byte> body;
    {
      std::lock_guard lk(mu_);
      auto& p = f->parts[0];
      if (p.data.size() < final_size) p.data.resize(static_cast<std::size_t>(final_size));
      body = std::span<const std::byte>(p.data).first(static_cast<std::size_t>(final_size));
    }
    std::optional<std::string> if_match;
    {
      std::lock_guard lk(mu_);
      if_match = f->if_match;
    }
    std::optional<std::string> etag;
    bool refused = false;
    if (if_match) {
      BOOST_OUTCOME_CO_TRY(etag, co_await s3::put_if_match(*http_, f->bucket, f->key, body, *if_match));
      refused = !etag;
    } else {
      auto r = request("PUT", f->bucket, f->key);
      r.body = body;
      r.sign_payload = body.size() <= (1u << 20);
      if (f->mode != io::open_mode::replace) r.headers["if-none-match"] = "*";
      BOOST_OUTCOME_CO_TRY(auto res, co_await http_->send(r, request_kind::put));
      if (res.status != 200 && res.status != 412) co_return http_client::response_error(r, res, res.status == 403 ? EACCES : EIO);
      refused = res.status == 412;
      etag = res.headers["etag"];
    }
    if (refused) {
      // Ours, if an earlier try succeeded but its answer was lost: the stored object is these bytes.
      auto check = request("GET", f->bucket, f->key);
      auto stored = co_await http_->send(check, request_kind::get);
      if (stored && stored->status == 200 && stored->body.size() == body.size() &&
          std::memcmp(stored->body.data(), body.data(), body.size()) == 0) {
        etag = stored->headers["etag"];
      } else if (if_match) {
        co_return errno_error(ESTALE, "replace " + f->name + ": " + url(f->bucket, f->key) + " changed since version " + *if_match +
                                          " was read (If-Match refused)");
      } else {
        co_return errno_error(EEXIST, "create " + f->name + ": " + url(f->bucket, f->key) + " exists (If-None-Match: * refused)");
      }
    }
    std::lock_guard lk(mu_);
    f->etag = *etag;
    co_return success();
  }
  // The parts not uploaded yet (the last one trimmed), then the completion.
  const std::uint64_t count = (final_size + P - 1) / P;
  for (std::uint64_t idx = 0; idx < count; ++idx) {
    bool started;
    {
      std::lock_guard lk(mu_);
      started = f->parts[idx].started;
      f->parts[idx].started = true;
    }
    if (started) continue;
    auto bytes = static_cast<std::size_t>(std::min<std::uint64_t>(P, final_size - idx * P));
    BOOST_OUTCOME_CO_TRY(co_await upload_part(f, idx, bytes));
  }
  BOOST_OUTCOME_CO_TRY(auto id, co_await upload_id(f));
  {
    std::lock_guard lk(mu_);
    if (f->if_match)
      co_return make_error(errc::unsupported, "replace " + f->name + ": a conditional replace of an object larger than one part (" +
                                                  std::to_string(P) + " bytes): S3 does not make CompleteMultipartUpload conditional");
  }
  std::string xml = "<CompleteMultipartUpload>";
  {
    std::lock_guard lk(mu_);
    for (const auto& [n, etag] : f->etags)
      if (static_cast<std::uint64_t>(n) <= count)
        xml += "<Part><PartNumber>" + std::to_string(n) + "</PartNumber><ETag>" + etag + "</ETag></Part>";
  }
  xml += "</CompleteMultipartUpload>";
  auto r = request("POST", f->bucket, f->key);
  r.query = {{"uploadId", id}};
  r.body = std::as_bytes(std::span(xml.data(), xml.size()));
  BOOST_OUTCOME_CO_TRY(auto res, co_await http_->send(r, request_kind::put));
  // S3 may answer 200 with an error in the body.
  if (res.status != 200 || res.body.find("<Error>") != std::string::npos) co_return http_client::response_error(r, res, EIO);
  auto etag = s3::xml_tag(res.body, "ETag");
  std::lock_guard lk(mu_);
  f->etag = etag.value_or(std::string());
  co_return success();
}

// ListMultipartUploads of the keys directly under the prefix, then an abort of each upload that
// no writer of this process still owns.
task<std::size_t> s3_backend::do_discard_unpublished(io::handle dh) {
  auto d = find_dir(dh);
  if (!d) co_return errno_error(EBADF, "discard unpublished uploads: bad directory handle");
  std::vector<std::pair<std::string, std::string>> dead;  // key, upload id
  std::string key_marker, id_marker;
  for (int page = 0;; ++page) {
    http_request r;
    r.method = "GET";
    r.bucket = d->bucket;
    r.query = {{"uploads", ""}, {"prefix", d->prefix}, {"delimiter", "/"}};
    if (!key_marker.empty()) {
      r.query["key-marker"] = key_marker;
      r.query["upload-id-marker"] = id_marker;
    }
    BOOST_OUTCOME_CO_TRY(auto res, co_await http_->send(r, request_kind::list));
    if (res.status != 200) co_return http_client::response_error(r, res, res.status == 403 ? EACCES : EIO);
    std::size_t at = 0;
    while (auto u = s3::xml_tag(res.body, "Upload", &at)) {
      auto key = s3::xml_tag(*u, "Key");
      auto id = s3::xml_tag(*u, "UploadId");
      if (key && id && key->starts_with(d->prefix) && key->find('/', d->prefix.size()) == std::string::npos && !s3::upload_live(*id))
        dead.emplace_back(*key, *id);
    }
    auto more = s3::xml_tag(res.body, "IsTruncated");
    auto next_key = s3::xml_tag(res.body, "NextKeyMarker");
    auto next_id = s3::xml_tag(res.body, "NextUploadIdMarker");
    if (!more || *more != "true" || !next_key || next_key->empty() || page > 10000) break;
    key_marker = *next_key;
    id_marker = next_id.value_or(std::string());
  }
  std::size_t aborted = 0;
  for (const auto& [key, id] : dead) {
    auto r = request("DELETE", d->bucket, key);
    r.query = {{"uploadId", id}};
    BOOST_OUTCOME_CO_TRY(auto res, co_await http_->send(r, request_kind::del));
    if (res.status == 204 || res.status == 200)
      ++aborted;
    else if (res.status != 404)  // NoSuchUpload: completed or aborted meanwhile
      co_return http_client::response_error(r, res, res.status == 403 ? EACCES : EIO);
  }
  co_return aborted;
}

}  // namespace meshckpt::backends
