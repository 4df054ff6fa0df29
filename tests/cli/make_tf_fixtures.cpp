// Writes TensorFlow bundles that are legal but awkward, for cli_test.sh (TensorFlow itself is
// not here to write them): keys that are not UTF-8, and entries of dtypes meshckpt lacks or
// that TensorFlow does not define, beside a quantized one. Every checksum is right.
//
//   make_tf_fixtures DIR   writes DIR/utf8.{index,data-00000-of-00001} and DIR/odd.*

#include <cstdio>
#include <cstring>

#include "tf_files.hpp"

namespace {

std::vector<std::byte> floats(std::initializer_list<float> v) {
  std::vector<std::byte> out(v.size() * 4);
  std::memcpy(out.data(), std::data(v), out.size());
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: make_tf_fixtures DIR\n");
    return 2;
  }
  using tf_files::write_bundle;
  const std::string dir = argv[1];
  auto r = write_bundle(dir + "/utf8", {{std::string("emb\xff\xfe", 5), 1, {2}, floats({1, 2})}, {"ok", 1, {2}, floats({3, 4})}});
  if (r)
    r = write_bundle(dir + "/odd", {{"ok", 1, {2}, floats({3, 4})},
                                    tf_files::string_scalar("s", "hello"),
                                    {"u", 999, {4}, floats({1, 2, 3, 4})},
                                    {"q", 11, {4}, {std::byte{1}, std::byte{0xfe}, std::byte{3}, std::byte{4}}}});
  if (!r) std::fprintf(stderr, "make_tf_fixtures: %s\n", r.error().what().c_str());
  return r ? 0 : 1;
}
