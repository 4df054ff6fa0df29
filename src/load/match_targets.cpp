// Matching target shards to saved slices (match_targets.hpp).

#include "match_targets.hpp"

#include <algorithm>

#include "meshckpt/plan/restore_plan.hpp"
#include "meshckpt/tensor/arith.hpp"
#include "meshckpt/tensor/convert.hpp"

namespace meshckpt::detail {

namespace {

result<void> check_target(const format::saved_tensor& t, const dtensor_view& v) {
  if (v.type() != t.type)
    return make_error(errc::dtype_mismatch, "tensor \"" + t.key + "\": saved dtype " + std::string(dtype_name(t.type)) + ", requested " +
                                                std::string(dtype_name(v.type())) +
                                                (convertible(t.type, v.type()) ? " (set read_options::convert_dtypes to convert)" : ""));
  if (v.global_shape() != t.global)
    return make_error(errc::shape_mismatch,
                      "tensor \"" + t.key + "\": saved shape " + to_string(t.global) + ", requested " + to_string(v.global_shape()));
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

namespace {

// Builds the wanted ranges of a restore, one target box at a time.
class range_builder {
 public:
  range_builder(const format::manifest& m, wanted& w, std::uint64_t granule) : m_(m), w_(w), granule_(granule) {}

  // Starts the boxes of tensor `t` (their saved slices are shared within it).
  void start(const format::saved_tensor& t, std::size_t boxes) {
    t_ = &t;
    boxes_ = boxes;
    slot_.clear();
    saved_boxes_.clear();  // filled once a box of this tensor needs resharding
  }

  // Adds the runs that fill `data`, the row-major bytes of box `bx` of the current tensor.
  // Returns whether it was resharded (not a saved slice's box); `describe` names the box in
  // an error.
  template <class Describe>
  result<bool> add(const box& bx, std::byte* data, Describe describe) {
    const auto& t = *t_;
    auto it = std::find_if(t.slices.begin(), t.slices.end(), [&](const auto& s) { return s.where == bx; });
    if (it != t.slices.end()) {
      auto& r = want(&*it);
      r.begin = 0;
      r.end = it->length;
      r.targets.push_back({data, plan::copy_run{.length = it->length}});
      return false;
    }
    if (saved_boxes_.empty())
      for (const auto& sl : t.slices) saved_boxes_.push_back(sl.where);
    auto runs = plan::plan_shard_restore(t.global, static_cast<std::int64_t>(dtype_size(t.type)), saved_boxes_, bx);
    if (!runs) return with_context(runs.error(), describe());
    for (const auto& run : *runs) {
      const auto* sl = &t.slices[run.slice];
      auto& r = want(sl);
      r.begin = std::min(r.begin, run.src_offset / granule_ * granule_);
      r.end = std::max(r.end, std::min(sl->length, ((run.src_end() - 1) / granule_ + 1) * granule_));
      r.targets.push_back({data, run});
    }
    return true;
  }

  void finish() { w_.ranges.resize(used_); }

 private:
  plan::wanted_range& want(const format::saved_slice* s) {
    for (const auto& [sl, k] : slot_)
      if (sl == s) return w_.ranges[k];
    slot_.emplace_back(s, used_);
    if (used_ == w_.ranges.size()) w_.ranges.emplace_back();
    auto& r = w_.ranges[used_++];
    r.file = s->file;
    r.file_offset = s->offset;
    r.length = s->length;
    r.begin = ~std::uint64_t{0};
    r.end = 0;
    r.targets.clear();
    r.targets.reserve(boxes_);
    w_.from.emplace_back(t_, s);
    return r;
  }

  const format::manifest& m_;
  wanted& w_;
  std::uint64_t granule_;
  const format::saved_tensor* t_ = nullptr;
  std::size_t boxes_ = 0;
  std::size_t used_ = 0;  // ranges filled so far; those after it are left from a recycled `w`
  std::vector<std::pair<const format::saved_slice*, std::size_t>> slot_;  // saved slice -> its wanted range
  std::vector<box> saved_boxes_;
};

}  // namespace

result<void> match_targets(const format::manifest& m, std::span<const named_tensor> targets, read_report& rep, wanted& w,
                           std::uint64_t granule) {
  // Most tensors want one saved slice; sharded ones a few (moving ranges as the vector grows
  // costs more than the spare room).
  w.ranges.reserve(2 * targets.size());
  w.from.clear();
  w.from.reserve(2 * targets.size());
  range_builder ranges(m, w, granule ? granule : m.chunk_bytes);
  shard_boxes boxes_of;
  for (const auto& target : targets) {
    const auto* t = m.find(target.key);
    if (!t) return make_error(errc::not_found, "tensor \"" + target.key + "\" is not in the checkpoint");
    const auto& v = target.tensor;
    BOOST_OUTCOME_TRY(check_target(*t, v));
    BOOST_OUTCOME_TRY(const auto* boxes, boxes_of.of(v));
    ranges.start(*t, v.shards().size());
    for (std::size_t k = 0; k < v.shards().size(); ++k) {
      const auto& sh = v.shards()[k];
      const box& bx = (*boxes)[k];
      if (bx.empty()) continue;
      auto describe = [&] {
        auto saved = format::saved_layout_of(m, *t);
        return "tensor \"" + t->key + "\": shard " + to_string(bx) + " of device " + std::to_string(sh.device) + " (saved layout " +
               (saved ? saved->to_string() : "?") + " on mesh " + (saved ? saved->mesh_ref().to_string() : "?") + ", requested " +
               v.layout().to_string() + " on mesh " + v.layout().mesh_ref().to_string() + ")";
      };
      BOOST_OUTCOME_TRY(const bool resharded, ranges.add(bx, sh.data.data(), describe));
      if (resharded) ++rep.resharded_shards;
    }
    ++rep.tensors;
  }
  ranges.finish();
  return success();
}

result<void> match_box(const format::manifest& m, std::string_view key, const box& where, std::span<std::byte> out, std::uint64_t granule,
                       wanted& w) {
  const auto* t = m.find(key);
  if (!t) return make_error(errc::not_found, "tensor \"" + std::string(key) + "\" is not in the checkpoint");
  if (where.origin.size() != t->global.size() || where.extent.size() != t->global.size())
    return make_error(errc::invalid_argument,
                      "box " + to_string(where) + " has another rank than tensor \"" + t->key + "\" of shape " + to_string(t->global));
  for (std::size_t d = 0; d < t->global.size(); ++d)
    if (where.origin[d] < 0 || where.extent[d] < 0 || where.origin[d] > t->global[d] - where.extent[d])
      return make_error(errc::invalid_argument,
                        "box " + to_string(where) + " is not within tensor \"" + t->key + "\" of shape " + to_string(t->global));
  const auto volume = where.volume();
  const auto bytes = volume ? checked_mul(*volume, dtype_size(t->type)) : std::nullopt;
  if (!bytes || static_cast<std::uint64_t>(*bytes) != out.size())
    return make_error(errc::invalid_argument, "box " + to_string(where) + " of tensor \"" + t->key + "\" needs " +
                                                  (bytes ? std::to_string(*bytes) : std::string("too many")) + " bytes, the buffer has " +
                                                  std::to_string(out.size()));
  w.from.clear();
  range_builder ranges(m, w, granule);
  ranges.start(*t, 1);
  if (!where.empty()) {
    auto describe = [&] { return "tensor \"" + t->key + "\": box " + to_string(where); };
    BOOST_OUTCOME_TRY(ranges.add(where, out.data(), describe));
  }
  ranges.finish();
  return success();
}

runtime::recycler<wanted>& wanted_recycler() {
  static auto* r = new runtime::recycler<wanted>([](const wanted& w) { return w.ranges.capacity() <= 65536; });
  return *r;
}

}  // namespace meshckpt::detail
