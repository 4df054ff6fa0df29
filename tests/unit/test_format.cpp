// Manifest format: round trips, explicit rejection of everything malformed, and the exhaustive
// bit-flip / truncation test (also run under ASan+UBSan).

#include <catch2/catch.hpp>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "meshckpt/format/checksum.hpp"
#include "meshckpt/format/describe.hpp"
#include "meshckpt/format/manifest.hpp"
#include "meshckpt/format/names.hpp"

using namespace meshckpt;
using namespace meshckpt::format;

namespace {

// A small valid manifest: two tensors on a 2x2 mesh, one data file.
manifest sample(std::string file_name = "ck.data-0123456789abcdef-0") {
  manifest m;
  m.chunk_bytes = 4096;
  m.created_unix_ms = 1764000000000;
  m.writer = "test";
  m.meshes.push_back({{{"x", 2}, {"y", 2}}, {0, 1, 2, 3}});
  m.files.push_back({file_name, 20000});
  saved_tensor a;
  a.key = "model/w";
  a.type = dtype::float32;
  a.global = {4, 1000};
  a.axes = {0, -1};
  for (std::int64_t i = 0; i < 2; ++i) {
    saved_slice s;
    s.where = {{i * 2, 0}, {2, 1000}};
    s.length = 8000;
    s.offset = static_cast<std::uint64_t>(i) * 8192;
    s.writer_device = i * 2;
    s.checksums = {0x1111 + static_cast<std::uint64_t>(i), 0x2222};
    a.slices.push_back(s);
  }
  saved_tensor b;
  b.key = "step";
  b.type = dtype::int64;
  b.slices.push_back({box{}, 0, 16384, 8, 3, {0x3333}});
  m.tensors = {a, b};
  m.extensions.push_back({"graph", {std::byte{1}, std::byte{2}}});
  return m;
}

// Recomputes the trailing checksum after a deliberate edit, so that the decoder's other checks
// are what the test exercises.
void reseal(std::vector<std::byte>& bytes) {
  std::uint64_t c = checksum(std::span(bytes).first(bytes.size() - 8));
  for (int i = 0; i < 8; ++i) bytes[bytes.size() - 8 + static_cast<std::size_t>(i)] = static_cast<std::byte>(c >> (8 * i));
}

void replace_all(std::vector<std::byte>& bytes, std::string_view from, std::string_view to) {
  REQUIRE(from.size() == to.size());
  auto* b = reinterpret_cast<char*>(bytes.data());
  std::string_view hay(b, bytes.size());
  for (auto pos = hay.find(from); pos != std::string_view::npos; pos = hay.find(from, pos + 1)) std::memcpy(b + pos, to.data(), to.size());
}

std::string decode_error(const std::vector<std::byte>& bytes) {
  auto r = decode(bytes);
  REQUIRE_FALSE(r);
  return r.error().what();
}

}  // namespace

TEST_CASE("a manifest survives encode and decode unchanged", "[format]") {
  auto m = sample();
  auto bytes = encode(m).value();
  auto d = decode(bytes).value();
  CHECK(d == m);
  CHECK(d.find("model/w") == &d.tensors[0]);
  CHECK(d.find("step") == &d.tensors[1]);
  CHECK(d.find("nope") == nullptr);
  CHECK(d.stored_bytes() == 16008);
  auto l = saved_layout_of(d, d.tensors[0]).value();
  CHECK(l.to_string() == "[x, unsharded]");
  CHECK(l.mesh_ref().to_string() == "x=2,y=2");
  CHECK_THAT(describe_text(d, "dir/ck"), Catch::Contains("model/w") && Catch::Contains("[x, unsharded]"));
  CHECK_THAT(describe_json(d, "dir/ck"), Catch::Contains("\"key\":\"model/w\",\"dtype\":\"float32\",\"shape\":[4,1000]"));
}

TEST_CASE("decode rejects bad magic, checksum, truncation and padding", "[format]") {
  auto bytes = encode(sample()).value();
  auto bad_magic = bytes;
  bad_magic[0] = std::byte{'X'};
  CHECK_THAT(decode_error(bad_magic), Catch::Contains("bad magic"));
  auto flipped = bytes;
  flipped[40] ^= std::byte{1};
  CHECK_THAT(decode_error(flipped), Catch::Contains("checksum mismatch"));
  auto padded = bytes;
  padded.push_back(std::byte{0});
  CHECK_THAT(decode_error(padded), Catch::Contains("truncated or padded"));
  CHECK_THAT(decode_error({}), Catch::Contains("truncated"));
}

