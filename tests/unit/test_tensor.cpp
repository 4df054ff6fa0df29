// Tensor model: dtypes, boxes (against a brute-force oracle), meshes, layouts, shard boxes,
// DTensor views.

#include <catch2/catch.hpp>

#include <random>
#include <set>

#include "meshckpt/tensor/dtensor.hpp"

using namespace meshckpt;

TEST_CASE("dtype sizes, names and on-disk codes round-trip", "[tensor][dtype]") {
  for (std::uint64_t code = 1; code <= 18; ++code) {
    auto t = dtype_from_code(code);
    REQUIRE(t);
    CHECK(dtype_size(*t) >= 1);
    CHECK(dtype_from_name(dtype_name(*t)) == t);
  }
  CHECK_FALSE(dtype_from_code(0));
  CHECK_FALSE(dtype_from_code(19));
  CHECK(dtype_from_code(17) == dtype::complex64);
  CHECK(dtype_size(dtype::complex128) == 16);
  CHECK(is_complex(dtype::complex64));
  CHECK_FALSE(is_complex(dtype::float64));
  CHECK(dtype_size(dtype::bfloat16) == 2);
  CHECK(dtype_size(dtype::float8_e4m3) == 1);
  CHECK(dtype_size(dtype::float64) == 8);
  CHECK(dtype_name(dtype::blob) == "blob");
  CHECK_FALSE(dtype_from_name("float128"));
}

TEST_CASE("box intersection agrees with a brute-force oracle", "[tensor][box]") {
  std::mt19937_64 rng(42);
  auto rnd = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  for (int iter = 0; iter < 2000; ++iter) {
    std::size_t rank = static_cast<std::size_t>(rnd(1, 3));
    box a, b;
    for (std::size_t d = 0; d < rank; ++d) {
      a.origin.push_back(rnd(0, 6));
      a.extent.push_back(rnd(0, 5));
      b.origin.push_back(rnd(0, 6));
      b.extent.push_back(rnd(0, 5));
    }
    box c = intersect(a, b);
    auto inside = [](const box& x, const std::vector<std::int64_t>& p) {
      for (std::size_t d = 0; d < p.size(); ++d)
        if (p[d] < x.origin[d] || p[d] >= x.origin[d] + x.extent[d]) return false;
      return true;
    };
    std::int64_t count = 0;
    std::vector<std::int64_t> p(rank, 0);
    // Walk every point of a 12^rank universe.
    std::function<void(std::size_t)> walk = [&](std::size_t d) {
      if (d == rank) {
        bool both = inside(a, p) && inside(b, p);
        CHECK(both == inside(c, p));
        count += both;
        return;
      }
      for (p[d] = 0; p[d] < 12; ++p[d]) walk(d + 1);
    };
    walk(0);
    CHECK(*c.volume() == count);
    CHECK(c.empty() == (count == 0));
    CHECK(contains(a, c));
    CHECK(contains(b, c));
  }
}

TEST_CASE("num_elements detects overflow and negative dimensions", "[tensor][box]") {
  CHECK(num_elements({}) == 1);
  CHECK(num_elements({3, 4}) == 12);
  CHECK(num_elements({0, 1000}) == 0);
  CHECK_FALSE(num_elements({std::int64_t{1} << 40, std::int64_t{1} << 40}));
  CHECK_FALSE(num_elements({-1, 2}));
  CHECK(to_string(box{{0, 2}, {4, 6}}) == "[0:4, 2:8]");
  CHECK_FALSE(fits_in(box{{std::int64_t{1} << 62}, {std::int64_t{1} << 62}}, shape{10}));
}

