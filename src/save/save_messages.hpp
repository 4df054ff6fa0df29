#pragma once
// Private: the messages of a multi-process save (src/api/commit.cpp), and the merge of the
// processes' reports into one manifest on process 0. Pure functions over bytes; a message
// from another process is decoded like a file from disk (bounds-checked, counts capped), since
// a mismatched binary or a bug on one rank must not crash the root.

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "meshckpt/error.hpp"
#include "meshckpt/format/manifest.hpp"

namespace meshckpt::detail {

// Data file names of process r use indices r * files_per_process + k (docs/FORMAT.md).
inline constexpr std::uint32_t files_per_process = 10000;
inline constexpr int max_processes = 99999;

// One slice a process wrote: (tensor, slice) index the common skeleton.
struct written_slice {
  std::uint64_t tensor = 0, slice = 0;
  std::uint32_t file = 0;  // index into the report's files
  std::uint64_t offset = 0, length = 0;
  std::int64_t writer_device = 0;
  std::vector<std::uint64_t> checksums;
};

// What one process tells process 0 after writing (and fsyncing) its data files.
struct process_report {
  bool ok = false;
  error failure;                  // when !ok
  std::uint64_t fingerprint = 0;  // of the skeleton: every process must plan the same one
  std::vector<format::data_file> files;
  std::vector<written_slice> slices;
};

// What process 0 tells everyone: the outcome of the save.
struct save_outcome {
  enum state : std::uint8_t { committed = 0, failed = 1, failed_after_publish = 2 } s = failed;
  error failure;  // when not committed
  std::uint64_t bytes = 0, tensors = 0, slices = 0, files = 0;
};

// A hash of everything the processes must agree on: meshes, keys, dtypes, shapes, layouts and
// slice boxes (not file placement, which is per process).
std::uint64_t skeleton_fingerprint(const format::manifest& skeleton);

// The slices of `m` this process placed (file != remote_file), as a report.
process_report report_of(const format::manifest& m, std::vector<format::data_file> files, std::uint64_t fingerprint);

std::vector<std::byte> encode(const process_report& r);
result<process_report> decode_report(std::span<const std::byte> bytes);
std::vector<std::byte> encode(const save_outcome& o);
result<save_outcome> decode_outcome(std::span<const std::byte> bytes);

// Fills the skeleton's slices from every process's report (reports[r] is process r's): files
// are appended in process order, each slice must be reported exactly once, by a process whose
// skeleton matched. Errors name the process and the slice.
result<void> merge_reports(format::manifest& m, std::span<const process_report> reports);

}  // namespace meshckpt::detail
