#include "meshckpt/format/crc32c.hpp"

#include <boost/crc.hpp>

#include <cstring>

#if defined(__x86_64__)
#include <nmmintrin.h>
#endif

namespace meshckpt::format::crc32c {

std::uint32_t extend_portable(std::uint32_t crc, std::span<const std::byte> data) noexcept {
  // Reflected CRC-32C with the usual pre- and post-inversion. A running value resumes from the
  // inverted CRC, bit-reversed: Boost.CRC takes the initial remainder unreflected.
  std::uint32_t rem = ~crc, init = 0;
  for (int i = 0; i < 32; ++i) init |= ((rem >> i) & 1u) << (31 - i);
  boost::crc_optimal<32, 0x1EDC6F41, 0xFFFFFFFF, 0xFFFFFFFF, true, true> c(init);
  c.process_bytes(data.data(), data.size());
  return c.checksum();
}

#if defined(__x86_64__)

namespace {

__attribute__((target("sse4.2"))) std::uint32_t extend_sse42(std::uint32_t crc, std::span<const std::byte> data) noexcept {
  const auto* p = reinterpret_cast<const unsigned char*>(data.data());
  std::size_t n = data.size();
  std::uint64_t c = ~crc;
  for (; n >= 8; p += 8, n -= 8) {
    std::uint64_t v;
    std::memcpy(&v, p, 8);
    c = _mm_crc32_u64(c, v);
  }
  auto c32 = static_cast<std::uint32_t>(c);
  for (; n > 0; ++p, --n) c32 = _mm_crc32_u8(c32, *p);
  return ~c32;
}

const bool has_sse42 = __builtin_cpu_supports("sse4.2");

}  // namespace

bool hardware_accelerated() noexcept { return has_sse42; }

std::uint32_t extend(std::uint32_t crc, std::span<const std::byte> data) noexcept {
  return has_sse42 ? extend_sse42(crc, data) : extend_portable(crc, data);
}

#else

bool hardware_accelerated() noexcept { return false; }

std::uint32_t extend(std::uint32_t crc, std::span<const std::byte> data) noexcept { return extend_portable(crc, data); }

#endif

}  // namespace meshckpt::format::crc32c
