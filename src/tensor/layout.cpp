#include "meshckpt/tensor/layout.hpp"

#include <algorithm>

namespace meshckpt {

std::pair<std::int64_t, std::int64_t> split_range(std::int64_t n, std::int64_t k, std::int64_t i) {
  if (n <= 0 || k <= 0) return {0, 0};
  std::int64_t chunk = n / k + (n % k != 0);
  // i * chunk cannot overflow meaningfully: i < k <= 2^20 and chunk <= n; clamp first.
  std::int64_t begin = i >= (n + chunk - 1) / chunk ? n : std::min(n, i * chunk);
  std::int64_t end = std::min(n, begin + chunk);
  return {begin, end};
}

result<layout> layout::create(std::vector<std::string> specs, mesh m) {
  std::vector<int> axes(specs.size(), -1);
  for (std::size_t d = 0; d < specs.size(); ++d) {
    if (specs[d] == unsharded) continue;
    auto idx = m.dim_index(specs[d]);
    if (!idx)
      return make_error(errc::invalid_argument, "layout dimension " + std::to_string(d) + " names mesh dimension \"" + specs[d] +
                                                    "\", which is not in mesh " + m.to_string());
    for (std::size_t e = 0; e < d; ++e)
      if (specs[e] == specs[d])
        return make_error(errc::invalid_argument, "mesh dimension \"" + specs[d] + "\" is used by layout dimensions " + std::to_string(e) +
                                                      " and " + std::to_string(d) +
                                                      " (each mesh dimension may shard at most one tensor dimension)");
    axes[d] = static_cast<int>(*idx);
  }
  return layout(std::move(specs), std::move(axes), std::move(m));
}

layout layout::replicated(std::size_t rank, mesh m) {
  return layout(std::vector<std::string>(rank, std::string(unsharded)), std::vector<int>(rank, -1), std::move(m));
}

result<void> layout::validate_shape(const shape& global) const {
  if (global.size() != rank())
    return make_error(errc::invalid_argument, "layout " + to_string() + " has rank " + std::to_string(rank()) + " but the shape " +
                                                  meshckpt::to_string(global) + " has rank " + std::to_string(global.size()));
  for (auto d : global)
    if (d < 0) return make_error(errc::invalid_argument, "shape " + meshckpt::to_string(global) + " has a negative dimension");
  if (!num_elements(global)) return make_error(errc::invalid_argument, "shape " + meshckpt::to_string(global) + " has too many elements");
  return success();
}

result<box> layout::shard_box(const shape& global, std::int64_t device_id) const {
  BOOST_OUTCOME_TRY(validate_shape(global));
  auto c = mesh_.coords(device_id);
  if (!c) return make_error(errc::invalid_argument, "device " + std::to_string(device_id) + " is not in mesh " + mesh_.to_string());
  box b;
  b.origin.resize(rank());
  b.extent.resize(rank());
  for (std::size_t d = 0; d < rank(); ++d) {
    if (axes_[d] < 0) {
      b.origin[d] = 0;
      b.extent[d] = global[d];
      continue;
    }
    auto axis = static_cast<std::size_t>(axes_[d]);
    auto [lo, hi] = split_range(global[d], mesh_.dims()[axis].size, (*c)[axis]);
    b.origin[d] = lo;
    b.extent[d] = hi - lo;
  }
  return b;
}

std::string layout::to_string() const {
  std::string out = "[";
  for (std::size_t i = 0; i < specs_.size(); ++i) {
    if (i) out += ", ";
    out += specs_[i];
  }
  return out + "]";
}

}  // namespace meshckpt
