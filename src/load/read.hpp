#pragma once
// Private: the steps of a restore that verify and read_box share with it (read.cpp).

#include <span>
#include <utility>

#include "../pipeline/data_files.hpp"
#include "match_targets.hpp"

namespace meshckpt::detail {

// Checks every byte of the slices `from` against their checksums (chunks, or a TensorFlow
// piece's whole CRC-32C), reading each in staging pieces: bounded memory. (read.cpp)
task<void> check_slices(io::backend& b, const format::manifest& m,
                        std::span<const std::pair<const format::saved_tensor*, const format::saved_slice*>> from, file_cache& files);

// Plans the reads of `w` (ranges rounded to `granule`; plan/read_plan) and runs them, `direct`
// as `files` was opened. Returns the bytes read. (read.cpp)
task<std::uint64_t> run_wanted(io::backend& b, const format::manifest& m, const wanted& w, std::uint64_t granule, bool direct,
                               const read_options& opt, file_cache& files);

}  // namespace meshckpt::detail
