// Write planning: replica deduplication, deterministic owners, data-file placement.

#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <set>

#include "meshckpt/plan/write_plan.hpp"

using namespace meshckpt;
using namespace meshckpt::plan;

namespace {

std::vector<dtensor> keep;

named_tensor make(const std::string& key, dtype t, shape s, std::vector<std::string> specs, const mesh& m) {
  keep.push_back(dtensor::create(t, std::move(s), layout::create(std::move(specs), m).value()).value());
  return {key, keep.back().view()};
}

}  // namespace

TEST_CASE("each distinct slice is planned once, with an owner among its replicas", "[plan]") {
  auto m = mesh::create({{"x", 2}, {"y", 4}}).value();
  std::vector<named_tensor> ts = {
      make("both", dtype::float32, {8, 8}, {"x", "y"}, m),          make("over_x", dtype::float32, {8, 8}, {"x", "unsharded"}, m),
      make("replicated", dtype::float32, {4}, {"unsharded"}, m),    make("scalar", dtype::int64, {}, {}, m),
      make("empty", dtype::float32, {0, 3}, {"x", "unsharded"}, m),
  };
  auto p = plan_write(ts).value();
  auto& t = p.skeleton.tensors;
  REQUIRE(t.size() == 5);
  CHECK(t[0].key == "both");  // sorted by key
  CHECK(t[0].slices.size() == 8);
  CHECK(t[1].key == "empty");
  CHECK(t[1].slices.empty());
  CHECK(t[2].slices.size() == 2);  // over_x: 2 distinct, each held by 4 devices
  CHECK(t[3].slices.size() == 1);
  CHECK(t[4].slices.size() == 1);
  for (const auto& st : t)
    for (const auto& s : st.slices) CHECK((s.writer_device >= 0 && s.writer_device < 8));
  // The owner of a replicated slice is one of the devices that hold that box.
  auto lx = layout::create({"x", "unsharded"}, m).value();
  for (const auto& s : t[2].slices) CHECK(lx.shard_box({8, 8}, s.writer_device).value() == s.where);
  // Every plan passes the format's validation once checksums are filled in.
  auto man = p.skeleton;
  man.files.push_back({"f", p.file_sizes[0]});
  for (auto& st : man.tensors)
    for (auto& s : st.slices) s.checksums.assign((s.length + man.chunk_bytes - 1) / man.chunk_bytes, 0);
  CHECK(format::validate(man));
}

TEST_CASE("replicated tensors are spread over devices, deterministically", "[plan]") {
  auto m = mesh::create({{"x", 2}, {"y", 4}}).value();
  std::vector<named_tensor> ts;
  for (int i = 0; i < 64; ++i) ts.push_back(make("r" + std::to_string(i), dtype::float32, {4}, {"unsharded"}, m));
  auto p1 = plan_write(ts).value();
  auto p2 = plan_write(ts).value();
  std::set<std::int64_t> owners;
  for (std::size_t i = 0; i < p1.skeleton.tensors.size(); ++i) {
    owners.insert(p1.skeleton.tensors[i].slices[0].writer_device);
    CHECK(p1.skeleton.tensors[i].slices[0].writer_device == p2.skeleton.tensors[i].slices[0].writer_device);
  }
  CHECK(owners.size() >= 6);  // not all on device 0
}

TEST_CASE("large slices are 4 KiB aligned and small ones packed densely", "[plan]") {
  auto m = mesh::create({{"x", 2}}).value();
  std::vector<named_tensor> ts = {
      make("big", dtype::float32, {100000}, {"x"}, m),
      make("big2", dtype::float32, {33333}, {"unsharded"}, m),
      make("tiny1", dtype::float32, {3}, {"unsharded"}, m),
      make("tiny2", dtype::int8, {5}, {"unsharded"}, m),
  };
  auto p = plan_write(ts).value();
  std::uint64_t small_end = 0;
  std::vector<std::pair<std::uint64_t, std::uint64_t>> ranges;
  for (const auto& t : p.skeleton.tensors)
    for (const auto& s : t.slices) {
      ranges.push_back({s.offset, s.offset + s.length});
      if (s.length >= 64 * 1024)
        CHECK(s.offset % 4096 == 0);
      else
        small_end = std::max(small_end, s.offset + s.length);
    }
  std::sort(ranges.begin(), ranges.end());
  for (std::size_t i = 1; i < ranges.size(); ++i) CHECK(ranges[i].first >= ranges[i - 1].second);  // no overlap
  const auto* t1 = &p.skeleton.tensors[2].slices[0];
  const auto* t2 = &p.skeleton.tensors[3].slices[0];
  CHECK(t2->offset == t1->offset + t1->length);  // packed
  CHECK(p.file_sizes.size() == 1);
  CHECK(p.file_sizes[0] == small_end);
  // Writes come sorted by offset.
  for (std::size_t i = 1; i < p.writes.size(); ++i) {
    const auto& a = p.skeleton.tensors[p.writes[i - 1].tensor].slices[p.writes[i - 1].slice];
    const auto& b = p.skeleton.tensors[p.writes[i].tensor].slices[p.writes[i].slice];
    CHECK(a.offset < b.offset);
  }
}

