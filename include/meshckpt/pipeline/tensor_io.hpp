#pragma once
/// \file
/// The low-level checkpoint API: write a set of named DTensors to a prefix, read a prefix's
/// manifest, read tensors back into caller shards of the same layout (verifying checksums),
/// verify a checkpoint, and scan a directory. These are the blocking forms; each is a thin
/// wrapper that runs the asynchronous form (pipeline/tensor_io_async.hpp) to completion.
///
/// A checkpoint at prefix `DIR/NAME` is the file `DIR/NAME.manifest` plus the data files it
/// lists; see docs/FORMAT.md. Errors name the operation, the file (relative to DIR), the tensor
/// key and the errno.

#include <chrono>
#include <cstdint>
#include <functional>
#include <stop_token>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "meshckpt/coord/coordinator.hpp"
#include "meshckpt/error.hpp"
#include "meshckpt/format/manifest.hpp"
#include "meshckpt/io/backend.hpp"
#include "meshckpt/plan/write_plan.hpp"

namespace meshckpt {

using plan::named_tensor;

/// Options of `write_tensors`.
struct write_options {
  plan::layout_options layout{};
  /// Checksum chunk size; a power of two in [4 KiB, 64 MiB].
  std::uint64_t chunk_bytes = format::default_chunk_bytes;
  /// Extra named sections stored in the manifest (for higher layers).
  std::vector<format::extension> extensions{};
  /// Called with (bytes written, total bytes) as data blocks complete, on the library's engine thread.
  std::function<void(std::uint64_t done, std::uint64_t total)> progress{};
  /// Cancels the save when a stop is requested: it then fails with `errc::cancelled` before
  /// the commit, leaving the previous checkpoint (if any) and no new file behind. A stop
  /// requested after the rename has no effect (the checkpoint is already visible).
  std::stop_token stop{};
  /// Called once, on the library's engine thread (or the caller's executor), when the save has read every byte of the input tensors
  /// (they are all in staging memory or written): from then on the caller may modify them,
  /// although the commit is still to come. Not called when the save fails before that point.
  std::function<void()> sources_released{};
  /// The processes saving this checkpoint together (docs/MULTI_PROCESS.md); nullptr or a group
  /// of one: this process alone. Every process of the group calls `write_tensors` with the same
  /// prefix and the same tensors (keys, dtypes, global shapes, layouts, meshes), each holding
  /// its own local shards; each writes the slices its devices own to its own data files, and
  /// process 0 commits the manifest once every process reported success. Every process gets
  /// the same outcome. Must outlive the save.
  coord::coordinator* coordinator = nullptr;
  /// How long process 0 waits for the others' reports (from the moment it finished its own
  /// writes), and the others for the token at the start. A process that died or hangs makes
  /// the save fail with `errc::timed_out` on process 0 within this time, and on every process
  /// within twice it. Must cover the slowest process's writes.
  std::chrono::milliseconds coordination_timeout{std::chrono::minutes(5)};
  /// A save holds its directory's writer lock (DIR/meshckpt.lock, docs/RELIABILITY.md) from the
  /// moment the directory exists until it returns; in a multi-process save, process 0 holds it.
  /// When another process holds it, the save waits up to this long, then fails with
  /// `errc::locked` naming the holder (pid, host) and leaving nothing behind. 0: fail at once.
  std::chrono::milliseconds lock_timeout{0};
};

/// What a write did.
struct write_report {
  std::string manifest_path;  ///< "DIR/NAME.manifest"
  std::uint64_t bytes = 0;    ///< tensor bytes stored
  std::size_t tensors = 0;
  std::size_t slices = 0;
  std::size_t files = 0;          ///< data files written
  std::size_t cleaned_files = 0;  ///< old data files and leftovers removed after the commit
  int processes = 1;              ///< processes that wrote the checkpoint together
};

/// Options of `read_tensors`.
struct read_options {
  bool verify_checksums = true;
  /// Allow a target whose dtype differs from the saved one when both are floating-point
  /// (float64, float32, bfloat16, float16): the values are converted, rounding to nearest-even
  /// (tensor/convert.hpp). Off by default: a different dtype is a `dtype_mismatch` error.
  bool convert_dtypes = false;
  /// Called with (bytes read, total bytes) as reads complete, on the IO thread.
  std::function<void(std::uint64_t done, std::uint64_t total)> progress{};
};

/// What a read did.
struct read_report {
  std::uint64_t bytes_read = 0;
  std::size_t tensors = 0;
  std::size_t resharded_shards = 0;  ///< target shards assembled from slices of another layout
};

/// The result of `verify`: what was checked and every problem found (empty when intact).
struct verify_report {
  std::uint64_t bytes_checked = 0;
  std::size_t tensors = 0;
  std::size_t slices = 0;
  std::size_t files = 0;
  std::vector<error> problems;
  /// False when the format stores no checksum (a legacy torch.save file): its bytes were read
  /// and its sizes and structure checked, but no byte could be verified.
  bool checksummed = true;
  bool ok() const { return problems.empty(); }
};

/// What a checkpoint directory holds, judged by file names and manifests.
struct directory_scan {
  std::vector<std::string> checkpoints;  ///< names with a committed manifest, sorted
  std::vector<std::string> leftovers;    ///< temp manifests and data files no manifest refers to
};

/// Writes `tensors` as the checkpoint `prefix`, atomically replacing any checkpoint already
/// there. Returns only after the commit is durable (see src/api/commit.cpp for the protocol).
/// On failure nothing new is visible, the old checkpoint (if any) is intact, and the files this
/// attempt created are removed.
result<write_report> write_tensors(io::backend& b, std::string_view prefix, std::span<const named_tensor> tensors,
                                   const write_options& opt = {});

/// Reads and validates the manifest of `prefix`. `errc::not_found` when there is none (with a
/// hint when `prefix-N` checkpoints exist, i.e. a `-N` suffix looks missing).
result<format::manifest> read_manifest(io::backend& b, std::string_view prefix);

/// Reads the tensors named by `targets[i].key` into `targets[i].tensor`'s shards, which must have
/// the saved dtype and global shape, in any mesh and layout: a shard whose box is a saved slice
/// is read whole; any other shard is assembled from the saved slices intersecting it
/// (resharding; only the chunks it needs are read, see plan/restore_plan.hpp). Verifies
/// checksums unless disabled. Errors: not_found (key), dtype_mismatch, shape_mismatch,
/// layout_mismatch (the saved slices do not cover a shard: a damaged manifest),
/// checksum_mismatch, short_read, IO errors; the target shards may be partly written on error.
result<read_report> read_tensors(io::backend& b, std::string_view prefix, std::span<const named_tensor> targets,
                                 const read_options& opt = {});

/// As above, with the manifest already read (by `read_manifest`): for callers that read in
/// several rounds from one checkpoint. `m` must be the manifest of `prefix`.
result<read_report> read_tensors(io::backend& b, std::string_view prefix, const format::manifest& m, std::span<const named_tensor> targets,
                                 const read_options& opt = {});

/// Reads box `where` of tensor `key` of checkpoint `prefix` (manifest `m`, from `read_manifest`
/// or `read_tf_checkpoint`) into `out`: the box's elements, row-major, `out.size()` equal to its
/// volume times the dtype size. Only the checksum chunks that hold the box are read and
/// verified, so memory and IO follow the box, not the tensor: the last two elements of a
/// 5 GiB tensor take one chunk. A TensorFlow tensor's one CRC-32C covers it whole: its stored
/// pieces that hold the box are first checked in staging-sized reads, then only the box is
/// read. Errors: not_found (key), invalid_argument (a box outside the tensor or of another
/// rank, a buffer of another size), checksum_mismatch, short_read, IO errors. With
/// `opt.verify_checksums` false nothing is checked and only the box's pages are read (after a
/// `verify_tensor`, say, when many boxes of one tensor are read).
result<read_report> read_tensor_box(io::backend& b, std::string_view prefix, const format::manifest& m, std::string_view key,
                                    const box& where, std::span<std::byte> out, const read_options& opt = {});

/// Checks every stored byte of tensor `key` of checkpoint `prefix` (manifest `m`) against its
/// checksums (chunk checksums, or a TensorFlow tensor's CRC-32C), reading in staging-sized
/// pieces: bounded memory whatever the tensor's size. Errors: not_found (key),
/// checksum_mismatch naming the slice, file and byte range, short_read, IO errors.
result<void> verify_tensor(io::backend& b, std::string_view prefix, const format::manifest& m, std::string_view key);

/// Progress of `verify`: (bytes checked so far, bytes to check), called on the verifying thread
/// after each read (a few MiB), and once with the final figures.
using verify_progress = std::function<void(std::uint64_t done, std::uint64_t total)>;

/// Reads every byte of the checkpoint `prefix` and checks every checksum and file size. Damage
/// is listed in the report; the result is an error only when the manifest cannot be read.
result<verify_report> verify(io::backend& b, std::string_view prefix, verify_progress progress = {});

/// Lists the committed checkpoints of `dir` and the leftovers of interrupted saves.
result<directory_scan> scan_directory(io::backend& b, std::string_view dir);

/// Splits "DIR/NAME" into {"DIR", "NAME"} ("." when there is no '/').
std::pair<std::string, std::string> split_prefix(std::string_view prefix);

}  // namespace meshckpt
