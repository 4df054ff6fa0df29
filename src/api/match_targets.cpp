// Matching target shards to saved slices (match_targets.hpp).

#include "match_targets.hpp"

#include <algorithm>

#include "meshckpt/plan/restore_plan.hpp"
#include "meshckpt/tensor/convert.hpp"

namespace meshckpt::detail {

namespace {

result<void> check_target(const format::saved_tensor& t, const dtensor_view& v) {
  if (v.type() != t.type)
    return make_error(errc::dtype_mismatch, "tensor \"" + t.key + "\": saved dtype " + std::string(dtype_name(t.type)) +
                                                ", requested " + std::string(dtype_name(v.type())) +
                                                (convertible(t.type, v.type()) ? " (set read_options::convert_dtypes to convert)" : ""));
  if (v.global_shape() != t.global)
    return make_error(errc::shape_mismatch, "tensor \"" + t.key + "\": saved shape " + to_string(t.global) +
                                                ", requested " + to_string(v.global_shape()));
  return success();
}

// The shard boxes of a (layout, shape), computed once per distinct pair in a restore: a model's
// tensors share a handful of layouts and shapes, and a box costs allocations.
class shard_boxes {
 public:
  result<const std::vector<box>*> of(const dtensor_view& v) {
    auto same_devices = [&](const entry& e) {
      if (e.devices.size() != v.shards().size()) return false;
      for (std::size_t k = 0; k < e.devices.size(); ++k)
        if (e.devices[k] != v.shards()[k].device) return false;
      return true;
    };
    for (auto& e : seen_)
      if (e.global == v.global_shape() && same_devices(e) && e.l == v.layout()) return &e.boxes;
    entry e{v.layout(), v.global_shape(), {}, {}};
    e.boxes.reserve(v.shards().size());
    for (const auto& sh : v.shards()) {
      e.devices.push_back(sh.device);
      BOOST_OUTCOME_TRY(auto bx, v.layout().shard_box(v.global_shape(), sh.device));
      e.boxes.push_back(std::move(bx));
    }
    // A few recent pairs are enough; the oldest goes first.
    if (seen_.size() == 8) seen_.erase(seen_.begin());
    seen_.push_back(std::move(e));
    return &seen_.back().boxes;
  }

 private:
  struct entry {
    layout l;
    meshckpt::shape global;
    std::vector<std::int64_t> devices;  // of the view's shards, in order
    std::vector<box> boxes;
  };
  std::vector<entry> seen_;
};

}  // namespace

result<void> match_targets(const format::manifest& m, std::span<const named_tensor> targets, read_report& rep, wanted& w) {
  // Most tensors want one saved slice; sharded ones a few (moving ranges as the vector grows
  // costs more than the spare room).
  w.ranges.reserve(2 * targets.size());
  w.from.clear();
  w.from.reserve(2 * targets.size());
  std::size_t used = 0;  // ranges filled so far; those after it are left from a recycled `w`
  shard_boxes boxes_of;
  std::vector<std::pair<const format::saved_slice*, std::size_t>> slot;  // saved slice -> its wanted range
  std::vector<box> saved_boxes;
  for (const auto& target : targets) {
    const auto* t = m.find(target.key);
    if (!t) return make_error(errc::not_found, "tensor \"" + target.key + "\" is not in the checkpoint");
    const auto& v = target.tensor;
    BOOST_OUTCOME_TRY(check_target(*t, v));
    BOOST_OUTCOME_TRY(const auto* boxes, boxes_of.of(v));
    slot.clear();
    auto want = [&](const format::saved_slice* s) -> plan::wanted_range& {
      for (const auto& [sl, k] : slot)
        if (sl == s) return w.ranges[k];
      slot.emplace_back(s, used);
      if (used == w.ranges.size()) w.ranges.emplace_back();
      auto& r = w.ranges[used++];
      r.file = s->file;
      r.file_offset = s->offset;
      r.length = s->length;
      r.begin = ~std::uint64_t{0};
      r.end = 0;
      r.targets.clear();
      r.targets.reserve(v.shards().size());
      w.from.emplace_back(t, s);
      return r;
    };
    saved_boxes.clear();  // filled once a shard of this tensor needs resharding
    for (std::size_t k = 0; k < v.shards().size(); ++k) {
      const auto& sh = v.shards()[k];
      const box& bx = (*boxes)[k];
      if (bx.empty()) continue;
      auto it = std::find_if(t->slices.begin(), t->slices.end(), [&](const auto& s) { return s.where == bx; });
      if (it != t->slices.end()) {
        auto& r = want(&*it);
        r.begin = 0;
        r.end = it->length;
        r.targets.push_back({sh.data.data(), plan::copy_run{.length = it->length}});
        continue;
      }
      if (saved_boxes.empty())
        for (const auto& sl : t->slices) saved_boxes.push_back(sl.where);
      auto runs = plan::plan_shard_restore(t->global, static_cast<std::int64_t>(dtype_size(t->type)), saved_boxes, bx);
      if (!runs) {
        auto saved = format::saved_layout_of(m, *t);
        return with_context(runs.error(), "tensor \"" + t->key + "\": shard " + to_string(bx) + " of device " +
                                              std::to_string(sh.device) + " (saved layout " + (saved ? saved->to_string() : "?") +
                                              " on mesh " + (saved ? saved->mesh_ref().to_string() : "?") + ", requested " +
                                              v.layout().to_string() + " on mesh " + v.layout().mesh_ref().to_string() + ")");
      }
      for (const auto& run : *runs) {
        const auto* sl = &t->slices[run.slice];
        auto& r = want(sl);
        r.begin = std::min(r.begin, run.src_offset / m.chunk_bytes * m.chunk_bytes);
        r.end = std::max(r.end, std::min(sl->length, ((run.src_end() - 1) / m.chunk_bytes + 1) * m.chunk_bytes));
        r.targets.push_back({sh.data.data(), run});
      }
      ++rep.resharded_shards;
    }
    ++rep.tensors;
  }
  w.ranges.resize(used);
  return success();
}

runtime::recycler<wanted>& wanted_recycler() {
  static auto* r = new runtime::recycler<wanted>([](const wanted& w) { return w.ranges.capacity() <= 65536; });
  return *r;
}

}  // namespace meshckpt::detail
