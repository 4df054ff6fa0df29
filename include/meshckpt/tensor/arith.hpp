#pragma once
/// \file
/// Overflow-checked integer arithmetic used wherever sizes come from callers or from disk.

#include <cstdint>
#include <optional>

namespace meshckpt {

/// `a * b`, or nullopt when the product overflows `int64_t` or an operand is negative.
inline std::optional<std::int64_t> checked_mul(std::int64_t a, std::int64_t b) {
  std::int64_t r;
  if (a < 0 || b < 0 || __builtin_mul_overflow(a, b, &r)) return std::nullopt;
  return r;
}

/// `a + b`, or nullopt when the sum overflows `int64_t` or an operand is negative.
inline std::optional<std::int64_t> checked_add(std::int64_t a, std::int64_t b) {
  std::int64_t r;
  if (a < 0 || b < 0 || __builtin_add_overflow(a, b, &r)) return std::nullopt;
  return r;
}

/// `a + b` for unsigned 64-bit values, or nullopt on wrap-around.
inline std::optional<std::uint64_t> checked_add_u64(std::uint64_t a, std::uint64_t b) {
  std::uint64_t r;
  if (__builtin_add_overflow(a, b, &r)) return std::nullopt;
  return r;
}

/// `v` rounded up to a multiple of `align` (a power of two), or nullopt on overflow.
inline std::optional<std::uint64_t> align_up(std::uint64_t v, std::uint64_t align) {
  std::uint64_t r;
  if (__builtin_add_overflow(v, align - 1, &r)) return std::nullopt;
  return r & ~(align - 1);
}

}  // namespace meshckpt
