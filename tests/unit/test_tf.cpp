// TensorFlow's on-disk formats, read as hostile input: CRC-32C (hardware and portable, against
// published vectors and each other) and the LevelDB-format table of a bundle's .index file —
// real files written by TensorFlow (tests/data/tf, see SOURCES.md there), tables built here, and
// every truncation, byte flip and malformed block the reader must refuse.

#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>

#include "format/codec.hpp"
#include "format/tf_table.hpp"
#include "meshckpt/format/crc32c.hpp"

using namespace meshckpt;
using format::tf::table_entry;

namespace {

const std::filesystem::path data = MESHCKPT_TF_TESTDATA;

std::vector<std::byte> bytes_of(std::string_view s) {
  auto b = std::as_bytes(std::span(s.data(), s.size()));
  return {b.begin(), b.end()};
}

std::vector<std::byte> file(const std::filesystem::path& p) {
  std::ifstream f(p, std::ios::binary);
  REQUIRE(f);
  std::string s((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  return bytes_of(s);
}

bool same(const std::vector<table_entry>& a, const std::vector<table_entry>& b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (a[i].key != b[i].key || a[i].value != b[i].value) return false;
  return true;
}

std::vector<std::byte> table_with_block(std::vector<std::byte> contents, std::uint8_t type = 0) {
  return format::tf::table_around_block(contents, type);
}

// Block contents from raw entries (shared, unshared, value length, key delta, value) and a
// restart array.
std::vector<std::byte> block(std::initializer_list<std::tuple<int, int, int, std::string, std::string>> entries,
                             std::vector<std::uint32_t> restarts = {0}) {
  format::codec::writer w;
  for (const auto& [shared, unshared, vlen, key, value] : entries) {
    w.varint(static_cast<std::uint64_t>(shared));
    w.varint(static_cast<std::uint64_t>(unshared));
    w.varint(static_cast<std::uint64_t>(vlen));
    w.raw(key.data(), key.size());
    w.raw(value.data(), value.size());
  }
  for (auto r : restarts) w.fixed(r, 4);
  w.fixed(restarts.size(), 4);
  return std::move(w.bytes());
}

}  // namespace

TEST_CASE("CRC-32C matches the published vectors, in hardware and portably", "[tf][crc32c]") {
  // RFC 3720 (iSCSI) B.4 and the LevelDB test vectors.
  std::vector<std::byte> zeros(32, std::byte{0}), ones(32, std::byte{0xff}), up(32), down(32);
  for (int i = 0; i < 32; ++i) {
    up[static_cast<std::size_t>(i)] = static_cast<std::byte>(i);
    down[static_cast<std::size_t>(i)] = static_cast<std::byte>(31 - i);
  }
  for (auto f : {&format::crc32c::extend, &format::crc32c::extend_portable}) {
    CHECK(f(0, bytes_of("123456789")) == 0xE3069283u);
    CHECK(f(0, zeros) == 0x8A9136AAu);
    CHECK(f(0, ones) == 0x62A8AB43u);
    CHECK(f(0, up) == 0x46DD794Eu);
    CHECK(f(0, down) == 0x113FDB5Cu);
    CHECK(f(0, {}) == 0u);
  }
  CHECK(format::crc32c::value(bytes_of("hello world")) == format::crc32c::extend(format::crc32c::value(bytes_of("hello ")), bytes_of("world")));
  INFO("hardware: " << format::crc32c::hardware_accelerated());
}

TEST_CASE("CRC-32C: the hardware path and the portable one agree on every length and alignment", "[tf][crc32c]") {
  std::mt19937_64 rng(7);
  std::vector<std::byte> buf(4096 + 16);
  for (auto& b : buf) b = static_cast<std::byte>(rng());
  for (std::size_t off = 0; off < 9; ++off)
    for (std::size_t n : {0, 1, 7, 8, 9, 15, 16, 17, 63, 64, 65, 255, 1000, 4096}) {
      std::span<const std::byte> s(buf.data() + off, n);
      REQUIRE(format::crc32c::extend(0x12345678u, s) == format::crc32c::extend_portable(0x12345678u, s));
      // Split anywhere: the CRC of the whole.
      const auto cut = n / 3;
      CHECK(format::crc32c::extend(format::crc32c::value(s.first(cut)), s.subspan(cut)) == format::crc32c::value(s));
    }
  for (std::uint32_t c : {0u, 1u, 0xE3069283u, 0xffffffffu}) {
    CHECK(format::crc32c::mask(c) != c);
    CHECK(format::crc32c::unmask(format::crc32c::mask(c)) == c);
  }
}

TEST_CASE("TF tables written by TensorFlow read back whole, snappy blocks included", "[tf][table]") {
  struct want {
    std::filesystem::path path;
    std::size_t entries;
    std::string some_key;
  };
  for (const auto& w : {want{data / "t2t_transformer_tf1_ckpt/model.ckpt-1.index", 251, "global_step"},
                        want{data / "bert_lite_tf2_ckpt/bert_lite_tf2.ckpt.index", 26, "_CHECKPOINTABLE_OBJECT_GRAPH"},
                        want{data / "half_plus_two_tf2_savedmodel/variables/variables.index", 5, "a/.ATTRIBUTES/VARIABLE_VALUE"}}) {
    INFO(w.path);
    auto bytes = file(w.path);
    CHECK(format::tf::looks_like_table(bytes));
    auto t = format::tf::read_table(bytes);
    REQUIRE(t);
    CHECK(t->size() == w.entries);
    CHECK(t->front().key.empty());  // the bundle header
    CHECK(std::any_of(t->begin(), t->end(), [&](const auto& e) { return e.key == w.some_key; }));
    // The same entries written by this writer read back equal.
    auto again = format::tf::write_table(*t, 256);
    REQUIRE(again);
    auto back = format::tf::read_table(*again);
    REQUIRE(back);
    CHECK(same(*t, *back));
  }
  CHECK_FALSE(format::tf::looks_like_table(file(data / "half_plus_two_tf2_savedmodel/saved_model.pb")));
}

TEST_CASE("tables built here round-trip: many blocks, shared prefixes, empty values, no entries", "[tf][table]") {
  std::vector<table_entry> entries;
  for (int i = 0; i < 3000; ++i) {
    char key[64];
    std::snprintf(key, sizeof key, "layer_%04d/kernel/.ATTRIBUTES/VARIABLE_VALUE", i);
    entries.push_back({key, std::string(static_cast<std::size_t>(i % 37), static_cast<char>('a' + i % 26))});
  }
  entries.insert(entries.begin(), table_entry{"", "header"});
  for (std::size_t block : {64, 4096, 1 << 20}) {
    auto t = format::tf::write_table(entries, block);
    REQUIRE(t);
    auto back = format::tf::read_table(*t);
    REQUIRE(back);
    CHECK(same(entries, *back));
  }
  auto empty = format::tf::write_table({});
  REQUIRE(empty);
  auto none = format::tf::read_table(*empty);
  REQUIRE(none);
  CHECK(none->empty());
  std::vector<table_entry> unordered{{"b", ""}, {"a", ""}};
  CHECK(format::tf::write_table(unordered).error().code == errc::invalid_argument);
}

TEST_CASE("every truncation and every byte flip of a real index file is refused, never read wrong", "[tf][table][hostile]") {
  for (const auto& p : {data / "bert_lite_tf2_ckpt/bert_lite_tf2.ckpt.index", data / "half_plus_two_tf2_savedmodel/variables/variables.index"}) {
    INFO(p);
    const auto good = file(p);
    const auto want = format::tf::read_table(good).value();
    for (std::size_t n = 0; n < good.size(); ++n) {
      auto t = format::tf::read_table(std::span(good).first(n));
      REQUIRE_FALSE(t);
    }
    std::size_t refused = 0, harmless = 0;
    for (std::size_t i = 0; i < good.size(); ++i)
      for (std::uint8_t flip : {0x01, 0x80, 0xff}) {
        auto bad = good;
        bad[i] ^= static_cast<std::byte>(flip);
        auto t = format::tf::read_table(bad);
        if (!t) {
          ++refused;
          CHECK((t.error().code == errc::corrupt_manifest || t.error().code == errc::checksum_mismatch ||
                 t.error().code == errc::unsupported || t.error().code == errc::limit_exceeded));
        } else {
          ++harmless;  // the footer's padding: not part of any block
          CHECK(same(*t, want));
          CHECK(i >= good.size() - 48);
        }
      }
    CHECK(refused > 0);
    INFO(harmless << " harmless flips");
  }
}

TEST_CASE("malformed blocks behind a right checksum are refused with what and where", "[tf][table][hostile]") {
  auto err = [](std::vector<std::byte> table, format::tf::table_limits lim = {}) {
    auto t = format::tf::read_table(table, lim);
    REQUIRE_FALSE(t);
    return t.error();
  };
  // A good one first, so the builder itself is right.
  auto ok = format::tf::read_table(table_with_block(block({{0, 1, 1, "a", "x"}, {1, 1, 0, "b", ""}})));
  REQUIRE(ok);
  REQUIRE(ok->size() == 2);
  CHECK((*ok)[1].key == "ab");

  auto e = err(table_with_block(block({{0, 1, 1, "a", "x"}}, {0, 1, 2, 3, 4, 5, 6, 7, 8, 9})));
  CHECK(e.code == errc::corrupt_manifest);
  e = err(table_with_block(bytes_of(std::string("\xff\xff\xff\x0f", 4))));
  CHECK_THAT(e.what(), Catch::Contains("restart points do not fit"));
  e = err(table_with_block(block({{0, 1, 1, "a", "x"}, {5, 1, 0, "b", ""}})));
  CHECK_THAT(e.what(), Catch::Contains("shares 5 bytes of a previous key of 1"));
  e = err(table_with_block(block({{0, 1, 1, "b", "x"}, {0, 1, 0, "a", ""}})));
  CHECK_THAT(e.what(), Catch::Contains("does not follow"));
  e = err(table_with_block(block({{0, 1, 1, "a", "x"}, {0, 1, 0, "a", ""}})));
  CHECK_THAT(e.what(), Catch::Contains("does not follow"));  // equal keys too
  e = err(table_with_block(block({{0, 1, 200, "a", "x"}})));
  CHECK_THAT(e.what(), Catch::Contains("runs past the block's end"));
  e = err(table_with_block(block({{0, 1, 1, "a", "x"}}, {50})));
  CHECK_THAT(e.what(), Catch::Contains("restart point 0 lies past the entries"));
  e = err(table_with_block(block({{0, 1, 1, "a", "x"}}, {3})));
  CHECK_THAT(e.what(), Catch::Contains("the first entry is not a restart point"));
  e = err(table_with_block(block({{0, 1, 1, "a", "x"}}), 2));
  CHECK(e.code == errc::unsupported);
  CHECK_THAT(e.what(), Catch::Contains("compression type 2"));
  e = err(table_with_block(bytes_of("not snappy at all"), 1));
  CHECK_THAT(e.what(), Catch::Contains("not valid snappy data"));
  // Keys past the index key (64 0xff bytes).
  e = err(table_with_block(block({{0, 1, 1, "\xff", "x"}, {1, 64, 0, std::string(64, '\xff'), ""}})));
  CHECK_THAT(e.what(), Catch::Contains("past its index key"));

  // Caps: one block, and all blocks together.
  std::vector<table_entry> many;
  for (int i = 0; i < 100; ++i) many.push_back({"k" + std::to_string(1000 + i), std::string(100, 'v')});
  auto big = format::tf::write_table(many, 1 << 20).value();
  format::tf::table_limits small;
  small.max_block_bytes = 1000;
  CHECK(err(big, small).code == errc::limit_exceeded);
  auto split = format::tf::write_table(many, 512).value();
  format::tf::table_limits total;
  total.max_total_bytes = 4000;
  e = err(split, total);
  CHECK(e.code == errc::limit_exceeded);
  CHECK_THAT(e.what(), Catch::Contains("past the cap of 4000 bytes"));
  // Not a table at all.
  CHECK(err(bytes_of("short")).code == errc::corrupt_manifest);
  CHECK_THAT(err(std::vector<std::byte>(100)).what(), Catch::Contains("no table magic"));
}
