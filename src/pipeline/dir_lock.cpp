// One writer per directory (dir_lock.hpp). flock, not fcntl locks: fcntl locks belong to the
// process and vanish when any descriptor of the file is closed (a backend listing or a reader
// closing its own descriptor would drop the lock); flock locks belong to the open file
// description we keep.

#include "dir_lock.hpp"

#include "meshckpt/backends/s3.hpp"
#include "meshckpt/io/async.hpp"
#include "meshckpt/io/url.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/inotify.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <chrono>
#include <map>
#include <set>
#include <mutex>
#include <thread>

#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>

#include "../runtime/bridge.hpp"
#include "../runtime/poll.hpp"
#include "meshckpt/format/describe.hpp"

namespace meshckpt::detail {

namespace asio = boost::asio;

namespace {

using key = std::pair<dev_t, ino_t>;

struct held {
  int fd = -1;
  std::size_t refs = 0;
};

std::mutex table_mu;
std::map<key, held>& table() {
  static auto* t = new std::map<key, held>;  // never destroyed: locks may be released during exit
  return *t;
}

// One reference to a directory's lock; armed once counted in the table.
class reference {
 public:
  explicit reference(key k) : k_(k) {}
  reference(const reference&) = delete;
  reference& operator=(const reference&) = delete;
  void arm() noexcept { armed_ = true; }
  ~reference() {
    if (!armed_) return;
    std::lock_guard lk(table_mu);
    auto it = table().find(k_);
    if (it == table().end() || --it->second.refs > 0) return;
    ::close(it->second.fd);  // releases the flock
    table().erase(it);
  }

