#include "meshckpt/plan/restore_plan.hpp"

#include "meshckpt/tensor/arith.hpp"

namespace meshckpt::plan {

namespace {

// Row-major byte offset of element `idx` (global coordinates) inside box `b`.
std::uint64_t offset_in(const box& b, const std::vector<std::int64_t>& idx, std::int64_t elem) {
  std::uint64_t off = 0;
  for (std::size_t d = 0; d < b.rank(); ++d)
    off = off * static_cast<std::uint64_t>(b.extent[d]) + static_cast<std::uint64_t>(idx[d] - b.origin[d]);
  return off * static_cast<std::uint64_t>(elem);
}

}  // namespace

result<std::vector<copy_run>> plan_shard_restore(const shape& global, std::int64_t elem_bytes, std::span<const box> slices,
                                                 const box& target) {
  if (elem_bytes <= 0) return make_error(errc::invalid_argument, "element size must be positive");
  if (target.rank() != global.size() || !fits_in(target, global))
    return make_error(errc::invalid_argument, "target box " + to_string(target) + " does not fit shape " + to_string(global));
  auto target_volume = target.volume();
  if (!target_volume) return make_error(errc::limit_exceeded, "target box volume overflows");
  // Bytes of the target, in int64: every offset below is bounded by it or by a slice's size.
  if (!checked_mul(*target_volume, elem_bytes)) return make_error(errc::limit_exceeded, "target box is too large");
  std::vector<copy_run> runs;
  std::int64_t covered = 0;
  const std::size_t r = global.size();
  for (std::size_t i = 0; i < slices.size(); ++i) {
    const box& s = slices[i];
    if (s.rank() != r || !fits_in(s, global))
      return make_error(errc::invalid_argument, "saved slice " + to_string(s) + " does not fit shape " + to_string(global));
    if (!s.volume() || !checked_mul(*s.volume(), elem_bytes)) return make_error(errc::limit_exceeded, "saved slice is too large");
    box in = intersect(s, target);
    if (in.empty()) continue;
    covered += *in.volume();
    // The first dimension k from which every dimension after it is complete in the slice, the
    // target and the intersection: a run covers in.extent[k..r) elements.
    std::size_t k = r;
    std::int64_t run_elems = 1;
    while (k > 0) {
      std::size_t d = k - 1;
      run_elems *= in.extent[d];
      if (in.extent[d] != s.extent[d] || in.extent[d] != target.extent[d]) {
        k = d;
        break;
      }
      k = d;
    }
    const std::uint64_t run_bytes = static_cast<std::uint64_t>(run_elems * elem_bytes);
    // Blocks along dimension k - 1 (if any) form one strided run; the odometer covers [0, k - 1).
    std::uint64_t count = 1, src_stride = 0, dst_stride = 0;
    std::size_t outer = k;
    if (k > 0) {
      outer = k - 1;
      count = static_cast<std::uint64_t>(in.extent[outer]);
      std::uint64_t s_row = static_cast<std::uint64_t>(elem_bytes), t_row = static_cast<std::uint64_t>(elem_bytes);
      for (std::size_t d = k; d < r; ++d) {
        s_row *= static_cast<std::uint64_t>(s.extent[d]);
        t_row *= static_cast<std::uint64_t>(target.extent[d]);
      }
      src_stride = s_row;
      dst_stride = t_row;
    }
    std::vector<std::int64_t> idx = in.origin;
    while (true) {
      runs.push_back({i, offset_in(s, idx, elem_bytes), offset_in(target, idx, elem_bytes), run_bytes, count, src_stride, dst_stride});
      bool done = true;
      for (std::size_t d = outer; d > 0;) {
        --d;
        if (++idx[d] < in.origin[d] + in.extent[d]) {
          done = false;
          break;
        }
        idx[d] = in.origin[d];
      }
      if (done) break;
    }
  }
  if (covered != *target_volume)
    return make_error(errc::layout_mismatch, "the saved slices cover " + std::to_string(covered) + " of the " +
                                                 std::to_string(*target_volume) + " elements of " + to_string(target));
  return runs;
}

}  // namespace meshckpt::plan
