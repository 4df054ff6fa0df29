// Hostile TensorFlow bundles (valid checksums, hostile values: sizes of 2^40, 2^31 data files,
// snappy blocks claiming 2^40 bytes, keys that are not UTF-8, quantized and unknown dtypes),
// malformed indexes, and the JSON and messages of keys that are not UTF-8.

#include <catch2/catch.hpp>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <span>
#include <string>
#include <vector>

#include "format/tf_table.hpp"
#include "meshckpt/format/describe.hpp"
#include "meshckpt/format/tf_bundle.hpp"
#include "tensor_bundle.pb.h"
#include "tf_proto_fixtures.hpp"

using namespace meshckpt;
using namespace tf_proto_fixtures;

TEST_CASE("malformed bundle indexes are refused with what and where", "[tf][bundle][hostile]") {
  // No header: a V1 checkpoint (or no checkpoint).
  std::vector<table_entry> v1{{"global_step", "x"}};
  auto e = index_error(v1);
  CHECK(e.code == errc::unsupported);
  CHECK_THAT(e.what(), Catch::Contains("V1"));
  auto big = header();
  big.set_endianness(tfproto::BundleHeaderProto::BIG);
  e = index_error(bundle_with(big, {}));
  CHECK(e.code == errc::unsupported);
  CHECK_THAT(e.what(), Catch::Contains("big-endian"));
  auto newer = header();
  newer.mutable_version()->set_min_consumer(2);
  CHECK_THAT(index_error(bundle_with(newer, {})).what(), Catch::Contains("bundle version 2"));
  CHECK_THAT(index_error(bundle_with(header(0), {})).what(), Catch::Contains("0 data files"));
  CHECK_THAT(index_error(std::vector<table_entry>{{"", "\xff\xff"}}).what(), Catch::Contains("not a BundleHeaderProto"));
  CHECK_THAT(index_error(bundle_with(header(), {{"w", entry(1, {4}, 0, 15)}})).what(), Catch::Contains("takes 16 bytes, not 15"));
  CHECK_THAT(index_error(bundle_with(header(), {{"w", entry(1, {4}, 0, 16, 1)}})).what(), Catch::Contains("data file 1 of a bundle of 1"));
  CHECK_THAT(index_error(bundle_with(header(), {{"w", entry(1, {-4}, 0, 16)}})).what(), Catch::Contains("a dimension of size -4"));
  CHECK_THAT(index_error(bundle_with(header(), {{"w", entry(1, {1ll << 40, 1ll << 40}, 0, 16)}})).what(), Catch::Contains("more elements"));
  CHECK_THAT(index_error(bundle_with(header(), {{"w", entry(1, {4}, -1, 16)}})).what(), Catch::Contains("out of range"));
  auto unknown = entry(1, {}, 0, 4);
  unknown.mutable_shape()->set_unknown_rank(true);
  CHECK_THAT(index_error(bundle_with(header(), {{"w", unknown}})).what(), Catch::Contains("unknown rank"));
  std::vector<table_entry> garbage{{"", serialized(header())}, {"w", "\xff\xff\xff"}};
  e = index_error(garbage);
  CHECK(e.code == errc::corrupt_manifest);
  CHECK_THAT(e.what(), Catch::Contains("entry \"w\": not a BundleEntryProto"));
  // Kept, for a clear error when restored: a dtype meshckpt lacks.
  auto idx = format::tf::decode_bundle_index(format::tf::write_table(bundle_with(header(), {{"z", entry(21, {2}, 0, 16)}})).value());
  REQUIRE(idx);
  CHECK_FALSE(idx->entries[0].type);
  CHECK(format::tf::tf_dtype_name(idx->entries[0].tf_type) == "DT_VARIANT");
}

namespace {

// A fuzz_tf_bundle input of mode 1: table entries, [u8 key length][key][u16 value length][value].
std::vector<std::byte> seed_of_entries(const std::vector<table_entry>& t) {
  std::vector<std::byte> out{std::byte{1}};
  for (const auto& e : t) {
    REQUIRE(e.key.size() < 256);
    REQUIRE(e.value.size() < 65536);
    out.push_back(static_cast<std::byte>(e.key.size()));
    for (char c : e.key) out.push_back(static_cast<std::byte>(c));
    out.push_back(static_cast<std::byte>(e.value.size() & 0xff));
    out.push_back(static_cast<std::byte>(e.value.size() >> 8));
    for (char c : e.value) out.push_back(static_cast<std::byte>(c));
  }
  return out;
}

std::vector<std::byte> with_mode(std::uint8_t mode, std::span<const std::byte> bytes) {
  std::vector<std::byte> out{std::byte{mode}};
  out.insert(out.end(), bytes.begin(), bytes.end());
  return out;
}

}  // namespace

