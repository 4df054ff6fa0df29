// torch.save files without running pickle: the zip reader and writer, the pickle machine and
// what it refuses (globals, opcodes, lengths, memo references, cycles), and the state read from
// a pickle (keys, views, tied tensors, the skeleton).

#include <catch2/catch.hpp>

#include <string>
#include <vector>

#include "meshckpt/format/pickle.hpp"
#include "meshckpt/format/torch_file.hpp"
#include "meshckpt/format/zip.hpp"

using namespace meshckpt;
using namespace std::string_literals;
using namespace std::string_view_literals;
namespace zip = meshckpt::format::zip;
namespace pickle = meshckpt::format::pickle;
namespace torch = meshckpt::format::torch;

namespace {

std::span<const std::byte> bytes(std::string_view s) { return std::as_bytes(std::span(s.data(), s.size())); }

std::string str(const std::vector<std::byte>& v) { return std::string(reinterpret_cast<const char*>(v.data()), v.size()); }

// A zip file of `records` (name, data), each with its CRC in a data descriptor when `after`.
std::string make_zip(const std::vector<std::pair<std::string, std::string>>& records, bool after) {
  zip::zip_writer z;
  std::string out;
  for (const auto& [name, data] : records) {
    out += str(z.begin_record(name, data.size(), zip::crc32_extend(0, bytes(data)), 64, after));
    out += data;
    out += str(z.end_record(zip::crc32_extend(0, bytes(data))));
  }
  out += str(z.finish());
  return out;
}

// The records of a zip file: name, CRC, data.
result<std::vector<std::tuple<std::string, std::uint32_t, std::string>>> read_zip(const std::string& f) {
  const auto all = bytes(f);
  const auto tail_n = std::min<std::size_t>(f.size(), zip::max_tail_bytes);
  BOOST_OUTCOME_TRY(auto loc, zip::locate_central_directory(all.last(tail_n), f.size()));
  if (loc.zip64_end_offset) {
    BOOST_OUTCOME_TRY(zip::apply_zip64_end(loc, all.subspan(*loc.zip64_end_offset, 56), f.size()));
  }
  BOOST_OUTCOME_TRY(auto entries, zip::decode_central_directory(all.subspan(loc.offset, loc.size), loc, f.size()));
  std::vector<std::tuple<std::string, std::uint32_t, std::string>> out;
  for (const auto& e : entries) {
    BOOST_OUTCOME_TRY(auto at, zip::local_data_offset(e, all.subspan(e.header_offset), loc.offset));
    if (at % 64) return make_error(errc::invalid_argument, "unaligned");
    out.emplace_back(e.name, e.crc32, f.substr(at, e.size));
  }
  return out;
}

pickle::policy torch_policy() { return torch::state_policy(); }

error refused(std::string_view p) {
  auto d = pickle::read(bytes(p), torch_policy(), "test.pkl");
  REQUIRE_FALSE(d);
  return d.error();
}

error state_error(std::string_view p) {
  auto d = pickle::read(bytes(p), torch_policy(), "test.pkl");
  REQUIRE(d);
  auto s = torch::read_state(*d, "test.pkl");
  REQUIRE_FALSE(s);
  return s.error();
}

// A pickled tensor `_rebuild_tensor_v2(('storage', torch.FloatStorage, key, 'cpu', numel), offset, size, stride, False, OrderedDict())`.
std::string tensor(std::string_view key, int numel, int offset, std::string_view size, std::string_view stride,
                   std::string_view storage_type = "FloatStorage") {
  std::string s = "ctorch._utils\n_rebuild_tensor_v2\n((X";
  auto u32 = [](std::size_t n) {
    std::string r;
    for (int i = 0; i < 4; ++i) r += static_cast<char>((n >> (8 * i)) & 0xff);
    return r;
  };
  s += u32(7) + "storagectorch\n" + std::string(storage_type) + "\nX" + u32(key.size()) + std::string(key) + "X" + u32(3) + "cpu";
  s += "J" + u32(static_cast<std::size_t>(numel)) + "tQ";
  s += "J" + u32(static_cast<std::size_t>(offset)) + std::string(size) + std::string(stride);
  s += "\x89"
       "ccollections\nOrderedDict\n)RtR";
  return s;
}

std::string key(std::string_view k) {
  std::string s = "X";
  for (int i = 0; i < 4; ++i) s += static_cast<char>((k.size() >> (8 * i)) & 0xff);
  return s + std::string(k);
}

}  // namespace

