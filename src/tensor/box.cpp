#include "meshckpt/tensor/box.hpp"

#include <algorithm>

#include "meshckpt/tensor/arith.hpp"

namespace meshckpt {

std::optional<std::int64_t> num_elements(const shape& s) {
  std::int64_t n = 1;
  for (auto d : s) {
    auto m = checked_mul(n, d);
    if (!m) return std::nullopt;
    n = *m;
  }
  return n;
}

std::string to_string(const shape& s) {
  std::string out = "[";
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (i) out += ", ";
    out += std::to_string(s[i]);
  }
  return out + "]";
}

box box::whole(const shape& s) { return box{std::vector<std::int64_t>(s.size(), 0), s}; }

bool box::empty() const {
  return std::any_of(extent.begin(), extent.end(), [](auto e) { return e == 0; });
}

box intersect(const box& a, const box& b) {
  box r;
  r.origin.resize(a.rank());
  r.extent.resize(a.rank());
  for (std::size_t i = 0; i < a.rank(); ++i) {
    std::int64_t lo = std::max(a.origin[i], b.origin[i]);
    std::int64_t hi = std::min(a.origin[i] + a.extent[i], b.origin[i] + b.extent[i]);
    r.origin[i] = lo;
    r.extent[i] = hi > lo ? hi - lo : 0;
  }
  if (r.empty()) std::fill(r.extent.begin(), r.extent.end(), 0);
  return r;
}

bool contains(const box& outer, const box& inner) {
  if (inner.empty()) return true;
  for (std::size_t i = 0; i < outer.rank(); ++i) {
    if (inner.origin[i] < outer.origin[i]) return false;
    if (inner.origin[i] + inner.extent[i] > outer.origin[i] + outer.extent[i]) return false;
  }
  return true;
}

bool fits_in(const box& b, const shape& s) {
  if (b.rank() != s.size() || b.extent.size() != s.size()) return false;
  for (std::size_t i = 0; i < s.size(); ++i) {
    auto end = checked_add(b.origin[i], b.extent[i]);
    if (!end || *end > s[i]) return false;
  }
  return true;
}

std::string to_string(const box& b) {
  std::string out = "[";
  for (std::size_t i = 0; i < b.rank(); ++i) {
    if (i) out += ", ";
    out += std::to_string(b.origin[i]) + ":" + std::to_string(b.origin[i] + b.extent[i]);
  }
  return out + "]";
}

}  // namespace meshckpt
