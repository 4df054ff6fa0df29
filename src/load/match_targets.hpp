#pragma once
// Private: the first step of a restore, matching target shards to saved slices. Every target
// shard becomes runs over the saved ranges it needs (whole slices for a shard of the saved
// layout, strided runs for another layout), which plan/read_plan turns into reads.

#include <utility>
#include <vector>

#include "../runtime/recycler.hpp"
#include "meshckpt/pipeline/tensor_io.hpp"
#include "meshckpt/format/manifest.hpp"
#include "meshckpt/plan/read_plan.hpp"

namespace meshckpt::detail {

// What a restore wants: the saved ranges, each with the tensor and slice it comes from (for
// checksums and errors), and the runs into the target shards.
struct wanted {
  std::vector<plan::wanted_range> ranges;
  std::vector<std::pair<const format::saved_tensor*, const format::saved_slice*>> from;
};

// Matches every target shard to the saved slice with its box (every replica a whole run), or,
// in another layout, to the runs of the saved slices that intersect it; a slice that resharding
// reads is wanted only from its first to its last needed chunk. Errors name the tensor: not in
// the checkpoint, another dtype or shape, a shard the saved slices do not cover.
//
// `w` may hold an earlier restore's ranges: they are overwritten in place, so their target
// lists keep their capacity (runtime/recycler.hpp says why that matters). Ranges are wanted
// from and to multiples of `granule` (0: the checksum chunk).
result<void> match_targets(const format::manifest& m, std::span<const named_tensor> targets, read_report& rep, wanted& w,
                           std::uint64_t granule = 0);

// Matches box `where` of tensor `key` (its row-major bytes: `out`) to the saved ranges that
// hold it, each wanted from and to a multiple of `granule` (the checksum chunk when the reads
// are verified). Errors: not_found, invalid_argument (a box outside the tensor, a buffer of
// another size), a box the saved slices do not cover.
result<void> match_box(const format::manifest& m, std::string_view key, const box& where, std::span<std::byte> out, std::uint64_t granule,
                       wanted& w);

// Wanted ranges kept between restores.
runtime::recycler<wanted>& wanted_recycler();

}  // namespace meshckpt::detail
