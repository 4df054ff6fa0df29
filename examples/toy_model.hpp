#pragma once
// The toy training state shared by the example trainers: a small model sharded over an x=2,y=4
// mesh (embedding over both, a dense layer over y, a head over x), optimizer step, RNG state
// and data-loader position — and a deterministic "training step", so that a run that was killed
// and resumed ends bit-identical to one that was not.

#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "meshckpt/api/checkpoint.hpp"
#include "meshckpt/format/checksum.hpp"

namespace toy {

using namespace meshckpt;

inline mesh make_mesh() { return mesh::create({{"x", 2}, {"y", 4}}).value(); }

inline dtensor tensor(const mesh& m, shape s, std::vector<std::string> l) {
  return dtensor::create(dtype::float32, std::move(s), layout::create(std::move(l), m).value()).value();
}

struct dense : graph::module {
  graph::variable kernel, bias;
  dense(const mesh& m, std::int64_t in, std::int64_t out, std::string kernel_axis)
      : kernel(tensor(m, {in, out}, {"unsharded", kernel_axis})), bias(tensor(m, {out}, {kernel_axis})) {
    track("kernel", kernel);
    track("bias", bias);
  }
};

struct model : graph::module {
  graph::variable embedding;
  dense hidden, head;
  explicit model(const mesh& m)
      : embedding(tensor(m, {4096, 256}, {"x", "y"})), hidden(m, 256, 1024, "y"), head(m, 1024, 500, "unsharded") {
    track("embedding", embedding);
    track("hidden", hidden);
    track("head", head);
  }
  std::vector<graph::variable*> variables() { return {&embedding, &hidden.kernel, &hidden.bias, &head.kernel, &head.bias}; }
};

struct train_state : graph::module {
  model net;
  graph::scalar<std::int64_t> step{0};
  graph::scalar<std::int64_t> loader_position{0};
  graph::bytes_state rng;
  explicit train_state(const mesh& m) : net(m) {
    track("model", net);
    track("step", step);
    track("data_loader/position", loader_position);
    track("rng", rng);
    rng.set(std::vector<std::byte>(8, std::byte{0x5a}));
    // Deterministic initialisation from each element's global index, so replicas agree.
    for (auto* v : net.variables()) {
      const auto& g = v->view().global_shape();
      for (const auto& sh : v->view().shards()) {
        auto b = v->view().layout().shard_box(g, sh.device).value();
        auto* f = reinterpret_cast<float*>(sh.data.data());
        std::int64_t cols = b.rank() == 2 ? b.extent[1] : 1;
        for (std::int64_t i = 0; i < *b.volume(); ++i) {
          std::int64_t flat = b.rank() == 2 ? (b.origin[0] + i / cols) * g[1] + b.origin[1] + i % cols : b.origin[0] + i;
          f[i] = 0.01f * static_cast<float>((static_cast<std::uint64_t>(flat) * 2654435761u) % 1000) / 1000.0f;
        }
      }
    }
  }

  std::uint64_t next_random() {
    std::uint64_t x;
    std::memcpy(&x, rng.get().data(), 8);
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    std::vector<std::byte> b(8);
    std::memcpy(b.data(), &x, 8);
    rng.set(std::move(b));
    return x;
  }

  // One deterministic "training step"; returns a loss-like number.
  double train_step() {
    double loss = forward_backward();
    apply_update();
    return loss;
  }

  // The first half of a step: reads the weights (never writes them) and computes the update
  // into `grads`; advances the step, the loader and the RNG (host values, captured by a save at
  // its call). A lazy checkpoint's snapshot may still be copying the weights meanwhile.
  double forward_backward() {
    step.set(step.get() + 1);
    loader_position.set(loader_position.get() + 32);
    float lr = 0.001f * static_cast<float>(next_random() % 1000) / 1000.0f;
    double sum = 0;
    grads.clear();
    for (auto* v : net.variables())
      for (const auto& sh : v->view().shards()) {
        const auto* f = reinterpret_cast<const float*>(sh.data.data());
        auto& g = grads.emplace_back(sh.data.size() / 4);
        for (std::size_t i = 0; i < g.size(); ++i) {
          g[i] = lr * std::sin(static_cast<float>(i % 97) * 0.01f + static_cast<float>(step.get())) - lr * f[i];
          sum += f[i];
        }
      }
    return sum / 1e4;
  }

  // The second half: the optimizer writes the weights (after a lazy snapshot was taken).
  void apply_update() {
    std::size_t k = 0;
    for (auto* v : net.variables())
      for (const auto& sh : v->view().shards()) {
        auto* f = reinterpret_cast<float*>(sh.data.data());
        const auto& g = grads[k++];
        for (std::size_t i = 0; i < g.size(); ++i) f[i] += g[i];
      }
  }
  std::vector<std::vector<float>> grads;

  // XXH3 over every byte of state, to compare runs.
  std::uint64_t digest() {
    std::uint64_t h = static_cast<std::uint64_t>(step.get()) ^ static_cast<std::uint64_t>(loader_position.get()) * 31;
    h ^= format::checksum(rng.get());
    for (auto* v : net.variables())
      for (const auto& sh : v->view().shards()) h = h * 1099511628211ull ^ format::checksum(sh.data);
    return h;
  }

  std::uint64_t state_bytes() {
    std::uint64_t n = 0;
    for (auto* v : net.variables()) n += static_cast<std::uint64_t>(v->view().global_bytes());
    return n;
  }
};

// Options shared by the trainers.
struct options {
  std::string dir;
  std::int64_t steps = 30;            // steps to run in this invocation
  std::optional<std::int64_t> until;  // or: train until this step
  std::int64_t every = 5;             // checkpoint every N steps
  int keep = 3;
  std::optional<std::int64_t> kill_at;  // SIGKILL ourselves right after this step
  bool quiet = false;
};

inline int parse(int argc, char** argv, options& o, const char* name) {
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string { return i + 1 < argc ? argv[++i] : ""; };
    if (a == "--dir")
      o.dir = next();
    else if (a == "--steps")
      o.steps = std::stoll(next());
    else if (a == "--until")
      o.until = std::stoll(next());
    else if (a == "--every")
      o.every = std::stoll(next());
    else if (a == "--keep")
      o.keep = std::stoi(next());
    else if (a == "--kill-at")
      o.kill_at = std::stoll(next());
    else if (a == "--quiet")
      o.quiet = true;
    else {
      std::fprintf(stderr, "usage: %s [--dir DIR] [--steps N | --until STEP] [--every N] [--keep N] [--kill-at STEP] [--quiet]\n", name);
      return a == "--help" ? 0 : 2;
    }
  }
  return -1;
}

}  // namespace toy
