// meshckpt inspect, show, cat, diff: looking into checkpoints.

#include <sys/stat.h>

#include <algorithm>
#include <functional>
#include <chrono>
#include <cmath>
#include <cstring>
#include <deque>
#include <unistd.h>
#include <ctime>
#include <map>
#include <optional>
#include <cstdio>
#include <string>
#include <tuple>
#include <vector>

#include "bench.hpp"
#include "values.hpp"
#include "meshckpt/api/checkpoint.hpp"
#include "meshckpt/interchange/safetensors_io.hpp"
#include "meshckpt/pipeline/tensor_io.hpp"
#include "meshckpt/format/describe.hpp"
#include "meshckpt/format/names.hpp"
#include "meshckpt/format/safetensors.hpp"
#include "meshckpt/graph/object_graph.hpp"
#include "meshckpt/tensor/arith.hpp"

#include "commands.hpp"

namespace meshckpt::cli {

// show PATH KEY: how one tensor was sharded when saved.
int cmd_show(io::backend& b, const args& a) {
  std::string prefix = normalize_prefix(a.path);
  auto m = load_manifest(b, prefix, a);
  if (!m) return 1;
  const auto* t = m->find(a.key);
  if (!t) {
    return report_failure("show", "no tensor \"%s\" in %s (it has %zu; `meshckpt inspect %s` lists them)", a.key.c_str(), prefix.c_str(),
                          m->tensors.size(), prefix.c_str());
  }
  auto pic = format::describe_sharding(*m, *t);
  if (!pic) {
    return report_error("show", pic.error());
  }
  std::fputs(pic->c_str(), stdout);
  return 0;
}

int cmd_inspect(io::backend& b, const args& a) {
  auto tf = a.format == "meshckpt" ? std::nullopt : tf_bundle_prefix(a.path);
  if (!tf && a.format == "tf") {
    return report_failure("inspect", "%s is not a TensorFlow checkpoint (no %s.index, nor a SavedModel directory)", a.path.c_str(),
                          a.path.c_str());
  }
  if (tf) {
    auto idx = read_tf_bundle_index(b, *tf);
    if (!idx) {
      return report_error("inspect", idx.error());
    }
    std::string out = a.json ? format::describe_json(*idx, *tf) + "\n" : format::describe_text(*idx, *tf);
    std::fwrite(out.data(), 1, out.size(), stdout);
    return 0;
  }
  std::string prefix = normalize_prefix(a.path);
  if (is_directory(prefix) && !exists(prefix + ".manifest") && !exists(join(prefix, ".metadata"))) {  // (a DCP checkpoint is read below)
    auto scan = scan_directory(b, prefix);
    std::string names;
    if (scan)
      for (const auto& c : scan->checkpoints) names += "\n  " + join(prefix, c);
    return report_failure("inspect", "%s is a directory; give a checkpoint prefix DIR/NAME%s%s", prefix.c_str(),
                          names.empty() ? " (it holds no committed checkpoint)" : ". Checkpoints there:", names.c_str());
  }
  auto m = load_manifest(b, prefix, a);
  if (!m) return 1;
  std::string out = a.json ? format::describe_json(*m, prefix) : format::describe_text(*m, prefix);
  // The object graph a Checkpoint recorded: the tree of objects (by attribute name) and the
  // tensors they hold. Shared objects are printed once and referred to afterwards.
  for (const auto& e : m->extensions) {
    if (e.name != graph::object_graph_extension) continue;
    auto g = graph::decode_object_graph(e.bytes);
    if (!g) {
      return report_failure("inspect", "%s: object graph: %s", prefix.c_str(), g.error().what().c_str());
    }
    if (a.json) {
      std::string j = ",\"object_graph\":[";
      for (std::size_t i = 0; i < g->nodes.size(); ++i) {
        const auto& n = g->nodes[i];
        j += std::string(i ? "," : "") + "{\"id\":" + std::to_string(i) +
             ",\"value\":" + (n.has_value ? format::json_string(n.key) : "null") + ",\"children\":[";
        for (std::size_t c = 0; c < n.children.size(); ++c)
          j += std::string(c ? "," : "") + "{\"name\":" + format::json_string(n.children[c].first) +
               ",\"id\":" + std::to_string(n.children[c].second) + "}";
        j += "]}";
      }
      out.insert(out.rfind('}'), j + "]");
    } else {
      out += "\nobject graph (" + std::to_string(g->nodes.size()) + " objects):\n(root)\n";
      std::vector<bool> seen(g->nodes.size(), false);
      seen[0] = true;
      std::function<void(std::uint32_t, const std::string&)> tree = [&](std::uint32_t id, const std::string& indent) {
        const auto& kids = g->nodes[id].children;
        for (std::size_t c = 0; c < kids.size(); ++c) {
          const bool last = c + 1 == kids.size();
          const auto child = kids[c].second;
          out += indent + (last ? "`-- " : "|-- ") + kids[c].first;
          if (child >= g->nodes.size()) {
            out += "  (dangling)\n";
            continue;
          }
          if (g->nodes[child].has_value) out += "  = " + g->nodes[child].key;
          if (seen[child]) {
            out += "  (shared: object " + std::to_string(child) + ", shown above)\n";
            continue;
          }
          seen[child] = true;
          out += "\n";
          tree(child, indent + (last ? "    " : "|   "));
        }
      };
      if (!g->nodes.empty()) tree(0, "");
    }
  }
  if (a.json) out += "\n";
  std::fwrite(out.data(), 1, out.size(), stdout);
  return 0;
}

// cat PATH KEY [--slice S]: a tensor's values.
int cmd_cat(io::backend& b, const args& a) {
  std::string prefix = normalize_prefix(a.path);
  auto m = load_manifest(b, prefix, a);
  if (!m) return 1;
  const auto* t = m->find(a.key);
  if (!t) {
    return report_failure("cat", "no tensor \"%s\" in %s (`meshckpt inspect %s` lists them)", a.key.c_str(), prefix.c_str(),
                          prefix.c_str());
  }
  if (t->type == dtype::blob) {
    return report_failure("cat", "tensor \"%s\" is an opaque blob (%s); meshckpt does not interpret its bytes", a.key.c_str(),
                          format::human_bytes(static_cast<std::uint64_t>(num_elements(t->global).value_or(0))).c_str());
  }
  auto sel = cli::parse_slice(a.slice, t->global);
  if (!sel) {
    return report_error("cat", sel.error(), 2);
  }
  // Only the box that bounds the selection is read (its checksum chunks), whatever the
  // tensor's size.
  box where;
  std::vector<cli::dim_selection> in_box;
  for (const auto& s : *sel) {
    where.origin.push_back(s.start);
    where.extent.push_back(std::max<std::int64_t>(0, s.stop - s.start));
    in_box.push_back({0, std::max<std::int64_t>(0, s.stop - s.start), s.keep});
  }
  const std::uint64_t cap = std::uint64_t(4) << 30;
  const auto bytes = checked_mul(where.volume().value_or(INT64_MAX), dtype_size(t->type));
  if (!bytes || static_cast<std::uint64_t>(*bytes) > cap) {
    return report_failure(
        "cat", "the selection %s of tensor \"%s\" is %s, above the %s this command reads into memory; select less with --slice",
        to_string(where).c_str(), a.key.c_str(), bytes ? format::human_bytes(static_cast<std::uint64_t>(*bytes)).c_str() : "too large",
        format::human_bytes(cap).c_str());
  }
  std::vector<std::byte> data(static_cast<std::size_t>(*bytes));
  if (auto r = read_tensor_box(b, prefix, *m, t->key, where, data); !r) {
    return report_error("cat", r.error());
  }
  auto v = cli::select(t->type, data, where.extent, in_box);
  auto shape_json = [](const shape& s) {
    std::string o = "[";
    for (std::size_t i = 0; i < s.size(); ++i) o += (i ? "," : "") + std::to_string(s[i]);
    return o + "]";
  };
  if (a.json) {
    if (v.offsets.size() > 10'000'000) {
      return report_failure("cat", "%zu values are too many for --json; select fewer with --slice", v.offsets.size());
    }
    std::string out = "{\"key\":" + format::json_string(t->key) + ",\"dtype\":" + format::json_string(std::string(dtype_name(t->type))) +
                      ",\"shape\":" + shape_json(t->global) + ",\"slice\":" + format::json_string(a.slice) +
                      ",\"selected_shape\":" + shape_json(v.dims) + ",\"values\":" + cli::json_values(t->type, data, v) + "}\n";
    std::fwrite(out.data(), 1, out.size(), stdout);
    return 0;
  }
  std::string dims;
  for (std::size_t i = 0; i < t->global.size(); ++i) dims += (i ? ", " : "") + std::to_string(t->global[i]);
  std::string out = t->key + ": " + std::string(dtype_name(t->type)) + "[" + dims + "]" + (a.slice.empty() ? "" : " [" + a.slice + "]") +
                    "\n" + cli::format_values(t->type, data, v) + "\n";
  std::fwrite(out.data(), 1, out.size(), stdout);
  return 0;
}

namespace {

// One difference `diff` reports.
struct diff_change {
  std::string key, kind, detail;
  std::optional<double> max_abs;
  std::uint64_t differing = 0;
};

std::string shape_text(const shape& s) {
  std::string o = "[";
  for (std::size_t i = 0; i < s.size(); ++i) o += (i ? ", " : "") + std::to_string(s[i]);
  return o + "]";
}

// Equal by their checksums: the same slicing and chunking, and the same XXH3-64 per chunk.
bool equal_by_checksum(const format::manifest& ma, const format::manifest& mb, const format::saved_tensor& x,
                       const format::saved_tensor& y) {
  bool same_slicing = ma.chunk_bytes == mb.chunk_bytes && ma.checksum == mb.checksum && x.slices.size() == y.slices.size();
  for (std::size_t i = 0; same_slicing && i < x.slices.size(); ++i)
    same_slicing = x.slices[i].where.origin == y.slices[i].where.origin && x.slices[i].where.extent == y.slices[i].where.extent;
  if (!same_slicing) return false;
  for (std::size_t i = 0; i < x.slices.size(); ++i)
    if (x.slices[i].checksums != y.slices[i].checksums) return false;
  return true;
}

// Compares tensor `key` of two checkpoints value by value, in blocks of whole rows (dimension 0)
// of about 16 MiB: memory stays bounded whatever the tensors' size. `c.differing` counts the
// elements (bytes of a blob) that differ; `c.max_abs` the largest difference.
result<void> compare_values(io::backend& b, const std::string& pa, const format::manifest& ma, const std::string& pb,
                            const format::manifest& mb, const format::saved_tensor& x, diff_change& c) {
  const std::size_t es = static_cast<std::size_t>(dtype_size(x.type));
  const std::int64_t rows = x.global.empty() ? 1 : x.global[0];
  const std::int64_t row_elems = x.global.empty() ? 1 : num_elements(shape(x.global.begin() + 1, x.global.end())).value_or(0);
  const std::int64_t row_bytes = std::max<std::int64_t>(1, row_elems * static_cast<std::int64_t>(es));
  const std::int64_t per_block = std::max<std::int64_t>(1, (std::int64_t{16} << 20) / row_bytes);
  // A TensorFlow tensor's one CRC covers it whole: checked once, then its blocks are read
  // unverified (each block would otherwise check the whole tensor again).
  read_options opt_a, opt_b;
  for (auto [m, p, opt] : {std::tuple{&ma, &pa, &opt_a}, std::tuple{&mb, &pb, &opt_b}}) {
    if (!format::whole_slice_crc(m->checksum)) continue;
    BOOST_OUTCOME_TRY(verify_tensor(b, *p, *m, c.key));
    opt->verify_checksums = false;
  }
  double worst = 0;
  std::vector<std::byte> bx, by;
  for (std::int64_t r0 = 0; r0 < rows && row_elems > 0; r0 += per_block) {
    box where = box::whole(x.global);
    if (!x.global.empty()) {
      where.origin[0] = r0;
      where.extent[0] = std::min(per_block, rows - r0);
    }
    const auto n = static_cast<std::size_t>(where.volume().value_or(0)) * es;
    bx.resize(n);
    by.resize(n);
    BOOST_OUTCOME_TRY(read_tensor_box(b, pa, ma, c.key, where, bx, opt_a));
    BOOST_OUTCOME_TRY(read_tensor_box(b, pb, mb, c.key, where, by, opt_b));
    if (x.type == dtype::blob) {
      for (std::size_t i = 0; i < n; ++i) c.differing += bx[i] != by[i];
      continue;
    }
    for (std::size_t i = 0; i < n / es; ++i) {
      if (std::memcmp(bx.data() + i * es, by.data() + i * es, es) == 0) continue;
      ++c.differing;
      double diff = cli::element_distance(x.type, bx, by, i).value_or(INFINITY);
      if (std::isnan(diff)) diff = INFINITY;  // NaN on one side only, or NaNs of other bits
      worst = std::max(worst, diff);
    }
  }
  if (c.differing && x.type != dtype::blob) c.max_abs = worst;
  if (c.differing) {
    char buf[96];
    if (c.max_abs)
      std::snprintf(buf, sizeof buf, "%llu element(s) differ, max abs difference %.9g", (unsigned long long)c.differing, *c.max_abs);
    else
      std::snprintf(buf, sizeof buf, "%llu byte(s) differ", (unsigned long long)c.differing);
    c.detail = buf;
  }
  return success();
}

struct diff_counts {
  std::size_t same = 0, by_checksum = 0, by_value = 0;
};

void print_diff(const args& a, const std::string& pa, const std::string& pb, const std::vector<diff_change>& changes,
                const diff_counts& n) {
  if (!a.json) {
    for (const auto& c : changes) std::printf("%-8s %s  %s\n", c.kind.c_str(), c.key.c_str(), c.detail.c_str());
    std::printf("%zu tensor(s) differ, %zu identical; %zu compared by checksum, %zu read and compared\n", changes.size(), n.same,
                n.by_checksum, n.by_value);
    return;
  }
  std::string out = "{\"a\":" + format::json_string(pa) + ",\"b\":" + format::json_string(pb) +
                    ",\"identical\":" + (changes.empty() ? "true" : "false") + ",\"unchanged\":" + std::to_string(n.same) +
                    ",\"compared_by_checksum\":" + std::to_string(n.by_checksum) + ",\"compared_by_value\":" + std::to_string(n.by_value) +
                    ",\"changes\":[";
  for (std::size_t i = 0; i < changes.size(); ++i) {
    const auto& c = changes[i];
    out += std::string(i ? "," : "") + "{\"key\":" + format::json_string(c.key) + ",\"kind\":" + format::json_string(c.kind) +
           ",\"detail\":" + format::json_string(c.detail);
    if (c.kind == "values") {
      out += ",\"differing\":" + std::to_string(c.differing);
      if (c.max_abs) {
        char buf[48];
        std::snprintf(buf, sizeof buf, "%.17g", *c.max_abs);
        out += std::string(",\"max_abs_difference\":") + (std::isinf(*c.max_abs) ? "\"inf\"" : buf);
      }
    }
    out += "}";
  }
  out += "]}\n";
  std::fwrite(out.data(), 1, out.size(), stdout);
}

}  // namespace

// diff A B: which tensors differ. Equal checksums of identically sliced tensors mean equal
// values without reading them; otherwise both are read (one tensor at a time) and compared.
int cmd_diff(io::backend& b, const args& a) {
  std::string pa = normalize_prefix(a.path), pb = normalize_prefix(a.other);
  auto ma = load_manifest(b, pa, a);
  if (!ma) return 2;
  auto mb = load_manifest(b, pb, a);
  if (!mb) return 2;
  std::vector<diff_change> changes;
  diff_counts n;
  std::map<std::string, std::pair<const format::saved_tensor*, const format::saved_tensor*>> keys;
  for (const auto& t : ma->tensors) keys[t.key].first = &t;
  for (const auto& t : mb->tensors) keys[t.key].second = &t;
  for (const auto& [key, pair] : keys) {
    const auto* x = pair.first;
    const auto* y = pair.second;
    if (!x || !y) {
      const auto* t = x ? x : y;
      changes.push_back({key, x ? "removed" : "added", std::string(dtype_name(t->type)) + shape_text(t->global), {}, 0});
    } else if (x->type != y->type || x->global != y->global) {
      changes.push_back(
          {key,
           x->type != y->type ? "dtype" : "shape",
           std::string(dtype_name(x->type)) + shape_text(x->global) + " -> " + std::string(dtype_name(y->type)) + shape_text(y->global),
           {},
           0});
    } else if (equal_by_checksum(*ma, *mb, *x, *y)) {
      ++n.same;
      ++n.by_checksum;
    } else {
      ++n.by_value;
      diff_change c{key, "values", {}, {}, 0};
      if (auto r = compare_values(b, pa, *ma, pb, *mb, *x, c); !r) return report_error("diff", r.error(), 2);
      if (c.differing)
        changes.push_back(std::move(c));
      else
        ++n.same;  // equal values stored differently (another slicing, or padding)
    }
  }
  print_diff(a, pa, pb, changes, n);
  return changes.empty() ? 0 : 1;
}

}  // namespace meshckpt::cli
