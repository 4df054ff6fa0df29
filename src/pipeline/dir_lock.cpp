// One writer per directory (dir_lock.hpp). flock, not fcntl locks: fcntl locks belong to the
// process and vanish when any descriptor of the file is closed (a backend listing or a reader
// closing its own descriptor would drop the lock); flock locks belong to the open file
// description we keep.

#include "dir_lock.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <chrono>
#include <map>
#include <mutex>
#include <thread>

#include "../runtime/bridge.hpp"
#include "../runtime/poll.hpp"
#include "meshckpt/format/describe.hpp"

namespace meshckpt::detail {

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

// TRICKY: every allocation may fail (tests/reliability/test_alloc.cpp). An open descriptor holding the
// flock must never leak: it would lock this process out of its own directory. So what can be
// allocated is allocated before the open, and a guard closes the descriptor and forgets the
// table entry on every way out but success.
result<dir_lock> lock_once(const std::string& dir_in) {
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
                                        path + "); a directory has one writer at a time, so wait for that process to finish or set a "
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

std::chrono::milliseconds lock_retry_delay(int attempt) { return std::chrono::milliseconds(std::min(200, 10 << std::min(attempt, 5))); }

}  // namespace

runtime::task<dir_lock> lock_dir(std::string dir, std::chrono::milliseconds wait) {
  const auto deadline = runtime::poll_clock::now() + wait;
  auto polled = runtime::poll_with_backoff([&]() -> std::optional<result<dir_lock>> {
    auto l = try_lock_dir(dir);
    if (l || l.error().code != errc::locked || runtime::poll_clock::now() >= deadline) return l;
    return std::nullopt;
  }, lock_retry_delay, deadline);
  co_return co_await std::move(polled);
}

result<dir_lock> lock_dir_blocking(const std::string& dir, std::chrono::milliseconds wait) {
  return runtime::run_blocking<dir_lock>("lock_dir", [&](auto ex, auto done) { runtime::spawn<dir_lock>(ex, lock_dir(dir, wait), std::move(done)); });
}

}  // namespace meshckpt::detail
