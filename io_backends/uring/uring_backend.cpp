#include "meshckpt/backends/uring.hpp"

#include <fcntl.h>
#include <liburing.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <thread>

#include <boost/asio/posix/stream_descriptor.hpp>

#include "meshckpt/backends/blocking_pool.hpp"
#include "meshckpt/backends/posix.hpp"

// ThreadSanitizer cannot see the synchronization the kernel provides between a submission and
// its completion: the thread that prepared an op (and its buffer) submits it, a thread of the
// completion pool reads it back from the completion queue. The kernel orders the two (the CQE is published
// after the SQE was consumed), so we tell TSan: release on the op before submitting, acquire on
// it when its completion is reaped. Buffers need nothing: TSan does not see the kernel's
// accesses, and the completion reaches the caller through a mutex and the executor's queue.
#if defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define MESHCKPT_TSAN 1
#endif
#endif
#if defined(__SANITIZE_THREAD__)
#define MESHCKPT_TSAN 1
#endif
#ifdef MESHCKPT_TSAN
#include <sanitizer/tsan_interface.h>
#define MESHCKPT_KERNEL_RELEASE(p) __tsan_release(p)
#define MESHCKPT_KERNEL_ACQUIRE(p) __tsan_acquire(p)
#else
#define MESHCKPT_KERNEL_RELEASE(p) ((void)(p))
#define MESHCKPT_KERNEL_ACQUIRE(p) ((void)(p))
#endif

namespace meshckpt::backends {

namespace {

using io::completion;
using io::handle;

constexpr std::size_t max_io_chunk = 1u << 30;

class uring_backend final : public io::backend {
 public:
  struct op {
    enum kind { read, write, fsync } k;
    int fd;
    std::uint64_t offset;
    std::byte* buf;
    std::size_t len;
    std::size_t done = 0;
    completion<std::size_t> cb;
    int fixed = -1;  // index of the registered buffer holding [buf, buf + len), or -1
  };

  uring_backend(io_uring ring, unsigned depth, std::unique_ptr<io::backend> meta, unsigned fixed_slots, int efd)
      : ring_(ring),
        depth_(depth),
        meta_(std::move(meta)),
        fixed_slots_(fixed_slots),
        efd_(efd),
        ready_(blocking_pool().get_executor(), efd) {
    std::lock_guard lk(mu_);
    try {
      arm_locked();
    } catch (...) {
      ready_.release();  // the factory closes the eventfd and the ring
      throw;
    }
  }

  ~uring_backend() override {
    {
      // TRICKY: buffers of operations in flight belong to the kernel until their completion
      // arrives; wait for all of them, then for the completion handler to stand down, before
      // freeing the ring.
      std::unique_lock lk(mu_);
      drained_.wait(lk, [&] { return in_flight_ == 0 && backlog_.empty(); });
      stopping_ = true;
      const std::uint64_t one = 1;
      while (::write(efd_, &one, sizeof one) < 0 && errno == EINTR) {
      }
      drained_.wait(lk, [&] { return handler_stood_down_; });
    }
    ready_.close();  // also closes the eventfd
    io_uring_queue_exit(&ring_);
  }

  std::string_view name() const noexcept override { return "uring"; }
  io::capabilities caps() const override {
    return {true, fixed_slots_ > 0, 4096,
            "io_uring, " + std::to_string(depth_) +
                " operations in flight; O_DIRECT for files opened *_direct where the filesystem "
                "allows it (buffered per file elsewhere); " +
                (fixed_slots_ ? std::to_string(fixed_slots_) + " slots for registered buffers"
                              : std::string("no registered buffers (kernel refused)"))};
  }

  void register_buffer(std::span<std::byte> mem) override {
    if (!fixed_slots_ || mem.empty()) return;
    std::lock_guard lk(mu_);
    if (auto it = fixed_.find(mem.data()); it != fixed_.end() && it->second.second >= mem.size()) return;
    if (fixed_.size() >= fixed_slots_) return;  // table full: IO through this memory stays unregistered
    iovec iov{mem.data(), mem.size()};
    auto idx = static_cast<unsigned>(fixed_.size());
    // Declined (e.g. RLIMIT_MEMLOCK): not an error, the memory is simply used unregistered.
    if (io_uring_register_buffers_update_tag(&ring_, idx, &iov, nullptr, 1) != 1) return;
    fixed_[mem.data()] = {static_cast<int>(idx), mem.size()};
  }

