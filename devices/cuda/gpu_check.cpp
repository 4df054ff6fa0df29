// gpu_check: the device check of CUDA shards (make gpu-check), one line per figure.
//
//   gpu_check --dir DIR [--gib N]
//
// On one GPU: a state of N GiB (default 2: 32 float32 tensors of 64 MiB, mixed layouts on a
// mesh x=2,y=4 whose eight devices are all that GPU) is saved from GPU shards and restored onto
// GPU shards of another mesh and layout, and compared bit-exact on the host. Figures, each
// against a baseline measured in the same run:
//   - D2H: a copy-mode snapshot of the GPU state (the library's copies into pinned memory) vs
//     one cudaMemcpy of the same bytes into pinned memory;
//   - H2D: a restore from the page cache onto GPU shards (staging, checks, copies) vs one
//     cudaMemcpy of the same bytes from pinned memory;
//   - save and cold restore throughput to DIR's disk;
//   - the lazy save's caller stall, and how long until its snapshot is taken.
// Exit status 0 only when every restore is bit-exact.
#include <cuda_runtime_api.h>

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <future>
#include <string>
#include <vector>

#include "meshckpt/api/checkpoint.hpp"
#include "meshckpt/pipeline/tensor_io.hpp"
#include "meshckpt/device/cuda.hpp"
#include "meshckpt/graph/trackable.hpp"
#include "meshckpt/io/make_backend.hpp"

using namespace meshckpt;
using clock_type = std::chrono::steady_clock;