TEST_CASE("decode rejects unknown major versions explicitly and accepts newer minors", "[format]") {
  auto bytes = encode(sample()).value();
  auto major2 = bytes;
  major2[8] = std::byte{2};
  reseal(major2);
  auto r = decode(major2);
  REQUIRE_FALSE(r);
  CHECK(r.error().code == errc::unsupported_version);
  CHECK_THAT(r.error().what(), Catch::Contains("version 2.0 is not supported"));

  // Minor 7 with an unknown optional section appended: accepted, section skipped.
  auto minor = bytes;
  minor[10] = std::byte{7};
  minor.resize(minor.size() - 8);
  for (auto b : {std::byte{42}, std::byte{3}, std::byte{9}, std::byte{9}, std::byte{9}}) minor.push_back(b);
  std::uint64_t body = minor.size() - 24;
  for (int i = 0; i < 8; ++i) minor[16 + static_cast<std::size_t>(i)] = static_cast<std::byte>(body >> (8 * i));
  minor.resize(minor.size() + 8);
  reseal(minor);
  auto ok = decode(minor);
  REQUIRE(ok);
  CHECK(ok->minor == 7);
  CHECK(ok->tensors.size() == 2);
}

TEST_CASE("decode refuses file names that would leave the checkpoint directory", "[format][hostile]") {
  const std::string stand_in = "ck.data-0123456789abcdef-0";
  for (std::string evil : {std::string("../../../../../../etc/passwd"), std::string("/etc/shadow/aaaaaaaaaaaaaaaaa"),
                           std::string("ok\0name-aaaaaaaaaaaaaaaaaaaaaa", 28), std::string("a/b")}) {
    evil.resize(stand_in.size(), 'a');
    auto bytes = encode(sample(stand_in)).value();
    replace_all(bytes, stand_in, evil);
    reseal(bytes);
    auto r = decode(bytes);
    REQUIRE_FALSE(r);
    CHECK(r.error().code == errc::unsafe_path);
  }
  auto dots = encode(sample("aa")).value();
  replace_all(dots,
              "\x02"
              "aa",
              "\x02..");
  reseal(dots);
  CHECK(decode(dots).error().code == errc::unsafe_path);
}

TEST_CASE("validate rejects inconsistent manifests with a message naming the tensor", "[format][hostile]") {
  auto err = [](const manifest& m) {
    auto r = validate(m);
    REQUIRE_FALSE(r);
    return r.error().what();
  };
  auto m = sample();
  m.tensors[0].slices[1].offset = 19999;  // past the end of the file
  CHECK_THAT(err(m), Catch::Contains("\"model/w\"") && Catch::Contains("outside file"));
  m = sample();
  m.tensors[0].slices[1] = m.tensors[0].slices[0];  // same slice twice
  CHECK_THAT(err(m), Catch::Contains("same slice twice"));
  m = sample();
  m.tensors[0].slices.pop_back();  // a hole
  CHECK_THAT(err(m), Catch::Contains("has 1 slices"));
  m = sample();
  m.tensors[0].slices[0].where = {{1, 0}, {2, 1000}};  // not a shard box
  CHECK_THAT(err(m), Catch::Contains("not a shard box"));
  m = sample();
  m.tensors[0].slices[0].length = 7999;
  CHECK_THAT(err(m), Catch::Contains("length 7999"));
  m = sample();
  m.tensors[0].global = {std::int64_t{1} << 40, std::int64_t{1} << 40};
  CHECK_THAT(err(m), Catch::Contains("too large"));
  m = sample();
  std::swap(m.tensors[0], m.tensors[1]);
  CHECK_THAT(err(m), Catch::Contains("strictly increasing"));
  m = sample();
  m.tensors[0].axes = {0, 0};
  CHECK_THAT(err(m), Catch::Contains("twice"));
  m = sample();
  m.tensors[0].axes = {5, -1};
  CHECK_THAT(err(m), Catch::Contains("does not exist"));
  m = sample();
  m.tensors[0].mesh = 3;
  CHECK_THAT(err(m), Catch::Contains("mesh 3"));
  m = sample();
  m.tensors[0].slices[0].checksums.pop_back();
  CHECK_THAT(err(m), Catch::Contains("checksums"));
  m = sample();
  m.tensors[0].slices[0].writer_device = 99;
  CHECK_THAT(err(m), Catch::Contains("writer device 99"));
  m = sample();
  m.meshes[0].device_ids = {0, 1, 2, 2};
  CHECK_THAT(err(m), Catch::Contains("repeats a device"));
  m = sample();
  m.chunk_bytes = 1;
  CHECK_THAT(err(m), Catch::Contains("chunk size"));
  CHECK_FALSE(encode(m));  // the writer validates too
}

