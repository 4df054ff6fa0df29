// The simulated device (device/accelerator.hpp). Each device's memory is one memfd mapped
// twice: a PROT_NONE mapping whose addresses are the "device pointers" handed out (so host code
// that dereferences one faults, as with a GPU pointer), and a read-write mapping that only the
// copy engine uses. Freed ranges give their pages back (hole punched), so tests can allocate
// and free gigabytes in a loop.
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <thread>
#include <vector>

#include "meshckpt/device/accelerator.hpp"

namespace meshckpt::device {

namespace {

constexpr std::size_t granule = 4096;

class simulated_device {
 public:
  static result<std::unique_ptr<simulated_device>> create(std::size_t capacity) {
    auto d = std::unique_ptr<simulated_device>(new simulated_device);
    d->capacity_ = (capacity + granule - 1) / granule * granule;
    d->fd_ = ::memfd_create("meshckpt-simulated-device", MFD_CLOEXEC);
    if (d->fd_ < 0) return make_errno_error(errno, "memfd_create", "simulated device memory");
    if (::ftruncate(d->fd_, static_cast<off_t>(d->capacity_)) != 0) return make_errno_error(errno, "ftruncate", "simulated device memory");
    void* dev = ::mmap(nullptr, d->capacity_, PROT_NONE, MAP_SHARED | MAP_NORESERVE, d->fd_, 0);
    if (dev == MAP_FAILED) return make_errno_error(errno, "mmap", "simulated device memory");
    d->device_ = static_cast<std::byte*>(dev);
    void* eng = ::mmap(nullptr, d->capacity_, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, d->fd_, 0);
    if (eng == MAP_FAILED) return make_errno_error(errno, "mmap", "simulated device memory");
    d->engine_ = static_cast<std::byte*>(eng);
    d->free_[0] = d->capacity_;
    return d;
  }
  ~simulated_device() {
    if (device_) ::munmap(device_, capacity_);
    if (engine_) ::munmap(engine_, capacity_);
    if (fd_ >= 0) ::close(fd_);
  }

  result<std::byte*> allocate(std::size_t bytes) {
    const std::size_t n = std::max<std::size_t>(granule, (bytes + granule - 1) / granule * granule);
    std::lock_guard lk(mu_);
    for (auto it = free_.begin(); it != free_.end(); ++it) {
      if (it->second < n) continue;
      const std::size_t off = it->first, len = it->second;
      free_.erase(it);
      if (len > n) free_[off + n] = len - n;
      used_[off] = n;
      return device_ + off;
    }
    return error{std::make_error_code(std::errc::not_enough_memory),
                 "simulated device: out of memory (no free range of " + std::to_string(bytes) + " bytes)"};
  }
  void free(std::byte* p) {
    std::lock_guard lk(mu_);
    auto it = used_.find(static_cast<std::size_t>(p - device_));
    if (it == used_.end()) return;
    std::size_t off = it->first, len = it->second;
    used_.erase(it);
    (void)::fallocate(fd_, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(off), static_cast<off_t>(len));
    auto next = free_.lower_bound(off);
    if (next != free_.end() && next->first == off + len) {
      len += next->second;
      free_.erase(next);
    }
    auto prev = free_.lower_bound(off);
    if (prev != free_.begin()) {
      --prev;
      if (prev->first + prev->second == off) {
        prev->second += len;
        return;
      }
    }
    free_[off] = len;
  }
  // The engine's address of [p, p + n), or null when that is not allocated device memory.
  std::byte* engine_address(const std::byte* p, std::size_t n) {
    if (p < device_ || p >= device_ + capacity_) return nullptr;
    const std::size_t off = static_cast<std::size_t>(p - device_);
    std::lock_guard lk(mu_);
    auto it = used_.upper_bound(off);
    if (it == used_.begin()) return nullptr;
    --it;
    if (off + n > it->first + it->second) return nullptr;
    return engine_ + off;
  }

