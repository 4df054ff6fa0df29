#pragma once
/// \file
/// Checksums: XXH3-64 over each chunk of a slice's bytes (chunks of `chunk_bytes`, the last one
/// shorter), and over the manifest.

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

namespace meshckpt::format {

/// XXH3-64 (seed 0) of `bytes`.
std::uint64_t checksum(std::span<const std::byte> bytes) noexcept;

/// Number of chunks of `length` bytes cut into `chunk_bytes` pieces (0 for an empty slice).
/// Precondition: chunk_bytes > 0.
inline std::uint64_t chunk_count(std::uint64_t length, std::uint64_t chunk_bytes) noexcept {
  return length / chunk_bytes + (length % chunk_bytes != 0);
}

/// Appends the checksum of every chunk of `bytes` to `out`.
void append_chunk_checksums(std::span<const std::byte> bytes, std::uint64_t chunk_bytes,
                            std::vector<std::uint64_t>& out);

}  // namespace meshckpt::format