TEST_CASE("counts larger than the remaining bytes are rejected before allocating", "[format][hostile]") {
  // A manifest whose tensor section claims 2^40 tensors: must fail fast, not allocate.
  manifest m = sample();
  m.tensors.clear();
  m.extensions.clear();
  auto bytes = encode(m).value();
  // The tensor section is "04 01 00" (tag 4, length 1, count 0) right before the checksum.
  std::size_t at = bytes.size() - 8 - 3;
  REQUIRE(bytes[at] == std::byte{4});
  bytes.resize(at);
  for (auto b : {0x04, 0x06, 0x80, 0x80, 0x80, 0x80, 0x80, 0x20}) bytes.push_back(static_cast<std::byte>(b));
  std::uint64_t body = bytes.size() - 24;
  for (int i = 0; i < 8; ++i) bytes[16 + static_cast<std::size_t>(i)] = static_cast<std::byte>(body >> (8 * i));
  bytes.resize(bytes.size() + 8);
  reseal(bytes);
  auto r = decode(bytes);
  REQUIRE_FALSE(r);
  CHECK(r.error().code == errc::limit_exceeded);
  limits small;
  small.max_manifest_bytes = 10;
  CHECK(decode(encode(sample()).value(), small).error().code == errc::limit_exceeded);
}

TEST_CASE("every single-bit flip and every truncation of a manifest is rejected", "[format][hostile][bitflip]") {
  auto bytes = encode(sample()).value();
  REQUIRE(decode(bytes));
  std::size_t flips = 0, truncations = 0;
  for (std::size_t i = 0; i < bytes.size(); ++i)
    for (int bit = 0; bit < 8; ++bit) {
      auto copy = bytes;
      copy[i] ^= static_cast<std::byte>(1 << bit);
      auto r = decode(copy);
      if (r) FAIL("flip of byte " << i << " bit " << bit << " was accepted");
      CHECK_FALSE(r.error().what().empty());
      ++flips;
    }
  for (std::size_t len = 0; len < bytes.size(); ++len) {
    std::vector<std::byte> cut(bytes.begin(), bytes.begin() + static_cast<std::ptrdiff_t>(len));
    auto r = decode(cut);
    if (r) FAIL("truncation to " << len << " bytes was accepted");
    CHECK(r.error().code == errc::corrupt_manifest);
    ++truncations;
  }
  CHECK(flips == bytes.size() * 8);
  CHECK(truncations == bytes.size());
  WARN("rejected " << flips << " bit flips and " << truncations << " truncations of a " << bytes.size() << "-byte manifest");
}

TEST_CASE("file names classify unambiguously", "[format][names]") {
  CHECK(classify("ck.manifest").k == name_kind::manifest);
  CHECK(classify("ck.manifest").base == "ck");
  auto t = classify(temp_manifest_name("ck-3", 0xabcdef));
  CHECK(t.k == name_kind::temp_manifest);
  CHECK(t.base == "ck-3");
  CHECK(t.token == 0xabcdef);
  auto d = classify(data_file_name("a.b", 7, 12));
  CHECK(d.k == name_kind::data);
  CHECK(d.base == "a.b");
  CHECK(d.token == 7);
  CHECK(classify("ck.manifest.tmp-xyz").k == name_kind::other);
  CHECK(classify("notes.txt").k == name_kind::other);
  CHECK(classify(".manifest").k == name_kind::other);
  // A data file of a checkpoint whose own name looks like a data file still belongs to it.
  auto nested = classify(data_file_name(data_file_name("x", 1, 0), 2, 0));
  CHECK(nested.base == data_file_name("x", 1, 0));
  CHECK(is_plain_name("ok.name"));
  CHECK_FALSE(is_plain_name(".."));
  CHECK_FALSE(is_plain_name("a/b"));
  CHECK_FALSE(is_plain_name(std::string("a\0b", 3)));
  CHECK_FALSE(is_plain_name(std::string(256, 'a')));
  CHECK_FALSE(check_base_name("x.manifest"));
}