 private:
  key k_;
  bool armed_ = false;
};

std::string holder_text(int fd) {
  char buf[256];
  ssize_t n = ::pread(fd, buf, sizeof buf - 1, 0);
  std::string s(buf, n > 0 ? static_cast<std::size_t>(n) : 0);
  while (!s.empty() && (s.back() == '\n' || s.back() == '\0')) s.pop_back();
  for (char& c : s)
    if (static_cast<unsigned char>(c) < 0x20) c = ' ';
  return s.empty() ? "another process, which has not recorded itself yet" : s;
}

std::string holder_line() {
  char host[256] = {};
  if (::gethostname(host, sizeof host - 1) != 0) std::snprintf(host, sizeof host, "unknown");
  const auto now_ms = static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count());
  return "pid " + std::to_string(::getpid()) + " on host " + host + " since " + format::iso_time(now_ms) + "\n";
}

// An s3:// prefix has no lock file: its writers hold a lease object instead
// (s3_backend_interface::acquire_lease, docs/OBJECT_STORES.md), taken through an S3 backend of
// the process's own, configured from the AWS environment and never destroyed (leases may be
// released during exit). Shared within the process as the flock is: by path.
constexpr auto lease_ttl = std::chrono::seconds(30);

std::mutex leases_mu;  // held while a lease is taken: one taker per process at a time
std::map<std::string, std::weak_ptr<const void>>& leases() {
  static auto* m = new std::map<std::string, std::weak_ptr<const void>>;
  return *m;
}

// Whether holder line "pid P on host H since T" names a writer that is gone: a dead process of
// this host, or this process itself (taking a lease is serialized in the process and shared
// while held, so a lease of ours that is not held any more is one being released).
bool holder_gone(const std::string& holder) {
  char host[256] = {};
  if (::gethostname(host, sizeof host - 1) != 0) return false;
  const std::string on = " on host " + std::string(host) + " since ";
  if (!holder.starts_with("pid ") || holder.find(on) == std::string::npos) return false;
  const long pid = std::strtol(holder.c_str() + 4, nullptr, 10);
  if (pid <= 0) return false;
  return pid == ::getpid() || (::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH);
}

std::set<std::string>& taking() {  // directories whose lease a coroutine of this process is taking
  static auto* s = new std::set<std::string>;
  return *s;
}

// The lease of an s3:// prefix, awaited: its one or two requests run on the lease backend's
// thread. One taker per prefix at a time in this process; the others wait for it and then share
// what it took.
backends::s3_backend_interface* lease_backend = nullptr;  // made once, under leases_mu; lives to the exit

// TRICKY: at exit, a lease just released is still being deleted on the lease backend's thread,
// which signs with OpenSSL while exit() tears OpenSSL down (a crash at exit, seen in 1 of 7
// imports to s3://). Registered after the backend made OpenSSL register its own cleanup, this
// runs before it: the deletions finish (or 5 s pass), then that thread stops.
void stop_lease_backend() {
  if (lease_backend) lease_backend->shutdown(std::chrono::seconds(5));
}

runtime::task<dir_lock> take_lease(std::string dir) {
  while (dir.size() > 1 && dir.ends_with('/')) dir.pop_back();
  auto ex = co_await asio::this_coro::executor;
  auto*& b = lease_backend;
  for (;;) {
    {
      std::lock_guard lk(leases_mu);
      if (auto held = leases()[dir].lock()) co_return dir_lock(held);
      if (!taking().contains(dir)) {
        if (!b) {
          BOOST_OUTCOME_CO_TRY(auto made, backends::make_s3_backend(backends::s3_options_from_env()));
          b = made.release();
          std::atexit(stop_lease_backend);
        }
        taking().insert(dir);
        break;
      }
    }
    asio::steady_timer t(ex, std::chrono::milliseconds(20));  // another taker's outcome is one or two requests away
    boost::system::error_code ec;
    co_await t.async_wait(asio::redirect_error(asio::use_awaitable, ec));
  }
  runtime::on_unwind forget([&] {
    std::lock_guard lk(leases_mu);
    taking().erase(dir);
  });
  std::string holder = holder_line();
  if (!holder.empty() && holder.back() == '\n') holder.pop_back();
  auto acquiring = io::async_op<std::shared_ptr<const void>>(
      ex, [&](io::completion<std::shared_ptr<const void>> c) { b->acquire_lease(dir, holder, lease_ttl, holder_gone, std::move(c)); },
      asio::use_awaitable);
  auto r = co_await std::move(acquiring);
  std::lock_guard lk(leases_mu);
  taking().erase(dir);
  forget.disarm();
  if (!r) co_return r.error();
  leases()[dir] = *r;
  co_return dir_lock(*r);
}

// TRICKY: every allocation may fail (tests/reliability/test_alloc.cpp). An open descriptor holding the
// flock must never leak: it would lock this process out of its own directory. So what can be
// allocated is allocated before the open, and a guard closes the descriptor and forgets the
// table entry on every way out but success.
result<dir_lock> lock_once(const std::string& dir_in) {
  if (io::is_url(dir_in))  // a lease is awaited: every caller goes through lock_dir or try_lock_dir_async
    return make_error(errc::unsupported, "the writer lease of " + dir_in + " is taken with lock_dir or try_lock_dir_async");
  const std::string dir = dir_in.empty() ? "." : dir_in;
  const std::string path = dir + "/" + std::string(lock_file_name);
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0) return make_errno_error(errno, "lock directory", dir);
  const key k{st.st_dev, st.st_ino};
  auto ref = std::make_shared<reference>(k);
  const std::string me = holder_line();
  std::lock_guard lk(table_mu);
  auto& t = table();
  if (auto it = t.find(k); it != t.end()) {
    ++it->second.refs;
    ref->arm();
    return dir_lock(std::move(ref));
  }
  struct guard {
    std::map<key, held>& t;
    std::map<key, held>::iterator it;
    int fd = -1;
    bool keep = false;
    ~guard() {
      if (keep) return;
      if (fd >= 0) ::close(fd);
      t.erase(it);
    }
  } g{t, t.emplace(k, held{}).first};
  g.fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
  if (g.fd < 0) {
    int e = errno;
    return make_errno_error(e, "open lock file", path);
  }
  struct stat fst {};
  if (::fstat(g.fd, &fst) != 0 || !S_ISREG(fst.st_mode)) return make_error(errc::unsafe_path, path + " is not a regular file");
  if (::flock(g.fd, LOCK_EX | LOCK_NB) != 0) {
    int e = errno;
    if (e != EWOULDBLOCK) return make_errno_error(e, "lock", path);
    return make_error(errc::locked, "directory " + dir + " is being written by another process: " + holder_text(g.fd) + " (it holds " +
                                        path +
                                        "); a directory has one writer at a time, so wait for that process to finish or set a "
                                        "lock timeout to wait for it");
  }
  // Informational only (what a waiting writer reports): neither fsynced nor checked.
  if (::ftruncate(g.fd, 0) == 0) (void)!::pwrite(g.fd, me.data(), me.size(), 0);
  g.it->second = held{g.fd, 1};
  g.keep = true;
  ref->arm();
  return dir_lock(std::move(ref));
}

}  // namespace

result<dir_lock> try_lock_dir(const std::string& dir) {
  try {
    return lock_once(dir);
  } catch (const std::bad_alloc&) {
    return out_of_memory("taking the directory's writer lock");
  }
}

namespace {

// The event a waiting writer waits on: the lock file closed by anyone. A holder's flock goes
// with its last descriptor, and the kernel closes those of a process that dies, so each release
// on this host is a close of the file (IN_CLOSE_WRITE: holders open it read-write). Read through
// the engine (an inotify descriptor), so no thread waits. Not every close is a release (another
// waiter's try, the holder's own backends), so a close is a reason to try again, no more; and a
// holder on another host (NFS) closes nothing here, so the wait is also bounded.
class close_watch {
 public:
  // Null when inotify is unavailable: the caller then polls.
  static std::unique_ptr<close_watch> create(const asio::any_io_executor& ex, const std::string& path) {
    const int fd = ::inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (fd < 0) return nullptr;
    if (::inotify_add_watch(fd, path.c_str(), IN_CLOSE_WRITE | IN_CLOSE_NOWRITE) < 0) {
      ::close(fd);
      return nullptr;
    }
    return std::unique_ptr<close_watch>(new close_watch(ex, fd));
  }

