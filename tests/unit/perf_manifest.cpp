// Manifest scale check (not a ctest test: timings belong to benchmarks): builds a manifest of N
// small replicated tensors on an x=2,y=4 mesh, encodes and decodes it, and prints sizes and
// the median time of 3 runs.
//   perf_manifest [N=1000000]

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "meshckpt/format/manifest.hpp"

using namespace meshckpt::format;

int main(int argc, char** argv) {
  std::size_t n = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 1000000;
  manifest m;
  m.meshes.push_back({{{"x", 2}, {"y", 4}}, {0, 1, 2, 3, 4, 5, 6, 7}});
  m.files.push_back({"ck.data-0000000000000000-0", n * 4096});
  m.tensors.reserve(n);
  char key[64];
  for (std::size_t i = 0; i < n; ++i) {
    std::snprintf(key, sizeof key, "model/layer_%07zu/w", i);
    saved_tensor t;
    t.key = key;
    t.type = meshckpt::dtype::float32;
    t.global = {1024};
    t.axes = {-1};
    t.slices.push_back({meshckpt::box{{0}, {1024}}, 0, i * 4096, 4096, static_cast<std::int64_t>(i % 8), {i}});
    m.tensors.push_back(std::move(t));
  }
  using clock = std::chrono::steady_clock;
  std::vector<double> enc, dec;
  std::size_t bytes = 0;
  for (int rep = 0; rep < 3; ++rep) {
    auto t0 = clock::now();
    auto b = encode(m).value();
    auto t1 = clock::now();
    auto d = decode(b).value();
    auto t2 = clock::now();
    if (d.tensors.size() != n) return 1;
    bytes = b.size();
    enc.push_back(std::chrono::duration<double>(t1 - t0).count());
    dec.push_back(std::chrono::duration<double>(t2 - t1).count());
  }
  std::sort(enc.begin(), enc.end());
  std::sort(dec.begin(), dec.end());
  std::printf("%zu tensors: manifest %.1f MiB (%.1f bytes/tensor); median encode %.3f s, decode %.3f s (of 3 runs)\n", n,
              static_cast<double>(bytes) / (1 << 20), static_cast<double>(bytes) / static_cast<double>(n), enc[1], dec[1]);
  return 0;
}
