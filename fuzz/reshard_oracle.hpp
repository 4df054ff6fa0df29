#pragma once
// The brute-force oracle for the restore planner, shared by tests/unit/test_plan.cpp and
// fuzz_restore_plan: slices whose elements hold their own global flat index are copied into the
// target by the planned runs, and every target element must then hold its own global index.

#include <cstdint>
#include <cstring>
#include <vector>

#include "meshckpt/plan/restore_plan.hpp"
#include "meshckpt/tensor/layout.hpp"

namespace meshckpt::oracle {

inline std::int64_t flat_of(const shape& g, const std::vector<std::int64_t>& idx) {
  std::int64_t f = 0;
  for (std::size_t d = 0; d < g.size(); ++d) f = f * g[d] + idx[d];
  return f;
}

// Advances a row-major multi-index over box `b`; false after the last element.
inline bool next_index(const box& b, std::vector<std::int64_t>& idx) {
  for (std::size_t d = b.rank(); d > 0;) {
    --d;
    if (++idx[d] < b.origin[d] + b.extent[d]) return true;
    idx[d] = b.origin[d];
  }
  return false;
}

// The distinct shard boxes of a layout: a partition of the tensor (what a save stores).
inline std::vector<box> partition(const shape& g, const layout& l) {
  std::vector<box> out;
  for (auto dev : l.mesh_ref().device_ids()) {
    auto b = l.shard_box(g, dev).value();
    bool seen = false;
    for (const auto& o : out) seen = seen || o == b;
    if (!b.empty() && !seen) out.push_back(b);
  }
  return out;
}

inline bool runs_assemble(const shape& g, const std::vector<box>& slices, const box& target, const std::vector<plan::copy_run>& runs) {
  constexpr std::uint64_t elem = 8;
  std::vector<std::vector<std::int64_t>> src;
  for (const auto& s : slices) {
    std::vector<std::int64_t> v(static_cast<std::size_t>(*s.volume()));
    std::vector<std::int64_t> idx = s.origin;
    for (std::size_t i = 0; i < v.size(); ++i, next_index(s, idx)) v[i] = flat_of(g, idx);
    src.push_back(std::move(v));
  }
  std::vector<std::int64_t> dst(static_cast<std::size_t>(*target.volume()), -1);
  for (const auto& r : runs) {
    if (r.slice >= src.size() || r.count == 0 || r.length % elem || r.src_offset % elem || r.dst_offset % elem || r.src_stride % elem ||
        r.dst_stride % elem)
      return false;
    const auto& sv = src[r.slice];
    for (std::uint64_t j = 0; j < r.count; ++j) {
      std::uint64_t so = r.src_offset + j * r.src_stride, d = r.dst_offset + j * r.dst_stride;
      if ((so + r.length) / elem > sv.size() || (d + r.length) / elem > dst.size()) return false;
      std::memcpy(dst.data() + d / elem, sv.data() + so / elem, r.length);
    }
  }
  std::vector<std::int64_t> idx = target.origin;
  for (std::size_t i = 0; i < dst.size(); ++i, next_index(target, idx))
    if (dst[i] != flat_of(g, idx)) return false;
  return true;
}

}  // namespace meshckpt::oracle
