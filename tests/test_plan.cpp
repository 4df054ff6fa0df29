// Write planning: replica deduplication, deterministic owners, data-file placement.

#include <catch2/catch.hpp>

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
      make("both", dtype::float32, {8, 8}, {"x", "y"}, m),
      make("over_x", dtype::float32, {8, 8}, {"x", "unsharded"}, m),
      make("replicated", dtype::float32, {4}, {"unsharded"}, m),
      make("scalar", dtype::int64, {}, {}, m),
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
      if (s.length >= 64 * 1024) CHECK(s.offset % 4096 == 0);
      else small_end = std::max(small_end, s.offset + s.length);
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
