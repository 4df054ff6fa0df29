#include "meshckpt/tensor/convert.hpp"

#include <cstring>

namespace meshckpt {

namespace {

std::uint32_t bits_of(float f) {
  std::uint32_t x;
  std::memcpy(&x, &f, 4);
  return x;
}

float float_of(std::uint32_t x) {
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}

bool is_float(dtype t) { return t == dtype::float64 || t == dtype::float32 || t == dtype::bfloat16 || t == dtype::float16; }

double load(dtype t, const std::byte* p) {
  switch (t) {
    case dtype::float64: {
      double d;
      std::memcpy(&d, p, 8);
      return d;
    }
    case dtype::float32: {
      float f;
      std::memcpy(&f, p, 4);
      return f;
    }
    case dtype::bfloat16: {
      std::uint16_t h;
      std::memcpy(&h, p, 2);
      return bfloat16_to_float(h);
    }
    default: {
      std::uint16_t h;
      std::memcpy(&h, p, 2);
      return half_to_float(h);
    }
  }
}

void store(dtype t, double v, std::byte* p) {
  switch (t) {
    case dtype::float64: std::memcpy(p, &v, 8); break;
    case dtype::float32: {
      auto f = static_cast<float>(v);
      std::memcpy(p, &f, 4);
      break;
    }
    case dtype::bfloat16: {
      // Through float: exact for float64 sources only up to float's precision (a double-rounding
      // difference in the last bfloat16 bit is possible for float64 sources).
      auto h = float_to_bfloat16(static_cast<float>(v));
      std::memcpy(p, &h, 2);
      break;
    }
    default: {
      auto h = float_to_half(static_cast<float>(v));
      std::memcpy(p, &h, 2);
      break;
    }
  }
}

}  // namespace

std::uint16_t float_to_half(float f) noexcept {
  std::uint32_t x = bits_of(f);
  std::uint32_t sign = (x >> 16) & 0x8000u;
  std::uint32_t exp = (x >> 23) & 0xffu;
  std::uint32_t man = x & 0x7fffffu;
  if (exp == 0xff) return static_cast<std::uint16_t>(sign | 0x7c00u | (man ? 0x200u | (man >> 13) : 0u));  // inf, quiet NaN
  int e = static_cast<int>(exp) - 127 + 15;
  if (e >= 0x1f) return static_cast<std::uint16_t>(sign | 0x7c00u);  // overflow: infinity
  if (e <= 0) {                                                      // subnormal half, or zero
    if (e < -10) return static_cast<std::uint16_t>(sign);
    man |= 0x800000u;
    auto shift = static_cast<std::uint32_t>(14 - e);
    std::uint32_t h = man >> shift;
    std::uint32_t rem = man & ((1u << shift) - 1);
    std::uint32_t halfway = 1u << (shift - 1);
    if (rem > halfway || (rem == halfway && (h & 1u))) ++h;
    return static_cast<std::uint16_t>(sign | h);
  }
  std::uint32_t h = sign | (static_cast<std::uint32_t>(e) << 10) | (man >> 13);
  std::uint32_t rem = man & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;  // a carry rounds up the exponent (to infinity at the top)
  return static_cast<std::uint16_t>(h);
}

float half_to_float(std::uint16_t h) noexcept {
  std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  std::uint32_t exp = (h >> 10) & 0x1fu;
  std::uint32_t man = h & 0x3ffu;
  if (exp == 0) {
    if (man == 0) return float_of(sign);
    std::uint32_t e = 0;  // normalize the subnormal
    while (!(man & 0x400u)) {
      man <<= 1;
      ++e;
    }
    man &= 0x3ffu;
    return float_of(sign | ((127 - 15 + 1 - e) << 23) | (man << 13));
  }
  if (exp == 0x1f) return float_of(sign | 0x7f800000u | (man << 13));
  return float_of(sign | ((exp + 127 - 15) << 23) | (man << 13));
}

std::uint16_t float_to_bfloat16(float f) noexcept {
  std::uint32_t x = bits_of(f);
  if ((x & 0x7f800000u) == 0x7f800000u && (x & 0x7fffffu)) return static_cast<std::uint16_t>((x >> 16) | 0x40u);  // quiet NaN
  x += 0x7fffu + ((x >> 16) & 1u);                                                                                // round to nearest even
  return static_cast<std::uint16_t>(x >> 16);
}

float bfloat16_to_float(std::uint16_t b) noexcept { return float_of(static_cast<std::uint32_t>(b) << 16); }

bool convertible(dtype from, dtype to) noexcept { return from == to || (is_float(from) && is_float(to)); }

void convert(dtype from, std::span<const std::byte> src, dtype to, std::span<std::byte> dst) noexcept {
  if (from == to) {
    std::memcpy(dst.data(), src.data(), src.size());
    return;
  }
  auto fs = static_cast<std::size_t>(dtype_size(from)), ts = static_cast<std::size_t>(dtype_size(to));
  std::size_t n = src.size() / fs;
  for (std::size_t i = 0; i < n; ++i) store(to, load(from, src.data() + i * fs), dst.data() + i * ts);
}

}  // namespace meshckpt
