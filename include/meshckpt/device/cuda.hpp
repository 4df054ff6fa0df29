#pragma once
/// \file
/// CUDA GPUs as an accelerator (device/accelerator.hpp): library `meshckpt_cuda`
/// (`meshckpt::cuda`), built when CMake finds the CUDA toolkit. Shards are CUDA device pointers
/// (from cudaMalloc, or a framework's allocator) with the GPU's ordinal in `local_shard::gpu`.
///
/// Copies run with cudaMemcpyAsync on two dedicated non-blocking streams per GPU (one per
/// direction), so they never wait behind the trainer's kernels on the default stream; their
/// completions arrive through stream callbacks (no thread polls). The library pins the host
/// memory it copies with (cudaHostRegister): snapshot memory, staging blocks, restore staging.
///
/// A caller whose kernels write the shards must make those writes visible before a save reads
/// them (synchronize its stream, as before any host access), and a restore's bytes are on the
/// device once the restore returns.

#include <memory>

#include "meshckpt/device/accelerator.hpp"

namespace meshckpt::device {

/// The process's CUDA accelerator (every visible GPU), created on first use and kept for the
/// life of the process. `errc::unsupported` when no GPU is visible or the driver cannot start,
/// with CUDA's reason.
result<std::shared_ptr<accelerator>> make_cuda();

}  // namespace meshckpt::device