TEST_CASE("a file size cap spreads slices over several data files", "[plan]") {
  auto m = mesh::create({{"x", 4}}).value();
  std::vector<named_tensor> ts = {make("w", dtype::float32, {4 * 65536}, {"x"}, m)};
  plan::layout_options opt;
  opt.max_file_bytes = 300000;
  auto p = plan_write(ts, opt).value();
  CHECK(p.file_sizes.size() == 4);
  for (auto sz : p.file_sizes) CHECK(sz <= 300000);
}

TEST_CASE("planning rejects duplicate keys, empty keys, and slices owned elsewhere", "[plan]") {
  auto m = mesh::create({{"x", 2}}).value();
  std::vector<named_tensor> dup = {make("a", dtype::float32, {2}, {"x"}, m), make("a", dtype::float32, {2}, {"x"}, m)};
  auto r = plan_write(dup);
  REQUIRE_FALSE(r);
  CHECK_THAT(r.error().what(), Catch::Contains("\"a\" is given twice"));
  std::vector<named_tensor> empty = {make("", dtype::float32, {2}, {"x"}, m)};
  CHECK_FALSE(plan_write(empty));
  auto half = mesh::create({{"x", 2}}, {}, {0}).value();
  std::vector<named_tensor> remote = {make("w", dtype::float32, {4}, {"x"}, half)};
  auto rr = plan_write(remote);
  REQUIRE_FALSE(rr);
  CHECK_THAT(rr.error().what(), Catch::Contains("not local to this process"));
}

TEST_CASE("streamed tensors are planned with those in memory: one whole slice each, their writes named", "[plan]") {
  auto m = mesh::create({{"x", 2}}).value();
  std::vector<named_tensor> mem = {make("b_mem", dtype::float32, {4, 2}, {"x", "unsharded"}, m)};
  std::vector<streamed_tensor> st = {
      {"c_big", dtype::bfloat16, {1000, 300}}, {"a_scalar", dtype::int64, {}}, {"d_empty", dtype::float32, {0, 7}}};
  auto p = plan_write(mem, {}, false, {}, st).value();
  auto& t = p.skeleton.tensors;
  REQUIRE(t.size() == 4);
  CHECK(t[0].key == "a_scalar");
  CHECK(t[1].key == "b_mem");
  CHECK(t[2].key == "c_big");
  CHECK(t[3].key == "d_empty");
  CHECK(t[3].slices.empty());  // empty: nothing to write, as in memory
  REQUIRE(t[2].slices.size() == 1);
  CHECK(t[2].slices[0].length == 1000 * 300 * 2);
  CHECK(t[2].slices[0].where == box::whole({1000, 300}));
  CHECK(t[2].axes == std::vector<std::int32_t>{-1, -1});
  // The streamed tensors' one-device mesh, apart from the two-device mesh in memory.
  REQUIRE(p.skeleton.meshes.size() == 2);
  CHECK(p.skeleton.meshes[t[2].mesh].device_ids == std::vector<std::int64_t>{0});
  CHECK(t[0].mesh == t[2].mesh);
  std::size_t streamed_writes = 0;
  for (const auto& w : p.writes) {
    if (w.streamed == not_streamed) {
      CHECK(t[w.tensor].key == "b_mem");
      CHECK_FALSE(w.source.empty());
      continue;
    }
    ++streamed_writes;
    CHECK(w.source.empty());
    CHECK(st[w.streamed].key == t[w.tensor].key);
  }
  CHECK(streamed_writes == 2);
  auto man = p.skeleton;
  man.files.push_back({"f", p.file_sizes[0]});
  for (auto& x : man.tensors)
    for (auto& s : x.slices) s.checksums.assign((s.length + man.chunk_bytes - 1) / man.chunk_bytes, 0);
  CHECK(format::validate(man));
  // Keys are unique across both lists; an overflowing shape is refused.
  std::vector<streamed_tensor> dup = {{"b_mem", dtype::float32, {1}}};
  auto r = plan_write(mem, {}, false, {}, dup);
  REQUIRE_FALSE(r);
  CHECK_THAT(r.error().what(), Catch::Contains("\"b_mem\" is given twice"));
  std::vector<streamed_tensor> huge = {{"h", dtype::float64, {std::int64_t{1} << 40, std::int64_t{1} << 30}}};
  auto rh = plan_write({}, {}, false, {}, huge);
  REQUIRE_FALSE(rh);
  CHECK(rh.error().code == errc::limit_exceeded);
}