TEST_CASE("crafted TF bundles with valid checksums and hostile values are refused cleanly or read as they are",
          "[tf][bundle][hostile][regression]") {
  // Each case is also a seed of fuzz_tf_bundle (fuzz/corpus/fuzz_tf_bundle/crafted_*): with
  // MESHCKPT_WRITE_TF_SEEDS=DIR this test writes them there.
  std::vector<std::pair<std::string, std::vector<std::byte>>> seeds;
  // Sizes of 2^40: an entry whose size matches a shape of 2^40 floats decodes (nothing is
  // allocated for it); its bytes lie beyond any data file, which the restore reports.
  {
    auto t = bundle_with(header(), {{"huge", entry(1, {std::int64_t{1} << 40}, 0, std::int64_t{1} << 42)}});
    auto idx = format::tf::decode_bundle_index(format::tf::write_table(t).value());
    REQUIRE(idx);
    CHECK(idx->entries[0].size == std::uint64_t{1} << 42);
    CHECK(index_error(bundle_with(header(), {{"huge", entry(1, {std::int64_t{1} << 40}, 0, 16)}})).code == errc::corrupt_manifest);
    seeds.emplace_back("crafted_size_2e40", seed_of_entries(t));
  }
  // 2^31 - 1 data files, and an entry in data file 2^31 - 1 of a bundle of one.
  {
    auto t = bundle_with(header(0x7fffffff), {{"w", entry(1, {4}, 0, 16)}});
    auto e = index_error(t);
    CHECK(e.code == errc::corrupt_manifest);
    CHECK_THAT(e.what(), Catch::Contains("2147483647 data files"));
    seeds.emplace_back("crafted_shards_2e31", seed_of_entries(t));
    auto t2 = bundle_with(header(), {{"w", entry(1, {4}, 0, 16, 0x7fffffff)}});
    CHECK_THAT(index_error(t2).what(), Catch::Contains("data file 2147483647 of a bundle of 1"));
    seeds.emplace_back("crafted_shard_id_2e31", seed_of_entries(t2));
  }
  // Snappy blocks that claim 2^40 bytes (more than snappy's 32-bit length: not snappy data) and
  // 2^31 bytes (past the block cap) once decompressed: refused before allocating them.
  for (const int bits : {40, 31}) {
    std::vector<std::byte> block;
    std::uint64_t v = std::uint64_t{1} << bits;
    for (; v >= 0x80; v >>= 7) block.push_back(static_cast<std::byte>((v & 0x7f) | 0x80));
    block.push_back(static_cast<std::byte>(v));
    block.resize(block.size() + 32, std::byte{0});
    auto file = format::tf::table_around_block(block, 1);
    auto r = format::tf::decode_bundle_index(file);
    REQUIRE_FALSE(r);
    CHECK(r.error().code == (bits == 40 ? errc::corrupt_manifest : errc::limit_exceeded));
    seeds.emplace_back("crafted_snappy_2e" + std::to_string(bits), with_mode(0, file));
  }
  // Keys that are not UTF-8, a quantized type and an unknown dtype: legal, read as they are.
  {
    const std::string bad_key = std::string("emb\xff\xfe", 5);
    auto t = bundle_with(header(), {{bad_key, entry(1, {2}, 0, 8)}, {"q", entry(11, {4}, 8, 4)}, {"u", entry(999, {4}, 12, 16)}});
    auto idx = format::tf::decode_bundle_index(format::tf::write_table(t).value());
    REQUIRE(idx);
    REQUIRE(idx->find(bad_key));
    CHECK(idx->find("q")->type == dtype::int8);
    CHECK_FALSE(idx->find("u")->type);
    CHECK(format::tf::tf_dtype_name(idx->find("u")->tf_type) == "unknown TensorFlow dtype 999");
    seeds.emplace_back("crafted_non_utf8_key", seed_of_entries(t));
  }
  // A string tensor whose lengths claim 2^40 bytes.
  {
    std::vector<std::byte> st;
    std::uint64_t v = std::uint64_t{1} << 40;
    for (; v >= 0x80; v >>= 7) st.push_back(static_cast<std::byte>((v & 0x7f) | 0x80));
    st.push_back(static_cast<std::byte>(v));
    st.resize(st.size() + 8, std::byte{0});
    auto r = format::tf::decode_string_tensor(st, 1, 0);
    REQUIRE_FALSE(r);
    std::vector<std::byte> seed{std::byte{2}, std::byte{1}, std::byte{0}, std::byte{0}, std::byte{0}, std::byte{0}};
    seed.insert(seed.end(), st.begin(), st.end());
    seeds.emplace_back("crafted_string_2e40", seed);
  }
  if (const char* dir = std::getenv("MESHCKPT_WRITE_TF_SEEDS"))
    for (const auto& [name, bytes] : seeds) {
      std::ofstream f(std::filesystem::path(dir) / name, std::ios::binary);
      f.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
    }
}

TEST_CASE("JSON strings are valid UTF-8 whatever the key's bytes; messages show them escaped and --rename reads them back",
          "[format][json][regression]") {
  using meshckpt::format::display_bytes;
  using meshckpt::format::is_utf8;
  using meshckpt::format::json_string;
  using meshckpt::format::unescape_display;
  const std::string bad("emb\xff\xfe", 5);
  CHECK_FALSE(is_utf8(bad));
  CHECK(json_string(bad) == "\"emb\\udcff\\udcfe\"");
  CHECK(is_utf8(json_string(bad)));
  CHECK(json_string("caf\xc3\xa9 \"q\"\n") == "\"caf\xc3\xa9 \\\"q\\\"\\n\"");  // valid UTF-8 passes as it is
  for (const char* s :
       {"\xc0\xaf", "\xed\xa0\x80", "\xf4\x90\x80\x80", "\xe2\x82", "\x80"}) {  // overlong, surrogate, > U+10FFFF, cut, lone
    INFO(display_bytes(s));
    CHECK_FALSE(is_utf8(s));
    CHECK(is_utf8(json_string(s)));
  }
  CHECK(is_utf8("\xf0\x9f\x98\x80 \xe2\x82\xac"));
  CHECK(display_bytes(bad) == "emb\\xff\\xfe");
  CHECK(display_bytes("a\\b\tc") == "a\\\\b\\x09c");
  for (const std::string& s : {bad, std::string("a\\b\tc"), std::string("plain/key"), std::string("\x00\x01", 2)})
    CHECK(unescape_display(display_bytes(s)).value() == s);
  CHECK_FALSE(unescape_display("a\\q"));
  CHECK_FALSE(unescape_display("a\\x4"));
}
