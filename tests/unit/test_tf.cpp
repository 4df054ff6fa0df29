// TensorFlow's on-disk formats, read as hostile input: CRC-32C (hardware and portable, against
// published vectors and each other) and the LevelDB-format table of a bundle's .index file —
// real files written by TensorFlow (tests/data/tf, see SOURCES.md there), tables built here, and
// every truncation, byte flip and malformed block the reader must refuse.

#include <catch2/catch.hpp>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <map>
#include <set>
#include <tuple>
#include <fstream>
#include <iterator>
#include <random>
#include <string>

#include "format/codec.hpp"
#include "format/tf_table.hpp"
#include "meshckpt/format/crc32c.hpp"
#include "meshckpt/format/tf_bundle.hpp"
#include "tensor_bundle.pb.h"
#include "tf_proto_fixtures.hpp"
#include "trackable_object_graph.pb.h"

using namespace meshckpt;
namespace tfproto = meshckpt::tfproto;
using format::tf::table_entry;
using namespace tf_proto_fixtures;

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

std::vector<std::byte> table_with_block(std::span<const std::byte> contents, std::uint8_t type = 0) {
  return format::tf::table_around_block(contents, type);  // default type: uncompressed
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
  CHECK(format::crc32c::value(bytes_of("hello world")) ==
        format::crc32c::extend(format::crc32c::value(bytes_of("hello ")), bytes_of("world")));
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
  for (const auto& p :
       {data / "bert_lite_tf2_ckpt/bert_lite_tf2.ckpt.index", data / "half_plus_two_tf2_savedmodel/variables/variables.index"}) {
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

// ---------------------------------------------------------------- bundles

namespace {

std::vector<std::byte> slice_of_file(const std::vector<std::byte>& f, std::uint64_t offset, std::uint64_t size) {
  REQUIRE(offset + size <= f.size());
  return {f.begin() + static_cast<std::ptrdiff_t>(offset), f.begin() + static_cast<std::ptrdiff_t>(offset + size)};
}

}  // namespace

TEST_CASE("TF bundles written by TensorFlow: every entry decodes and every tensor's bytes match its CRC-32C", "[tf][bundle]") {
  struct want {
    std::filesystem::path prefix;
    int shards;
    std::size_t entries;
  };
  for (const auto& w :
       {want{data / "t2t_transformer_tf1_ckpt/model.ckpt-1", 2, 250}, want{data / "bert_lite_tf2_ckpt/bert_lite_tf2.ckpt", 1, 25},
        want{data / "half_plus_two_tf2_savedmodel/variables/variables", 1, 4}}) {
    INFO(w.prefix);
    auto idx = format::tf::decode_bundle_index(file(w.prefix.string() + ".index"));
    REQUIRE(idx);
    CHECK(idx->num_shards == w.shards);
    CHECK(idx->entries.size() == w.entries);
    CHECK(idx->producer == 1);
    std::vector<std::vector<std::byte>> shards;
    for (int s = 0; s < w.shards; ++s)
      shards.push_back(file(w.prefix.parent_path() / format::tf::data_file_name(w.prefix.filename().string(), s, w.shards)));
    std::size_t numeric = 0;
    for (const auto& e : idx->entries) {
      INFO(e.key);
      CHECK(idx->find(e.key) == &e);
      auto bytes = slice_of_file(shards[static_cast<std::size_t>(e.shard)], e.offset, e.size);
      if (e.type) {
        ++numeric;
        CHECK(format::crc32c::value(bytes) == e.crc32c);
      } else {
        // A string tensor's checksum covers its lengths as integers, not their varints.
        REQUIRE(e.tf_type == static_cast<int>(format::tf::tf_dtype::string));
        auto n = num_elements(e.global);
        REQUIRE(n);
        CHECK(format::tf::decode_string_tensor(bytes, static_cast<std::uint64_t>(*n), e.crc32c));
      }
    }
    CHECK(numeric + (w.shards == 2 ? 0 : 1) == w.entries);  // TF2: one DT_STRING, the object graph
  }
}

TEST_CASE("the object graph of a TF2 checkpoint decodes and names the checkpoint's keys", "[tf][bundle][graph]") {
  const auto prefix = data / "half_plus_two_tf2_savedmodel/variables/variables";
  auto idx = format::tf::decode_bundle_index(file(prefix.string() + ".index")).value();
  const auto* g = idx.find(format::tf::object_graph_key);
  REQUIRE(g);
  CHECK(g->global.empty());
  auto bytes = slice_of_file(file(prefix.string() + ".data-00000-of-00001"), g->offset, g->size);
  auto strings = format::tf::decode_string_tensor(bytes, 1, g->crc32c);
  REQUIRE(strings);
  REQUIRE(strings->size() == 1);
  tfproto::TrackableObjectGraph graph;
  REQUIRE(graph.ParseFromString(strings->front()));
  std::set<std::string> keys, children;
  for (const auto& n : graph.nodes()) {
    for (const auto& a : n.attributes()) keys.insert(a.checkpoint_key());
    for (const auto& c : n.children()) children.insert(c.local_name());
  }
  CHECK(keys == std::set<std::string>{"a/.ATTRIBUTES/VARIABLE_VALUE", "b/.ATTRIBUTES/VARIABLE_VALUE", "c/.ATTRIBUTES/VARIABLE_VALUE"});
  CHECK(children.contains("a"));
  // a = 0.5, b = 2.0, c = 3.0 (SOURCES.md).
  auto value = [&](const char* key) {
    const auto* e = idx.find(key);
    REQUIRE(e);
    REQUIRE(e->type == dtype::float32);
    auto b = slice_of_file(file(prefix.string() + ".data-00000-of-00001"), e->offset, e->size);
    float f;
    std::memcpy(&f, b.data(), 4);
    return f;
  };
  CHECK(value("a/.ATTRIBUTES/VARIABLE_VALUE") == 0.5f);
  CHECK(value("b/.ATTRIBUTES/VARIABLE_VALUE") == 2.0f);
  CHECK(value("c/.ATTRIBUTES/VARIABLE_VALUE") == 3.0f);
  // A flipped string byte fails its checksum.
  bytes.back() ^= std::byte{1};
  CHECK(format::tf::decode_string_tensor(bytes, 1, g->crc32c).error().code == errc::checksum_mismatch);
}

TEST_CASE("string tensors round-trip, and malformed ones are refused", "[tf][bundle][strings]") {
  std::vector<std::string> s{"", "a", std::string(300, 'x'), std::string("\0\xff", 2)};
  std::uint32_t crc = 0;
  auto bytes = format::tf::encode_string_tensor(s, crc);
  auto back = format::tf::decode_string_tensor(bytes, s.size(), crc);
  REQUIRE(back);
  CHECK(*back == s);
  CHECK(format::tf::decode_string_tensor(bytes, s.size(), crc ^ 1).error().code == errc::checksum_mismatch);
  CHECK_FALSE(format::tf::decode_string_tensor(bytes, s.size() + 1, crc));
  CHECK_FALSE(format::tf::decode_string_tensor(std::span(bytes).first(bytes.size() - 1), s.size(), crc));
  CHECK(format::tf::decode_string_tensor(bytes, 1u << 30, crc).error().code == errc::corrupt_manifest);  // refused before allocating
  for (std::size_t n = 0; n < bytes.size(); ++n) CHECK_FALSE(format::tf::decode_string_tensor(std::span(bytes).first(n), s.size(), crc));
}

TEST_CASE("dtypes map both ways; the ones meshckpt lacks are named", "[tf][bundle]") {
  for (auto t : {dtype::boolean, dtype::int8, dtype::int16, dtype::int32, dtype::int64, dtype::uint8, dtype::uint16, dtype::uint32,
                 dtype::uint64, dtype::float16, dtype::bfloat16, dtype::float32, dtype::float64, dtype::float8_e4m3, dtype::float8_e5m2,
                 dtype::complex64, dtype::complex128}) {
    auto tf = format::tf::to_tf_dtype(t);
    REQUIRE(tf);
    CHECK(format::tf::from_tf_dtype(*tf) == t);
  }
  CHECK_FALSE(format::tf::to_tf_dtype(dtype::blob));
  CHECK(format::tf::tf_dtype_name(8) == "DT_COMPLEX64");
  CHECK(format::tf::from_tf_dtype(8) == dtype::complex64);
  CHECK(format::tf::from_tf_dtype(18) == dtype::complex128);
  CHECK(format::tf::tf_dtype_name(101) == "DT_FLOAT_REF");
  CHECK(format::tf::tf_dtype_name(999) == "unknown TensorFlow dtype 999");
  CHECK(format::tf::tf_dtype_name(199) == "unknown TensorFlow dtype 199");
  CHECK_FALSE(format::tf::from_tf_dtype(7));
  CHECK_FALSE(format::tf::from_tf_dtype(999));
}

TEST_CASE("quantized dtypes are their integer storage, and no meshckpt dtype is written back as one", "[tf][bundle][regression]") {
  const std::pair<int, dtype> q[] = {{11, dtype::int8}, {12, dtype::uint8}, {13, dtype::int32}, {15, dtype::int16}, {16, dtype::uint16}};
  for (const auto& [tf, t] : q) {
    INFO(format::tf::tf_dtype_name(tf));
    CHECK(format::tf::from_tf_dtype(tf) == t);
    CHECK(format::tf::is_quantized(tf));
    CHECK(format::tf::to_tf_dtype(t) != tf);
    CHECK_FALSE(format::tf::is_quantized(*format::tf::to_tf_dtype(t)));
  }
  CHECK(format::tf::to_tf_dtype(dtype::uint16) == 17);
  // A DT_QINT16 entry of the right size decodes with its storage dtype and its TensorFlow number.
  auto idx = format::tf::decode_bundle_index(format::tf::write_table(bundle_with(header(), {{"q", entry(15, {4}, 0, 8)}})).value());
  REQUIRE(idx);
  CHECK(idx->entries[0].type == dtype::int16);
  CHECK(idx->entries[0].tf_type == 15);
}

TEST_CASE("OrderedCode's signed numbers sort as the numbers do", "[tf][bundle][slices]") {
  CHECK(format::tf::ordered_signed(0) == "\x80");
  CHECK(format::tf::ordered_signed(-1) == "\x7f");
  CHECK(format::tf::ordered_signed(63) == "\xbf");
  CHECK(format::tf::ordered_signed(-64) == "\x40");
  std::vector<std::int64_t> v{INT64_MIN, INT64_MIN + 1, -1, 0, 1, 63, 64, 65, -64, -65, 8191, 8192, -8192, -8193, INT64_MAX, INT64_MAX - 1};
  std::mt19937_64 rng(3);
  for (int i = 0; i < 2000; ++i) v.push_back(static_cast<std::int64_t>(rng()) >> (rng() % 64));
  std::sort(v.begin(), v.end());
  v.erase(std::unique(v.begin(), v.end()), v.end());
  for (std::size_t i = 1; i < v.size(); ++i) {
    INFO(v[i - 1] << " < " << v[i]);
    auto a = format::tf::ordered_signed(v[i - 1]), b = format::tf::ordered_signed(v[i]);
    REQUIRE(std::lexicographical_compare(a.begin(), a.end(), b.begin(), b.end(),
                                         [](char x, char y) { return static_cast<unsigned char>(x) < static_cast<unsigned char>(y); }));
  }
}

TEST_CASE("partitioned variables: slices resolve to their own entries, checked", "[tf][bundle][slices]") {
  auto full = entry(1, {4, 6}, 0, 0);
  format::tf::tf_slice top{{0, 0}, {2, -1}}, bottom{{2, 0}, {2, -1}};
  auto add_slice = [](tfproto::BundleEntryProto& e, const format::tf::tf_slice& s) {
    auto* p = e.add_slices();
    for (std::size_t d = 0; d < s.start.size(); ++d) {
      auto* x = p->add_extent();
      x->set_start(s.start[d]);
      if (s.length[d] != -1) x->set_length(s.length[d]);
    }
  };
  add_slice(full, top);
  add_slice(full, bottom);
  auto t = bundle_with(header(), {{"w", full},
                                  {format::tf::slice_key("w", top), entry(1, {2, 6}, 0, 48)},
                                  {format::tf::slice_key("w", bottom), entry(1, {2, 6}, 48, 48)}});
  auto idx = format::tf::decode_bundle_index(format::tf::write_table(t).value());
  REQUIRE(idx);
  const auto* w = idx->find("w");
  REQUIRE(w);
  REQUIRE(w->slices.size() == 2);
  CHECK(w->slices[1].in(w->global) == box{{2, 0}, {2, 6}});
  // A slice whose entry is missing, or of another shape.
  auto missing = bundle_with(header(), {{"w", full}, {format::tf::slice_key("w", top), entry(1, {2, 6}, 0, 48)}});
  CHECK_THAT(index_error(missing).what(), Catch::Contains("has no entry of its own"));
  auto wrong = bundle_with(header(), {{"w", full},
                                      {format::tf::slice_key("w", top), entry(1, {2, 6}, 0, 48)},
                                      {format::tf::slice_key("w", bottom), entry(1, {3, 6}, 48, 72)}});
  CHECK_THAT(index_error(wrong).what(), Catch::Contains("another dtype or shape"));
  auto outside = entry(1, {4, 6}, 0, 0);
  add_slice(outside, format::tf::tf_slice{{3, 0}, {2, -1}});
  CHECK_THAT(index_error(bundle_with(header(), {{"w", outside}})).what(), Catch::Contains("does not fit"));
}

TEST_CASE("decode_trackable_graph reads TensorFlow's object graph and refuses edges to nodes that do not exist", "[tf][bundle][graph]") {
  const auto prefix = data / "half_plus_two_tf2_savedmodel/variables/variables";
  auto idx = format::tf::decode_bundle_index(file(prefix.string() + ".index")).value();
  const auto* e = idx.find(format::tf::object_graph_key);
  REQUIRE(e);
  auto strings =
      format::tf::decode_string_tensor(slice_of_file(file(prefix.string() + ".data-00000-of-00001"), e->offset, e->size), 1, e->crc32c)
          .value();
  const auto& bytes = strings.front();
  auto g = format::tf::decode_trackable_graph(std::as_bytes(std::span(bytes.data(), bytes.size()))).value();
  std::map<std::string, std::string> values;  // child of the root -> its checkpoint key
  for (const auto& [name, id] : g.nodes[0].children)
    for (const auto& a : g.nodes[id].attributes)
      if (a.name == "VARIABLE_VALUE") values[name] = a.checkpoint_key;
  CHECK(values == std::map<std::string, std::string>{
                      {"a", "a/.ATTRIBUTES/VARIABLE_VALUE"}, {"b", "b/.ATTRIBUTES/VARIABLE_VALUE"}, {"c", "c/.ATTRIBUTES/VARIABLE_VALUE"}});

  tfproto::TrackableObjectGraph p;
  auto encoded = [&] {
    std::string s = p.SerializeAsString();
    return std::vector<std::byte>(reinterpret_cast<const std::byte*>(s.data()), reinterpret_cast<const std::byte*>(s.data()) + s.size());
  };
  auto none = format::tf::decode_trackable_graph(encoded());
  REQUIRE_FALSE(none);
  CHECK_THAT(none.error().what(), Catch::Contains("no nodes"));
  auto* root = p.add_nodes();
  auto* child = root->add_children();
  child->set_node_id(5);
  child->set_local_name("dense");
  auto dangling = format::tf::decode_trackable_graph(encoded());
  REQUIRE_FALSE(dangling);
  CHECK(dangling.error().code == errc::corrupt_manifest);
  CHECK_THAT(dangling.error().what(), Catch::Contains("node 0: child \"dense\" names node 5 of 1"));
  child->set_node_id(0);
  auto* slot = root->add_slot_variables();
  slot->set_slot_name("m");
  slot->set_original_variable_node_id(-1);
  auto bad_slot = format::tf::decode_trackable_graph(encoded());
  REQUIRE_FALSE(bad_slot);
  CHECK_THAT(bad_slot.error().what(), Catch::Contains("slot \"m\" (its variable) names node -1"));
  slot->set_original_variable_node_id(0);
  CHECK(format::tf::decode_trackable_graph(encoded()));
  const char junk[] = "\xff\xff\xff\xff\xff";
  CHECK_FALSE(format::tf::decode_trackable_graph(std::as_bytes(std::span(junk, 5))));
}

TEST_CASE("encode_bundle_index writes what TensorFlow's reader expects: the real indexes re-encode to the same entries",
          "[tf][bundle][write]") {
  for (const char* p : {"t2t_transformer_tf1_ckpt/model.ckpt-1", "bert_lite_tf2_ckpt/bert_lite_tf2.ckpt",
                        "half_plus_two_tf2_savedmodel/variables/variables"}) {
    INFO(p);
    auto idx = format::tf::decode_bundle_index(file((data / p).string() + ".index")).value();
    auto bytes = format::tf::encode_bundle_index(idx).value();
    auto back = format::tf::decode_bundle_index(bytes).value();
    CHECK(back.num_shards == idx.num_shards);
    CHECK(back.producer == idx.producer);
    CHECK(back.min_consumer == idx.min_consumer);
    REQUIRE(back.entries.size() == idx.entries.size());
    for (std::size_t i = 0; i < idx.entries.size(); ++i) {
      const auto &a = idx.entries[i], &b = back.entries[i];
      CHECK(std::tie(a.key, a.tf_type, a.global, a.shard, a.offset, a.size, a.crc32c, a.slices) ==
            std::tie(b.key, b.tf_type, b.global, b.shard, b.offset, b.size, b.crc32c, b.slices));
    }
  }
  // A partitioned tensor: the full entry carries the slices, each slice an entry of its own.
  format::tf::bundle_index idx;
  idx.num_shards = 2;
  format::tf::bundle_entry full{"w", 1, dtype::float32, {4, 6}, 0, 0, 0, 0, {}};
  full.slices = {{{0, 0}, {2, -1}}, {{2, 0}, {2, -1}}};
  std::vector<format::tf::bundle_entry> es = {full};
  for (int k = 0; k < 2; ++k)
    es.push_back({format::tf::slice_key("w", full.slices[static_cast<std::size_t>(k)]),
                  1,
                  dtype::float32,
                  {2, 6},
                  k,
                  0,
                  48,
                  static_cast<std::uint32_t>(k + 7),
                  {}});
  std::sort(es.begin(), es.end(), [](const auto& a, const auto& b) { return a.key < b.key; });
  idx.entries = es;
  auto back = format::tf::decode_bundle_index(format::tf::encode_bundle_index(idx).value()).value();
  REQUIRE(back.find("w"));
  CHECK(back.find("w")->slices == full.slices);
  CHECK(back.find(format::tf::slice_key("w", full.slices[1]))->crc32c == 8);
  // Out of order, or under the header's key: refused.
  std::swap(idx.entries[0], idx.entries[1]);
  CHECK(format::tf::encode_bundle_index(idx).error().code == errc::invalid_argument);
  idx.entries = {format::tf::bundle_entry{}};
  CHECK(format::tf::encode_bundle_index(idx).error().code == errc::invalid_argument);
  // The object graph round-trips.
  format::tf::trackable_graph g;
  g.nodes.resize(3);
  g.nodes[0].children = {{"dense", 1}, {"opt", 2}};
  g.nodes[1].attributes = {{"VARIABLE_VALUE", "dense", "dense/.ATTRIBUTES/VARIABLE_VALUE"}};
  g.nodes[2].slot_variables = {{1, "m", 2}};
  auto s = format::tf::encode_trackable_graph(g);
  auto gb = format::tf::decode_trackable_graph(std::as_bytes(std::span(s.data(), s.size()))).value();
  CHECK(gb.nodes == g.nodes);
}