// ---------------------------------------------------------------- restore planning (resharding)

#include <random>

#include "../../fuzz/reshard_oracle.hpp"
#include "meshckpt/plan/restore_plan.hpp"

using oracle::partition;
using oracle::runs_assemble;

TEST_CASE("restore plans assemble any target shard from any saved layout (brute-force oracle)", "[plan][reshard]") {
  std::mt19937_64 rng(7);
  const std::vector<std::vector<std::pair<std::string, std::int64_t>>> meshes = {
      {{"x", 2}, {"y", 4}}, {{"x", 4}, {"y", 2}}, {{"x", 8}}, {{"x", 1}}, {{"x", 3}}, {{"a", 2}, {"b", 3}}, {{"x", 2}, {"y", 2}, {"z", 2}}};
  auto random_layout = [&](std::size_t rank, const mesh& m) {
    std::vector<std::string> axes(rank, "unsharded");
    std::vector<std::string> names;
    for (const auto& d : m.dims()) names.push_back(d.name);
    std::shuffle(names.begin(), names.end(), rng);
    for (std::size_t d = 0; d < rank && !names.empty(); ++d)
      if (rng() % 3) {
        axes[d] = names.back();
        names.pop_back();
      }
    return layout::create(axes, m).value();
  };
  int checked = 0, runs_total = 0;
  for (int iter = 0; iter < 600; ++iter) {
    std::size_t rank = rng() % 4;  // scalars to rank 3
    shape g;
    for (std::size_t d = 0; d < rank; ++d) g.push_back(static_cast<std::int64_t>(rng() % 13));  // zero and uneven sizes
    auto& ms = meshes[rng() % meshes.size()];
    auto& mt = meshes[rng() % meshes.size()];
    std::vector<mesh_dim> ds, dt;
    for (auto& [n, s] : ms) ds.push_back({n, s});
    for (auto& [n, s] : mt) dt.push_back({n, s});
    auto saved_mesh = mesh::create(ds).value();
    auto target_mesh = mesh::create(dt).value();
    auto saved = random_layout(rank, saved_mesh);
    auto target = random_layout(rank, target_mesh);
    if (!saved.validate_shape(g) || !target.validate_shape(g)) continue;
    auto slices = partition(g, saved);
    for (auto dev : target_mesh.device_ids()) {
      auto tb = target.shard_box(g, dev).value();
      INFO("shape " << to_string(g) << " saved " << saved.to_string() << " on " << saved_mesh.to_string() << ", target " << tb.origin.size()
                    << "-d " << to_string(tb) << " of " << target.to_string() << " on " << target_mesh.to_string());
      auto runs = plan_shard_restore(g, 8, slices, tb);
      REQUIRE(runs);
      CHECK(runs_assemble(g, slices, tb, *runs));
      runs_total += static_cast<int>(runs->size());
      ++checked;
    }
  }
  CHECK(checked > 1000);
  std::printf("restore planner: %d target shards checked against the oracle (%d runs)\n", checked, runs_total);
}

