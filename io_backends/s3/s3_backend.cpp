// The S3 backend (meshckpt/backends/s3.hpp): the file-shaped backend interface over objects.
// Every operation is a coroutine on the backend's own io_context, which one thread runs: the
// per-file state below is shared with the callers' threads under `mu_`, and coroutines of one
// file wake each other through timers on that thread.

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <map>
#include <thread>

#include "http.hpp"
#include "meshckpt/backends/s3.hpp"
#include "meshckpt/format/names.hpp"
#include "meshckpt/io/url.hpp"

namespace meshckpt::backends {

namespace asio = boost::asio;
using asio::use_awaitable;
using s3::http_client;
using s3::http_request;
using s3::http_response;
using s3::request_kind;
template <class T>
using task = asio::awaitable<result<T>>;

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

namespace {

constexpr std::int64_t dir_tag = std::int64_t{1} << 40;  // handles of directories are >= this

http_request request(std::string method, std::string bucket, std::string key) {
  http_request r;
  r.method = std::move(method);
  r.bucket = std::move(bucket);
  r.key = std::move(key);
  return r;
}

bool creates(io::open_mode m) { return m != io::open_mode::read && m != io::open_mode::read_direct; }

error errno_error(int code, std::string msg) { return error{std::error_code(code, std::system_category()), std::move(msg)}; }

// A woken-by-timer wait on the backend's thread: waiters park on a timer that never expires by
// itself; `wake_all` cancels them.
struct waiters {
  std::vector<asio::steady_timer*> parked;
  void wake_all() {
    for (auto* t : parked) t->cancel();
    parked.clear();
  }
};

asio::awaitable<void> park(waiters& w) {
  asio::steady_timer t(co_await asio::this_coro::executor, std::chrono::hours(24));
  w.parked.push_back(&t);
  boost::system::error_code ec;
  co_await t.async_wait(asio::redirect_error(use_awaitable, ec));
  std::erase(w.parked, &t);
}

}  // namespace

class s3_backend final : public s3_backend_interface {
 public:
  explicit s3_backend(s3_options opt) : opt_(std::move(opt)), work_(asio::make_work_guard(ctx_)) {}
  result<void> start() {
    BOOST_OUTCOME_TRY(http_, http_client::make(opt_, ctx_));
    thread_ = std::thread([this] { ctx_.run(); });
    return success();
  }
  ~s3_backend() override {
    {
      std::unique_lock lk(mu_);
      idle_cv_.wait(lk, [&] { return running_ == 0; });
    }
    work_.reset();
    ctx_.stop();
    if (thread_.joinable()) thread_.join();
  }

  std::string_view name() const noexcept override { return "s3"; }
  io::capabilities caps() const override {
    io::capabilities c;
    c.alignment = 1;
    c.host_filesystem = false;
    c.atomic_rename = false;
    c.notes = "S3 at " + (opt_.endpoint.empty() ? "AWS (" + opt_.region + ")" : opt_.endpoint) + ", parts of " +
              std::to_string(opt_.part_bytes >> 20) + " MiB";
    return c;
  }
  s3_request_counts counts() const override { return http_->counts(); }

  void open_dir(std::string path, bool create, io::completion<io::handle> done) override {
    spawn(do_open_dir(std::move(path), create), std::move(done));
  }
  void open(io::handle dir, std::string name, io::open_mode mode, io::completion<io::handle> done) override {
    spawn(do_open(dir, std::move(name), mode), std::move(done));
  }
  void size(io::handle f, io::completion<std::uint64_t> done) override {
    std::unique_lock lk(mu_);
    auto it = files_.find(f.value);
    if (it == files_.end()) {
      lk.unlock();
      return done(errno_error(EBADF, "stat: bad handle"));
    }
    auto& fl = *it->second;
    std::uint64_t n = fl.writer ? fl.truncated.value_or(fl.max_end) : fl.size;
    lk.unlock();
    done(n);
  }
  void read(io::handle f, std::uint64_t off, std::span<std::byte> buf, io::completion<std::size_t> done) override {
    spawn(do_read(f, off, buf), std::move(done));
  }
  void write(io::handle f, std::uint64_t off, std::span<const std::byte> buf, io::completion<void> done) override;
  void truncate(io::handle f, std::uint64_t n, io::completion<void> done) override;
  void fsync(io::handle f, io::completion<void> done) override { spawn(do_fsync(f), std::move(done)); }
  void close(io::handle f, io::completion<void> done) override { spawn(do_close(f), std::move(done)); }
  void rename(io::handle, std::string from, std::string to, io::completion<void> done) override {
    done(make_error(errc::unsupported,
                    "rename " + from + " -> " + to + ": an object store has no rename (publish with open_mode::replace)"));
  }
  void unlink(io::handle dir, std::string name, io::completion<void> done) override {
    spawn(do_unlink(dir, std::move(name)), std::move(done));
  }
  void list(io::handle dir, io::completion<std::vector<io::dir_entry>> done) override { spawn(do_list(dir), std::move(done)); }

 private:
  struct part {
    std::vector<std::byte> data;  // part_bytes, allocated at its first byte; released once uploaded
    std::size_t received = 0;
    bool started = false;
  };
  struct file {
    std::string bucket, key, name;
    bool writer = false;
    io::open_mode mode = io::open_mode::read;
    std::uint64_t size = 0;  // readers
    // Writers.
    std::map<std::uint64_t, part> parts;
    std::uint64_t max_end = 0;
    std::optional<std::uint64_t> truncated;
    std::string upload_id;
    bool creating_upload = false;
    std::optional<error> failed;
    std::map<int, std::string> etags;  // part number -> ETag
    int uploading = 0;
    bool published = false;
    waiters wake;  // parked on the upload id or on uploads in flight
  };
  struct dir {
    std::string bucket, prefix;  // prefix "" or ending in '/'
  };

