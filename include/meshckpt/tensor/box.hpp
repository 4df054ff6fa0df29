#pragma once
/// \file
/// Shapes and N-dimensional boxes (hyper-rectangles of element indices) with intersection.

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace meshckpt {

/// A tensor shape: the extent of each dimension, outermost first. Rank 0 is a scalar.
using shape = std::vector<std::int64_t>;

/// Number of elements of `s` (1 for a scalar), or nullopt when a dimension is negative or the
/// product overflows `int64_t`.
std::optional<std::int64_t> num_elements(const shape& s);

/// "[2, 3]" style rendering of a shape.
std::string to_string(const shape& s);

/// An N-d box: for each dimension, the half-open range [origin, origin + extent).
struct box {
  std::vector<std::int64_t> origin;
  std::vector<std::int64_t> extent;

  /// The box covering a whole tensor of shape `s` (origin 0).
  static box whole(const shape& s);

  std::size_t rank() const { return origin.size(); }

  /// Number of elements, or nullopt on overflow. Zero when any extent is zero.
  std::optional<std::int64_t> volume() const { return num_elements(extent); }

  /// True when some extent is zero.
  bool empty() const;

  friend bool operator==(const box&, const box&) = default;
};

/// The intersection of `a` and `b` (same rank); an empty box (some extent 0) when they do not
/// overlap. Precondition: equal ranks and non-negative fields.
box intersect(const box& a, const box& b);

/// True when `inner` lies entirely inside `outer` (an empty `inner` counts as inside).
bool contains(const box& outer, const box& inner);

/// True when `b` lies inside a tensor of shape `s`, with overflow-checked bounds.
bool fits_in(const box& b, const shape& s);

/// "[0:4, 2:8]" style rendering (start:stop per dimension).
std::string to_string(const box& b);

}  // namespace meshckpt
