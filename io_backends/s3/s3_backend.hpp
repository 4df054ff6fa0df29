#pragma once
// Private: the S3 backend's class (s3_backend.cpp: directories, reads, listing, the factory;
// s3_upload.cpp: writers, their parts and their publication). Every operation is a coroutine on
// the backend's own io_context, which one thread runs: the per-file state is shared with the
// callers' threads under `mu_`, and coroutines of one file wake each other through timers on
// that thread.

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <algorithm>
#include <condition_variable>
#include <map>
#include <thread>

#include "http.hpp"
#include "meshckpt/backends/s3.hpp"

namespace meshckpt::backends {

namespace asio = boost::asio;
using asio::use_awaitable;
using s3::http_client;
using s3::http_request;
using s3::http_response;
using s3::request_kind;
template <class T>
using task = asio::awaitable<result<T>>;

namespace s3 {

inline constexpr std::int64_t dir_tag = std::int64_t{1} << 40;  // handles of directories are >= this

inline http_request request(std::string method, std::string bucket, std::string key) {
  http_request r;
  r.method = std::move(method);
  r.bucket = std::move(bucket);
  r.key = std::move(key);
  return r;
}

inline bool creates(io::open_mode m) { return m != io::open_mode::read && m != io::open_mode::read_direct; }

inline error errno_error(int code, std::string msg) { return error{std::error_code(code, std::system_category()), std::move(msg)}; }

// A woken-by-timer wait on the backend's thread: waiters park on a timer that never expires by
// itself; `wake_all` cancels them.
struct waiters {
  std::vector<asio::steady_timer*> parked;
  void wake_all() {
    for (auto* t : parked) t->cancel();
    parked.clear();
  }
};

inline std::string unquoted(std::string etag) {
  if (etag.size() >= 2 && etag.front() == '"' && etag.back() == '"') etag = etag.substr(1, etag.size() - 2);
  return etag;
}

// The multipart uploads this process has started and not yet completed or aborted, by upload
// id: the writes that `discard_unpublished` keeps (s3_upload.cpp).
void upload_started(const std::string& id);
void upload_ended(const std::string& id);
bool upload_live(const std::string& id);

// A compare-and-swap PUT (s3_upload.cpp): `If-Match` on `etag`. The new ETag, or nullopt on a
// mismatch (or when the object is gone).
asio::awaitable<result<std::optional<std::string>>> put_if_match(http_client& http, const std::string& bucket, const std::string& key,
                                                                 std::span<const std::byte> body, const std::string& etag);

inline asio::awaitable<void> park(waiters& w) {
  asio::steady_timer t(co_await asio::this_coro::executor, std::chrono::hours(24));
  w.parked.push_back(&t);
  boost::system::error_code ec;
  co_await t.async_wait(asio::redirect_error(use_awaitable, ec));
  std::erase(w.parked, &t);
}

}  // namespace s3

using s3::creates;
using s3::dir_tag;
using s3::errno_error;
using s3::park;
using s3::request;
using s3::waiters;

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
  void shutdown(std::chrono::milliseconds grace) override {
    {
      std::unique_lock lk(mu_);
      idle_cv_.wait_for(lk, grace, [&] { return running_ == 0; });
    }
    work_.reset();
    ctx_.stop();
    if (thread_.joinable() && thread_.get_id() != std::this_thread::get_id()) thread_.join();
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
  void discard_unpublished(io::handle dir, io::completion<std::size_t> done) override {
    spawn(do_discard_unpublished(dir), std::move(done));
  }
  std::string version(io::handle f) const override {
    std::lock_guard lk(mu_);
    auto it = files_.find(f.value);
    return it == files_.end() ? std::string() : it->second->etag;
  }
  result<void> expect_version(io::handle f, std::string expected) override {
    std::lock_guard lk(mu_);
    auto it = files_.find(f.value);
    if (it == files_.end() || it->second->mode != io::open_mode::replace || it->second->published)
      return errno_error(EBADF, "expect_version: not an unpublished file opened with open_mode::replace");
    it->second->if_match = std::move(expected);
    return success();
  }
  void acquire_lease(std::string path, std::string holder, std::chrono::milliseconds ttl, std::function<bool(const std::string&)> breakable,
                     io::completion<std::shared_ptr<const void>> done) override {
    spawn(do_acquire_lease(std::move(path), std::move(holder), ttl, std::move(breakable)), std::move(done));
  }

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
    std::string etag;                     // as opened (readers) or as published (writers)
    std::optional<std::string> if_match;  // a replace published only over this ETag
    waiters wake;                         // parked on the upload id or on uploads in flight
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
    self->op_done();
  }
  void op_started() {
    std::lock_guard lk(mu_);
    ++running_;
  }
  void op_done() {
    std::lock_guard lk(mu_);
    if (--running_ == 0) idle_cv_.notify_all();
  }
  template <class T>
  void spawn(task<T> op, io::completion<T> done) {
    op_started();
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

  static result<dir> parse_dir(const std::string& path);
  task<io::handle> do_open_dir(std::string path, bool create);
  struct lease;
  task<std::shared_ptr<const void>> do_acquire_lease(std::string path, std::string holder, std::chrono::milliseconds ttl,
                                                     std::function<bool(const std::string&)> breakable);
  static asio::awaitable<void> renew(std::shared_ptr<lease> l);
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
  task<std::size_t> do_discard_unpublished(io::handle d);

  s3_options opt_;
  asio::io_context ctx_;
  asio::executor_work_guard<asio::io_context::executor_type> work_;
  std::thread thread_;
  std::unique_ptr<http_client> http_;
  mutable std::mutex mu_;
  std::condition_variable idle_cv_;
  int running_ = 0;
  std::int64_t next_ = 0;
  std::map<std::int64_t, dir> dirs_;
  std::map<std::int64_t, std::shared_ptr<file>> files_;
};

}  // namespace meshckpt::backends
