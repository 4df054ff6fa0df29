// Writes TensorFlow bundles that are legal but awkward, for cli_test.sh (TensorFlow itself is
// not here to write them): keys that are not UTF-8, and entries of dtypes meshckpt lacks or
// that TensorFlow does not define, beside a quantized one. Every checksum is right.
//
//   make_tf_fixtures DIR   writes DIR/utf8.{index,data-00000-of-00001} and DIR/odd.*

#include <cstdio>
#include <algorithm>
#include <cstring>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include "meshckpt/format/crc32c.hpp"
#include "meshckpt/format/tf_bundle.hpp"

namespace tf = meshckpt::format::tf;

namespace {

struct value {
  std::string key;
  int tf_type;
  meshckpt::shape global;
  std::vector<std::byte> bytes;
  std::optional<std::uint32_t> crc;  // a string tensor's, from encode_string_tensor
};

std::vector<std::byte> floats(std::initializer_list<float> v) {
  std::vector<std::byte> out(v.size() * 4);
  std::memcpy(out.data(), std::data(v), out.size());
  return out;
}

bool write(const std::string& prefix, std::vector<value> values) {
  tf::bundle_index idx;
  idx.producer = 1;
  std::vector<std::byte> data;
  std::sort(values.begin(), values.end(), [](const auto& a, const auto& b) { return a.key < b.key; });
  for (const auto& v : values) {
    tf::bundle_entry e;
    e.key = v.key;
    e.tf_type = v.tf_type;
    e.type = tf::from_tf_dtype(v.tf_type);
    e.global = v.global;
    e.offset = data.size();
    e.size = v.bytes.size();
    e.crc32c = v.crc ? *v.crc : meshckpt::format::crc32c::value(v.bytes);
    data.insert(data.end(), v.bytes.begin(), v.bytes.end());
    idx.entries.push_back(std::move(e));
  }
  auto index = tf::encode_bundle_index(idx);
  if (!index) {
    std::fprintf(stderr, "make_tf_fixtures: %s\n", index.error().what().c_str());
    return false;
  }
  std::ofstream(prefix + ".index", std::ios::binary).write(reinterpret_cast<const char*>(index->data()), static_cast<std::streamsize>(index->size()));
  std::ofstream(prefix + ".data-00000-of-00001", std::ios::binary).write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size()));
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: make_tf_fixtures DIR\n");
    return 2;
  }
  const std::string dir = argv[1];
  std::uint32_t crc = 0;
  std::vector<std::string> hello{"hello"};
  auto str = tf::encode_string_tensor(hello, crc);
  const bool ok =
      write(dir + "/utf8", {{std::string("emb\xff\xfe", 5), 1, {2}, floats({1, 2})}, {"ok", 1, {2}, floats({3, 4})}}) &&
      write(dir + "/odd", {{"ok", 1, {2}, floats({3, 4})},
                           {"s", tf::tf_string, {}, str, crc},
                           {"u", 999, {4}, floats({1, 2, 3, 4})},
                           {"q", 11, {4}, {std::byte{1}, std::byte{0xfe}, std::byte{3}, std::byte{4}}}});
  return ok ? 0 : 1;
}
