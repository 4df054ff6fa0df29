#pragma once
/// \file
/// Device memory: shards that live on an accelerator (a CUDA GPU, or the simulated device that
/// tests use) rather than in host memory. A `local_shard` whose `memory` is set holds a device
/// pointer; the library never dereferences it on the host, it moves the bytes with the
/// accelerator's asynchronous copies:
///
///  - a save copies device shards into host memory as it writes them: into the staging blocks
///    of the data files, so the copy of one block overlaps the writes of the blocks before it
///    (no snapshot), or into the snapshot memory (copy mode and lazy saves: the snapshot is
///    taken when those copies have completed);
///  - a restore reads into page-locked host staging, then copies to the device while it reads
///    the next tensors; resharding works as for host shards.
///
///     auto gpu = device::make_cuda();                  // meshckpt_cuda, when built
///     local_shard s{.device = 0, .data = {dev_ptr, bytes}, .memory = gpu.get(), .gpu = 0};
///
/// The accelerator must outlive every view whose shards name it. Implementations are
/// thread-safe: copies are started from library threads and complete on the accelerator's own
/// (for CUDA, its host-callback thread), never by polling.

#include <cstddef>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "meshckpt/error.hpp"

namespace meshckpt::device {

/// Called once when an asynchronous copy has completed (or failed), on any thread. It must not
/// block: it hands the result on (the library posts it to the executor that awaits it).
using copy_done = std::function<void(result<void>)>;

/// An accelerator's memory and copy engine.
class accelerator {
 public:
  virtual ~accelerator() = default;

  /// "cuda", "simulated".
  virtual std::string_view name() const = 0;
  /// How many devices (GPUs) it has.
  virtual int device_count() const = 0;

  /// Starts copying `bytes` from device memory `src` (on device `gpu`) to host memory `dst`.
  /// `done` runs once the bytes are in `dst`. Never throws; a failure to start reports through
  /// `done` too.
  virtual void copy_to_host(int gpu, std::byte* dst, const std::byte* src, std::size_t bytes, copy_done done) noexcept = 0;
  /// Starts copying `bytes` from host memory `src` to device memory `dst` (on device `gpu`).
  virtual void copy_to_device(int gpu, std::byte* dst, const std::byte* src, std::size_t bytes, copy_done done) noexcept = 0;

  /// Page-locks host memory for fast copies (CUDA: cudaHostRegister) until the returned token
  /// is destroyed. Null when the accelerator has nothing to do for it (the copy is as fast).
  /// The library pins its snapshot memory and restore staging; a caller need not pin anything.
  virtual result<std::shared_ptr<void>> pin(std::span<std::byte> host) = 0;

  /// `bytes` of device memory on device `gpu`, freed by `free`; for tools and tests (a trainer's
  /// framework allocates its own). Uninitialised.
  virtual result<std::byte*> allocate(int gpu, std::size_t bytes) = 0;
  virtual void free(int gpu, std::byte* p) noexcept = 0;
};

/// Device memory that frees itself.
class device_buffer {
 public:
  device_buffer() = default;
  /// `bytes` on device `gpu` of `acc`.
  static result<device_buffer> allocate(accelerator& acc, int gpu, std::size_t bytes);
  device_buffer(device_buffer&& o) noexcept { swap(o); }
  device_buffer& operator=(device_buffer&& o) noexcept {
    device_buffer(std::move(o)).swap(*this);
    return *this;
  }
  ~device_buffer();
  std::span<std::byte> span() const { return {p_, n_}; }
  std::byte* data() const { return p_; }
  std::size_t size() const { return n_; }

 private:
  void swap(device_buffer& o) noexcept {
    std::swap(acc_, o.acc_);
    std::swap(gpu_, o.gpu_);
    std::swap(p_, o.p_);
    std::swap(n_, o.n_);
  }
  accelerator* acc_ = nullptr;
  int gpu_ = 0;
  std::byte* p_ = nullptr;
  std::size_t n_ = 0;
};

/// Copies between host and device memory, blocking until done (tools and tests): blocking API
/// faces over the asynchronous copies, through the library's one blocking bridge, so they are
/// refused (`errc::unsupported`) on a thread that runs one of the library's executors.
result<void> copy_to_host_blocking(accelerator& acc, int gpu, std::span<std::byte> dst, const std::byte* src);
result<void> copy_to_device_blocking(accelerator& acc, int gpu, std::byte* dst, std::span<const std::byte> src);

/// Knobs of the simulated device.
struct simulated_options {
  int devices = 1;
  /// Bytes of device memory per device (reserved address space; pages are used as written).
  std::size_t capacity = std::size_t{8} << 30;
};

/// A device for machines without a GPU: its memory is a separate mapping that the host cannot
/// touch (any host access faults, as a GPU pointer would), reached only through an
/// asynchronous copy engine on a thread of its own that completes copies in order, as one
/// CUDA stream does. The same code paths run as with CUDA.
result<std::unique_ptr<accelerator>> make_simulated(simulated_options opt = {});

/// The number of copies the accelerator has started (simulated devices only; 0 otherwise):
/// for tests that check that bytes went through the copy engine.
std::uint64_t copies_started(const accelerator& acc);

/// Makes a simulated device fail one copy with `std::errc::io_error`, as a device reports a
/// failed transfer: the one started after `skip` more copies (0: the next). For fault tests;
/// no effect on other accelerators.
void fail_copy(accelerator& acc, std::uint64_t skip = 0);

}  // namespace meshckpt::device
