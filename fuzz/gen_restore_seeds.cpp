// Writes the seed corpus of fuzz_open_restore: small valid checkpoints (written through the
// in-memory backend), packed as [manifest length][manifest][data files].
//   gen_restore_seeds fuzz/corpus/fuzz_open_restore

#include <cstdio>
#include <deque>
#include <fstream>
#include <string>

#include "mem_backend.hpp"
#include "meshckpt/pipeline/tensor_io.hpp"

using namespace meshckpt;

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: gen_restore_seeds DIR\n");
    return 2;
  }
  struct spec {
    std::string key;
    dtype t;
    shape s;
    std::vector<std::string> axes;
  };
  const std::vector<std::vector<spec>> sets = {
      {{"w", dtype::float32, {16, 8}, {"x", "y"}}},
      {{"a", dtype::bfloat16, {7, 5}, {"x", "unsharded"}}, {"b", dtype::int64, {}, {}}, {"c", dtype::uint8, {33}, {"unsharded"}}},
      {{"r", dtype::float64, {4, 4}, {"unsharded", "unsharded"}}, {"u", dtype::float16, {9, 3}, {"y", "x"}}},
      {{"big", dtype::float32, {64, 64}, {"x", "y"}}, {"s", dtype::int8, {3}, {"x"}}},
  };
  int n = 0;
  for (std::size_t i = 0; i < sets.size(); ++i)
    for (std::uint64_t chunk : {4096u, 1u << 20}) {
      auto m = mesh::create({{"x", 2}, {"y", 2}}).value();
      std::deque<dtensor> keep;
      std::vector<named_tensor> tensors;
      for (const auto& sp : sets[i]) {
        keep.push_back(dtensor::create(sp.t, sp.s, layout::create(sp.axes, m).value()).value());
        for (const auto& sh : keep.back().view().shards())
          for (std::size_t b = 0; b < sh.data.size(); ++b) sh.data[b] = static_cast<std::byte>(b * 31 + i);
        tensors.push_back({sp.key, keep.back().view()});
      }
      fuzzing::mem_backend be;
      write_options o;
      o.chunk_bytes = chunk;
      if (i == 3) o.layout.max_file_bytes = 8192;  // several data files
      if (auto r = write_tensors(be, "ck", tensors, o); !r) {
        std::fprintf(stderr, "write failed: %s\n", r.error().what().c_str());
        return 1;
      }
      auto man = read_manifest(be, "ck").value();
      std::vector<std::vector<std::byte>> data;
      for (const auto& f : man.files) data.push_back(be.file(f.name));
      auto bytes = fuzzing::pack(be.file("ck.manifest"), data);
      std::ofstream(std::string(argv[1]) + "/seed-" + std::to_string(n++), std::ios::binary)
          .write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
    }
  std::printf("wrote %d seeds to %s\n", n, argv[1]);
  return 0;
}
