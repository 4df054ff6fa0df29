// The CUDA accelerator (meshckpt_cuda). Without a GPU (CI, most machines here) it must refuse
// with errc::unsupported and CUDA's reason; with one, copies round-trip and a small state
// saved from GPU shards is restored bit-exact onto GPU shards of another layout. The full
// device check with figures is gpu_check (make gpu-check).

#include <catch2/catch.hpp>

#include "meshckpt/pipeline/tensor_io.hpp"
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
  // On the GPU (testing::fill and matches copy through it).
  testing::test_tensor d1(dtype::float32, {300, 200}, layout::create({"x", "y"}, m).value(), &gpu);
  testing::fill(d1.view(), "w", 3);
  std::vector<named_tensor> saved = {{"w", d1.view()}};
  REQUIRE(write_tensors(*be, tmp / "ck", saved));
  testing::test_tensor d2(dtype::float32, {300, 200}, layout::create({"y", "unsharded"}, m).value(), &gpu);
  std::vector<named_tensor> restored = {{"w", d2.view()}};
  REQUIRE(read_tensors(*be, tmp / "ck", restored));
  CHECK(testing::matches(d2.view(), "w", 3));
}