  // Reads the closes seen so far; their number.
  int drain() {
    int closes = 0;
    alignas(inotify_event) char buf[4096];
    for (;;) {
      const ssize_t n = ::read(sd_.native_handle(), buf, sizeof buf);
      if (n <= 0) return closes;
      for (ssize_t at = 0; at < n;) {
        const auto* e = reinterpret_cast<const inotify_event*>(buf + at);
        closes += (e->mask & (IN_CLOSE_WRITE | IN_CLOSE_NOWRITE)) != 0;
        at += static_cast<ssize_t>(sizeof(inotify_event) + e->len);
      }
    }
  }

  // Until the next close, or `longest`.
  asio::awaitable<void> wait(runtime::poll_clock::duration longest) {
    using namespace asio::experimental::awaitable_operators;
    asio::steady_timer t(sd_.get_executor(), longest);
    boost::system::error_code ec1, ec2;
    // Named: GCC 12 mishandles non-trivial temporaries inside co_await expressions.
    auto readable = sd_.async_wait(asio::posix::stream_descriptor::wait_read, asio::redirect_error(asio::use_awaitable, ec1));
    auto timed_out = t.async_wait(asio::redirect_error(asio::use_awaitable, ec2));
    auto either = std::move(readable) || std::move(timed_out);
    (void)co_await std::move(either);
  }

 private:
  close_watch(const asio::any_io_executor& ex, int fd) : sd_(ex, fd) {}
  asio::posix::stream_descriptor sd_;
};

}  // namespace

runtime::task<dir_lock> try_lock_dir_async(std::string dir) {
  if (io::is_url(dir)) {
    auto taking = take_lease(std::move(dir));
    co_return co_await std::move(taking);
  }
  co_return try_lock_dir(dir);
}

runtime::task<dir_lock> lock_dir(std::string dir, std::chrono::milliseconds wait, std::chrono::milliseconds longest_poll) {
  const auto deadline = runtime::poll_clock::now() + wait;
  auto ex = co_await asio::this_coro::executor;
  if (io::is_url(dir)) {
    // A lease held elsewhere is renewed, not released by a close: tried again every longest_poll.
    for (;;) {
      auto taking = take_lease(dir);
      auto l = co_await std::move(taking);
      if (l || l.error().code != errc::locked || runtime::poll_clock::now() >= deadline) co_return l;
      asio::steady_timer t(ex, std::max(runtime::poll_clock::duration::zero(),
                                        std::min<runtime::poll_clock::duration>(longest_poll, deadline - runtime::poll_clock::now())));
      boost::system::error_code ec;
      co_await t.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    }
  }
  std::unique_ptr<close_watch> watch;
  bool watched = false;  // a watch was tried
  for (int attempt = 0;; ++attempt) {
    auto l = try_lock_dir(dir);
    if (l || l.error().code != errc::locked || runtime::poll_clock::now() >= deadline) co_return l;
    if (!watched) {
      // Watched before the next try, so a release after that try is seen.
      watched = true;
      try {
        watch = close_watch::create(ex, (dir.empty() ? std::string(".") : dir) + "/" + std::string(lock_file_name));
      } catch (const std::bad_alloc&) {
      }
      if (watch) continue;
    }
    const auto left = deadline - runtime::poll_clock::now();
    if (!watch) {
      // No event to wait on: poll, 10 ms doubling to 200 ms.
      asio::steady_timer t(ex, std::max(runtime::poll_clock::duration::zero(),
                                        std::min<runtime::poll_clock::duration>(
                                            std::chrono::milliseconds(std::min(200, 10 << std::min(attempt, 5))), left)));
      boost::system::error_code ec;
      co_await t.async_wait(asio::redirect_error(asio::use_awaitable, ec));
      continue;
    }
    // Each try closes the file once itself: more closes than that mean someone else closed
    // it since (perhaps releasing the lock), so try again at once.
    if (watch->drain() > 1) continue;
    auto waiting =
        watch->wait(std::max(runtime::poll_clock::duration::zero(), std::min<runtime::poll_clock::duration>(longest_poll, left)));
    co_await std::move(waiting);
  }
}

result<dir_lock> lock_dir_blocking(const std::string& dir, std::chrono::milliseconds wait, std::chrono::milliseconds longest_poll) {
  return runtime::run_blocking<dir_lock>(
      "lock_dir", [&](auto ex, auto done) { runtime::spawn<dir_lock>(ex, lock_dir(dir, wait, longest_poll), std::move(done)); });
}

}  // namespace meshckpt::detail
