// The CUDA accelerator (meshckpt_cuda). Without a GPU (CI, most machines here) it must refuse
// with errc::unsupported and CUDA's reason; with one, copies round-trip and a small state
// saved from GPU shards is restored bit-exact onto GPU shards of another layout. The full
// device check with figures is gpu_check (make gpu-check).

#include <catch2/catch.hpp>

#include <deque>

#include "meshckpt/api/tensor_io.hpp"
#include "meshckpt/device/cuda.hpp"
#include "support.hpp"

using namespace meshckpt;

TEST_CASE("the CUDA accelerator: refused with a reason without a GPU; a round trip with one", "[device][cuda]") {
  auto made = device::make_cuda();
  if (!made) {
    CHECK(made.error().code == errc::unsupported);
    CHECK_THAT(made.error().what(), Catch::Contains("no CUDA device"));
    WARN("no GPU here: " << made.error().what());
    return;
  }
  auto& gpu = **made;
  REQUIRE(gpu.device_count() >= 1);
  CHECK(device::make_cuda().value().get() == &gpu);  // one per process

  auto be = testing::test_backend();
  testing::temp_dir tmp;
  auto m = mesh::create({{"x", 2}, {"y", 2}}).value();
  auto make = [&](std::vector<std::string> l, std::deque<device::device_buffer>& bufs) {
    auto lay = layout::create(std::move(l), m).value();
    auto host = dtensor::create(dtype::float32, {300, 200}, lay).value();
    std::vector<local_shard> shards;
    for (const auto& sh : host.view().shards()) {
      bufs.push_back(device::device_buffer::allocate(gpu, 0, sh.data.size()).value());
      shards.push_back({sh.device, bufs.back().span(), &gpu, 0});
    }
    return std::make_pair(std::move(host), dtensor_view::create(dtype::float32, {300, 200}, lay, std::move(shards)).value());
  };
  std::deque<device::device_buffer> b1, b2;
  auto [h1, d1] = make({"x", "y"}, b1);
  testing::fill(h1.view(), "w", 3);
  for (const auto& sh : d1.shards()) REQUIRE(device::copy_to_device_blocking(gpu, 0, sh.data.data(), h1.view().shard_of(sh.device)->data));
  std::vector<named_tensor> saved = {{"w", d1}};
  REQUIRE(write_tensors(*be, tmp / "ck", saved));
  auto [h2, d2] = make({"y", "unsharded"}, b2);
  std::vector<named_tensor> restored = {{"w", d2}};
  REQUIRE(read_tensors(*be, tmp / "ck", restored));
  for (const auto& sh : d2.shards()) REQUIRE(device::copy_to_host_blocking(gpu, 0, h2.view().shard_of(sh.device)->data, sh.data.data()));
  CHECK(testing::matches(h2.view(), "w", 3));
}
