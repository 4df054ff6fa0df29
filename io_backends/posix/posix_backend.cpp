#include "meshckpt/backends/posix.hpp"

#include <dirent.h>
#include <pthread.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <thread>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/thread_pool.hpp>

#include "runtime/executor_thread.hpp"
#include "meshckpt/backends/blocking_pool.hpp"
#include "meshckpt/io/url.hpp"
#include "meshckpt/format/names.hpp"

namespace meshckpt::backends {

namespace {

namespace asio = boost::asio;
using io::completion;
using io::handle;

constexpr std::size_t max_io_chunk = 1u << 30;  // Linux caps one read/write at ~2 GiB

class posix_backend final : public io::backend {
 public:
  explicit posix_backend(posix_options opt)
      : own_(opt.threads ? std::make_unique<asio::thread_pool>(opt.threads) : nullptr),
        ex_(own_ ? asio::any_io_executor(own_->get_executor()) : asio::any_io_executor(blocking_pool().get_executor())) {}

  ~posix_backend() override {
    if (own_) {
      own_->join();
    } else {
      // The shared pool outlives us: wait for our own operations only.
      std::unique_lock lk(flight_mu_);
      idle_.wait(lk, [&] { return in_flight_ == 0; });
    }
    std::lock_guard lk(mu_);
    for (auto& [fd, name] : names_) ::close(static_cast<int>(fd));
  }

  std::string_view name() const noexcept override { return "posix"; }

  io::capabilities caps() const override {
    return {true, false, 4096,
            "pread/pwrite on a thread pool; O_DIRECT for files opened create_exclusive_direct or read_direct where supported"};
  }

  void open_dir(std::string path, bool create, completion<handle> done) override {
    run(std::move(done), [this, path = std::move(path), create]() -> result<handle> {
      if (path.empty()) return make_error(errc::invalid_argument, "empty directory path");
      if (io::is_url(path)) return io::url_refused(path);  // never a local directory named "s3:"
      if (create) {
        BOOST_OUTCOME_TRY(make_dirs(path));
      }
      int fd = ::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
      if (fd < 0) return make_errno_error(errno, "open directory", path);
      return track(fd, path);
    });
  }

  void open(handle dir, std::string name, io::open_mode mode, completion<handle> done) override {
    run(std::move(done), [this, dir, name = std::move(name), mode]() -> result<handle> {
      if (!format::is_plain_name(name))
        return make_error(errc::unsafe_path, "open \"" + name + "\": not a plain file name inside the checkpoint directory");
      int fd;
      if (mode == io::open_mode::read || mode == io::open_mode::read_direct) {
        fd = retry([&] { return ::openat(dir_fd(dir), name.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK); });
        if (fd < 0) {
          int err = errno;
          if (err == ELOOP) return make_error(errc::unsafe_path, "open " + name + ": is a symbolic link (refused)");
          return make_errno_error(err, "open", name);
        }
        struct stat st;
        if (::fstat(fd, &st) != 0) {
          int err = errno;
          ::close(fd);
          return make_errno_error(err, "stat", name);
        }
        if (!S_ISREG(st.st_mode)) {
          ::close(fd);
          return make_error(errc::unsafe_path, "open " + name + ": not a regular file (refused)");
        }
        int flags = ::fcntl(fd, F_GETFL) & ~O_NONBLOCK;
        // As for writes: a filesystem refusing O_DIRECT leaves the file buffered.
        if (mode == io::open_mode::read_direct && ::fcntl(fd, F_SETFL, flags | O_DIRECT) == 0) flags |= O_DIRECT;
        ::fcntl(fd, F_SETFL, flags);
      } else if (mode == io::open_mode::replace) {
        return make_error(errc::unsupported, "open " + name + ": open_mode::replace is for object stores (here: create and rename)");
      } else {
        fd = retry([&] { return ::openat(dir_fd(dir), name.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644); });
        if (fd < 0) return make_errno_error(errno, "create", name);
        // O_DIRECT is set after creation so that a filesystem refusing it (tmpfs) leaves a
        // usable buffered file rather than a failed open; callers write aligned blocks either way.
        if (mode == io::open_mode::create_exclusive_direct) (void)::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_DIRECT);
      }
      return track(fd, name);
    });
  }