 private:
  simulated_device() = default;
  std::size_t capacity_ = 0;
  int fd_ = -1;
  std::byte* device_ = nullptr;
  std::byte* engine_ = nullptr;
  std::mutex mu_;
  std::map<std::size_t, std::size_t> free_, used_;  // offset -> length
};

class simulated final : public accelerator {
 public:
  explicit simulated(simulated_options opt) : opt_(opt) {}
  result<void> start() {
    for (int i = 0; i < opt_.devices; ++i) {
      BOOST_OUTCOME_TRY(auto d, simulated_device::create(opt_.capacity));
      devices_.push_back(std::move(d));
    }
    engine_ = std::thread([this] { run(); });
    return success();
  }
  ~simulated() override {
    {
      std::lock_guard lk(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    if (engine_.joinable()) engine_.join();
  }

  std::string_view name() const override { return "simulated"; }
  int device_count() const override { return opt_.devices; }
  void copy_to_host(int gpu, std::byte* dst, const std::byte* src, std::size_t bytes, copy_done done) noexcept override {
    enqueue(gpu, dst, src, bytes, true, std::move(done));
  }
  void copy_to_device(int gpu, std::byte* dst, const std::byte* src, std::size_t bytes, copy_done done) noexcept override {
    enqueue(gpu, dst, src, bytes, false, std::move(done));
  }
  result<std::shared_ptr<void>> pin(std::span<std::byte>) override { return std::shared_ptr<void>(); }
  result<std::byte*> allocate(int gpu, std::size_t bytes) override {
    if (gpu < 0 || gpu >= opt_.devices) return bad_gpu(gpu);
    return devices_[static_cast<std::size_t>(gpu)]->allocate(bytes);
  }
  void free(int gpu, std::byte* p) noexcept override {
    if (gpu >= 0 && gpu < opt_.devices && p) devices_[static_cast<std::size_t>(gpu)]->free(p);
  }
  std::uint64_t started() const {
    std::lock_guard lk(mu_);
    return started_;
  }
  void fail_after(std::uint64_t skip) {
    std::lock_guard lk(mu_);
    fail_seq_ = started_ + skip + 1;
  }

 private:
  struct job {
    int gpu;
    std::byte* dst;
    const std::byte* src;
    std::size_t bytes;
    bool to_host;
    copy_done done;
    std::uint64_t seq;
  };
  error bad_gpu(int gpu) const {
    return make_error(errc::invalid_argument,
                      "simulated device: no device " + std::to_string(gpu) + " (it has " + std::to_string(opt_.devices) + ")");
  }
  void enqueue(int gpu, std::byte* dst, const std::byte* src, std::size_t bytes, bool to_host, copy_done done) noexcept {
    try {
      std::lock_guard lk(mu_);
      jobs_.push_back({gpu, dst, src, bytes, to_host, std::move(done), ++started_});
    } catch (const std::bad_alloc&) {
      done(out_of_memory("simulated device: queueing a copy"));
      return;
    }
    cv_.notify_one();
  }
  void run() {
    std::unique_lock lk(mu_);
    while (true) {
      cv_.wait(lk, [&] { return stopping_ || !jobs_.empty(); });
      if (jobs_.empty()) return;
      job j = std::move(jobs_.front());
      jobs_.pop_front();
      lk.unlock();
      j.done(execute(j));
      lk.lock();
    }
  }
  result<void> execute(const job& j) {
    if (j.gpu < 0 || j.gpu >= opt_.devices) return bad_gpu(j.gpu);
    if (j.seq == fail_seq_.load())
      return error{std::make_error_code(std::errc::io_error), "simulated device: copy " + std::to_string(j.seq) + " failed (injected)"};
    auto& dev = *devices_[static_cast<std::size_t>(j.gpu)];
    const std::byte* device_side = j.to_host ? j.src : j.dst;
    std::byte* at = dev.engine_address(device_side, j.bytes);
    if (!at && j.bytes)
      return make_error(errc::invalid_argument, std::string("simulated device: the ") + (j.to_host ? "source" : "destination") + " of a " +
                                                    std::to_string(j.bytes) + "-byte copy is not memory of device " +
                                                    std::to_string(j.gpu));
    if (j.bytes) {
      if (j.to_host)
        std::memcpy(j.dst, at, j.bytes);
      else
        std::memcpy(at, j.src, j.bytes);
    }
    return success();
  }

  simulated_options opt_;
  std::vector<std::unique_ptr<simulated_device>> devices_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<job> jobs_;
  std::uint64_t started_ = 0;
  std::atomic<std::uint64_t> fail_seq_{0};  // the copy to fail (0: none)
  bool stopping_ = false;
  std::thread engine_;
};

}  // namespace

result<std::unique_ptr<accelerator>> make_simulated(simulated_options opt) {
  if (opt.devices < 1) return make_error(errc::invalid_argument, "simulated device: devices must be at least 1");
  auto s = std::make_unique<simulated>(opt);
  BOOST_OUTCOME_TRY(s->start());
  return std::unique_ptr<accelerator>(std::move(s));
}

void fail_copy(accelerator& acc, std::uint64_t skip) {
  if (auto* s = dynamic_cast<simulated*>(&acc)) s->fail_after(skip);
}

std::uint64_t copies_started(const accelerator& acc) {
  auto* s = dynamic_cast<const simulated*>(&acc);
  return s ? s->started() : 0;
}

}  // namespace meshckpt::device