TEST_CASE("zip records round-trip, aligned, with CRCs in headers or descriptors", "[torch][zip]") {
  for (bool after : {false, true}) {
    const std::string f =
        make_zip({{"m/data.pkl", "pickle"}, {"m/data/0", std::string(1000, 'x')}, {"m/data/1", ""}, {"m/version", "3\n"}}, after);
    auto r = read_zip(f);
    REQUIRE(r);
    REQUIRE(r->size() == 4);
    CHECK(std::get<0>((*r)[1]) == "m/data/0");
    CHECK(std::get<2>((*r)[1]) == std::string(1000, 'x'));
    CHECK(std::get<1>((*r)[1]) == zip::crc32_extend(0, bytes(std::string(1000, 'x'))));
    CHECK(std::get<2>((*r)[2]).empty());
  }
  CHECK(zip::crc32_extend(0, bytes("123456789")) == 0xcbf43926u);  // the check value of CRC-32
}

TEST_CASE("hostile zip files are refused with what is wrong", "[torch][zip][hostile]") {
  const std::string good = make_zip({{"m/data.pkl", "pickle"}, {"m/data/0", "abcd"}}, true);
  CHECK_THAT(read_zip("not a zip file at all, just some text of some length").error().what(), Catch::Contains("not a zip file"));
  // The directory moved past the end of the file.
  std::string moved = good;
  const auto eocd = moved.rfind("PK\x05\x06");
  const auto z64 = moved.rfind("PK\x06\x06");
  moved[z64 + 48 + 3] = '\x7f';  // the zip64 record's directory offset, very large
  CHECK_THAT(read_zip(moved).error().what(), Catch::Contains("past"));
  (void)eocd;
  // A record listed twice.
  CHECK_THAT(read_zip(make_zip({{"a", "1"}, {"a", "2"}}, false)).error().what(), Catch::Contains("listed twice"));
  // An encrypted record.
  std::string enc = good;
  const auto cd = enc.find("PK\x01\x02");
  enc[cd + 8] = static_cast<char>(enc[cd + 8] | 1);
  CHECK_THAT(read_zip(enc).error().what(), Catch::Contains("encrypted"));
  // A record whose size runs into the central directory.
  std::string big = good;
  const auto cd2 = big.find("PK\x01\x02", big.find("PK\x01\x02") + 4);
  big[cd2 + 20] = big[cd2 + 24] = '\x70';  // compressed and uncompressed sizes of m/data/0
  CHECK_THAT(read_zip(big).error().what(), Catch::Contains("run into the central directory"));
  // A local header naming another record.
  std::string renamed = good;
  renamed[renamed.find("m/data/0")] = 'x';
  CHECK_THAT(read_zip(renamed).error().what(), Catch::Contains("names another record"));
  // Every truncation of a valid file fails cleanly.
  for (std::size_t n = 0; n < good.size(); ++n) CHECK_FALSE(read_zip(good.substr(0, n)));
}