namespace {

double since(clock_type::time_point t0) { return std::chrono::duration<double>(clock_type::now() - t0).count(); }

bool drop_caches() {
  ::sync();
  std::ofstream f("/proc/sys/vm/drop_caches");
  if (!f) return false;
  f << "3\n";
  return static_cast<bool>(f);
}

// Element `flat` of tensor `t` (a float32 bit pattern: any 32 bits round-trip exactly).
std::uint32_t value(std::size_t t, std::int64_t flat) {
  std::uint64_t x = (static_cast<std::uint64_t>(flat) + 1) * 0x9E3779B97F4A7C15ull ^ (t * 0xBF58476D1CE4E5B9ull);
  x ^= x >> 29;
  return static_cast<std::uint32_t>(x);
}

// The expected bytes of `v`'s shard on `device` (a 2-D tensor).
std::vector<std::uint32_t> expected(std::size_t t, const dtensor_view& v, std::int64_t device) {
  const box b = v.layout().shard_box(v.global_shape(), device).value();
  std::vector<std::uint32_t> out(static_cast<std::size_t>(b.extent[0] * b.extent[1]));
  std::size_t k = 0;
  for (std::int64_t i = 0; i < b.extent[0]; ++i)
    for (std::int64_t j = 0; j < b.extent[1]; ++j) out[k++] = value(t, (b.origin[0] + i) * v.global_shape()[1] + b.origin[1] + j);
  return out;
}

struct gpu_state {
  std::deque<device::device_buffer> buffers;
  std::vector<named_tensor> named;
  std::uint64_t distinct_bytes = 0;  // each distinct slice once (what a snapshot copies)
};

gpu_state make_state(device::accelerator& gpu, const mesh& m, const std::vector<std::vector<std::string>>& layouts, int n,
                     std::int64_t side) {
  gpu_state s;
  for (int t = 0; t < n; ++t) {
    auto l = layout::create(layouts[static_cast<std::size_t>(t) % layouts.size()], m).value();
    auto host = dtensor::create(dtype::float32, {side, side}, l).value();
    std::vector<local_shard> shards;
    for (const auto& sh : host.view().shards()) {
      s.buffers.push_back(device::device_buffer::allocate(gpu, 0, sh.data.size()).value());
      shards.push_back({sh.device, s.buffers.back().span(), &gpu, 0});
    }
    s.named.push_back(
        {"layer" + std::to_string(t) + "/w", dtensor_view::create(dtype::float32, {side, side}, l, std::move(shards)).value()});
    s.distinct_bytes += static_cast<std::uint64_t>(side * side * 4);
  }
  return s;
}

void fill(device::accelerator& gpu, const gpu_state& s) {
  for (std::size_t t = 0; t < s.named.size(); ++t)
    for (const auto& sh : s.named[t].tensor.shards()) {
      auto e = expected(t, s.named[t].tensor, sh.device);
      device::copy_to_device_blocking(gpu, 0, sh.data.data(), std::as_bytes(std::span(e))).value();
    }
}

bool check(device::accelerator& gpu, const gpu_state& s) {
  bool ok = true;
  for (std::size_t t = 0; t < s.named.size(); ++t)
    for (const auto& sh : s.named[t].tensor.shards()) {
      auto e = expected(t, s.named[t].tensor, sh.device);
      std::vector<std::uint32_t> got(e.size());
      device::copy_to_host_blocking(gpu, 0, std::as_writable_bytes(std::span(got)), sh.data.data()).value();
      if (got != e) {
        std::printf("MISMATCH tensor %s shard of device %lld\n", s.named[t].key.c_str(), static_cast<long long>(sh.device));
        ok = false;
      }
    }
  return ok;
}

void scrub(const gpu_state& s) {
  for (const auto& n : s.named)
    for (const auto& sh : n.tensor.shards()) cudaMemset(sh.data.data(), 0xAB, sh.data.size());
  cudaDeviceSynchronize();
}

double cuda_memcpy_gibps(std::uint64_t bytes, bool to_host) {
  void* dev = nullptr;
  void* host = nullptr;
  if (cudaMalloc(&dev, bytes) != cudaSuccess || cudaMallocHost(&host, bytes) != cudaSuccess) return 0;
  cudaMemcpy(to_host ? host : dev, to_host ? dev : host, bytes, to_host ? cudaMemcpyDeviceToHost : cudaMemcpyHostToDevice);  // warm
  auto t0 = clock_type::now();
  cudaMemcpy(to_host ? host : dev, to_host ? dev : host, bytes, to_host ? cudaMemcpyDeviceToHost : cudaMemcpyHostToDevice);
  double s = since(t0);
  cudaFree(dev);
  cudaFreeHost(host);
  return static_cast<double>(bytes) / s / (1 << 30);
}

// Cold restore onto GPU shards of another mesh and layout, checked bit-exact; then H2D: the
// same restore from the page cache, against cudaMemcpy from pinned memory.
bool check_restores(device::accelerator& gpu, io::backend& be, const std::string& ck, const gpu_state& src, const gpu_state& dst) {
  const double mib = static_cast<double>(src.distinct_bytes) / (1 << 20);
  scrub(dst);
  const bool cold = drop_caches();
  auto t0 = clock_type::now();
  auto rr = read_tensors(be, ck, dst.named);
  double restore_s = since(t0);
  if (!rr) {
    std::printf("restore failed: %s\n", rr.error().what().c_str());
    return false;
  }
  std::printf("%s restore onto GPU shards (mesh x=4,y=2, other layouts): %.0f MiB/s\n", cold ? "cold" : "warm (not root)", mib / restore_s);
  const bool exact = check(gpu, dst);
  std::printf("resharded restore bit-exact: %s\n", exact ? "yes" : "NO");
  read_tensors(be, ck, dst.named).value();  // warm the cache
  scrub(dst);
  t0 = clock_type::now();
  read_tensors(be, ck, dst.named).value();
  double warm_s = since(t0);
  const double h2d_base = cuda_memcpy_gibps(src.distinct_bytes, false);
  const double h2d = mib / 1024 / warm_s;
  std::printf("H2D: warm restore onto GPU %.1f GiB/s, cudaMemcpy from pinned %.1f GiB/s: %.2fx\n", h2d, h2d_base, h2d / h2d_base);
  return check(gpu, dst) && exact;
}

// D2H: a copy-mode snapshot (the caller's stall is the copy), warm arena, median of 3; then the
// lazy save: the call's stall, the time until the snapshot is taken, and its bytes checked
// through a restore onto fresh GPU shards (`dst`).
bool check_snapshots(device::accelerator& gpu, io::backend& be, const std::string& dir, const mesh& m24, const gpu_state& src,
                     const gpu_state& dst) {
  const double mib = static_cast<double>(src.distinct_bytes) / (1 << 20);
  graph::state_dict sd;
  std::deque<graph::variable> vars;
  for (const auto& t : src.named) {
    vars.emplace_back(t.tensor);
    sd.insert(t.key, vars.back());
  }
  checkpoint_options opt;
  auto c = checkpoint::create(m24, &sd, {}, opt).value();
  std::vector<double> stalls;
  for (int r = 0; r < 4; ++r) {
    std::promise<result<std::string>> done;
    auto t0 = clock_type::now();
    c->start_save(dir + "/snap", false, [&](result<std::string> res) { done.set_value(std::move(res)); });
    double stall = since(t0);
    done.get_future().get().value();
    if (r) stalls.push_back(stall);
  }
  std::sort(stalls.begin(), stalls.end());
  const double d2h = mib / 1024 / stalls[1];
  const double d2h_base = cuda_memcpy_gibps(src.distinct_bytes, true);
  std::printf("D2H: copy-mode snapshot %.1f GiB/s (stall %.3f s), cudaMemcpy to pinned %.1f GiB/s: %.2fx\n", d2h, stalls[1], d2h_base,
              d2h / d2h_base);
  auto t0 = clock_type::now();
  auto lazy = c->write_lazy(dir + "/lazy");
  double call_s = since(t0);
  lazy.wait_snapshot().value();
  double snap_s = since(t0);
  lazy.wait_committed().value();
  std::printf("lazy save: the call returns in %.3f ms; snapshot taken after %.3f s\n", call_s * 1e3, snap_s);
  scrub(dst);
  read_tensors(be, dir + "/lazy", dst.named).value();
  const bool lazy_exact = check(gpu, dst);
  std::printf("lazy save restored bit-exact: %s\n", lazy_exact ? "yes" : "NO");
  return lazy_exact;
}

}  // namespace

