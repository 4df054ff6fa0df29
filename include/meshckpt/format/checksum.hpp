#pragma once
/// \file
/// Checksums: XXH3-64 over each chunk of a slice's bytes (chunks of `chunk_bytes`, the last one
/// shorter), and over the manifest.

#include <cstddef>
#include <cstdint>
#include <memory>
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
void append_chunk_checksums(std::span<const std::byte> bytes, std::uint64_t chunk_bytes, std::vector<std::uint64_t>& out);

/// The chunk checksums of one slice at a time, fed in pieces of any size as its bytes go by
/// (the same values `append_chunk_checksums` gives for the whole slice). A writer hashes each
/// piece right after copying it, while it is still in cache, and hashes the bytes it writes.
/// Reusable: `start` begins the next slice.
class chunk_hasher {
 public:
  /// Precondition: chunk_bytes > 0.
  explicit chunk_hasher(std::uint64_t chunk_bytes);
  ~chunk_hasher();
  chunk_hasher(const chunk_hasher&) = delete;
  chunk_hasher& operator=(const chunk_hasher&) = delete;

  /// Begins a slice of `length` bytes whose checksums go to `out` (reserved here: the only
  /// allocation, so `update` never throws).
  void start(std::uint64_t length, std::vector<std::uint64_t>& out);
  /// The next bytes of the slice. Precondition: no more than the slice has left.
  void update(std::span<const std::byte> bytes);
  /// True once every byte of the slice has been fed (and every checksum appended).
  bool done() const noexcept { return left_ == 0; }

 private:
  struct stream;
  std::uint64_t chunk_;
  std::uint64_t left_ = 0;      // bytes of the slice not fed yet
  std::uint64_t in_chunk_ = 0;  // bytes of the current chunk fed to the stream
  std::vector<std::uint64_t>* out_ = nullptr;
  std::unique_ptr<stream> stream_;  // for chunks that arrive in several pieces
};
}  // namespace meshckpt::format