TEST_CASE("split_range cuts even and uneven dimensions into contiguous chunks", "[tensor][layout]") {
  CHECK(split_range(8, 4, 0) == std::pair<std::int64_t, std::int64_t>{0, 2});
  CHECK(split_range(8, 4, 3) == std::pair<std::int64_t, std::int64_t>{6, 8});
  // Uneven: ceil(10/4) = 3 -> 3,3,3,1
  CHECK(split_range(10, 4, 2) == std::pair<std::int64_t, std::int64_t>{6, 9});
  CHECK(split_range(10, 4, 3) == std::pair<std::int64_t, std::int64_t>{9, 10});
  // ceil(5/4) = 2 -> 2,2,1,0: trailing shard empty, like torch.chunk
  CHECK(split_range(5, 4, 3) == std::pair<std::int64_t, std::int64_t>{5, 5});
  for (std::int64_t n = 0; n < 40; ++n)
    for (std::int64_t k = 1; k < 9; ++k) {
      std::int64_t next = 0;
      for (std::int64_t i = 0; i < k; ++i) {
        auto [lo, hi] = split_range(n, k, i);
        CHECK(lo == next);  // contiguous, in order, disjoint
        CHECK(hi >= lo);
        CHECK(hi - lo <= (n + k - 1) / k);
        next = hi;
      }
      CHECK(next == n);  // covers everything
    }
}

TEST_CASE("mesh validation names the offending value", "[tensor][mesh]") {
  auto err = [](auto r) {
    REQUIRE_FALSE(r);
    return r.error().what();
  };
  CHECK_THAT(err(mesh::create({{"x", 2}, {"x", 4}})), Catch::Contains("\"x\" appears twice"));
  CHECK_THAT(err(mesh::create({{"x", 0}})), Catch::Contains("size 0"));
  CHECK_THAT(err(mesh::create({{"bad name", 2}})), Catch::Contains("invalid"));
  CHECK_THAT(err(mesh::create({{"unsharded", 2}})), Catch::Contains("invalid"));
  CHECK_THAT(err(mesh::create({{"x", 2}}, {0, 1, 2})), Catch::Contains("3 device ids"));
  CHECK_THAT(err(mesh::create({{"x", 2}}, {5, 5})), Catch::Contains("appears twice"));
  CHECK_THAT(err(mesh::create({{"x", 2}}, {0, 1}, {7})), Catch::Contains("local device 7 is not in the mesh"));
  CHECK_THAT(err(mesh::create({{"x", 1 << 11}, {"y", 1 << 11}})), Catch::Contains("2^20"));
}

TEST_CASE("mesh coordinates are row-major over the device id list", "[tensor][mesh]") {
  auto m = mesh::create({{"x", 2}, {"y", 4}}, {10, 11, 12, 13, 14, 15, 16, 17}, {12, 13}).value();
  CHECK(m.num_devices() == 8);
  CHECK(*m.coords(10) == std::vector<std::int64_t>{0, 0});
  CHECK(*m.coords(13) == std::vector<std::int64_t>{0, 3});
  CHECK(*m.coords(14) == std::vector<std::int64_t>{1, 0});
  CHECK_FALSE(m.coords(3));
  CHECK(m.is_local(12));
  CHECK_FALSE(m.is_local(10));
  CHECK(m.to_string() == "x=2,y=4");
}

TEST_CASE("layout validation rejects unknown and reused mesh dimensions and rank mismatches", "[tensor][layout]") {
  auto m = mesh::create({{"x", 2}, {"y", 4}}).value();
  auto unknown = layout::create({"z", "unsharded"}, m);
  REQUIRE_FALSE(unknown);
  CHECK_THAT(unknown.error().what(), Catch::Contains("\"z\", which is not in mesh x=2,y=4"));
  auto twice = layout::create({"x", "x"}, m);
  REQUIRE_FALSE(twice);
  CHECK_THAT(twice.error().what(), Catch::Contains("used by layout dimensions 0 and 1"));
  auto l = layout::create({"x", "unsharded"}, m).value();
  auto bad_rank = l.shard_box({8}, 0);
  REQUIRE_FALSE(bad_rank);
  CHECK_THAT(bad_rank.error().what(), Catch::Contains("rank 2") && Catch::Contains("rank 1"));
  CHECK_FALSE(l.shard_box({8, 8}, 99));
}

