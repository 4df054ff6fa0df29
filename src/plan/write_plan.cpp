#include "meshckpt/plan/write_plan.hpp"

#include <algorithm>
#include <map>
#include <optional>
#include <tuple>

#include "meshckpt/format/checksum.hpp"
#include "meshckpt/tensor/arith.hpp"

namespace meshckpt::plan {

namespace {

std::uint64_t key_hash(std::string_view key) { return format::checksum(std::as_bytes(std::span(key.data(), key.size()))); }

// Builds a plan's skeleton tensor by tensor (in key order): its meshes, each tensor's slices
// (one per distinct box, written by one of the devices holding it) and the writes of those
// this process holds.
class skeleton_builder {
 public:
  skeleton_builder(write_plan& p, bool spans_processes) : p_(p), m_(p.skeleton), spans_processes_(spans_processes) {}

  // Streamed tensor `st` (index `si` among them) as tensor `oi`: whole, on a one-device mesh.
  result<void> add_streamed(std::size_t oi, const streamed_tensor& st, std::size_t si) {
    if (!streamed_mesh_) {
      streamed_mesh_ = static_cast<std::uint32_t>(m_.meshes.size());
      m_.meshes.push_back({{{"x", 1}}, {0}});
      meshes_.push_back(mesh::create({{"x", 1}}).value());
      last_mesh_ = nullptr;
    }
    auto volume = box::whole(st.global).volume();
    auto length = volume ? checked_mul(*volume, dtype_size(st.type)) : std::nullopt;
    if (!length) return make_error(errc::limit_exceeded, "tensor \"" + st.key + "\" of shape " + to_string(st.global) + " is too large");
    auto& t = m_.tensors[oi];
    t.key = st.key;
    t.type = st.type;
    t.global = st.global;
    t.mesh = *streamed_mesh_;
    t.axes.assign(st.global.size(), -1);
    if (*length == 0) {  // an empty tensor has no slice, as in memory
      t.slices.clear();
      return success();
    }
    t.slices.resize(1);
    auto& s = t.slices[0];
    s.file = 0;
    s.offset = 0;
    s.checksums.clear();
    s.where = box::whole(st.global);
    s.length = static_cast<std::uint64_t>(*length);
    s.writer_device = 0;
    p_.writes.push_back({oi, 0, 0, {}, si});
    return success();
  }

  // Tensor `nt` in memory as tensor `oi`: a slice per distinct box, its writer chosen among the
  // devices holding that box by the key's hash (so replicas spread the writing).
  result<void> add_in_memory(std::size_t oi, const named_tensor& nt) {
    const auto& v = nt.tensor;
    const auto& l = v.layout();
    auto& t = m_.tensors[oi];
    t.key = nt.key;
    t.type = v.type();
    t.global = v.global_shape();
    t.mesh = mesh_index_of(l.mesh_ref());
    t.axes.assign(l.mesh_axes().begin(), l.mesh_axes().end());
    BOOST_OUTCOME_TRY(const auto* replicas, replicas_of(t, v));
    const std::uint64_t h = key_hash(nt.key);
    const std::int64_t elem = dtype_size(v.type());
    t.slices.resize(replicas->size());
    for (std::size_t j = 0; j < replicas->size(); ++j) {
      const auto& [k, devs] = (*replicas)[j];
      auto& s = t.slices[j];
      s.file = 0;
      s.offset = 0;
      s.checksums.clear();
      s.where.origin.assign(k.begin(), k.begin() + static_cast<std::ptrdiff_t>(t.global.size()));
      s.where.extent.assign(k.begin() + static_cast<std::ptrdiff_t>(t.global.size()), k.end());
      s.length = static_cast<std::uint64_t>(*s.where.volume() * elem);
      s.writer_device = devs[h % devs.size()];
      const local_shard* src = v.shard_of(s.writer_device);
      if (!src && spans_processes_) {
        s.file = remote_file;
        continue;
      }
      if (!src)
        return make_error(errc::invalid_argument,
                          "tensor \"" + nt.key + "\" slice " + to_string(s.where) + " is owned by device " +
                              std::to_string(s.writer_device) +
                              ", which is not local to this process; a save that spans processes needs a coordinator");
      p_.writes.push_back({oi, j, s.writer_device, src->data, plan::not_streamed, src->memory, src->gpu});
    }
    return success();
  }

 private:
  using replica_list = std::vector<std::pair<std::vector<std::int64_t>, std::vector<std::int64_t>>>;  // origin+extent, devices

  // Devices grouped by the box they hold, per (mesh, axes, shape): a model's tensors share a
  // handful of these, so a short list searched in place beats building a key per tensor.
  struct grouping {
    std::uint32_t mesh_index;
    std::vector<std::int32_t> axes;
    shape global;
    replica_list replicas;
  };

  // The skeleton's index of `ms`, added when new. Most tensors share the previous one's.
  std::uint32_t mesh_index_of(const mesh& ms) {
    if (&ms == last_mesh_) return last_mesh_index_;
    std::uint32_t i = 0;
    while (i < meshes_.size() && !(meshes_[i] == ms)) ++i;
    if (i == meshes_.size()) {
      meshes_.push_back(ms);
      m_.meshes.push_back({ms.dims(), ms.device_ids()});
    }
    last_mesh_ = &ms;
    last_mesh_index_ = i;
    return i;
  }

