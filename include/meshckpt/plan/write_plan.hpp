#pragma once
/// \file
/// Write planning (pure, no IO): which slices of which tensors this process writes, which
/// replica owns each, and where in which data file each slice goes.
///
/// - Each distinct slice (shard box) of a tensor is stored once. Its owner among the replicas
///   holding it is `replicas[xxh3(key) % replicas.size()]` (replicas in mesh order), so
///   replicated tensors are spread over devices, and therefore over processes, instead of all
///   landing on device 0 — and every process computes the same owner.
/// - Slices of at least `align_threshold` bytes start at `alignment`-aligned offsets (O_DIRECT
///   needs no bounce copy); smaller ones are packed densely after them.

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "meshckpt/error.hpp"
#include "meshckpt/format/manifest.hpp"
#include "meshckpt/tensor/dtensor.hpp"

namespace meshckpt::plan {

/// A tensor to save under `key` (an object path such as "model/dense/kernel").
struct named_tensor {
  std::string key;
  dtensor_view tensor;
};

/// A tensor whose bytes are not in memory: the save reads them while it writes them, so
/// memory stays bounded whatever the tensor's size (an import streams the file it converts
/// this way). Stored whole, as one slice on the one device of a one-device mesh.
struct streamed_tensor {
  std::string key;
  dtype type = dtype::float32;
  shape global;
};

/// Marks a write whose bytes are in memory (`slice_write::streamed`).
inline constexpr std::size_t not_streamed = static_cast<std::size_t>(-1);

/// Data-file layout knobs.
struct layout_options {
  std::uint64_t alignment = 4096;
  std::uint64_t align_threshold = 64 * 1024;
  /// Start a new data file once one holds this many bytes (0: a single data file).
  std::uint64_t max_file_bytes = 0;
};

/// One slice to write.
struct slice_write {
  std::size_t tensor = 0;                 ///< index into `write_plan::tensors`
  std::size_t slice = 0;                  ///< index into that tensor's `slices`
  std::int64_t owner = 0;                 ///< device whose shard provides the bytes
  std::span<const std::byte> source;      ///< the owner's shard bytes (empty when not local or streamed)
  std::size_t streamed = not_streamed;    ///< index into the streamed tensors, or `not_streamed`
  device::accelerator* memory = nullptr;  ///< the owner shard's device memory (`local_shard::memory`)
  int gpu = 0;
};

/// The plan: a manifest skeleton (everything but checksums and file names) plus the writes.
struct write_plan {
  format::manifest skeleton;        ///< tensors sorted by key; slices placed; checksums empty
  std::vector<slice_write> writes;  ///< sorted by (file, offset)
  std::vector<std::uint64_t> file_sizes;
};

/// Marks a slice of the skeleton that another process writes (`saved_slice::file`).
inline constexpr std::uint32_t remote_file = 0xffffffffu;

/// Plans a save. Errors (`errc::invalid_argument`): empty, over-long or duplicate keys; a
/// slice whose owner is not local to this process, unless `spans_processes`.
///
/// With `spans_processes` (a save by several processes, each calling this with its own local
/// shards), the skeleton still lists every slice of every tensor — all processes compute the
/// same one — but only slices owned by a local device are placed in this process's data files
/// and written; the others keep `file == remote_file` and are filled in from their owners'
/// reports before the commit.
///
/// `reuse`: an earlier plan whose memory (the skeleton's tensors and slices, the writes) the
/// new one is built in; its contents are discarded.
///
/// `streamed`: tensors planned with `tensors` (keys unique across both), each one whole slice
/// whose write names it in `slice_write::streamed`.
result<write_plan> plan_write(std::span<const named_tensor> tensors, const layout_options& opt = {}, bool spans_processes = false,
                              write_plan reuse = {}, std::span<const streamed_tensor> streamed = {});

}  // namespace meshckpt::plan