  void open_dir(std::string p, bool c, completion<handle> d) override { meta_->open_dir(std::move(p), c, std::move(d)); }
  void open(handle dir, std::string n, io::open_mode m, completion<handle> d) override {
    std::string name = n;
    meta_->open(dir, std::move(n), m, [this, name, d = std::move(d)](result<handle> r) {
      if (r) {
        std::lock_guard lk(names_mu_);
        names_[r->value] = name;
      }
      d(std::move(r));
    });
  }
  void size(handle f, completion<std::uint64_t> d) override { meta_->size(f, std::move(d)); }
  void truncate(handle f, std::uint64_t n, completion<void> d) override { meta_->truncate(f, n, std::move(d)); }
  void close(handle f, completion<void> d) override {
    {
      std::lock_guard lk(names_mu_);
      names_.erase(f.value);
    }
    meta_->close(f, std::move(d));
  }
  void rename(handle dir, std::string a, std::string b, completion<void> d) override {
    meta_->rename(dir, std::move(a), std::move(b), std::move(d));
  }
  void unlink(handle dir, std::string n, completion<void> d) override { meta_->unlink(dir, std::move(n), std::move(d)); }
  void list(handle dir, completion<std::vector<io::dir_entry>> d) override { meta_->list(dir, std::move(d)); }

  void read(handle f, std::uint64_t offset, std::span<std::byte> buf, completion<std::size_t> done) override {
    if (buf.empty()) return done(std::size_t{0});
    start(new op{op::read, static_cast<int>(f.value), offset, buf.data(), buf.size(), 0, std::move(done)});
  }

  void write(handle f, std::uint64_t offset, std::span<const std::byte> buf, completion<void> done) override {
    if (buf.empty()) return done(success());
    // The kernel only reads from the buffer; the cast lets one op type serve reads and writes.
    start(new op{op::write, static_cast<int>(f.value), offset, const_cast<std::byte*>(buf.data()), buf.size(), 0,
                 [d = std::move(done)](result<std::size_t> r) { r ? d(success()) : d(r.error()); }});
  }

  void fsync(handle f, completion<void> done) override {
    start(new op{op::fsync, static_cast<int>(f.value), 0, nullptr, 0, 0,
                 [d = std::move(done)](result<std::size_t> r) { r ? d(success()) : d(r.error()); }});
  }

 private:
  io_uring_sqe* get_sqe_locked() {
    io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
    while (!sqe) {  // the SQ is full of prepared entries: hand them to the kernel
      io_uring_submit(&ring_);
      sqe = io_uring_get_sqe(&ring_);
    }
    return sqe;
  }

  void start(op* o) {
    std::lock_guard lk(mu_);
    if (o->k != op::fsync && !fixed_.empty()) {
      // The registered buffer containing [buf, buf + len), if any.
      auto it = fixed_.upper_bound(o->buf);
      if (it != fixed_.begin()) {
        --it;
        if (o->buf + o->len <= it->first + it->second.second) o->fixed = it->second.first;
      }
    }
    if (in_flight_ >= depth_) {
      backlog_.push_back(o);
      return;
    }
    submit_locked(o);
  }

  // Prepares `o`'s next transfer; submits it to the kernel unless `batch` (the caller then
  // submits the batch with one io_uring_submit).
  void submit_locked(op* o, bool batch = false) {
    io_uring_sqe* sqe = get_sqe_locked();
    std::size_t n = std::min(o->len - o->done, max_io_chunk);
    auto* b = o->buf + o->done;
    auto len = static_cast<unsigned>(n);
    auto off = o->offset + o->done;
    switch (o->k) {
      case op::read:
        if (o->fixed >= 0)
          io_uring_prep_read_fixed(sqe, o->fd, b, len, off, o->fixed);
        else
          io_uring_prep_read(sqe, o->fd, b, len, off);
        break;
      case op::write:
        if (o->fixed >= 0)
          io_uring_prep_write_fixed(sqe, o->fd, b, len, off, o->fixed);
        else
          io_uring_prep_write(sqe, o->fd, b, len, off);
        break;
      case op::fsync: io_uring_prep_fsync(sqe, o->fd, 0); break;
    }
    io_uring_sqe_set_data(sqe, o);
    MESHCKPT_KERNEL_RELEASE(o);
    ++in_flight_;
    if (batch) return;
    submit_prepared_locked();
  }

  void submit_prepared_locked() {
    int rc = io_uring_submit(&ring_);
    if (rc < 0 && rc != -EBUSY && rc != -EAGAIN) {
      // The prepared entries stay in the submission queue and go with the next submit (every
      // later operation and the destructor's nop submit); say so, since it delays them.
      std::fprintf(stderr, "meshckpt: io_uring_submit failed: %s\n", std::strerror(-rc));
    }
  }

  std::string name_of(int fd) {
    std::lock_guard lk(names_mu_);
    auto it = names_.find(fd);
    return it == names_.end() ? std::string("fd ") + std::to_string(fd) : it->second;
  }

  // One wait on the eventfd is pending at any time (or its handler is running): completions are
  // reaped by one thread at a time, the ring's only consumer.
  void arm_locked() {
    ready_.async_wait(boost::asio::posix::stream_descriptor::wait_read, [this](const boost::system::error_code& ec) {
      if (ec == boost::asio::error::operation_aborted) return;
      reap();
    });
  }