TEST_CASE("shard boxes tile the tensor, replicated along unused mesh dimensions", "[tensor][layout]") {
  auto m = mesh::create({{"x", 2}, {"y", 4}}).value();
  const std::vector<std::vector<std::string>> layouts = {
      {"x", "y"}, {"y", "x"}, {"x", "unsharded"}, {"unsharded", "y"}, {"unsharded", "unsharded"}};
  for (const auto& specs : layouts)
    for (shape s : {shape{8, 8}, shape{5, 7}, shape{3, 1}, shape{0, 4}}) {
      auto l = layout::create(specs, m).value();
      std::int64_t replicas = 8;
      for (const auto& sp : specs) replicas /= sp == "x" ? 2 : sp == "y" ? 4 : 1;
      std::vector<int> covered(static_cast<std::size_t>(s[0] * s[1]), 0);
      std::set<std::vector<std::int64_t>> distinct;
      for (auto dev : m.device_ids()) {
        auto b = l.shard_box(s, dev).value();
        REQUIRE(fits_in(b, s));
        for (std::int64_t i = b.origin[0]; i < b.origin[0] + b.extent[0]; ++i)
          for (std::int64_t j = b.origin[1]; j < b.origin[1] + b.extent[1]; ++j) ++covered[static_cast<std::size_t>(i * s[1] + j)];
        distinct.insert({b.origin[0], b.origin[1], b.extent[0], b.extent[1]});
      }
      for (int c : covered) CHECK(c == replicas);  // every element held by exactly `replicas` devices
    }
}

TEST_CASE("dtensor views check that shards match the layout", "[tensor][dtensor]") {
  auto m = mesh::create({{"x", 2}}).value();
  auto l = layout::create({"x"}, m).value();
  std::vector<std::byte> a(16), b(16), small(8);
  CHECK(dtensor_view::create(dtype::float32, {8}, l, {{0, a}, {1, b}}));
  auto wrong_size = dtensor_view::create(dtype::float32, {8}, l, {{0, a}, {1, small}});
  REQUIRE_FALSE(wrong_size);
  CHECK_THAT(wrong_size.error().what(), Catch::Contains("device 1 has 8 bytes, expected 16"));
  CHECK_FALSE(dtensor_view::create(dtype::float32, {8}, l, {{0, a}}));
  CHECK_FALSE(dtensor_view::create(dtype::float32, {8}, l, {{0, a}, {0, b}}));
  CHECK_FALSE(dtensor_view::create(dtype::float32, {8, 2}, l, {{0, a}, {1, b}}));

  auto local = mesh::create({{"x", 2}}, {}, {1}).value();
  auto t = dtensor::create(dtype::int16, {5}, layout::create({"x"}, local).value()).value();
  REQUIRE(t.view().shards().size() == 1);
  CHECK(t.view().shards()[0].device == 1);
  CHECK(t.shard_bytes(1).size() == 4);  // uneven: rows 3..4 of 5, int16
  CHECK(t.shard_bytes(0).empty());
}

TEST_CASE("an owning dtensor cannot be copied, only moved (its view points into its storage)", "[tensor][dtensor][regression]") {
  // Regression: a copied dtensor kept a view into the original's memory; found when a vector of
  // states reallocated (copying) in a concurrency test and the old storage was freed.
  STATIC_REQUIRE_FALSE(std::is_copy_constructible_v<dtensor>);
  STATIC_REQUIRE(std::is_nothrow_move_constructible_v<dtensor>);
  auto m = mesh::create({{"x", 2}}).value();
  auto a = dtensor::create(dtype::int32, {4}, layout::create({"x"}, m).value()).value();
  auto* before = a.view().shards()[0].data.data();
  dtensor b = std::move(a);
  CHECK(b.view().shards()[0].data.data() == before);  // still its own storage
  CHECK(b.shard_bytes(0).data() == before);
}

// ---------------------------------------------------------------- dtype conversion

#include <cmath>

#include "meshckpt/tensor/convert.hpp"

