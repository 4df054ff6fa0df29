#include "meshckpt/format/checksum.hpp"

#include <algorithm>

#include <xxhash.h>

namespace meshckpt::format {

std::uint64_t checksum(std::span<const std::byte> bytes) noexcept {
  return XXH3_64bits(bytes.data(), bytes.size());
}

void append_chunk_checksums(std::span<const std::byte> bytes, std::uint64_t chunk_bytes,
                            std::vector<std::uint64_t>& out) {
  for (std::uint64_t off = 0; off < bytes.size(); off += chunk_bytes) {
    auto n = std::min<std::uint64_t>(chunk_bytes, bytes.size() - off);
    out.push_back(checksum(bytes.subspan(off, n)));
  }
}

}  // namespace meshckpt::format
