#pragma once
/// \file
/// Read planning (pure, no IO): which reads a restore issues. The input is the set of saved
/// byte ranges a restore needs — for each, the data file, where the saved slice lies in it,
/// the part of the slice needed, and the strided runs that copy those bytes into destination
/// shards (from `plan_shard_restore`, or one whole run per replica when layouts match). The
/// output is a list of request values: a file range to read, whether it is read straight into a
/// destination or into a staging buffer, and which wanted bytes land where in it.
///
/// The policy is explicit: large slices are read in pieces; small neighbours in one file are
/// merged into one read when the gap between them and the merged extent stay under the limits;
/// with an alignment (O_DIRECT), every read's offset and length are multiples of it and a
/// direct read's destination address too, so a range that cannot be read in place is staged
/// over its aligned cover. A piece always holds whole checksum chunks unless the chunks are
/// larger than a piece, in which case the wanted range is verified once in its destination
/// (`read_plan::verify_after`).

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <utility>
#include <span>
#include <vector>

#include "meshckpt/error.hpp"
#include "meshckpt/plan/restore_plan.hpp"

namespace meshckpt::plan {

/// How reads are formed. Defaults are those of a restore through O_DIRECT.
struct read_policy {
  std::uint64_t alignment = 4096;                ///< offsets, lengths and direct addresses (a power of two; 1: none)
  std::uint64_t piece_bytes = 4u << 20;          ///< large ranges are read in pieces of this size
  std::uint64_t large_bytes = 1u << 20;          ///< ranges at least this long are pieced, never merged
  std::uint64_t merge_gap = 256u << 10;          ///< largest hole between two merged ranges
  std::uint64_t max_extent = (8u << 20) - 8192;  ///< largest merged read, before alignment
};

/// One destination of a wanted range: the run that copies slice bytes to `base`.
struct read_target {
  std::byte* base = nullptr;  ///< the destination shard's bytes (only the address's alignment is used here)
  copy_run run;               ///< source offsets are relative to the slice; `run.slice` is not used
};

/// A part of one saved slice that a restore needs.
struct wanted_range {
  std::uint32_t file = 0;            ///< data file index
  std::uint64_t file_offset = 0;     ///< where the slice starts in the file
  std::uint64_t length = 0;          ///< the slice's length
  std::uint64_t begin = 0;           ///< needed bytes [begin, end) of the slice: `begin` on a chunk
  std::uint64_t end = 0;             ///< boundary, `end` on one or at the slice's end
  std::vector<read_target> targets;  ///< every run that copies from it (at least one)
};

/// Bytes [begin, end) of wanted range `want` are at offset `at` of a request's buffer.
struct read_piece {
  std::size_t want = 0;
  std::uint64_t begin = 0, end = 0;
  std::uint64_t at = 0;
  friend bool operator==(const read_piece&, const read_piece&) = default;
};

/// A read in place: the request's bytes go to target `target` of its only piece's range, at
/// `base + offset`; that target then needs no copy.
struct direct_dest {
  std::size_t target = 0;
  std::uint64_t offset = 0;  ///< from the target's `base`
  friend bool operator==(const direct_dest&, const direct_dest&) = default;
};

/// One read.
struct read_request {
  std::uint32_t file = 0;
  std::uint64_t offset = 0;           ///< in the file (aligned)
  std::uint64_t length = 0;           ///< bytes read (aligned; may reach past the end of the data)
  std::uint64_t required = 0;         ///< bytes that must be there: fewer is a short read
  std::optional<direct_dest> direct;  ///< set: read in place; unset: into a staging buffer of `length` bytes
  std::vector<read_piece> pieces;     ///< in order of `at`; a direct request has exactly one
};

/// The requests of a restore, sorted by file and offset.
struct read_plan {
  std::vector<read_request> requests;
  /// (want, target) pairs: ranges whose chunks are larger than a piece; they are verified once
  /// all reads are done, in that target, where their bytes lie contiguous.
  std::vector<std::pair<std::size_t, std::size_t>> verify_after;
  std::uint64_t bytes = 0;  ///< total wanted bytes
};

/// Plans the reads of `wants` with checksum chunks of `chunk_bytes`. Errors
/// (`errc::invalid_argument`) on a range that does not fit its slice or the file's address
/// space, a range without targets, a run outside its slice, or a policy that cannot be met.
result<read_plan> plan_reads(std::span<const wanted_range> wants, std::uint64_t chunk_bytes, const read_policy& policy = {});

/// Calls `f(src, dst, len)` for every part of `run`'s blocks inside source bytes [p0, p1):
/// `src` and `dst` are offsets from the slice and the destination base.
template <class F>
void for_each_block(const copy_run& r, std::uint64_t p0, std::uint64_t p1, F&& f) {
  if (r.count == 0 || r.length == 0 || r.src_end() <= p0 || r.src_offset >= p1) return;
  std::uint64_t j0 = 0, j1 = r.count - 1;
  if (r.count > 1 && r.src_stride > 0) {
    if (p0 >= r.src_offset + r.length) j0 = (p0 - r.src_offset - r.length) / r.src_stride + 1;
    j1 = std::min(j1, (p1 - 1 - r.src_offset) / r.src_stride);
  }
  for (std::uint64_t j = j0; j <= j1; ++j) {
    const std::uint64_t so = r.src_offset + j * r.src_stride;
    const std::uint64_t a = std::max(p0, so), e = std::min(p1, so + r.length);
    if (a < e) f(a, r.dst_offset + j * r.dst_stride + (a - so), e - a);
  }
}

}  // namespace meshckpt::plan