  template <class T>
  static asio::awaitable<void> deliver(task<T> op, io::completion<T> done, s3_backend* self) {
    std::optional<result<T>> r;
    try {
      r.emplace(co_await std::move(op));
    } catch (const std::bad_alloc&) {
      r.emplace(out_of_memory("an S3 request"));
    } catch (const std::exception& e) {
      r.emplace(make_error(errc::invalid_argument, std::string("S3 request failed: ") + e.what()));
    }
    done(std::move(*r));
    std::lock_guard lk(self->mu_);
    if (--self->running_ == 0) self->idle_cv_.notify_all();
  }
  template <class T>
  void spawn(task<T> op, io::completion<T> done) {
    {
      std::lock_guard lk(mu_);
      ++running_;
    }
    asio::co_spawn(ctx_, deliver<T>(std::move(op), std::move(done), this), asio::detached);
  }

  std::optional<dir> find_dir(io::handle h) {
    std::lock_guard lk(mu_);
    auto it = dirs_.find(h.value);
    if (it == dirs_.end()) return std::nullopt;
    return it->second;
  }
  std::shared_ptr<file> find_file(io::handle h) {
    std::lock_guard lk(mu_);
    auto it = files_.find(h.value);
    return it == files_.end() ? nullptr : it->second;
  }
  static std::string url(const std::string& bucket, const std::string& key) { return "s3://" + bucket + "/" + key; }

  task<io::handle> do_open_dir(std::string path, bool create);
  task<io::handle> do_open(io::handle d, std::string name, io::open_mode mode);
  task<std::size_t> do_read(io::handle f, std::uint64_t off, std::span<std::byte> buf);
  task<void> do_fsync(io::handle f);
  task<void> do_close(io::handle f);
  task<void> do_unlink(io::handle d, std::string name);
  task<std::vector<io::dir_entry>> do_list(io::handle d);
  task<std::string> upload_id(std::shared_ptr<file> f);
  task<void> upload_part(std::shared_ptr<file> f, std::uint64_t index, std::size_t bytes);
  task<void> upload_parts(std::shared_ptr<file> f, std::vector<std::uint64_t> ready);
  task<void> publish(std::shared_ptr<file> f);

  s3_options opt_;
  asio::io_context ctx_;
  asio::executor_work_guard<asio::io_context::executor_type> work_;
  std::thread thread_;
  std::unique_ptr<http_client> http_;
  std::mutex mu_;
  std::condition_variable idle_cv_;
  int running_ = 0;
  std::int64_t next_ = 0;
  std::map<std::int64_t, dir> dirs_;
  std::map<std::int64_t, std::shared_ptr<file>> files_;
};

task<io::handle> s3_backend::do_open_dir(std::string path, bool create) {
  if (!is_s3_path(path)) co_return make_error(errc::invalid_argument, path + ": not an s3:// URL");
  std::string_view rest = std::string_view(path).substr(5);
  auto slash = rest.find('/');
  dir d;
  d.bucket = std::string(rest.substr(0, slash));
  std::string prefix = slash == std::string_view::npos ? std::string() : std::string(rest.substr(slash + 1));
  while (prefix.ends_with('/')) prefix.pop_back();
  if (d.bucket.size() < 3 || d.bucket.size() > 63 ||
      d.bucket.find_first_not_of("abcdefghijklmnopqrstuvwxyz0123456789.-") != std::string::npos)
    co_return make_error(errc::invalid_argument, path + ": \"" + d.bucket + "\" is not a valid bucket name (3-63 of a-z, 0-9, '.', '-')");
  for (std::size_t at = 0; at <= prefix.size() && !prefix.empty();) {
    auto next = prefix.find('/', at);
    std::string_view seg = std::string_view(prefix).substr(at, next == std::string::npos ? std::string::npos : next - at);
    if (seg.empty() || seg == "." || seg == "..")
      co_return make_error(errc::unsafe_path, path + ": the prefix has an empty, \".\" or \"..\" segment");
    if (next == std::string::npos) break;
    at = next + 1;
  }
  d.prefix = prefix.empty() ? "" : prefix + "/";
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
      if (id)
        f->upload_id = *id;
      else if (!f->failed)
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
    auto r = request("PUT", f->bucket, f->key);
    r.body = body;
    r.sign_payload = body.size() <= (1u << 20);
    if (f->mode != io::open_mode::replace) r.headers["if-none-match"] = "*";
    BOOST_OUTCOME_CO_TRY(auto res, co_await http_->send(r, request_kind::put));
    if (res.status == 412) {
      // Ours, if an earlier try succeeded but its answer was lost: the stored object is these bytes.
      auto check = request("GET", f->bucket, f->key);
      auto stored = co_await http_->send(check, request_kind::get);
      if (stored && stored->status == 200 && stored->body.size() == body.size() &&
          std::memcmp(stored->body.data(), body.data(), body.size()) == 0)
        co_return success();
      co_return errno_error(EEXIST, "create " + f->name + ": " + url(f->bucket, f->key) + " exists (If-None-Match: * refused)");
    }
    if (res.status != 200) co_return http_client::response_error(r, res, res.status == 403 ? EACCES : EIO);
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
  co_return success();
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