  void size(handle f, completion<std::uint64_t> done) override {
    run(std::move(done), [this, f]() -> result<std::uint64_t> {
      struct stat st;
      if (::fstat(fd_of(f), &st) != 0) return make_errno_error(errno, "stat", name_of(f));
      return static_cast<std::uint64_t>(st.st_size);
    });
  }

  void read(handle f, std::uint64_t offset, std::span<std::byte> buf, completion<std::size_t> done) override {
    run(std::move(done), [this, f, offset, buf]() -> result<std::size_t> {
      std::size_t got = 0;
      while (got < buf.size()) {
        std::size_t n = std::min(buf.size() - got, max_io_chunk);
        ssize_t r = ::pread(fd_of(f), buf.data() + got, n, static_cast<off_t>(offset + got));
        if (r < 0) {
          if (errno == EINTR) continue;
          return make_errno_error(errno, "read", name_of(f) + " at offset " + std::to_string(offset + got));
        }
        if (r == 0) break;
        got += static_cast<std::size_t>(r);
        // A short O_DIRECT read means end of file; retrying at the unaligned rest would fail.
        if (static_cast<std::size_t>(r) < n && (::fcntl(fd_of(f), F_GETFL) & O_DIRECT)) break;
      }
      return got;
    });
  }

  void write(handle f, std::uint64_t offset, std::span<const std::byte> buf, completion<void> done) override {
    run(std::move(done), [this, f, offset, buf]() -> result<void> {
      std::size_t put = 0;
      while (put < buf.size()) {
        std::size_t n = std::min(buf.size() - put, max_io_chunk);
        ssize_t r = ::pwrite(fd_of(f), buf.data() + put, n, static_cast<off_t>(offset + put));
        if (r < 0) {
          if (errno == EINTR) continue;
          return make_errno_error(errno, "write", name_of(f) + " at offset " + std::to_string(offset + put));
        }
        if (r == 0) return make_errno_error(EIO, "write", name_of(f) + " (no progress)");
        put += static_cast<std::size_t>(r);
      }
      return success();
    });
  }

  void truncate(handle f, std::uint64_t size, completion<void> done) override {
    run(std::move(done), [this, f, size]() -> result<void> {
      if (::ftruncate(fd_of(f), static_cast<off_t>(size)) != 0) return make_errno_error(errno, "truncate", name_of(f));
      return success();
    });
  }

  void fsync(handle f, completion<void> done) override {
    run(std::move(done), [this, f]() -> result<void> {
      if (::fsync(fd_of(f)) != 0) return make_errno_error(errno, "fsync", name_of(f));
      return success();
    });
  }

  void close(handle f, completion<void> done) override {
    run(std::move(done), [this, f]() -> result<void> {
      std::string name;
      {
        std::lock_guard lk(mu_);
        auto it = names_.find(f.value);
        if (it == names_.end()) return make_error(errc::invalid_argument, "close: unknown handle");
        name = std::move(it->second);
        names_.erase(it);
      }
      // Linux releases the descriptor even when close reports an error; never retry.
      if (::close(static_cast<int>(f.value)) != 0 && errno != EINTR) return make_errno_error(errno, "close", name);
      return success();
    });
  }

  void rename(handle dir, std::string from, std::string to, completion<void> done) override {
    run(std::move(done), [dir, from = std::move(from), to = std::move(to)]() -> result<void> {
      if (!format::is_plain_name(from) || !format::is_plain_name(to))
        return make_error(errc::unsafe_path, "rename \"" + from + "\" to \"" + to + "\": not plain file names");
      if (::renameat(dir_fd(dir), from.c_str(), dir_fd(dir), to.c_str()) != 0) return make_errno_error(errno, "rename", from + " -> " + to);
      return success();
    });
  }

  void unlink(handle dir, std::string name, completion<void> done) override {
    run(std::move(done), [dir, name = std::move(name)]() -> result<void> {
      if (!format::is_plain_name(name)) return make_error(errc::unsafe_path, "unlink \"" + name + "\": not a plain file name");
      if (::unlinkat(dir_fd(dir), name.c_str(), 0) != 0) return make_errno_error(errno, "unlink", name);
      return success();
    });
  }

