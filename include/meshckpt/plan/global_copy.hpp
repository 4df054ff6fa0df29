#pragma once
/// \file
/// A whole global tensor into a DTensor's local shards and back, in one call: the shard/box
/// loop a caller would otherwise write to fill a sharded variable from a full array, or to
/// check it against one. Pure memory copies planned as strided runs (plan/restore_plan.hpp).

#include <span>

#include "meshckpt/error.hpp"
#include "meshckpt/tensor/dtensor.hpp"

namespace meshckpt {

/// Copies each local shard's box of `global` (the whole tensor, row-major, `global_bytes()`
/// bytes) into that shard. Replicated shards all receive their copy.
/// \returns `errc::invalid_argument` when `global` has the wrong size.
result<void> assign_global(const dtensor_view& v, std::span<const std::byte> global);

/// Copies each local shard into its box of `global` (the whole tensor, row-major). Elements no
/// local shard holds (other processes' shards) are left as they are; where replicas overlap
/// the first local device's bytes are written last.
/// \returns `errc::invalid_argument` when `global` has the wrong size.
result<void> copy_to_global(const dtensor_view& v, std::span<std::byte> global);

}  // namespace meshckpt
