// libFuzzer target: the restore planner against the brute-force oracle. The input chooses a
// shape (rank 0-3, dimensions 0-13, so uneven and empty splits occur), a saved mesh and layout,
// and a target: either every shard of another mesh and layout, or an arbitrary box of the
// shape. Every plan must succeed and assemble the target exactly; anything else traps.

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "byte_source.hpp"
#include "reshard_oracle.hpp"

using namespace meshckpt;

namespace {

using input = oracle::byte_source;

const std::vector<std::vector<mesh_dim>> meshes = {
    {{"x", 2}, {"y", 4}}, {{"x", 4}, {"y", 2}},           {{"x", 8}},          {{"x", 1}}, {{"x", 3}},
    {{"x", 2}, {"y", 3}}, {{"x", 2}, {"y", 2}, {"z", 2}}, {{"x", 5}, {"y", 1}}};

std::optional<layout> pick_layout(input& in, std::size_t rank, const mesh& m) {
  std::vector<std::string> axes;
  for (std::size_t d = 0; d < rank; ++d) {
    std::uint8_t c = in.next() % (m.dims().size() + 1);
    axes.push_back(c == 0 ? "unsharded" : m.dims()[c - 1].name);
  }
  auto l = layout::create(axes, m);  // a mesh dimension used twice is refused
  if (!l) return std::nullopt;
  return *l;
}

[[noreturn]] void fail() { __builtin_trap(); }

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  input in{data, size};
  std::size_t rank = in.next() % 4;
  shape g;
  for (std::size_t d = 0; d < rank; ++d) g.push_back(in.next() % 14);
  auto sm = mesh::create(meshes[in.next() % meshes.size()]).value();
  auto saved = pick_layout(in, rank, sm);
  if (!saved || !saved->validate_shape(g)) return 0;
  auto slices = oracle::partition(g, *saved);
  std::vector<box> targets;
  if (in.next() % 2) {
    auto tm = mesh::create(meshes[in.next() % meshes.size()]).value();
    auto tl = pick_layout(in, rank, tm);
    if (!tl || !tl->validate_shape(g)) return 0;
    for (auto dev : tm.device_ids()) targets.push_back(tl->shard_box(g, dev).value());
  } else {
    box b;
    for (std::size_t d = 0; d < rank; ++d) {
      std::int64_t o = g[d] ? in.next() % (g[d] + 1) : 0;
      std::int64_t e = (g[d] - o) ? in.next() % (g[d] - o + 1) : 0;
      b.origin.push_back(o);
      b.extent.push_back(e);
    }
    targets.push_back(b);
  }
  for (const auto& t : targets) {
    auto runs = plan::plan_shard_restore(g, 8, slices, t);
    if (!runs || !oracle::runs_assemble(g, slices, t, *runs)) fail();
  }
  return 0;
}
