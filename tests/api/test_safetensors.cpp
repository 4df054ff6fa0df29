// Name-based restore from safetensors files through the API (api/safetensors_io.hpp): a single
// file and a sharded model with its index, into sharded, replicated and one-device targets,
// bit-exact against the generator; and the index decoder's safety rules.
#include <catch2/catch.hpp>

#include <cstdio>
#include <fstream>

#include "meshckpt/interchange/safetensors_io.hpp"
#include "meshckpt/format/safetensors.hpp"
#include "support.hpp"

using namespace meshckpt;
using namespace meshckpt::testing;

namespace {

void write_text(const std::string& path, const std::string& text) { std::ofstream(path, std::ios::binary) << text; }

}  // namespace

TEST_CASE("read_safetensors fills any layout by name, from a file and from a sharded model", "[safetensors]") {
  auto be = test_backend();
  temp_dir dir;
  auto w = whole_tensor(dtype::float32, {8, 6}, "w", 1);
  auto e = whole_tensor(dtype::bfloat16, {5, 3, 4}, "e", 1);
  auto s = whole_tensor(dtype::int64, {}, "s", 1);
  write_safetensors_file(dir / "one.safetensors", {{"w", &w}, {"e", &e}, {"s", &s}});
  write_safetensors_file(dir / "model-00001-of-00002.safetensors", {{"w", &w}});
  write_safetensors_file(dir / "model-00002-of-00002.safetensors", {{"e", &e}, {"s", &s}});
  format::safetensors_index idx;
  idx.weight_map = {
      {"w", "model-00001-of-00002.safetensors"}, {"e", "model-00002-of-00002.safetensors"}, {"s", "model-00002-of-00002.safetensors"}};
  write_text(dir / "model.safetensors.index.json", format::encode_safetensors_index(idx));

  auto m = mesh::create({{"x", 2}, {"y", 2}}).value();
  for (const char* source : {"one.safetensors", "model.safetensors.index.json"}) {
    INFO(source);
    // Sharded both ways, uneven over y (5 rows over 2), replicated, and a scalar.
    auto tw = dtensor::create(dtype::float32, {8, 6}, layout::create({"x", "y"}, m).value()).value();
    auto te = dtensor::create(dtype::bfloat16, {5, 3, 4}, layout::create({"y", "unsharded", "x"}, m).value()).value();
    auto ts = dtensor::create(dtype::int64, {}, layout::create(std::vector<std::string>{}, m).value()).value();
    std::vector<named_tensor> targets = {{"w", tw.view()}, {"e", te.view()}, {"s", ts.view()}};
    auto r = read_safetensors(*be, dir / source, targets);
    REQUIRE(r);
    CHECK(r->tensors == 3);
    CHECK(matches(tw.view(), "w", 1));
    CHECK(matches(te.view(), "e", 1));
    CHECK(matches(ts.view(), "s", 1));
    CHECK(r->resharded_shards == 8);  // w and e: 4 shards each cut out of the whole tensor

    auto listed = list_safetensors(*be, dir / source);
    REQUIRE(listed);
    REQUIRE(listed->size() == 3);
    CHECK((*listed)[0].name == "e");
    CHECK((*listed)[0].type == dtype::bfloat16);
    CHECK((*listed)[0].dims == shape{5, 3, 4});
    CHECK((*listed)[2].name == "w");
  }
  // A subset by name is fine; unknown names, other dtypes and shapes are clear errors.
  auto tw = dtensor::create(dtype::float32, {8, 6}, layout::create({"unsharded", "y"}, m).value()).value();
  std::vector<named_tensor> just_w = {{"w", tw.view()}};
  REQUIRE(read_safetensors(*be, dir / "one.safetensors", just_w));
  CHECK(matches(tw.view(), "w", 1));
  std::vector<named_tensor> missing = {{"nope", tw.view()}};
  auto r = read_safetensors(*be, dir / "one.safetensors", missing);
  REQUIRE(!r);
  CHECK(r.error().code == errc::not_found);
  CHECK_THAT(r.error().what(), Catch::Contains("\"nope\"") && Catch::Contains("one.safetensors"));
  r = read_safetensors(*be, dir / "model.safetensors.index.json", missing);
  REQUIRE(!r);
  CHECK(r.error().code == errc::not_found);
  auto wrong_type = dtensor::create(dtype::float64, {8, 6}, layout::create({"x", "y"}, m).value()).value();
  std::vector<named_tensor> t1 = {{"w", wrong_type.view()}};
  r = read_safetensors(*be, dir / "one.safetensors", t1);
  REQUIRE(!r);
  CHECK(r.error().code == errc::dtype_mismatch);
  auto wrong_shape = dtensor::create(dtype::float32, {6, 8}, layout::create({"x", "y"}, m).value()).value();
  std::vector<named_tensor> t2 = {{"w", wrong_shape.view()}};
  r = read_safetensors(*be, dir / "one.safetensors", t2);
  REQUIRE(!r);
  CHECK(r.error().code == errc::shape_mismatch);
  r = read_safetensors(*be, dir / "absent.safetensors", just_w);
  REQUIRE(!r);
  CHECK(r.error().code == errc::not_found);

  // An index that maps a name to a file without it, or outside its directory.
  write_text(dir / "lying.index.json", R"({"metadata": {"total_size": 1}, "weight_map": {"w": "model-00002-of-00002.safetensors"}})");
  r = read_safetensors(*be, dir / "lying.index.json", just_w);
  REQUIRE(!r);
  CHECK(r.error().code == errc::not_found);
  write_text(dir / "escape.index.json", R"({"weight_map": {"w": "../one.safetensors"}})");
  r = read_safetensors(*be, dir / "escape.index.json", just_w);
  REQUIRE(!r);
  CHECK(r.error().code == errc::corrupt_manifest);
  CHECK_THAT(r.error().what(), Catch::Contains("not a plain file name"));
}

