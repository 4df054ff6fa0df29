#include "meshckpt/tensor/dtensor.hpp"

#include <algorithm>
#include <cstring>
#include <new>

#include "meshckpt/tensor/arith.hpp"

namespace meshckpt {

namespace {

constexpr std::size_t shard_alignment = 4096;

result<std::int64_t> shard_bytes_of(dtype t, const shape& global, const layout& l, std::int64_t dev) {
  BOOST_OUTCOME_TRY(auto b, l.shard_box(global, dev));
  auto bytes = checked_mul(*b.volume(), dtype_size(t));
  if (!bytes) return make_error(errc::invalid_argument, "shard of shape " + to_string(global) + " is too large");
  return *bytes;
}

}  // namespace

result<dtensor_view> dtensor_view::create(dtype t, shape global, meshckpt::layout l, std::vector<local_shard> shards) {
  if (dtype_size(t) == 0) return make_error(errc::invalid_argument, "invalid dtype");
  BOOST_OUTCOME_TRY(l.validate_shape(global));
  if (!checked_mul(*num_elements(global), dtype_size(t)))
    return make_error(errc::invalid_argument, "tensor of shape " + to_string(global) + " is too large");
  std::sort(shards.begin(), shards.end(), [](auto& a, auto& b) { return a.device < b.device; });
  const auto& local = l.mesh_ref().local_device_ids();
  if (shards.size() != local.size())
    return make_error(errc::invalid_argument, "expected one shard for each of the " + std::to_string(local.size()) +
                                                  " local devices, got " + std::to_string(shards.size()));
  for (std::size_t i = 0; i < shards.size(); ++i) {
    if (shards[i].device != local[i])
      return make_error(errc::invalid_argument,
                        "shard for device " + std::to_string(shards[i].device) + " given, but that device is not local (or appears twice)");
    BOOST_OUTCOME_TRY(auto want, shard_bytes_of(t, global, l, shards[i].device));
    if (static_cast<std::int64_t>(shards[i].data.size()) != want)
      return make_error(errc::invalid_argument, "shard of device " + std::to_string(shards[i].device) + " has " +
                                                    std::to_string(shards[i].data.size()) + " bytes, expected " + std::to_string(want));
  }
  return dtensor_view(t, std::move(global), std::move(l), std::move(shards));
}

bool any_on_device(std::span<const local_shard> shards) {
  for (const auto& s : shards)
    if (s.on_device()) return true;
  return false;
}

const local_shard* dtensor_view::shard_of(std::int64_t device) const {
  auto it = std::lower_bound(shards_.begin(), shards_.end(), device, [](const local_shard& s, std::int64_t d) { return s.device < d; });
  return it != shards_.end() && it->device == device ? &*it : nullptr;
}

std::int64_t dtensor_view::global_bytes() const { return *num_elements(global_) * dtype_size(type_); }

result<dtensor> dtensor::create(dtype t, shape global, meshckpt::layout l) {
  if (dtype_size(t) == 0) return make_error(errc::invalid_argument, "invalid dtype");
  BOOST_OUTCOME_TRY(l.validate_shape(global));
  std::vector<buffer> storage;
  std::vector<local_shard> shards;
  // Reserved first: a vector growing after a shard's allocation could throw and leak it (found
  // by tests/reliability/test_alloc.cpp under ASan).
  const auto devices = l.mesh_ref().local_device_ids();
  storage.reserve(devices.size());
  shards.reserve(devices.size());
  for (auto dev : devices) {
    BOOST_OUTCOME_TRY(auto n, shard_bytes_of(t, global, l, dev));
    auto size = static_cast<std::size_t>(n);
    auto* p = static_cast<std::byte*>(::operator new (std::max<std::size_t>(size, 1), std::align_val_t{shard_alignment}));
    std::memset(p, 0, size);
    storage.emplace_back(p);
    shards.push_back({dev, std::span<std::byte>(p, size)});
  }
  BOOST_OUTCOME_TRY(auto v, dtensor_view::create(t, std::move(global), std::move(l), std::move(shards)));
  return dtensor(std::move(storage), std::move(v));
}

void detail::aligned_free::operator()(std::byte* p) const noexcept { ::operator delete (p, std::align_val_t{shard_alignment}); }

std::span<std::byte> dtensor::shard_bytes(std::int64_t device) {
  const local_shard* s = view_.shard_of(device);
  return s ? s->data : std::span<std::byte>{};
}

}  // namespace meshckpt
