#pragma once
/// \file
/// The saved form of an object graph (stored in the manifest's "object_graph" extension), and
/// the breadth-first walk that produces it from live objects. Pure; the decoder treats its input
/// as hostile (node ids in range, counts checked against the bytes remaining).

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "meshckpt/error.hpp"
#include "meshckpt/graph/trackable.hpp"

namespace meshckpt::graph {

/// Name of the manifest extension holding the object graph.
inline constexpr std::string_view object_graph_extension = "object_graph";

/// A saved object graph: node 0 is the root; edges are named.
struct object_graph {
  struct node {
    std::vector<std::pair<std::string, std::uint32_t>> children;
    bool has_value = false;
    std::string key;  ///< the manifest key of the node's value (its object path), when it has one
    friend bool operator==(const node&, const node&) = default;
  };
  std::vector<node> nodes;
  friend bool operator==(const object_graph&, const object_graph&) = default;
};

std::vector<std::byte> encode_object_graph(const object_graph& g);
/// \returns `errc::corrupt_manifest` for malformed input (the message says what and where).
result<object_graph> decode_object_graph(std::span<const std::byte> bytes);

/// The path of every node of `g` from the root, as messages name objects: the escaped names of
/// the edges joined with '/' (`model/layer_with_weights-0/kernel`, TensorFlow's pretty path),
/// along the first path found breadth first. The root is "(root)"; a node no edge reaches is
/// "(unreachable node N)".
std::vector<std::string> node_paths(const object_graph& g);

/// A live graph walked breadth-first from a root: node i of `graph` is `objects[i]`. Objects
/// reachable by several paths appear once (first path wins: the shortest).
struct live_graph {
  object_graph graph;
  std::vector<trackable*> objects;
};

/// Walks the graph from `root`; `extra` are additional named edges of the root (a Checkpoint's
/// attached children). Value keys are the escaped object paths.
live_graph walk(trackable& root, const std::vector<std::pair<std::string, trackable*>>& extra = {});

namespace detail {

/// A restore waiting for a child to be tracked. `seq` orders restores: a newer one replaces an
/// older one (the most recent restore wins).
struct pending_restore {
  std::uint64_t seq = 0;
  std::function<void(trackable& child)> apply;
};

/// Registers a pending restore of child `name` of `parent`.
void set_pending(trackable& parent, const std::string& name, std::shared_ptr<pending_restore> p);

}  // namespace detail

}  // namespace meshckpt::graph