int main(int argc, char** argv) {
  std::string dir;
  double gib = 2;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string a = argv[i];
    if (a == "--dir")
      dir = argv[i + 1];
    else if (a == "--gib")
      gib = std::stod(argv[i + 1]);
  }
  if (dir.empty()) {
    std::fprintf(stderr, "usage: gpu_check --dir DIR [--gib N]\n");
    return 2;
  }
  std::filesystem::create_directories(dir);
  auto made = device::make_cuda();
  if (!made) {
    std::fprintf(stderr, "gpu_check: %s\n", made.error().what().c_str());
    return 1;
  }
  auto& gpu = **made;
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);
  std::printf("device: %s, %d GPU(s), %.0f GiB\n", prop.name, gpu.device_count(), static_cast<double>(prop.totalGlobalMem) / (1 << 30));

  const int n = std::max(1, static_cast<int>(gib * 16));  // 64 MiB tensors
  const std::int64_t side = 4096;
  auto m24 = mesh::create({{"x", 2}, {"y", 4}}).value();
  auto src = make_state(gpu, m24, {{"x", "y"}, {"y", "x"}, {"x", "unsharded"}, {"unsharded", "unsharded"}}, n, side);
  fill(gpu, src);
  const double mib = static_cast<double>(src.distinct_bytes) / (1 << 20);
  std::printf("state: %d tensors, %.0f MiB, mesh x=2,y=4 on GPU 0\n", n, mib);
  auto be = backends::make_backend().value();

  // Save (direct: device bytes copied into the staging blocks while earlier blocks are written).
  const std::string ck = dir + "/gpu-ck";
  auto t0 = clock_type::now();
  write_tensors(*be, ck, src.named).value();
  double save_s = since(t0);
  std::printf("save from GPU shards to disk: %.0f MiB/s\n", mib / save_s);

  // Restores onto GPU shards of another mesh and layout.
  auto m42 = mesh::create({{"x", 4}, {"y", 2}}).value();
  auto dst = make_state(gpu, m42, {{"y", "x"}, {"x", "unsharded"}, {"unsharded", "y"}, {"x", "y"}}, n, side);
  bool ok = check_restores(gpu, *be, ck, src, dst);
  ok = check_snapshots(gpu, *be, dir, m24, src, dst) && ok;
  std::filesystem::remove_all(dir);
  std::printf("gpu check: %s\n", ok ? "PASS" : "FAIL");
  return ok ? 0 : 1;
}