  void list(handle dir, completion<std::vector<io::dir_entry>> done) override {
    run(std::move(done), [this, dir]() -> result<std::vector<io::dir_entry>> {
      int fd = ::dup(dir_fd(dir));
      if (fd < 0) return make_errno_error(errno, "list", name_of(dir));
      DIR* d = ::fdopendir(fd);
      if (!d) {
        int err = errno;
        ::close(fd);
        return make_errno_error(err, "list", name_of(dir));
      }
      ::rewinddir(d);
      std::vector<io::dir_entry> out;
      errno = 0;
      while (struct dirent* e = ::readdir(d)) {
        std::string_view n = e->d_name;
        if (n == "." || n == "..") continue;
        io::dir_entry de{std::string(n), io::dir_entry::other};
        unsigned char t = e->d_type;
        if (t == DT_UNKNOWN) {
          struct stat st;
          if (::fstatat(fd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0)
            t = S_ISREG(st.st_mode) ? DT_REG : S_ISDIR(st.st_mode) ? DT_DIR : S_ISLNK(st.st_mode) ? DT_LNK : DT_UNKNOWN;
        }
        de.type = t == DT_REG   ? io::dir_entry::regular
                  : t == DT_DIR ? io::dir_entry::directory
                  : t == DT_LNK ? io::dir_entry::symlink
                                : io::dir_entry::other;
        out.push_back(std::move(de));
      }
      int err = errno;
      ::closedir(d);
      if (err) return make_errno_error(err, "list", name_of(dir));
      std::sort(out.begin(), out.end(), [](auto& a, auto& b) { return a.name < b.name; });
      return out;
    });
  }

 private:
  template <class T, class F>
  void run(completion<T> done, F f) {
    {
      std::lock_guard lk(flight_mu_);
      ++in_flight_;
    }
    try {
      asio::post(ex_, [this, done = std::move(done), f = std::move(f)]() mutable {
        done(f());
        // Under the lock: the destructor cannot return while this thread still touches `this`.
        std::lock_guard lk(flight_mu_);
        if (--in_flight_ == 0) idle_.notify_all();
      });
    } catch (...) {
      std::lock_guard lk(flight_mu_);
      --in_flight_;
      throw;
    }
  }

  template <class F>
  static int retry(F f) {
    int r;
    do r = f();
    while (r < 0 && errno == EINTR);
    return r;
  }

  result<void> make_dirs(const std::string& path) {
    // Create each missing component; fsync the parent of each one created so the new entry is
    // durable before anything inside it is committed.
    std::size_t pos = 0;
    while (pos != std::string::npos) {
      pos = path.find('/', pos + 1);
      std::string part = path.substr(0, pos);
      if (part.empty() || part == "/") continue;
      if (::mkdir(part.c_str(), 0755) == 0) {
        auto slash = part.find_last_of('/');
        std::string parent = slash == std::string::npos ? "." : slash == 0 ? "/" : part.substr(0, slash);
        int pfd = ::open(parent.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (pfd < 0) return make_errno_error(errno, "open directory", parent);
        int rc = ::fsync(pfd);
        int err = errno;
        ::close(pfd);
        if (rc != 0) return make_errno_error(err, "fsync directory", parent);
      } else if (errno != EEXIST) {
        return make_errno_error(errno, "create directory", part);
      }
    }
    return success();
  }

  handle track(int fd, std::string name) {
    std::lock_guard lk(mu_);
    names_[fd] = std::move(name);
    return handle{fd};
  }

  std::string name_of(handle h) {
    std::lock_guard lk(mu_);
    auto it = names_.find(h.value);
    return it == names_.end() ? std::string("(closed handle)") : it->second;
  }

  static int fd_of(handle h) { return static_cast<int>(h.value); }
  static int dir_fd(handle h) { return static_cast<int>(h.value); }

  std::unique_ptr<asio::thread_pool> own_;  // threads of its own, when asked for
  asio::any_io_executor ex_;
  std::mutex flight_mu_;
  std::condition_variable idle_;
  std::size_t in_flight_ = 0;
  std::mutex mu_;
  std::map<std::int64_t, std::string> names_;
};

}  // namespace

namespace {
std::atomic<runtime::executor_thread*> pool_instance{nullptr};
}

asio::io_context& blocking_pool() { return runtime::process_wide<&pool_instance>(blocking_pool_threads, "meshckpt-io").context(); }

std::unique_ptr<io::backend> make_posix_backend(posix_options opt) { return std::make_unique<posix_backend>(opt); }

}  // namespace meshckpt::backends
