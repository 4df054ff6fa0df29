#pragma once
// What the Checkpoint API suites share (test_api_checkpoint.cpp, test_api_async.cpp): a small
// model of two dense layers, a scalar and a byte state on mesh x=2,y=4, comparisons, and a
// warning collector.

#include <filesystem>
#include <fstream>
#include <sstream>

#include "meshckpt/api/checkpoint.hpp"
#include "support.hpp"

namespace api_test {

using namespace meshckpt;

inline mesh mesh24() { return mesh::create({{"x", 2}, {"y", 4}}).value(); }

// Host storage, or simulated device memory under MESHCKPT_TEST_SHARDS=simulated (support.hpp).
inline graph::variable make(dtype t, shape s, std::vector<std::string> l) {
  return testing::make_variable(t, std::move(s), layout::create(std::move(l), mesh24()).value());
}

struct dense : graph::module {
  graph::variable kernel, bias;
  dense(std::int64_t in, std::int64_t out)
      : kernel(make(dtype::float32, {in, out}, {"unsharded", "y"})), bias(make(dtype::float32, {out}, {"y"})) {
    track("kernel", kernel);
    track("bias", bias);
  }
};

struct model : graph::module {
  dense d1{8, 16};
  dense d2{16, 4};
  graph::scalar<std::int64_t> step{0};
  graph::bytes_state rng;
  explicit model(bool with_d2 = true) {
    track("dense1", d1);
    if (with_d2) track("dense/2", d2);  // a name with '/' round-trips
    track("step", step);
    track("rng.state", rng);
  }
  void fill(std::uint64_t seed) {
    std::uint64_t j = 0;
    for (auto* v : {&d1.kernel, &d1.bias, &d2.kernel, &d2.bias}) testing::fill(v->view(), "v" + std::to_string(j++), seed);
    step.set(static_cast<std::int64_t>(seed));
    rng.set(std::vector<std::byte>(seed % 50 + 1, static_cast<std::byte>(seed)));
  }
};

inline bool same(const graph::variable& va, const graph::variable& vb) {
  testing::host_image a(va.view()), b(vb.view());
  for (std::size_t i = 0; i < a.view.shards().size(); ++i) {
    auto x = a.view.shards()[i].data, y = b.view.shards()[i].data;
    if (!std::equal(x.begin(), x.end(), y.begin(), y.end())) return false;
  }
  return true;
}

inline bool same(const model& a, const model& b) {
  return same(a.d1.kernel, b.d1.kernel) && same(a.d1.bias, b.d1.bias) && same(a.d2.kernel, b.d2.kernel) && same(a.d2.bias, b.d2.bias) &&
         a.step.get() == b.step.get() && a.rng.get() == b.rng.get();
}

// Collects warnings for the duration of a test.
struct warnings {
  std::shared_ptr<std::vector<std::string>> got = std::make_shared<std::vector<std::string>>();
  std::function<void(std::string_view)> old;
  warnings() {
    auto g = got;
    old = set_warning_handler([g](std::string_view m) { g->emplace_back(m); });
  }
  ~warnings() { set_warning_handler(old); }
};

inline std::unique_ptr<checkpoint> ckpt_of(model& m) { return checkpoint::create(mesh24(), nullptr, {{"model", &m}}).value(); }

inline std::string slurp(const std::string& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace api_test
