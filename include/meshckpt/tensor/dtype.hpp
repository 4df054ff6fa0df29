#pragma once
/// \file
/// Element types. The numeric values are part of the on-disk format (docs/FORMAT.md) and never
/// change.

#include <cstdint>
#include <optional>
#include <string_view>

namespace meshckpt {

/// The element type of a tensor.
enum class dtype : std::uint8_t {
  boolean = 1,
  int8 = 2,
  int16 = 3,
  int32 = 4,
  int64 = 5,
  uint8 = 6,
  uint16 = 7,
  uint32 = 8,
  uint64 = 9,
  float16 = 10,
  bfloat16 = 11,
  float32 = 12,
  float64 = 13,
  float8_e4m3 = 14,
  float8_e5m2 = 15,
  /// Opaque bytes (RNG state, data-loader position, ...): a 1-byte element; meshckpt never
  /// interprets the contents.
  blob = 16,
  /// Two float32: real, then imaginary (numpy's and torch's complex64, TF's DT_COMPLEX64).
  complex64 = 17,
  /// Two float64: real, then imaginary (complex128, DT_COMPLEX128).
  complex128 = 18,
};

/// True for complex64 and complex128.
constexpr bool is_complex(dtype t) noexcept { return t == dtype::complex64 || t == dtype::complex128; }

/// Size of one element in bytes (1 for `boolean` and `blob`).
std::int64_t dtype_size(dtype t) noexcept;

/// Lower-case name as used by numpy/TensorFlow ("float32", "bfloat16", "float8_e4m3", "complex64", "blob").
std::string_view dtype_name(dtype t) noexcept;

/// The dtype with that name, or nullopt.
std::optional<dtype> dtype_from_name(std::string_view name) noexcept;

/// The dtype with that on-disk code, or nullopt when the code is unknown.
std::optional<dtype> dtype_from_code(std::uint64_t code) noexcept;

}  // namespace meshckpt
