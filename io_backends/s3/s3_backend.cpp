// The S3 backend (meshckpt/backends/s3.hpp), part 1: options, directories, reads, listing and
// deletion, and the factory (s3_backend.hpp has the class; s3_upload.cpp the writers).

#include "s3_backend.hpp"

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "meshckpt/format/names.hpp"
#include "meshckpt/io/url.hpp"

namespace meshckpt::backends {

bool is_s3_path(std::string_view path) { return io::url_scheme(path) == "s3"; }

s3_options s3_options_from_env() {
  auto env = [](const char* n) -> std::string {
    const char* v = std::getenv(n);
    return v ? v : "";
  };
  s3_options o;
  o.endpoint = env("AWS_ENDPOINT_URL");
  if (auto r = env("AWS_REGION"); !r.empty())
    o.region = r;
  else if (auto d = env("AWS_DEFAULT_REGION"); !d.empty())
    o.region = d;
  o.access_key = env("AWS_ACCESS_KEY_ID");
  o.secret_key = env("AWS_SECRET_ACCESS_KEY");
  o.session_token = env("AWS_SESSION_TOKEN");
  o.path_style = !o.endpoint.empty();
  if (auto style = env("AWS_S3_ADDRESSING_STYLE"); style == "path")
    o.path_style = true;
  else if (style == "virtual")
    o.path_style = false;
  o.ca_bundle = env("AWS_CA_BUNDLE");
  return o;
}

result<s3_backend::dir> s3_backend::parse_dir(const std::string& path) {
  if (!is_s3_path(path)) return make_error(errc::invalid_argument, path + ": not an s3:// URL");
  std::string_view rest = std::string_view(path).substr(5);
  auto slash = rest.find('/');
  dir d;
  d.bucket = std::string(rest.substr(0, slash));
  std::string prefix = slash == std::string_view::npos ? std::string() : std::string(rest.substr(slash + 1));
  while (prefix.ends_with('/')) prefix.pop_back();
  if (d.bucket.size() < 3 || d.bucket.size() > 63 ||
      d.bucket.find_first_not_of("abcdefghijklmnopqrstuvwxyz0123456789.-") != std::string::npos)
    return make_error(errc::invalid_argument, path + ": \"" + d.bucket + "\" is not a valid bucket name (3-63 of a-z, 0-9, '.', '-')");
  for (std::size_t at = 0; at <= prefix.size() && !prefix.empty();) {
    auto next = prefix.find('/', at);
    std::string_view seg = std::string_view(prefix).substr(at, next == std::string::npos ? std::string::npos : next - at);
    if (seg.empty() || seg == "." || seg == "..")
      return make_error(errc::unsafe_path, path + ": the prefix has an empty, \".\" or \"..\" segment");
    if (next == std::string::npos) break;
    at = next + 1;
  }
  d.prefix = prefix.empty() ? "" : prefix + "/";
  return d;
}

task<io::handle> s3_backend::do_open_dir(std::string path, bool create) {
  BOOST_OUTCOME_CO_TRY(auto d, parse_dir(path));
  // The bucket must exist (meshckpt creates none); without `create`, so must some object under
  // the prefix, as a directory must exist on disk.
  http_request r;
  r.bucket = d.bucket;
  if (create) {
    r.method = "HEAD";
    BOOST_OUTCOME_CO_TRY(auto res, co_await http_->send(r, request_kind::get));
    if (res.status == 404) co_return errno_error(ENOENT, "open directory " + path + ": bucket \"" + d.bucket + "\" does not exist");
    if (res.status != 200) co_return http_client::response_error(r, res, res.status == 403 ? EACCES : EIO);
  } else {
    r.method = "GET";
    r.query = {{"list-type", "2"}, {"prefix", d.prefix}, {"max-keys", "1"}};
    BOOST_OUTCOME_CO_TRY(auto res, co_await http_->send(r, request_kind::list));
    if (res.status == 404) co_return http_client::response_error(r, res, ENOENT);
    if (res.status != 200) co_return http_client::response_error(r, res, res.status == 403 ? EACCES : EIO);
    if (!s3::xml_tag(res.body, "Key")) co_return errno_error(ENOENT, "open directory " + path + ": no objects under this prefix");
  }
  std::lock_guard lk(mu_);
  std::int64_t h = dir_tag + ++next_;
  dirs_[h] = std::move(d);
  co_return io::handle{h};
}

task<io::handle> s3_backend::do_open(io::handle dh, std::string name, io::open_mode mode) {
  if (!format::is_plain_name(name))
    co_return make_error(errc::unsafe_path, "open \"" + name + "\": not a plain file name inside the checkpoint directory");
  auto d = find_dir(dh);
  if (!d) co_return errno_error(EBADF, "open " + name + ": bad directory handle");
  auto f = std::make_shared<file>();
  f->bucket = d->bucket;
  f->key = d->prefix + name;
  f->name = name;
  f->mode = mode;
  f->writer = creates(mode);
  if (!f->writer) {
    auto r = request("HEAD", f->bucket, f->key);
    BOOST_OUTCOME_CO_TRY(auto res, co_await http_->send(r, request_kind::get));
    if (res.status == 404) co_return errno_error(ENOENT, "open " + name + ": no object " + url(f->bucket, f->key));
    if (res.status != 200) co_return http_client::response_error(r, res, res.status == 403 ? EACCES : EIO);
    f->size = std::strtoull(res.headers["content-length"].c_str(), nullptr, 10);
    f->etag = res.headers["etag"];
  }
  std::lock_guard lk(mu_);
  std::int64_t h = ++next_;
  files_[h] = std::move(f);
  co_return io::handle{h};
}

task<std::size_t> s3_backend::do_read(io::handle fh, std::uint64_t off, std::span<std::byte> buf) {
  auto f = find_file(fh);
  if (!f || f->writer) co_return errno_error(EBADF, "read: bad handle");
  if (off >= f->size || buf.empty()) co_return std::size_t{0};
  std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(buf.size(), f->size - off));
  auto r = request("GET", f->bucket, f->key);
  r.headers["range"] = "bytes=" + std::to_string(off) + "-" + std::to_string(off + n - 1);
  BOOST_OUTCOME_CO_TRY(auto res, co_await http_->send(r, request_kind::get));
  if (res.status == 404) co_return http_client::response_error(r, res, ENOENT);
  if (res.status != 206 && res.status != 200) co_return http_client::response_error(r, res, EIO);
  std::string_view body = res.body;
  if (res.status == 200) body = body.substr(std::min<std::size_t>(body.size(), static_cast<std::size_t>(off)));
  if (body.size() < n)
    co_return errno_error(EIO, "read " + url(f->bucket, f->key) + " bytes [" + std::to_string(off) + ", " + std::to_string(off + n) +
                                   "): the response has " + std::to_string(body.size()) + " bytes");
  std::memcpy(buf.data(), body.data(), n);
  co_return n;
}

