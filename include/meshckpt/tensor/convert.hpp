#pragma once
/// \file
/// Element conversion between floating-point dtypes, for restores that ask for it
/// (`read_options::convert_dtypes`): float64, float32, bfloat16 and float16, rounding to
/// nearest-even, overflow to infinity, NaN kept NaN. Pure functions.

#include <cstdint>
#include <span>

#include "meshckpt/tensor/dtype.hpp"

namespace meshckpt {

/// True when `convert` supports `from` -> `to` (both floating-point among float64, float32,
/// bfloat16, float16; equal dtypes included).
bool convertible(dtype from, dtype to) noexcept;

/// Converts the elements of `src` (dtype `from`) into `dst` (dtype `to`). Preconditions:
/// `convertible(from, to)` and both spans hold the same number of elements.
void convert(dtype from, std::span<const std::byte> src, dtype to, std::span<std::byte> dst) noexcept;

/// IEEE binary16 <-> binary32 (exposed for tests).
std::uint16_t float_to_half(float f) noexcept;
float half_to_float(std::uint16_t h) noexcept;
/// bfloat16 <-> binary32 (exposed for tests).
std::uint16_t float_to_bfloat16(float f) noexcept;
float bfloat16_to_float(std::uint16_t b) noexcept;

}  // namespace meshckpt