  // The distinct boxes of `t`'s layout and the devices holding each; std::map keeps the
  // result independent of hashing.
  result<const replica_list*> replicas_of(const format::saved_tensor& t, const dtensor_view& v) {
    auto git = std::find_if(groupings_.begin(), groupings_.end(),
                            [&](const grouping& g) { return g.mesh_index == t.mesh && g.global == t.global && g.axes == t.axes; });
    if (git != groupings_.end()) return &git->replicas;
    const auto& l = v.layout();
    std::map<std::vector<std::int64_t>, std::vector<std::int64_t>> replicas;
    for (auto dev : l.mesh_ref().device_ids()) {
      BOOST_OUTCOME_TRY(auto b, l.shard_box(v.global_shape(), dev));
      if (b.empty()) continue;
      std::vector<std::int64_t> k = b.origin;
      k.insert(k.end(), b.extent.begin(), b.extent.end());
      replicas[std::move(k)].push_back(dev);
    }
    // Bounded: a state of thousands of distinct shapes keeps only the most recent ones.
    if (groupings_.size() == 64) groupings_.erase(groupings_.begin());
    groupings_.push_back({t.mesh, t.axes, t.global, {replicas.begin(), replicas.end()}});
    return &groupings_.back().replicas;
  }

  write_plan& p_;
  format::manifest& m_;
  bool spans_processes_;
  std::optional<std::uint32_t> streamed_mesh_;  // the one-device mesh of streamed tensors, once used
  std::vector<mesh> meshes_;
  const mesh* last_mesh_ = nullptr;  // the mesh object of the previous tensor
  std::uint32_t last_mesh_index_ = 0;
  std::vector<grouping> groupings_;
};

// Places the slices this process writes: large ones aligned first, then small ones packed, a
// new file whenever one would pass opt.max_file_bytes; the writes end sorted by file and offset.
result<void> place_slices(write_plan& p, const layout_options& opt) {
  auto& m = p.skeleton;
  std::vector<std::size_t> large, small;
  for (std::size_t i = 0; i < p.writes.size(); ++i) {
    const auto& s = m.tensors[p.writes[i].tensor].slices[p.writes[i].slice];
    (s.length >= opt.align_threshold ? large : small).push_back(i);
  }
  std::uint32_t file = 0;
  std::uint64_t cur = 0;
  auto place = [&](std::size_t wi, bool aligned) -> result<void> {
    auto& s = m.tensors[p.writes[wi].tensor].slices[p.writes[wi].slice];
    if (opt.max_file_bytes && cur > 0 && cur + s.length > opt.max_file_bytes) {
      p.file_sizes.push_back(cur);
      ++file;
      cur = 0;
    }
    auto off = aligned ? align_up(cur, opt.alignment) : std::optional<std::uint64_t>(cur);
    auto end = off ? checked_add_u64(*off, s.length) : std::nullopt;
    if (!end) return make_error(errc::limit_exceeded, "data file offsets overflow");
    s.file = file;
    s.offset = *off;
    cur = *end;
    return success();
  };
  for (auto wi : large) {
    BOOST_OUTCOME_TRY(place(wi, true));
  }
  for (auto wi : small) {
    BOOST_OUTCOME_TRY(place(wi, false));
  }
  if (cur > 0 || p.file_sizes.empty()) p.file_sizes.push_back(cur);
  std::sort(p.writes.begin(), p.writes.end(), [&](const slice_write& a, const slice_write& b) {
    const auto& sa = m.tensors[a.tensor].slices[a.slice];
    const auto& sb = m.tensors[b.tensor].slices[b.slice];
    return std::pair(sa.file, sa.offset) < std::pair(sb.file, sb.offset);
  });
  return success();
}

}  // namespace

result<write_plan> plan_write(std::span<const named_tensor> tensors, const layout_options& opt, bool spans_processes, write_plan reuse,
                              std::span<const streamed_tensor> streamed) {
  write_plan p;
  // Built in place in the reused elements: every field of each is overwritten.
  p.skeleton.tensors = std::move(reuse.skeleton.tensors);
  // Indices below tensors.size() are tensors in memory, the rest streamed ones.
  const std::size_t n = tensors.size() + streamed.size();
  auto key_of = [&](std::size_t i) -> const std::string& { return i < tensors.size() ? tensors[i].key : streamed[i - tensors.size()].key; };
  p.skeleton.tensors.resize(n);
  p.writes = std::move(reuse.writes);
  p.writes.clear();
  p.writes.reserve(n);
  std::vector<std::size_t> order(n);
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](auto a, auto b) { return key_of(a) < key_of(b); });
  skeleton_builder build(p, spans_processes);
  for (std::size_t oi = 0; oi < order.size(); ++oi) {
    const auto& key = key_of(order[oi]);
    if (key.empty() || key.size() > format::limits{}.max_key_bytes)
      return make_error(errc::invalid_argument, "tensor key \"" + key.substr(0, 64) + "\" is empty or longer than 16384 bytes");
    if (oi && key_of(order[oi - 1]) == key) return make_error(errc::invalid_argument, "tensor key \"" + key + "\" is given twice");
    if (order[oi] >= tensors.size()) {
      const std::size_t si = order[oi] - tensors.size();
      BOOST_OUTCOME_TRY(build.add_streamed(oi, streamed[si], si));
    } else {
      BOOST_OUTCOME_TRY(build.add_in_memory(oi, tensors[order[oi]]));
    }
  }
  BOOST_OUTCOME_TRY(place_slices(p, opt));
  return p;
}

}  // namespace meshckpt::plan
