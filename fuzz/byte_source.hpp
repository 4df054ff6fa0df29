#pragma once
// The fuzz targets' view of their input: bytes taken one at a time, zeros once it is used up
// (so every input, however short, describes a case).

#include <cstddef>
#include <cstdint>

namespace meshckpt::oracle {

struct byte_source {
  const std::uint8_t* p;
  std::size_t n;
  std::uint8_t next() {
    if (!n) return 0;
    --n;
    return *p++;
  }
  // A number in [0, limit] from two bytes.
  std::uint64_t upto(std::uint64_t limit) { return limit ? (next() | std::uint64_t{next()} << 8) % (limit + 1) : 0; }
};

}  // namespace meshckpt::oracle
