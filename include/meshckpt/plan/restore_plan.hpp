#pragma once
/// \file
/// Restore planning (pure, no IO): how a target shard — any box of the global tensor, from any
/// mesh and layout — is assembled from the saved slices that intersect it. This is resharding:
/// a tensor saved sharded over `x` on 8 devices can be restored sharded over `y` on 16, or whole
/// on one device.
///
/// Both the saved slices and the target are row-major boxes of one global shape. Their
/// intersection is copied as blocks of contiguous bytes: a block extends over every trailing
/// dimension that the intersection, the slice and the target all cover completely, and the
/// blocks along the next dimension out form one strided run, so a row split gives one run per
/// saved slice and a column split one strided run per slice (per outer index for rank > 2).

#include <cstdint>
#include <span>
#include <vector>

#include "meshckpt/error.hpp"
#include "meshckpt/tensor/box.hpp"

namespace meshckpt::plan {

/// A strided run of bytes copied from a saved slice into a target shard: `count` contiguous
/// blocks of `length` bytes, the j-th from `src_offset + j * src_stride` in the slice to
/// `dst_offset + j * dst_stride` in the shard. A column split thus needs one run per slice, not
/// one per row.
struct copy_run {
  std::size_t slice = 0;         ///< index into the `slices` given to `plan_shard_restore`
  std::uint64_t src_offset = 0;  ///< byte offset within that slice's bytes
  std::uint64_t dst_offset = 0;  ///< byte offset within the target shard's bytes
  std::uint64_t length = 0;      ///< bytes per block
  std::uint64_t count = 1;       ///< blocks
  std::uint64_t src_stride = 0;  ///< bytes between blocks in the slice
  std::uint64_t dst_stride = 0;  ///< bytes between blocks in the shard

  /// One past the last source byte.
  std::uint64_t src_end() const { return src_offset + (count - 1) * src_stride + length; }
  friend bool operator==(const copy_run&, const copy_run&) = default;
};

/// The runs that fill `target` (a box of a tensor of shape `global` whose elements have
/// `elem_bytes` bytes) from `slices` (pairwise disjoint boxes of the same tensor, as a saved
/// layout produces), ordered by slice and then by source offset. Errors (`errc::layout_mismatch`)
/// when the slices do not cover the target completely, and (`errc::invalid_argument`) when a box
/// does not fit the shape or the ranks differ.
result<std::vector<copy_run>> plan_shard_restore(const shape& global, std::int64_t elem_bytes, std::span<const box> slices,
                                                 const box& target);

}  // namespace meshckpt::plan
