#include "meshckpt/plan/global_copy.hpp"

#include <cstring>

#include "meshckpt/plan/restore_plan.hpp"

namespace meshckpt {

namespace {

// Calls f(shard, run) for the runs copying the whole tensor into each local shard (source: the
// global buffer), shards in device order or its reverse.
template <class F>
result<void> for_each_run(const dtensor_view& v, std::size_t global_size, bool reverse, F&& f) {
  if (global_size != static_cast<std::size_t>(v.global_bytes()))
    return make_error(errc::invalid_argument, "a global array of " + std::to_string(global_size) + " bytes for a " +
                                                  std::string(dtype_name(v.type())) + to_string(v.global_shape()) + " tensor, which has " +
                                                  std::to_string(v.global_bytes()));
  const box whole = box::whole(v.global_shape());
  const auto& shards = v.shards();
  if (any_on_device(shards))
    return make_error(errc::unsupported,
                      "a global array copied to or from device shards (this copies host memory; save or restore "
                      "device shards, or copy them through their accelerator)");
  for (std::size_t i = 0; i < shards.size(); ++i) {
    const local_shard& s = shards[reverse ? shards.size() - 1 - i : i];
    BOOST_OUTCOME_TRY(auto b, v.layout().shard_box(v.global_shape(), s.device));
    if (b.empty()) continue;
    BOOST_OUTCOME_TRY(auto runs, plan::plan_shard_restore(v.global_shape(), dtype_size(v.type()), std::span(&whole, 1), b));
    for (const auto& r : runs) f(s, r);
  }
  return success();
}

}  // namespace

result<void> assign_global(const dtensor_view& v, std::span<const std::byte> global) {
  return for_each_run(v, global.size(), false, [&](const local_shard& s, const plan::copy_run& r) {
    for (std::uint64_t j = 0; j < r.count; ++j)
      std::memcpy(s.data.data() + r.dst_offset + j * r.dst_stride, global.data() + r.src_offset + j * r.src_stride, r.length);
  });
}

result<void> copy_to_global(const dtensor_view& v, std::span<std::byte> global) {
  // Shards in reverse order, so that where replicas overlap the first device's bytes stand.
  return for_each_run(v, global.size(), true, [&](const local_shard& s, const plan::copy_run& run) {
    for (std::uint64_t j = 0; j < run.count; ++j)
      std::memcpy(global.data() + run.src_offset + j * run.src_stride, s.data.data() + run.dst_offset + j * run.dst_stride, run.length);
  });
}

}  // namespace meshckpt
