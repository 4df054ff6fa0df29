#pragma once
// Element values for the CLI's `cat` and `diff`: decoding any numeric dtype to double, slice
// selections (`--slice 0:4,2,:`), and numpy-style printing (aligned columns, summarized with
// "..." beyond 1000 elements, like numpy's defaults: threshold 1000, 3 edge items).

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "meshckpt/error.hpp"
#include "meshckpt/tensor/box.hpp"
#include "meshckpt/tensor/dtype.hpp"

namespace meshckpt::cli {

// Element `i` of a dense row-major buffer of `t` as a double; nullopt for blob and complex.
std::optional<double> element(dtype t, std::span<const std::byte> data, std::size_t i);
// The real and imaginary parts of element `i` of a complex64 or complex128 buffer.
std::pair<double, double> complex_element(dtype t, std::span<const std::byte> data, std::size_t i);
// |a[i] - b[i]|, the modulus for complex dtypes; nullopt for blob.
std::optional<double> element_distance(dtype t, std::span<const std::byte> a, std::span<const std::byte> b, std::size_t i);

// One dimension of a selection: [start, stop), and whether the dimension is kept (a range) or
// dropped (a single index, as in numpy).
struct dim_selection {
  std::int64_t start = 0, stop = 0;
  bool keep = true;
};

// Parses "0:4,2,:" against `global` (missing trailing dimensions are whole; negative indices
// count from the end; ranges are clamped as in Python). Errors name the offending part.
result<std::vector<dim_selection>> parse_slice(std::string_view text, const shape& global);

// The selected elements of a dense row-major tensor of shape `global`: their shape and their
// element indices in the tensor.
struct selection_values {
  shape dims;                        // kept dimensions only
  std::vector<std::size_t> offsets;  // element index of each selected element, row-major over `dims`
};
selection_values select(dtype t, std::span<const std::byte> data, const shape& global, const std::vector<dim_selection>& sel);

// numpy-style text of the selected elements of `data` (integers exact, booleans True/False).
std::string format_values(dtype t, std::span<const std::byte> data, const selection_values& v);

// JSON nested arrays of them (NaN and infinities as strings, which JSON lacks).
std::string json_values(dtype t, std::span<const std::byte> data, const selection_values& v);

}  // namespace meshckpt::cli
