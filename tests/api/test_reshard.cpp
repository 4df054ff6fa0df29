// Resharding restores through files: a checkpoint saved on one mesh and layout is restored onto
// other meshes (different shapes and device counts, including one device), other layouts
// (sharded <-> replicated, other dimensions, uneven splits) and dtypes, and every restored
// element is compared bit-exact with data regenerated from its global index. A process that
// holds only some devices reads only the chunks its shards need.

#include <catch2/catch.hpp>

#include <cstdio>
#include <deque>
#include <cstring>
#include <fstream>

#include "meshckpt/pipeline/tensor_io.hpp"
#include "support.hpp"

using namespace meshckpt;

namespace {

struct mesh_spec {
  std::vector<mesh_dim> dims;
  std::vector<std::int64_t> local;  // empty: all devices local
};

mesh make_mesh(const mesh_spec& s) { return mesh::create(s.dims, {}, s.local).value(); }

// Layouts of a rank-2 tensor on a mesh: every assignment of mesh dims (or unsharded) to the two
// tensor dims, each mesh dim used at most once.
std::vector<std::vector<std::string>> layouts_2d(const mesh& m) {
  std::vector<std::string> names = {"unsharded"};
  for (const auto& d : m.dims()) names.push_back(d.name);
  std::vector<std::vector<std::string>> out;
  for (const auto& a : names)
    for (const auto& b : names)
      if (a == "unsharded" || a != b) out.push_back({a, b});
  return out;
}

}  // namespace

TEST_CASE("reshard matrix: mesh shapes x layouts x device counts x dtypes, bit-exact", "[reshard]") {
  auto be = testing::test_backend();
  const std::vector<mesh_spec> meshes = {{{{"x", 2}, {"y", 4}}, {}}, {{{"x", 4}, {"y", 2}}, {}}, {{{"x", 8}}, {}},
                                         {{{"x", 1}}, {}},           {{{"x", 3}}, {}},           {{{"a", 2}, {"b", 3}}, {}}};
  const std::vector<std::pair<dtype, shape>> tensors = {
      {dtype::float32, {64, 48}}, {dtype::bfloat16, {7, 5}}, {dtype::int8, {13, 1}}, {dtype::float64, {9, 16}}};
  int restores = 0, shards = 0;
  for (std::size_t si = 0; si < meshes.size(); ++si) {
    testing::temp_dir tmp;
    auto sm = make_mesh(meshes[si]);
    auto save_layouts = layouts_2d(sm);
    // One checkpoint per saved mesh holding every (dtype, shape) under every layout of that mesh.
    std::deque<testing::test_tensor> keep;  // host, or device shards in test_reshard_device
    std::vector<named_tensor> saved;
    for (std::size_t ti = 0; ti < tensors.size(); ++ti)
      for (std::size_t li = 0; li < save_layouts.size(); ++li) {
        auto l = layout::create(save_layouts[li], sm);
        if (!l || !l->validate_shape(tensors[ti].second)) continue;
        keep.emplace_back(tensors[ti].first, tensors[ti].second, *l);
        std::string key = "t" + std::to_string(ti) + "/l" + std::to_string(li);
        testing::fill(keep.back().view(), key, 11);
        saved.push_back({key, keep.back().view()});
      }
    REQUIRE(write_tensors(*be, tmp / "ck", saved));
    for (const auto& tm_spec : meshes) {
      auto tm = make_mesh(tm_spec);
      auto target_layouts = layouts_2d(tm);
      for (const auto& n : saved) {
        const auto& v = n.tensor;
        // Two target layouts per saved tensor and target mesh, chosen deterministically.
        for (std::size_t k = 0; k < 2; ++k) {
          auto& tl = target_layouts[(std::hash<std::string>{}(n.key) + k * 7 + tm.device_ids().size()) % target_layouts.size()];
          auto l = layout::create(tl, tm).value();
          if (!l.validate_shape(v.global_shape())) continue;
          testing::test_tensor dst(v.type(), v.global_shape(), l);
          std::vector<named_tensor> targets = {{n.key, dst.view()}};
          INFO("saved " << v.layout().to_string() << " on " << sm.to_string() << ", restored as " << l.to_string() << " on "
                        << tm.to_string() << ", " << dtype_name(v.type()) << " " << to_string(v.global_shape()));
          auto r = read_tensors(*be, tmp / "ck", targets);
          REQUIRE(r);
          CHECK(testing::matches(dst.view(), n.key, 11));
          ++restores;
          shards += static_cast<int>(dst.view().shards().size());
        }
      }
    }
  }
  std::printf("reshard matrix: %d restores (%d target shards) compared bit-exact\n", restores, shards);
  CHECK(restores > 500);
}

TEST_CASE("a process holding some devices reads only the chunks its shards need", "[reshard]") {
  testing::temp_dir tmp;
  auto be = testing::test_backend();
  auto m = mesh::create({{"x", 2}, {"y", 4}}).value();
  // 16 MiB saved in two slices (split over x), 1 MiB chunks.
  auto src = dtensor::create(dtype::float32, {2048, 2048}, layout::create({"x", "unsharded"}, m).value()).value();
  testing::fill(src.view(), "w", 3);
  std::vector<named_tensor> saved = {{"w", src.view()}};
  REQUIRE(write_tensors(*be, tmp / "ck", saved));
  // Restore on an x=8 mesh of which this process holds device 5: rows [1280, 1536) of 2048,
  // 2 MiB of the 16: whole 1 MiB chunks, so 2 MiB are read.
  auto tm = mesh::create({{"x", 8}}, {}, {5}).value();
  auto dst = dtensor::create(dtype::float32, {2048, 2048}, layout::create({"x", "unsharded"}, tm).value()).value();
  std::vector<named_tensor> targets = {{"w", dst.view()}};
  auto r = read_tensors(*be, tmp / "ck", targets).value();
  CHECK(r.resharded_shards == 1);
  CHECK(r.bytes_read == 2u << 20);
  CHECK(testing::matches(dst.view(), "w", 3));
  // Columns instead: device 5 of a column split needs a strip of every row, i.e. every chunk.
  auto dst2 = dtensor::create(dtype::float32, {2048, 2048}, layout::create({"unsharded", "x"}, tm).value()).value();
  std::vector<named_tensor> targets2 = {{"w", dst2.view()}};
  auto r2 = read_tensors(*be, tmp / "ck", targets2).value();
  CHECK(r2.bytes_read == 16u << 20);
  CHECK(testing::matches(dst2.view(), "w", 3));
}