TEST_CASE("restore plans merge contiguous rows and refuse uncovered or ill-formed targets", "[plan][reshard]") {
  shape g{8, 6};
  // Saved split over rows into 2; target = rows 2..6, all columns: one run per slice.
  std::vector<box> rows = {{{0, 0}, {4, 6}}, {{4, 0}, {4, 6}}};
  auto r = plan_shard_restore(g, 4, rows, {{2, 0}, {4, 6}}).value();
  REQUIRE(r.size() == 2);
  CHECK(r[0] == copy_run{0, 2 * 6 * 4, 0, 2 * 6 * 4});
  CHECK(r[1] == copy_run{1, 0, 2 * 6 * 4, 2 * 6 * 4});
  // Saved split over columns; the whole tensor needs one strided run per slice: 8 rows of 12
  // bytes, 12 apart in the slice and 24 apart in the target.
  std::vector<box> cols = {{{0, 0}, {8, 3}}, {{0, 3}, {8, 3}}};
  auto cr = plan_shard_restore(g, 4, cols, box::whole(g)).value();
  REQUIRE(cr.size() == 2);
  CHECK(cr[1] == copy_run{1, 0, 12, 12, 8, 12, 24});
  CHECK(cr[1].src_end() == 96);
  // Tall and skinny, split over columns (an embedding sharded on its hidden dimension): one
  // strided run per slice however many rows, so planning stays small.
  shape tall{1000000, 8};
  std::vector<box> cols8;
  for (std::int64_t c = 0; c < 8; ++c) cols8.push_back({{0, c}, {1000000, 1}});
  auto tr = plan_shard_restore(tall, 4, cols8, box::whole(tall)).value();
  CHECK(tr.size() == 8);
  CHECK(tr[3] == copy_run{3, 0, 12, 4, 1000000, 4, 32});
  // A hole: only the first half of the rows saved.
  auto hole = plan_shard_restore(g, 4, std::span(rows).first(1), box::whole(g));
  REQUIRE_FALSE(hole);
  CHECK(hole.error().code == errc::layout_mismatch);
  CHECK_THAT(hole.error().what(), Catch::Contains("cover 24 of the 48"));
  // Boxes outside the shape, wrong ranks.
  CHECK_FALSE(plan_shard_restore(g, 4, rows, {{4, 0}, {5, 6}}));
  std::vector<box> bad = {{{0}, {8}}};
  CHECK_FALSE(plan_shard_restore(g, 4, bad, box::whole(g)));
  CHECK_FALSE(plan_shard_restore(g, 0, rows, box::whole(g)));
  // Scalars.
  std::vector<box> scalar = {box{}};
  CHECK(plan_shard_restore({}, 8, scalar, box{}).value() == std::vector<copy_run>{{0, 0, 0, 8}});
}

TEST_CASE("a plan built in the memory of an earlier one equals a fresh plan", "[plan][recycle]") {
  auto m24 = mesh::create({{"x", 2}, {"y", 4}}).value();
  auto m8 = mesh::create({{"d", 8}}).value();
  // Tensor sets of different sizes, ranks, meshes and layouts: each is planned fresh and in the
  // memory of the previous set's plan (with checksums filled in, as a save leaves them).
  auto set = [&](int n, int variant) {
    std::vector<named_tensor> ts;
    for (int i = 0; i < n; ++i) {
      const std::string key = "v" + std::to_string(variant) + "/t" + std::to_string((i * 7919) % n);
      switch ((i + variant) % 5) {
        case 0: ts.push_back(make(key, dtype::float32, {16, 8}, {"x", "y"}, m24)); break;
        case 1: ts.push_back(make(key, dtype::float32, {6}, {"unsharded"}, m24)); break;
        case 2: ts.push_back(make(key, dtype::int64, {}, {}, m8)); break;
        case 3: ts.push_back(make(key, dtype::float16, {8, 3, 2}, {"d", "unsharded", "unsharded"}, m8)); break;
        default: ts.push_back(make(key, dtype::float32, {0, 4}, {"unsharded", "y"}, m24)); break;
      }
    }
    return ts;
  };
  const std::vector<std::pair<int, int>> sets = {{40, 0}, {7, 1}, {60, 2}, {1, 3}, {25, 4}};
  write_plan previous;
  for (bool spans : {false, true}) {
    for (const auto& [n, variant] : sets) {
      auto ts = set(n, variant);
      for (auto& t : previous.skeleton.tensors)
        for (auto& s : t.slices) s.checksums = {1, 2, 3};
      auto fresh = plan_write(ts, {}, spans).value();
      auto reused = plan_write(ts, {}, spans, std::move(previous)).value();
      CHECK(reused.skeleton == fresh.skeleton);
      CHECK(reused.file_sizes == fresh.file_sizes);
      REQUIRE(reused.writes.size() == fresh.writes.size());
      for (std::size_t i = 0; i < fresh.writes.size(); ++i) {
        CHECK(reused.writes[i].tensor == fresh.writes[i].tensor);
        CHECK(reused.writes[i].slice == fresh.writes[i].slice);
        CHECK(reused.writes[i].owner == fresh.writes[i].owner);
        CHECK(reused.writes[i].source.data() == fresh.writes[i].source.data());
        CHECK(reused.writes[i].source.size() == fresh.writes[i].source.size());
      }
      previous = std::move(reused);
    }
  }
}