  void reap() {
    std::uint64_t count;
    (void)::read(efd_, &count, sizeof count);  // non-blocking; CQEs posted after it signal again
    io_uring_cqe* cqe = nullptr;
    while (io_uring_peek_cqe(&ring_, &cqe) == 0 && cqe) {
      auto* o = static_cast<op*>(io_uring_cqe_get_data(cqe));
      if (o) MESHCKPT_KERNEL_ACQUIRE(o);
      int res = cqe->res;
      io_uring_cqe_seen(&ring_, cqe);
      if (o) finish(o, res);
    }
    std::lock_guard lk(mu_);
    if (stopping_) {
      handler_stood_down_ = true;
      drained_.notify_all();
      return;
    }
    // Re-armed until it succeeds: without a pending wait no completion would ever be seen.
    while (true) {
      try {
        arm_locked();
        return;
      } catch (const std::bad_alloc&) {
      }
    }
  }

  // Handles one completion: resubmits short transfers and retryable errors, else completes.
  void finish(op* o, int res) {
    bool again = false;
    result<std::size_t> out = std::size_t{0};
    const char* what = o->k == op::read ? "read" : o->k == op::write ? "write" : "fsync";
    if (res == -EAGAIN || res == -EINTR) {
      again = true;
    } else if (res < 0) {
      out = make_errno_error(-res, what, name_of(o->fd) + (o->k == op::fsync ? "" : " at offset " + std::to_string(o->offset + o->done)));
    } else if (o->k == op::fsync) {
      out = std::size_t{0};
    } else if (res == 0) {
      if (o->k == op::write)
        out = make_errno_error(EIO, "write", name_of(o->fd) + " (no progress)");
      else
        out = o->done;  // end of file
    } else {
      o->done += static_cast<std::size_t>(res);
      // A short O_DIRECT read means end of file; retrying at the unaligned rest would fail.
      bool direct_eof = o->k == op::read && o->done < o->len && (::fcntl(o->fd, F_GETFL) & O_DIRECT);
      if (o->done < o->len && !direct_eof)
        again = true;
      else
        out = o->done;
    }
    std::unique_lock lk(mu_);
    --in_flight_;
    if (again) {
      submit_locked(o);
      return;
    }
    bool batched = false;
    while (!backlog_.empty() && in_flight_ < depth_) {  // refill the window with one submission
      op* next = backlog_.front();
      backlog_.pop_front();
      submit_locked(next, true);
      batched = true;
    }
    if (batched) submit_prepared_locked();
    lk.unlock();
    auto cb = std::move(o->cb);
    delete o;
    cb(std::move(out));
    lk.lock();
    if (in_flight_ == 0 && backlog_.empty()) drained_.notify_all();
  }

  io_uring ring_;
  unsigned depth_;
  std::unique_ptr<io::backend> meta_;
  std::mutex mu_;
  std::condition_variable drained_;
  unsigned in_flight_ = 0;
  std::deque<op*> backlog_;
  bool stopping_ = false;
  bool handler_stood_down_ = false;
  std::mutex names_mu_;
  std::map<int, std::string> names_;
  unsigned fixed_slots_;                                     // size of the sparse registered-buffer table (0: none)
  std::map<std::byte*, std::pair<int, std::size_t>> fixed_;  // start -> (index, length); under mu_
  int efd_;                                                  // signalled by the ring on every completion
  boost::asio::posix::stream_descriptor ready_;              // owns efd_
};

}  // namespace

result<std::unique_ptr<io::backend>> make_uring_backend(uring_options opt) {
  unsigned depth = std::max(4u, std::min(opt.queue_depth, 4096u));
  io_uring ring;
  io_uring_params params{};
  params.flags = IORING_SETUP_CQSIZE;
  params.cq_entries = depth * 2;
  int rc = io_uring_queue_init_params(depth, &ring, &params);
  if (rc < 0) {
    std::string why = -rc == ENOSYS   ? " (the kernel has no io_uring)"
                      : -rc == EPERM  ? " (forbidden: seccomp, a container policy, or kernel.io_uring_disabled)"
                      : -rc == ENOMEM ? " (locked-memory limit too low)"
                                      : "";
    return make_error(errc::unsupported, std::string("io_uring is not available: io_uring_queue_init: ") + std::strerror(-rc) + why);
  }
  // A sparse table of registered buffers, filled as staging buffers are offered (kernel >= 5.19;
  // without it every transfer pins its pages, as plain reads and writes do).
  constexpr unsigned fixed_slots = 256;
  unsigned slots = io_uring_register_buffers_sparse(&ring, fixed_slots) == 0 ? fixed_slots : 0;
  int efd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (efd < 0 || io_uring_register_eventfd(&ring, efd) < 0) {
    int err = efd < 0 ? errno : EINVAL;
    if (efd >= 0) ::close(efd);
    io_uring_queue_exit(&ring);
    return make_error(errc::unsupported, std::string("io_uring is not available: no completion eventfd: ") + std::strerror(err));
  }
  try {
    return std::unique_ptr<io::backend>(new uring_backend(ring, depth, make_posix_backend({opt.metadata_threads}), slots, efd));
  } catch (...) {
    ::close(efd);
    io_uring_queue_exit(&ring);
    throw;
  }
}

}  // namespace meshckpt::backends