TEST_CASE("resharding verifies checksums of what it reads and names the damage", "[reshard][corruption]") {
  testing::temp_dir tmp;
  auto be = testing::test_backend();
  auto m = mesh::create({{"x", 2}}).value();
  auto src = dtensor::create(dtype::float32, {1024, 512}, layout::create({"x", "unsharded"}, m).value()).value();
  testing::fill(src.view(), "w", 4);
  std::vector<named_tensor> saved = {{"w", src.view()}};
  REQUIRE(write_tensors(*be, tmp / "ck", saved));
  auto man = read_manifest(*be, tmp / "ck").value();
  // Flip a byte in the middle of the second slice.
  const auto& s1 = man.tensors[0].slices[1];
  {
    std::fstream f(tmp / man.files[s1.file].name, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(s1.offset + s1.length / 2));
    char c = 0;
    f.read(&c, 1);
    c = static_cast<char>(c ^ 0x10);
    f.seekp(static_cast<std::streamoff>(s1.offset + s1.length / 2));
    f.write(&c, 1);
  }
  auto one = mesh::create({{"x", 1}}).value();
  auto dst = dtensor::create(dtype::float32, {1024, 512}, layout::create({"unsharded", "unsharded"}, one).value()).value();
  std::vector<named_tensor> targets = {{"w", dst.view()}};
  auto r = read_tensors(*be, tmp / "ck", targets);
  REQUIRE_FALSE(r);
  CHECK(r.error().code == errc::checksum_mismatch);
  CHECK_THAT(r.error().what(), Catch::Contains("\"w\"") && Catch::Contains("[512:1024, 0:512]"));
}

#include "meshckpt/tensor/convert.hpp"

TEST_CASE("dtype changes on restore only when asked: float32 <-> bfloat16/float16, with resharding", "[reshard][convert]") {
  testing::temp_dir tmp;
  auto be = testing::test_backend();
  auto m = mesh::create({{"x", 2}, {"y", 4}}).value();
  auto src = dtensor::create(dtype::float32, {32, 24}, layout::create({"x", "y"}, m).value()).value();
  // Finite floats (the generator's raw bits would include NaNs): i * 0.37 - 100.
  for (const auto& sh : src.view().shards()) {
    auto b = src.view().layout().shard_box(src.view().global_shape(), sh.device).value();
    auto* f = reinterpret_cast<float*>(sh.data.data());
    for (std::int64_t i = 0; i < *b.volume(); ++i) {
      std::int64_t row = b.origin[0] + i / b.extent[1], col = b.origin[1] + i % b.extent[1];
      f[i] = static_cast<float>(row * 24 + col) * 0.37f - 100.0f;
    }
  }
  std::vector<named_tensor> saved = {{"w", src.view()}};
  REQUIRE(write_tensors(*be, tmp / "ck", saved));
  auto tm = mesh::create({{"x", 4}}).value();
  for (dtype to : {dtype::bfloat16, dtype::float16, dtype::float64}) {
    INFO("to " << dtype_name(to));
    auto dst = dtensor::create(to, {32, 24}, layout::create({"unsharded", "x"}, tm).value()).value();
    std::vector<named_tensor> targets = {{"w", dst.view()}};
    auto refused = read_tensors(*be, tmp / "ck", targets);
    REQUIRE_FALSE(refused);
    CHECK(refused.error().code == errc::dtype_mismatch);
    CHECK_THAT(refused.error().what(), Catch::Contains("convert_dtypes"));
    read_options ro;
    ro.convert_dtypes = true;
    REQUIRE(read_tensors(*be, tmp / "ck", targets, ro));
    for (const auto& sh : dst.view().shards()) {
      auto b = dst.view().layout().shard_box(dst.view().global_shape(), sh.device).value();
      for (std::int64_t i = 0; i < *b.volume(); ++i) {
        std::int64_t row = b.origin[0] + i / b.extent[1], col = b.origin[1] + i % b.extent[1];
        float v = static_cast<float>(row * 24 + col) * 0.37f - 100.0f;
        std::byte expect[8];
        convert(dtype::float32, std::as_bytes(std::span(&v, 1)), to, std::span(expect, static_cast<std::size_t>(dtype_size(to))));
        REQUIRE(std::memcmp(sh.data.data() + i * dtype_size(to), expect, static_cast<std::size_t>(dtype_size(to))) == 0);
      }
    }
  }
  // Integers are never converted, even when asked.
  auto ints = dtensor::create(dtype::int32, {32, 24}, layout::create({"x", "y"}, m).value()).value();
  std::vector<named_tensor> int_targets = {{"w", ints.view()}};
  read_options ro;
  ro.convert_dtypes = true;
  auto r = read_tensors(*be, tmp / "ck", int_targets, ro);
  REQUIRE_FALSE(r);
  CHECK(r.error().code == errc::dtype_mismatch);
}