TEST_CASE("half and bfloat16 conversions round-trip every bit pattern and round to nearest even", "[tensor][convert]") {
  int nan_h = 0, nan_b = 0;
  for (std::uint32_t v = 0; v < 65536; ++v) {
    auto h = static_cast<std::uint16_t>(v);
    float f = half_to_float(h);
    if (std::isnan(f)) {
      ++nan_h;
      CHECK(std::isnan(half_to_float(float_to_half(f))));
    } else {
      REQUIRE(float_to_half(f) == h);
    }
    float g = bfloat16_to_float(h);
    if (std::isnan(g)) {
      ++nan_b;
      CHECK(std::isnan(bfloat16_to_float(float_to_bfloat16(g))));
    } else {
      REQUIRE(float_to_bfloat16(g) == h);
    }
  }
  CHECK(nan_h == 2046);
  CHECK(nan_b == 254);
  CHECK(float_to_half(1.0f) == 0x3c00);
  CHECK(float_to_half(1.0f + std::ldexp(1.0f, -11)) == 0x3c00);      // tie: to even
  CHECK(float_to_half(1.0f + 3 * std::ldexp(1.0f, -11)) == 0x3c02);  // tie: to even (up)
  CHECK(float_to_half(65504.0f) == 0x7bff);
  CHECK(float_to_half(65520.0f) == 0x7c00);  // rounds up to infinity
  CHECK(float_to_half(-1e9f) == 0xfc00);
  CHECK(float_to_half(std::ldexp(1.0f, -24)) == 0x0001);      // smallest subnormal
  CHECK(float_to_half(std::ldexp(1.0f, -25)) == 0x0000);      // tie: to even (zero)
  CHECK(float_to_half(3 * std::ldexp(1.0f, -26)) == 0x0001);  // above the tie
  CHECK(float_to_half(std::ldexp(1.0f, -30)) == 0x0000);
  CHECK(half_to_float(0x0001) == std::ldexp(1.0f, -24));
  CHECK(half_to_float(0x03ff) == std::ldexp(1023.0f, -24));
  CHECK(float_to_bfloat16(1.0f) == 0x3f80);
  CHECK(float_to_bfloat16(1.0f + std::ldexp(1.0f, -8)) == 0x3f80);      // tie: to even
  CHECK(float_to_bfloat16(1.0f + 3 * std::ldexp(1.0f, -8)) == 0x3f82);  // tie: to even (up)
  CHECK(float_to_bfloat16(3.4e38f) == 0x7f80);                          // overflow: infinity
}

TEST_CASE("convert moves values between floating dtypes and refuses the rest", "[tensor][convert]") {
  CHECK(convertible(dtype::float32, dtype::bfloat16));
  CHECK(convertible(dtype::float64, dtype::float16));
  CHECK(convertible(dtype::int32, dtype::int32));
  CHECK_FALSE(convertible(dtype::int32, dtype::float32));
  CHECK_FALSE(convertible(dtype::float32, dtype::float8_e4m3));
  std::vector<float> src = {0.0f, -1.5f, 3.140625f, 1e-3f, 65504.0f};
  std::vector<std::uint16_t> bf(src.size()), hf(src.size());
  std::vector<double> back(src.size());
  convert(dtype::float32, std::as_bytes(std::span(src)), dtype::bfloat16, std::as_writable_bytes(std::span(bf)));
  convert(dtype::float32, std::as_bytes(std::span(src)), dtype::float16, std::as_writable_bytes(std::span(hf)));
  for (std::size_t i = 0; i < src.size(); ++i) {
    CHECK(bf[i] == float_to_bfloat16(src[i]));
    CHECK(hf[i] == float_to_half(src[i]));
  }
  convert(dtype::float16, std::as_bytes(std::span(hf)), dtype::float64, std::as_writable_bytes(std::span(back)));
  CHECK(back[1] == -1.5);
  CHECK(back[2] == 3.140625);
  CHECK(back[4] == 65504.0);
}