TEST_CASE("the safetensors index decoder is strict and round-trips", "[safetensors]") {
  format::safetensors_index idx;
  idx.total_size = 1234;
  idx.weight_map = {{"a/b", "model-00001-of-00002.safetensors"}, {"q\"x", "model-00002-of-00002.safetensors"}};
  auto back = format::decode_safetensors_index(format::encode_safetensors_index(idx));
  REQUIRE(back);
  CHECK(back->weight_map == idx.weight_map);
  // Metadata of any JSON shape is skipped; Hugging Face writes numbers there.
  auto hf = format::decode_safetensors_index(
      R"({"metadata": {"total_size": 16, "x": [1.5e3, -2, true, null, {"y": "z"}]}, "weight_map": {"w": "f.safetensors"}})");
  REQUIRE(hf);
  CHECK(hf->weight_map.at("w") == "f.safetensors");
  for (const char* bad : {"", "[]", "{}", R"({"weight_map": []})", R"({"weight_map": {"w": 3}})", R"({"weight_map": {"w": "a/b"}})",
                          R"({"weight_map": {"w": ".."}})", R"({"weight_map": {"w": "f", "w": "g"}})", R"({"weight_map": {}} x)",
                          R"({"weight_map": {"w": "f"}, "weight_map": {}})", R"({"metadata": [[[[)", "{\"weight_map\": {\"w\": \"f\"}"}) {
    INFO(bad);
    auto r = format::decode_safetensors_index(bad);
    CHECK(!r);
    if (!r) CHECK(r.error().code == errc::corrupt_manifest);
  }
  // Deep nesting is refused, not recursed into without bound.
  std::string deep = R"({"metadata": )" + std::string(10000, '[') + std::string(10000, ']') + R"(, "weight_map": {}})";
  auto r = format::decode_safetensors_index(deep);
  REQUIRE(!r);
  CHECK_THAT(r.error().what(), Catch::Contains("nested too deeply"));
}

TEST_CASE("complex64 is safetensors' C64; complex128 has no safetensors dtype", "[safetensors]") {
  CHECK(format::safetensors_dtype(dtype::complex64) == "C64");
  CHECK_FALSE(format::safetensors_dtype(dtype::complex128));
  CHECK(dtype_size(dtype::complex64) == 8);
  CHECK(dtype_size(dtype::complex128) == 16);
  CHECK(dtype_from_name("complex128") == dtype::complex128);
  std::vector<format::safetensor_entry> t{{"z", dtype::complex64, {2}, 0, 16}};
  auto header = format::encode_safetensors_header(t, {});
  REQUIRE(header);
  auto back = format::decode_safetensors_header(*header, header->size() + 16);
  REQUIRE(back);
  REQUIRE(back->tensors.size() == 1);
  CHECK(back->tensors[0].type == dtype::complex64);
}
