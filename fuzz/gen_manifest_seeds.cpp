// Writes the seed corpus of fuzz_manifest_decode: valid manifests of several shapes (meshes,
// layouts, uneven and empty tensors, several files, extensions), encoded by this build.
//   gen_manifest_seeds OUT_DIR

#include <cstdio>
#include <fstream>
#include <string>

#include "meshckpt/format/manifest.hpp"
#include "meshckpt/plan/write_plan.hpp"

using namespace meshckpt;
using plan::named_tensor;

namespace {

void emit(const std::string& dir, const std::string& name, format::manifest m, const plan::write_plan& p) {
  for (std::size_t k = 0; k < p.file_sizes.size(); ++k)
    m.files.push_back({"ck.data-00000000000000" + std::to_string(10 + k) + "-" + std::to_string(k), p.file_sizes[k]});
  for (auto& t : m.tensors)
    for (auto& s : t.slices) s.checksums.assign((s.length + m.chunk_bytes - 1) / m.chunk_bytes, 0x0123456789abcdefull ^ s.offset);
  auto bytes = format::encode(m).value();
  std::ofstream(dir + "/" + name, std::ios::binary)
      .write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: gen_manifest_seeds OUT_DIR\n");
    return 2;
  }
  std::string out = argv[1];
  std::vector<dtensor> keep;
  auto add = [&](std::vector<named_tensor>& v, std::string key, dtype t, shape s, std::vector<std::string> l, const mesh& m) {
    keep.push_back(dtensor::create(t, std::move(s), layout::create(std::move(l), m).value()).value());
    v.push_back({std::move(key), keep.back().view()});
  };
  auto m24 = mesh::create({{"x", 2}, {"y", 4}}).value();
  auto m1 = mesh::create({}).value();
  auto m3 = mesh::create({{"a", 3}}, {7, 3, 5}).value();
  {
    std::vector<named_tensor> v;
    add(v, "model/w", dtype::float32, {16, 8}, {"x", "y"}, m24);
    add(v, "model/b", dtype::bfloat16, {8}, {"y"}, m24);
    add(v, "step", dtype::int64, {}, {}, m24);
    auto p = plan::plan_write(v).value();
    emit(out, "sharded_2x4", p.skeleton, p);
  }
  {
    std::vector<named_tensor> v;
    add(v, "u", dtype::float16, {7, 5}, {"a", "unsharded"}, m3);
    add(v, "e", dtype::float32, {0, 5}, {"unsharded", "a"}, m3);
    add(v, "r", dtype::blob, {13}, {"unsharded"}, m3);
    add(v, "s", dtype::float8_e5m2, {2, 2}, {"unsharded", "unsharded"}, m1);
    auto p = plan::plan_write(v).value();
    auto m = p.skeleton;
    m.extensions.push_back({"graph", {std::byte{1}, std::byte{2}, std::byte{3}}});
    emit(out, "uneven_two_meshes_extension", m, p);
  }
  {
    std::vector<named_tensor> v;
    add(v, "big", dtype::float32, {4, 40000}, {"x", "unsharded"}, m24);
    plan::layout_options o;
    o.max_file_bytes = 100000;
    auto p = plan::plan_write(v, o).value();
    auto m = p.skeleton;
    m.chunk_bytes = 4096;
    emit(out, "several_files_small_chunks", m, p);
  }
  {
    format::manifest empty;
    emit(out, "empty", empty, plan::write_plan{{}, {}, {}});
  }
  return 0;
}
