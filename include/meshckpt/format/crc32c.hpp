#pragma once
/// \file
/// CRC-32C (Castagnoli), the checksum of TensorFlow's tensor bundles and of the LevelDB-format
/// tables their `.index` files are: each block of a table, and each tensor's bytes, carry one,
/// stored masked. Computed with the SSE4.2 instruction where the CPU has it, and with a
/// portable table (Boost.CRC) elsewhere; both give the same values (tests/unit/test_tf.cpp).

#include <cstddef>
#include <cstdint>
#include <span>

namespace meshckpt::format::crc32c {

/// The CRC-32C of `data` appended to bytes whose CRC-32C is `crc` (0 for none): so
/// `extend(extend(0, a), b)` is the CRC of a followed by b.
std::uint32_t extend(std::uint32_t crc, std::span<const std::byte> data) noexcept;

/// The CRC-32C of `data`.
inline std::uint32_t value(std::span<const std::byte> data) noexcept { return extend(0, data); }

/// The form in which TensorFlow and LevelDB store a CRC: rotated right by 15 bits plus a
/// constant, so that the CRC of bytes that embed CRCs is not degenerate.
constexpr std::uint32_t mask(std::uint32_t crc) noexcept { return ((crc >> 15) | (crc << 17)) + 0xa282ead8u; }

/// The CRC a masked value stands for.
constexpr std::uint32_t unmask(std::uint32_t masked) noexcept {
  const std::uint32_t rot = masked - 0xa282ead8u;
  return (rot >> 17) | (rot << 15);
}

/// The portable implementation, whatever the CPU (tests compare it with `extend`).
std::uint32_t extend_portable(std::uint32_t crc, std::span<const std::byte> data) noexcept;

/// Whether `extend` uses the SSE4.2 instruction on this CPU.
bool hardware_accelerated() noexcept;

}  // namespace meshckpt::format::crc32c
