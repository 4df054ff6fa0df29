#pragma once
#include <functional>
#include <string>
// Private: the accelerator's callback copies as awaitables (completions arrive on the
// accelerator's thread and resume the coroutine on its executor; nothing polls), and the
// host side of device shards: pinned staging.
#include <memory>
#include <span>
#include <vector>

#include "meshckpt/device/accelerator.hpp"
#include "meshckpt/tensor/dtensor.hpp"
#include "../runtime/host_memory.hpp"
#include "../runtime/task.hpp"

namespace meshckpt::device::detail {

runtime::task<void> to_host(accelerator& acc, int gpu, std::span<std::byte> dst, const std::byte* src);
runtime::task<void> to_device(accelerator& acc, int gpu, std::byte* dst, std::span<const std::byte> src);

// Copies started one by one and awaited together: a restore's copies to the device run while
// it reads the next tensors.
class copy_group {
 public:
  copy_group();
  // Starts a copy of `src` to device memory `dst`.
  void to_device(accelerator& acc, int gpu, std::byte* dst, std::span<const std::byte> src);
  // Starts a copy of device memory `src` to `dst`; a failure is reported with `what` as context.
  void to_host(accelerator& acc, int gpu, std::span<std::byte> dst, const std::byte* src, std::string what);
  // Runs `f` on `ex` as one more member of the group (on this thread instead when the post
  // cannot allocate). `f` must not throw.
  void post(boost::asio::any_io_executor ex, std::function<void()> f);
  // Waits (no thread waits) until every copy started so far has completed; the first failure.
  runtime::task<void> wait();

  struct state;  // accelerator.cpp

 private:
  std::shared_ptr<state> st_;
};

// Host memory for the device side of a save or restore, page-locked for every accelerator it
// will be copied with.
struct staging {
  runtime::host_buffer bytes;
  std::size_t size = 0;
  std::vector<std::shared_ptr<void>> pins;
};
// Throws std::bad_alloc when the memory is not there.
result<staging> make_staging(std::size_t bytes, std::span<accelerator* const> with);

// Pins `host` for `acc` unless one of `pins` already did; `pinned` lists the accelerators done.
result<void> pin_once(accelerator& acc, std::span<std::byte> host, std::vector<accelerator*>& pinned,
                      std::vector<std::shared_ptr<void>>& pins);

// Pins a buffer of the process-wide staging pool (which lives as long as the process) for
// `acc`, once: the token is kept, keyed by the buffer and the accelerator.
result<void> pin_staging_buffer(accelerator& acc, std::span<std::byte> buffer);

}  // namespace meshckpt::device::detail