TEST_CASE("chunk checksums fed in pieces of any size equal those of the whole slice", "[format][checksum]") {
  std::vector<std::byte> data(70000);
  std::uint64_t x = 88172645463325252ull;
  for (auto& b : data) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    b = static_cast<std::byte>(x);
  }
  chunk_hasher h(4096);
  for (std::size_t length :
       {std::size_t{0}, std::size_t{1}, std::size_t{4095}, std::size_t{4096}, std::size_t{4097}, std::size_t{12288}, data.size()}) {
    auto slice = std::span<const std::byte>(data).first(length);
    std::vector<std::uint64_t> want;
    append_chunk_checksums(slice, 4096, want);
    // Piece sizes that cut chunks anywhere: single bytes, primes, whole chunks and more.
    for (std::size_t piece :
         {std::size_t{1}, std::size_t{7}, std::size_t{1000}, std::size_t{4096}, std::size_t{5000}, std::size_t{65536}}) {
      std::vector<std::uint64_t> got = {42};  // appended after what is there
      h.start(length, got);
      CHECK(h.done() == (length == 0));
      for (std::size_t off = 0; off < length; off += piece) h.update(slice.subspan(off, std::min(piece, length - off)));
      CHECK(h.done());
      REQUIRE(got.size() == want.size() + 1);
      CHECK(got[0] == 42);
      CHECK(std::equal(want.begin(), want.end(), got.begin() + 1));
    }
  }
}

TEST_CASE("encode_into and decode_into reuse memory without keeping anything of what was there", "[format][recycle]") {
  auto big = sample();
  big.meshes.push_back({{{"d", 4}}, {0, 1, 2, 3}});
  big.files.push_back({"ck.data-0123456789abcdef-1", 10});
  big.extensions.push_back({"more", {std::byte{9}}});
  auto small = sample();
  small.tensors.pop_back();  // one tensor fewer
  small.tensors[0].slices[1].checksums = {7, 8};
  small.extensions.clear();
  small.writer = "w";
  // Same bytes as encode(), whatever the buffer held.
  std::vector<std::byte> buf(100000, std::byte{0xee});
  for (const auto* m : {&big, &small, &big}) {
    auto r = encode_into(*m, buf);
    INFO((r ? std::string() : r.error().what()));
    REQUIRE(r);
    CHECK(buf == encode(*m).value());
  }
  // Decoding into a manifest that held another one gives exactly the decoded manifest.
  manifest into = big;
  REQUIRE(decode_into(encode(small).value(), into));
  CHECK(into == small);
  REQUIRE(decode_into(encode(big).value(), into));
  CHECK(into == big);
  // A failed decode leaves a manifest that still takes the next one.
  auto bytes = encode(small).value();
  bytes[30] ^= std::byte{1};
  CHECK_FALSE(decode_into(bytes, into));
  REQUIRE(decode_into(encode(small).value(), into));
  CHECK(into == small);
}

TEST_CASE("the encoding is canonical: every stored seed that decodes re-encodes to its own bytes", "[format]") {
  int seeds = 0, valid = 0;
  for (const auto& e : std::filesystem::directory_iterator(MESHCKPT_MANIFEST_CORPUS)) {
    std::ifstream in(e.path(), std::ios::binary);
    std::string s((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::vector<std::byte> bytes(s.size());
    std::memcpy(bytes.data(), s.data(), s.size());
    ++seeds;
    auto m = decode(bytes);
    if (!m) continue;
    ++valid;
    INFO(e.path().string());
    CHECK(encode(*m).value() == bytes);
  }
  CHECK(seeds > 10);
  CHECK(valid >= 5);
}
