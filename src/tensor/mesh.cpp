#include "meshckpt/tensor/mesh.hpp"

#include <algorithm>
#include <unordered_map>

#include "meshckpt/tensor/arith.hpp"

namespace meshckpt {

struct mesh::state {
  std::vector<mesh_dim> dims;
  std::vector<std::int64_t> device_ids;
  std::vector<std::int64_t> local;
  std::unordered_map<std::int64_t, std::int64_t> flat_index;  // device id -> flat index
  std::int64_t num_devices = 1;
};

bool valid_mesh_dim_name(std::string_view name) {
  if (name.empty() || name.size() > 64 || name == "unsharded") return false;
  return std::all_of(name.begin(), name.end(),
                     [](char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_'; });
}

result<mesh> mesh::create(std::vector<mesh_dim> dims, std::vector<std::int64_t> device_ids, std::vector<std::int64_t> local_device_ids) {
  constexpr std::int64_t max_devices = std::int64_t{1} << 20;
  if (dims.size() > 16) return make_error(errc::invalid_argument, "mesh has " + std::to_string(dims.size()) + " dimensions (at most 16)");
  auto s = std::make_shared<state>();
  for (std::size_t i = 0; i < dims.size(); ++i) {
    const auto& d = dims[i];
    if (!valid_mesh_dim_name(d.name))
      return make_error(errc::invalid_argument,
                        "mesh dimension name \"" + d.name + "\" is invalid (use letters, digits and _, not \"unsharded\")");
    for (std::size_t j = 0; j < i; ++j)
      if (dims[j].name == d.name) return make_error(errc::invalid_argument, "mesh dimension \"" + d.name + "\" appears twice");
    if (d.size < 1)
      return make_error(errc::invalid_argument, "mesh dimension \"" + d.name + "\" has size " + std::to_string(d.size) + " (must be >= 1)");
    auto n = checked_mul(s->num_devices, d.size);
    if (!n || *n > max_devices) return make_error(errc::invalid_argument, "mesh has more than 2^20 devices");
    s->num_devices = *n;
  }
  s->dims = std::move(dims);
  if (device_ids.empty()) {
    device_ids.resize(static_cast<std::size_t>(s->num_devices));
    for (std::int64_t i = 0; i < s->num_devices; ++i) device_ids[static_cast<std::size_t>(i)] = i;
  }
  if (static_cast<std::int64_t>(device_ids.size()) != s->num_devices)
    return make_error(errc::invalid_argument, "mesh " + std::to_string(s->num_devices) + " devices but " +
                                                  std::to_string(device_ids.size()) + " device ids were given");
  for (std::size_t i = 0; i < device_ids.size(); ++i) {
    if (device_ids[i] < 0) return make_error(errc::invalid_argument, "device id " + std::to_string(device_ids[i]) + " is negative");
    if (!s->flat_index.emplace(device_ids[i], static_cast<std::int64_t>(i)).second)
      return make_error(errc::invalid_argument, "device id " + std::to_string(device_ids[i]) + " appears twice");
  }
  s->device_ids = std::move(device_ids);
  if (local_device_ids.empty()) local_device_ids = s->device_ids;
  std::sort(local_device_ids.begin(), local_device_ids.end());
  for (std::size_t i = 0; i < local_device_ids.size(); ++i) {
    if (!s->flat_index.count(local_device_ids[i]))
      return make_error(errc::invalid_argument, "local device " + std::to_string(local_device_ids[i]) + " is not in the mesh");
    if (i && local_device_ids[i] == local_device_ids[i - 1])
      return make_error(errc::invalid_argument, "local device " + std::to_string(local_device_ids[i]) + " appears twice");
  }
  s->local = std::move(local_device_ids);
  return mesh(std::move(s));
}

const std::vector<mesh_dim>& mesh::dims() const { return s_->dims; }
std::int64_t mesh::num_devices() const { return s_->num_devices; }
const std::vector<std::int64_t>& mesh::device_ids() const { return s_->device_ids; }
const std::vector<std::int64_t>& mesh::local_device_ids() const { return s_->local; }

bool mesh::is_local(std::int64_t device_id) const { return std::binary_search(s_->local.begin(), s_->local.end(), device_id); }

std::optional<std::size_t> mesh::dim_index(std::string_view name) const {
  for (std::size_t i = 0; i < s_->dims.size(); ++i)
    if (s_->dims[i].name == name) return i;
  return std::nullopt;
}

std::optional<std::vector<std::int64_t>> mesh::coords(std::int64_t device_id) const {
  auto it = s_->flat_index.find(device_id);
  if (it == s_->flat_index.end()) return std::nullopt;
  std::int64_t flat = it->second;
  std::vector<std::int64_t> c(s_->dims.size());
  for (std::size_t i = s_->dims.size(); i-- > 0;) {
    c[i] = flat % s_->dims[i].size;
    flat /= s_->dims[i].size;
  }
  return c;
}

std::string mesh::to_string() const {
  std::string out;
  for (std::size_t i = 0; i < s_->dims.size(); ++i) {
    if (i) out += ',';
    out += s_->dims[i].name + "=" + std::to_string(s_->dims[i].size);
  }
  return out.empty() ? "(single device)" : out;
}

bool operator==(const mesh& a, const mesh& b) { return a.s_ == b.s_ || (a.s_->dims == b.s_->dims && a.s_->device_ids == b.s_->device_ids); }

}  // namespace meshckpt
