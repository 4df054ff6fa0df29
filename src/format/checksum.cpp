#include "meshckpt/format/checksum.hpp"

#include <algorithm>
#include <new>

#include <xxhash.h>

namespace meshckpt::format {

std::uint64_t checksum(std::span<const std::byte> bytes) noexcept { return XXH3_64bits(bytes.data(), bytes.size()); }

void append_chunk_checksums(std::span<const std::byte> bytes, std::uint64_t chunk_bytes, std::vector<std::uint64_t>& out) {
  for (std::uint64_t off = 0; off < bytes.size(); off += chunk_bytes) {
    auto n = std::min<std::uint64_t>(chunk_bytes, bytes.size() - off);
    out.push_back(checksum(bytes.subspan(off, n)));
  }
}

struct chunk_hasher::stream {
  stream() : s(XXH3_createState()) {
    if (!s) throw std::bad_alloc();
  }
  ~stream() { XXH3_freeState(s); }
  XXH3_state_t* s;
};

chunk_hasher::chunk_hasher(std::uint64_t chunk_bytes) : chunk_(chunk_bytes) {}
chunk_hasher::~chunk_hasher() = default;

void chunk_hasher::start(std::uint64_t length, std::vector<std::uint64_t>& out) {
  out.reserve(out.size() + chunk_count(length, chunk_));
  if (!stream_ && length > 0) stream_ = std::make_unique<stream>();  // before any byte: update never allocates
  out_ = &out;
  left_ = length;
  in_chunk_ = 0;
}

void chunk_hasher::update(std::span<const std::byte> bytes) {
  while (!bytes.empty()) {
    // The current chunk's length: whole, or what is left of the slice for the last one.
    const std::uint64_t chunk_len = std::min(chunk_, left_ + in_chunk_);
    if (in_chunk_ == 0 && bytes.size() >= chunk_len) {  // a whole chunk in this piece
      out_->push_back(XXH3_64bits(bytes.data(), chunk_len));
      bytes = bytes.subspan(chunk_len);
      left_ -= chunk_len;
      continue;
    }
    if (in_chunk_ == 0) XXH3_64bits_reset(stream_->s);
    const auto n = std::min<std::uint64_t>(bytes.size(), chunk_len - in_chunk_);
    XXH3_64bits_update(stream_->s, bytes.data(), n);
    in_chunk_ += n;
    left_ -= n;
    bytes = bytes.subspan(n);
    if (in_chunk_ == chunk_len) {
      out_->push_back(XXH3_64bits_digest(stream_->s));
      in_chunk_ = 0;
    }
  }
}

}  // namespace meshckpt::format