task<void> s3_backend::do_fsync(io::handle fh) {
  if (find_dir(fh)) co_return success();  // nothing to make durable: objects are
  auto f = find_file(fh);
  if (!f) co_return errno_error(EBADF, "fsync: bad handle");
  if (!f->writer) co_return success();
  {
    std::lock_guard lk(mu_);
    if (f->published) co_return success();
  }
  auto r = co_await publish(f);
  std::lock_guard lk(mu_);
  if (r)
    f->published = true;
  else if (!f->failed)
    f->failed = r.error();
  co_return r;
}

task<void> s3_backend::do_close(io::handle fh) {
  std::shared_ptr<file> f;
  {
    std::lock_guard lk(mu_);
    if (dirs_.erase(fh.value)) co_return success();
    auto it = files_.find(fh.value);
    if (it == files_.end()) co_return errno_error(EBADF, "close: bad handle");
    f = std::move(it->second);
    files_.erase(it);
  }
  std::string id;
  {
    std::lock_guard lk(mu_);
    if (f->writer && !f->upload_id.empty()) s3::upload_ended(f->upload_id);
    if (f->writer && !f->published) id = f->upload_id;
  }
  if (!id.empty()) {
    // Never published: its parts go (best effort; a leftover upload is what cleanup aborts).
    auto r = request("DELETE", f->bucket, f->key);
    r.query = {{"uploadId", id}};
    (void)co_await http_->send(r, request_kind::del);
  }
  co_return success();
}