TEST_CASE("the pickle reader refuses globals, calls and opcodes outside the allowlist, naming them", "[torch][pickle][hostile]") {
  // os.system('touch x'), as a pickled nn.Module's malicious __reduce__ would call it.
  auto e = refused(
      "\x80\x02"
      "cos\nsystem\nX\x07\x00\x00\x00touch xtR."sv);
  CHECK(e.code == errc::corrupt_manifest);
  CHECK_THAT(e.what(), Catch::Contains("refuses the global os.system"));
  CHECK_THAT(refused("cbuiltins\neval\n."sv).what(), Catch::Contains("builtins.eval"));
  CHECK_THAT(refused("\x80\x04\x8c\x05posix\x8c\x06system\x93."sv).what(), Catch::Contains("posix.system"));
  CHECK_THAT(refused("c__main__\nNet\n)\x81."sv).what(), Catch::Contains("__main__.Net"));
  CHECK_THAT(refused("ctorch.nn.modules.linear\nLinear\n."sv).what(), Catch::Contains("torch.nn.modules.linear.Linear"));
  // getattr is a way out of an allowlist: refused unless the policy names the member.
  CHECK_THAT(refused("cbuiltins\ngetattr\n."sv).what(), Catch::Contains("builtins.getattr"));
  pickle::policy enums;
  enums.allow_global = [](std::string_view m, std::string_view n) { return m == "x" && n == "E"; };
  enums.getattr_members = {{"x.E", "A"}};
  auto ok = pickle::read(bytes("cbuiltins\ngetattr\ncx\nE\nX\x01\x00\x00\x00\x41\x86R."sv), enums, "t");
  REQUIRE(ok);
  CHECK(ok->at(ok->root).text == "x.E.A");
  auto no = pickle::read(bytes("cbuiltins\ngetattr\ncx\nE\nX\x08\x00\x00\x00__init__\x86R."sv), enums, "t");
  REQUIRE_FALSE(no);
  CHECK_THAT(no.error().what(), Catch::Contains("getattr(x.E, \"__init__\")"));
  // Opcodes no torch file uses.
  CHECK_THAT(refused("(cos\nsystem\ni."sv).what(), Catch::Contains("os.system"));
  CHECK_THAT(refused("(i."sv).what(), Catch::Contains("INST"));
  CHECK_THAT(refused("\x82\x01."sv).what(), Catch::Contains("EXT1"));
  CHECK_THAT(refused("\xff."sv).what(), Catch::Contains("unknown opcode"));
  // Lengths, integers and memo references are checked.
  CHECK_THAT(refused("X\xff\xff\xff\x7f"
                     "abc."sv)
                 .what(),
             Catch::Contains("past the end"));
  CHECK_THAT(refused("\x8a\x09\x01\x02\x03\x04\x05\x06\x07\x08\x09."sv).what(), Catch::Contains("at most 64 bits"));
  CHECK_THAT(refused("h\x05."sv).what(), Catch::Contains("never stored"));
  CHECK_THAT(refused("N"sv).what(), Catch::Contains("without a STOP"));
  CHECK_THAT(refused("NN."sv).what(), Catch::Contains("2 values"));
  CHECK_THAT(refused("a."sv).what(), Catch::Contains("empty stack"));
  CHECK_THAT(refused("}Na."sv).what(), Catch::Contains("expects a list"));
  CHECK_THAT(refused("\x80\x09."sv).what(), Catch::Contains("protocol 9"));
}

TEST_CASE("a state is read from a pickle: keys, tensors, tied weights, views, values", "[torch][pickle]") {
  std::vector<torch::flat_entry> flat{{"w", dtype::float32, {2, 3}, "0"}, {"b", dtype::bfloat16, {3}, "1"}, {"s", dtype::int64, {}, "2"}};
  auto p = torch::encode_flat_state(flat);
  REQUIRE(p);
  auto d = pickle::read(*p, torch_policy(), "flat");
  REQUIRE(d);
  auto s = torch::read_state(*d, "flat");
  REQUIRE(s);
  REQUIRE(s->entries.size() == 3);
  CHECK(s->entries[0].key == "w");
  CHECK(s->entries[0].dims == shape{2, 3});
  CHECK(s->storages[1].type == dtype::bfloat16);
  CHECK(s->storages[2].numel == 1);
  CHECK_THAT(s->skeleton, Catch::Contains("\"keys\": \"verbatim\""));
  CHECK(torch::encode_flat_state({{"x", dtype::blob, {1}, "0"}}).error().code == errc::unsupported);
  CHECK(torch::encode_flat_state({{"\xff", dtype::int8, {1}, "0"}}).error().code == errc::invalid_argument);

  // {'model': {'a': t, 'tied': t (memo), 'col': t[:, 1]}, 'n': 3, 'lr': 0.5, 'name': 'x', 'none': None, 'l': [1, (2,)]}
  std::string q = "\x80\x02}(" + key("model") + "}(" + key("a") + tensor("0", 6, 0, "K\x02K\x03\x86", "K\x03K\x01\x86") + "q\x01" +
                  key("tied") + "h\x01" + key("col") + tensor("0", 6, 1, "K\x02\x85", "K\x03\x85") + "u" + key("n") + "K\x03" + key("lr") +
                  "G\x3f\xe0\x00\x00\x00\x00\x00\x00"s + key("name") + key("x") + key("none") + "N" + key("l") + "(K\x01K\x02\x85l" + "u.";
  auto d2 = pickle::read(bytes(q), torch_policy(), "nested");
  REQUIRE(d2);
  auto s2 = torch::read_state(*d2, "nested");
  REQUIRE(s2);
  CHECK(s2->tensors == 2);
  REQUIRE(s2->entries.size() == 1);  // one storage, stored under the key of the view that covers it
  CHECK(s2->entries[0].key == "model.a");
  CHECK(s2->entries[0].type == dtype::float32);
  CHECK_THAT(s2->skeleton,
             Catch::Contains(
                 "{\"view\": \"model.a\", \"storage_bytes\": 24, \"offset\": 4, \"dtype\": \"float32\", \"shape\": [2], \"stride\": [3]}"));
  CHECK_THAT(s2->skeleton, Catch::Contains("{\"value\": 0.5}"));
  CHECK_THAT(s2->skeleton, Catch::Contains("{\"list\": [{\"value\": 1}, {\"tuple\": [{\"value\": 2}]}]}"));
}

