#include "meshckpt/tensor/dtype.hpp"

#include <array>

namespace meshckpt {
namespace {

struct info {
  dtype t;
  std::int64_t size;
  std::string_view name;
};

constexpr std::array<info, 18> k_infos{{
    {dtype::boolean, 1, "bool"},
    {dtype::int8, 1, "int8"},
    {dtype::int16, 2, "int16"},
    {dtype::int32, 4, "int32"},
    {dtype::int64, 8, "int64"},
    {dtype::uint8, 1, "uint8"},
    {dtype::uint16, 2, "uint16"},
    {dtype::uint32, 4, "uint32"},
    {dtype::uint64, 8, "uint64"},
    {dtype::float16, 2, "float16"},
    {dtype::bfloat16, 2, "bfloat16"},
    {dtype::float32, 4, "float32"},
    {dtype::float64, 8, "float64"},
    {dtype::float8_e4m3, 1, "float8_e4m3"},
    {dtype::float8_e5m2, 1, "float8_e5m2"},
    {dtype::blob, 1, "blob"},
    {dtype::complex64, 8, "complex64"},
    {dtype::complex128, 16, "complex128"},
}};

const info* find(dtype t) {
  auto code = static_cast<unsigned>(t);
  if (code < 1 || code > k_infos.size()) return nullptr;
  return &k_infos[code - 1];
}

}  // namespace

std::int64_t dtype_size(dtype t) noexcept {
  const info* i = find(t);
  return i ? i->size : 0;
}

std::string_view dtype_name(dtype t) noexcept {
  const info* i = find(t);
  return i ? i->name : std::string_view("invalid");
}

std::optional<dtype> dtype_from_name(std::string_view name) noexcept {
  for (const auto& i : k_infos)
    if (i.name == name) return i.t;
  return std::nullopt;
}

std::optional<dtype> dtype_from_code(std::uint64_t code) noexcept {
  if (code < 1 || code > k_infos.size()) return std::nullopt;
  return static_cast<dtype>(code);
}

}  // namespace meshckpt