task<void> s3_backend::do_unlink(io::handle dh, std::string name) {
  if (!format::is_plain_name(name))
    co_return make_error(errc::unsafe_path, "unlink \"" + name + "\": not a plain file name inside the checkpoint directory");
  auto d = find_dir(dh);
  if (!d) co_return errno_error(EBADF, "unlink " + name + ": bad directory handle");
  auto r = request("DELETE", d->bucket, d->prefix + name);
  BOOST_OUTCOME_CO_TRY(auto res, co_await http_->send(r, request_kind::del));
  if (res.status == 404) co_return errno_error(ENOENT, "unlink " + name + ": no object " + url(d->bucket, d->prefix + name));
  if (res.status != 204 && res.status != 200) co_return http_client::response_error(r, res, res.status == 403 ? EACCES : EIO);
  co_return success();
}

task<std::vector<io::dir_entry>> s3_backend::do_list(io::handle dh) {
  auto d = find_dir(dh);
  if (!d) co_return errno_error(EBADF, "list: bad directory handle");
  std::map<std::string, io::dir_entry::kind> found;
  std::string token;
  for (;;) {
    auto r = request("GET", d->bucket, "");
    r.query = {{"list-type", "2"}, {"prefix", d->prefix}, {"delimiter", "/"}};
    if (!token.empty()) r.query["continuation-token"] = token;
    BOOST_OUTCOME_CO_TRY(auto res, co_await http_->send(r, request_kind::list));
    if (res.status != 200) co_return http_client::response_error(r, res, res.status == 404 ? ENOENT : EIO);
    std::size_t at = 0;
    while (auto key = s3::xml_tag(res.body, "Key", &at))
      if (key->size() > d->prefix.size()) found[key->substr(d->prefix.size())] = io::dir_entry::regular;
    at = 0;
    while (auto cp = s3::xml_tag(res.body, "CommonPrefixes", &at))
      if (auto p = s3::xml_tag(*cp, "Prefix"); p && p->size() > d->prefix.size() + 1)
        found[p->substr(d->prefix.size(), p->size() - d->prefix.size() - 1)] = io::dir_entry::directory;
    auto more = s3::xml_tag(res.body, "IsTruncated");
    auto next = s3::xml_tag(res.body, "NextContinuationToken");
    if (!more || *more != "true" || !next || next->empty()) break;
    token = *next;
  }
  std::vector<io::dir_entry> out;
  for (auto& [n, k] : found) out.push_back({n, k});
  co_return out;
}

result<std::unique_ptr<s3_backend_interface>> make_s3_backend(s3_options opt) {
  if (opt.part_bytes < (5u << 20) || opt.part_bytes > (5ull << 30) || opt.part_bytes % 4096)
    return make_error(errc::invalid_argument,
                      "S3 part size " + std::to_string(opt.part_bytes) + " is not a multiple of 4 KiB in [5 MiB, 5 GiB], as S3 requires");
  if (opt.connections == 0) opt.connections = 1;
  if (opt.max_attempts < 1) opt.max_attempts = 1;
  auto b = std::make_unique<s3_backend>(std::move(opt));
  BOOST_OUTCOME_TRY(b->start());
  return std::unique_ptr<s3_backend_interface>(std::move(b));
}

}  // namespace meshckpt::backends
