// A program outside the meshckpt tree, built against an installed meshckpt (find_package or
// pkg-config, static or shared): it saves a sharded tensor, restores it into another layout,
// verifies the checkpoint, and checks every value. Exit status 0 when all of that worked.
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "meshckpt/pipeline/tensor_io.hpp"
#include "meshckpt/backends/uring.hpp"

int main(int argc, char** argv) {
  using namespace meshckpt;
  if (argc != 2) {
    std::fprintf(stderr, "usage: consumer DIR\n");
    return 2;
  }
  const std::string prefix = std::string(argv[1]) + "/ck";
  auto be = backends::make_backend(backends::backend_kind::automatic).value();
  auto m = mesh::create({{"x", 2}, {"y", 2}}).value();
  auto saved = dtensor::create(dtype::float32, {8, 6}, layout::create({"x", "y"}, m).value()).value();
  for (const auto& sh : saved.view().shards()) {
    std::vector<float> v(sh.data.size() / sizeof(float));
    for (std::size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(sh.device * 1000 + static_cast<std::int64_t>(i));
    std::memcpy(sh.data.data(), v.data(), sh.data.size());
  }
  std::vector<named_tensor> out = {{"w", saved.view()}};
  if (auto w = write_tensors(*be, prefix, out); !w) {
    std::fprintf(stderr, "write: %s\n", w.error().what().c_str());
    return 1;
  }
  // Restore onto one device, whole, and compare with the saved shards.
  auto one = mesh::create({{"x", 1}}).value();
  auto back = dtensor::create(dtype::float32, {8, 6}, layout::create({"unsharded", "unsharded"}, one).value()).value();
  std::vector<named_tensor> in = {{"w", back.view()}};
  if (auto r = read_tensors(*be, prefix, in); !r) {
    std::fprintf(stderr, "read: %s\n", r.error().what().c_str());
    return 1;
  }
  const auto& whole = back.view().shards().front().data;
  for (const auto& sh : saved.view().shards()) {
    // Shard (device d) of an x,y split of [8, 6] over 2x2 is rows 4*(d/2).., columns 3*(d%2)..
    const std::int64_t r0 = 4 * (sh.device / 2), c0 = 3 * (sh.device % 2);
    for (std::int64_t r = 0; r < 4; ++r)
      if (std::memcmp(whole.data() + ((r0 + r) * 6 + c0) * 4, sh.data.data() + r * 3 * 4, 3 * 4) != 0) {
        std::fprintf(stderr, "value mismatch in shard %lld row %lld\n", static_cast<long long>(sh.device), static_cast<long long>(r));
        return 1;
      }
  }
  auto v = verify(*be, prefix);
  if (!v || !v->ok()) {
    std::fprintf(stderr, "verify failed\n");
    return 1;
  }
  std::printf("consumer: saved, restored into another layout and verified %s (%s backend)\n", prefix.c_str(),
              std::string(be->name()).c_str());
  return 0;
}
