#include "meshckpt/graph/object_graph.hpp"

#include <deque>
#include <optional>

#include "../format/codec.hpp"

namespace meshckpt::graph {

std::vector<std::string> node_paths(const object_graph& g) {
  std::vector<std::optional<std::string>> path(g.nodes.size());
  if (!g.nodes.empty()) path[0] = "";
  std::deque<std::uint32_t> frontier;
  if (!g.nodes.empty()) frontier.push_back(0);
  while (!frontier.empty()) {
    const auto n = frontier.front();
    frontier.pop_front();
    for (const auto& [name, child] : g.nodes[n].children)
      if (child < path.size() && !path[child]) {
        path[child] = (path[n]->empty() ? "" : *path[n] + "/") + escape_name(name);
        frontier.push_back(child);
      }
  }
  std::vector<std::string> out(g.nodes.size());
  for (std::size_t i = 0; i < out.size(); ++i)
    out[i] = i == 0 ? "(root)" : path[i] ? *path[i] : "(unreachable node " + std::to_string(i) + ")";
  return out;
}

// Layout: varint node_count; per node: varint child_count, (string name, varint node_id)*,
// varint has_value, [string key].
std::vector<std::byte> encode_object_graph(const object_graph& g) {
  format::codec::writer w;
  w.varint(g.nodes.size());
  for (const auto& n : g.nodes) {
    w.varint(n.children.size());
    for (const auto& [name, id] : n.children) {
      w.str(name);
      w.varint(id);
    }
    w.varint(n.has_value ? 1 : 0);
    if (n.has_value) w.str(n.key);
  }
  return std::move(w.bytes());
}

result<object_graph> decode_object_graph(std::span<const std::byte> bytes) {
  format::codec::reader r(bytes.data(), bytes.data() + bytes.size(), 0, "object graph");
  object_graph g;
  // Smallest node: child_count and has_value, 2 bytes; smallest edge: name length, 1 byte of
  // name (empty names are invalid) and an id.
  std::size_t n = r.count("node count", std::uint64_t{1} << 26, 2);
  g.nodes.resize(n);
  for (auto& node : g.nodes) {
    std::size_t c = r.count("child count", std::uint64_t{1} << 26, 3);
    node.children.resize(c);
    for (auto& [name, id] : node.children) {
      name = r.str("child name", 4096);
      std::uint64_t v = r.varint("node id");
      if (!r.failed() && (v >= n || name.empty()))
        r.fail(errc::corrupt_manifest,
               "edge \"" + name + "\" is empty or points to node " + std::to_string(v) + " of " + std::to_string(n));
      id = static_cast<std::uint32_t>(v);
    }
    std::uint64_t hv = r.varint("value flag");
    if (!r.failed() && hv > 1) r.fail(errc::corrupt_manifest, "value flag is not 0 or 1");
    node.has_value = hv == 1;
    if (node.has_value) node.key = r.str("value key", 16384);
    if (r.failed()) break;
  }
  if (r.failed()) return r.err();
  if (r.remaining() != 0) return make_error(errc::corrupt_manifest, "object graph has trailing bytes");
  if (g.nodes.empty()) return make_error(errc::corrupt_manifest, "object graph has no root node");
  return g;
}

}  // namespace meshckpt::graph