TEST_CASE("hostile states: views outside storages, cycles, shared blow-ups, unknown ids", "[torch][pickle][hostile]") {
  // A view past its storage's end.
  CHECK_THAT(state_error("}(" + key("w") + tensor("0", 4, 2, "K\x03\x85", "K\x01\x85") + "u."s).what(),
             Catch::Contains("past the end of its storage"));
  CHECK_THAT(state_error("}(" + key("w") + tensor("0", 4, 0, "K\x03\x85", "J\x00\x00\x00\x40\x85"s) + "u."s).what(),
             Catch::Contains("past the end of its storage"));
  // A storage named with two sizes.
  CHECK_THAT(state_error("}(" + key("a") + tensor("0", 4, 0, "K\x04\x85", "K\x01\x85") + key("b") +
                         tensor("0", 8, 0, "K\x08\x85", "K\x01\x85") + "u."s)
                 .what(),
             Catch::Contains("two dtypes or sizes"));
  // Quantized storages have no meshckpt dtype.
  auto q = pickle::read(bytes("}(" + key("w") + tensor("0", 4, 0, "K\x04\x85", "K\x01\x85", "QInt8Storage") + "u."s), torch_policy(), "t");
  REQUIRE_FALSE(q);  // not even an allowed global
  CHECK_THAT(q.error().what(), Catch::Contains("torch.QInt8Storage"));
  // A list that contains itself.
  CHECK_THAT(state_error("]q\x00h\x00\x61."sv).what(), Catch::Contains("nested more than 100"));
  // 60 levels each holding the one below twice: 2^60 paths, from 300 bytes.
  std::string blow = "]";
  for (int i = 0; i < 60; ++i) blow += "2\x86";
  blow += ".";
  CHECK_THAT(state_error(blow).what(), Catch::Contains("too many times"));
  // Values meshckpt.torch cannot hold, and keys it cannot name.
  CHECK_THAT(state_error("}(" + key("b") + "C\x01xu."s).what(), Catch::Contains("b: holds bytes"));
  CHECK_THAT(state_error("}(G\x3f\xe0\x00\x00\x00\x00\x00\x00K\x01u."sv).what(), Catch::Contains("dict key that is a float"));
  // Two entries under one key once joined with '.'.
  CHECK_THAT(
      state_error("}(" + key("a.b") + tensor("0", 1, 0, ")", ")") + key("a") + "}(" + key("b") + tensor("1", 1, 0, ")", ")") + "uu."s)
          .what(),
      Catch::Contains("a.b: two entries"));
  // A persistent id of another kind.
  CHECK_THAT(state_error("}(" + key("w") +
                         "ctorch._utils\n_rebuild_tensor_v2\n(X\x03\x00\x00\x00"
                         "abcQK\x00)))tRu."s)
                 .what(),
             Catch::Contains("unknown persistent id"));
}
