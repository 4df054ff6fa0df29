// meshckpt: the operator's command-line tool.
//
//   meshckpt inspect PATH [--json]   tensors, dtypes, shapes, saved layouts and meshes, bytes
//   meshckpt verify PATH [--json]    read every byte and check every checksum
//   meshckpt ls DIR [--json]         the checkpoints of a directory and their status
//   meshckpt show PATH KEY           how one tensor was sharded, as a picture
//   meshckpt cat PATH KEY            a tensor's values, numpy-style
//   meshckpt diff A B                which tensors differ between two checkpoints
//   meshckpt export / import         safetensors interchange
//
// Exit status: 0 success (and intact), 1 damage or error found, 2 usage error.

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
#include <vector>

#include "bench.hpp"
#include "values.hpp"
#include "meshckpt/api/checkpoint.hpp"
#include "meshckpt/api/safetensors_io.hpp"
#include "meshckpt/api/tensor_io.hpp"
#include "meshckpt/backends/uring.hpp"
#include "meshckpt/format/describe.hpp"
#include "meshckpt/format/names.hpp"
#include "meshckpt/format/safetensors.hpp"
#include "meshckpt/graph/object_graph.hpp"

namespace {

using namespace meshckpt;

constexpr const char* usage_text =
    "usage: meshckpt <command> [options]\n"
    "\n"
    "commands:\n"
    "  inspect PATH [--json]   list every tensor of checkpoint PATH: dtype, global shape,\n"
    "                          saved layout and mesh, slice count, bytes\n"
    "  verify PATH [--json]    read every byte of checkpoint PATH and check every checksum;\n"
    "                          PATH may be a directory: every committed checkpoint in it is\n"
    "                          verified, leftovers of interrupted saves are listed, and\n"
    "                          every checkpoint its `checkpoint` state file lists must exist\n"
    "  ls DIR [--json]         the checkpoints in DIR: number, time, size, tensors, files,\n"
    "                          status (committed, incomplete leftovers), which is latest\n"
    "  export PATH --to safetensors OUT\n"
    "                          every tensor of checkpoint PATH, whole, into the safetensors\n"
    "                          file OUT (opaque blobs are skipped and named in __metadata__)\n"
    "  import FILE --to PREFIX a safetensors FILE (checked by the format's safety rules) as the\n"
    "                          checkpoint PREFIX, each tensor whole on one device\n"
    "  show PATH KEY           a picture of how tensor KEY of checkpoint PATH was sharded:\n"
    "                          its global shape as a grid of slices, each labelled with the\n"
    "                          devices that held it (* wrote it)\n"
    "  cat PATH KEY [--slice S] [--json]\n"
    "                          the values of tensor KEY (numpy-style, summarized beyond 1000\n"
    "                          elements); S selects like numpy: 0:4,2,: (start:stop or index\n"
    "                          per dimension, negative counts from the end)\n"
    "  diff A B [--json]       tensors added, removed, changed in dtype or shape, or changed in\n"
    "                          value (with the largest absolute difference); checksums are\n"
    "                          compared first, data read only where they differ.\n"
    "                          Exit status 0 identical, 1 different\n"
    "  bench --dir DIR [--workload large|small|stall|reshard|all] [--backend auto|uring|posix]\n"
    "        [--reps N] [--json]\n"
    "                          the workloads of BENCHMARKS.md against fio and memcpy, in the\n"
    "                          same run (medians; drops the page cache when root)\n"
    "\n"
    "PATH is a checkpoint prefix (DIR/NAME, the file DIR/NAME.manifest) or, for verify, a\n"
    "directory. Exit status: 0 ok, 1 damaged or failed, 2 usage error.\n"
    "  --help      this text (meshckpt COMMAND --help: that command's)\n"
    "  --version   print the version\n";

int usage_error(const std::string& msg) {
  std::fprintf(stderr, "meshckpt: %s\n\n%s", msg.c_str(), usage_text);
  return 2;
}

bool is_directory(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

bool exists(const std::string& p) {
  struct stat st;
  return ::lstat(p.c_str(), &st) == 0;
}

// Accepts "DIR/NAME.manifest" as a spelling of the prefix "DIR/NAME".
std::string normalize_prefix(std::string p) {
  if (p.size() > format::manifest_suffix.size() && p.ends_with(format::manifest_suffix) && !exists(p + ".manifest"))
    p.resize(p.size() - format::manifest_suffix.size());
  while (p.size() > 1 && p.ends_with('/')) p.pop_back();
  return p;
}

std::string join(const std::string& dir, const std::string& name) {
  return dir == "." ? name : (dir.ends_with('/') ? dir + name : dir + "/" + name);
}

struct args {
  std::string command, path, key, to, out, other, slice, shards;
  bool json = false;
  bool no_progress = false;
};

// The manifest of `prefix`, or nullopt after printing why not.
std::optional<format::manifest> load_manifest(io::backend& b, const std::string& prefix, const args& a) {
  auto m = read_manifest(b, prefix);
  if (!m) {
    std::fprintf(stderr, "meshckpt %s: %s\n", a.command.c_str(), m.error().what().c_str());
    return std::nullopt;
  }
  return std::move(*m);
}

// Tensor `t` of checkpoint `prefix`, whole, in memory (restored onto one device, checksums
// verified). Tensors above `max_bytes` are refused rather than allocated.
result<dtensor> read_whole(io::backend& b, const std::string& prefix, const format::manifest& m, const format::saved_tensor& t,
                           std::uint64_t max_bytes = std::uint64_t(1) << 62) {
  auto bytes = num_elements(t.global);
  if (bytes && *bytes * dtype_size(t.type) > static_cast<std::int64_t>(std::min<std::uint64_t>(max_bytes, INT64_MAX)))
    return make_error(errc::limit_exceeded, "tensor \"" + t.key + "\" is " + format::human_bytes(static_cast<std::uint64_t>(*bytes * dtype_size(t.type))) +
                                                ", above the " + format::human_bytes(max_bytes) + " this command reads into memory");
  auto one = mesh::create({{"x", 1}}).value();
  BOOST_OUTCOME_TRY(auto l, layout::create(std::vector<std::string>(t.global.size(), "unsharded"), one));
  BOOST_OUTCOME_TRY(auto d, dtensor::create(t.type, t.global, l));
  std::vector<named_tensor> target = {{t.key, d.view()}};
  BOOST_OUTCOME_TRY(read_tensors(b, prefix, m, target));
  return d;
}

// ls DIR: the checkpoints of a directory, from its manifests, leftovers and state file.
int cmd_ls(io::backend& b, const args& a) {
  std::string dir = a.path;
  while (dir.size() > 1 && dir.ends_with('/')) dir.pop_back();
  if (!is_directory(dir)) {
    std::fprintf(stderr, "meshckpt ls: %s is not a directory\n", dir.c_str());
    return 1;
  }
  auto scan = scan_directory(b, dir);
  if (!scan) {
    std::fprintf(stderr, "meshckpt ls: %s\n", scan.error().what().c_str());
    return 1;
  }
  struct row {
    std::string name, status;
    std::optional<std::int64_t> number;
    std::optional<std::uint64_t> created_ms;
    std::uint64_t bytes = 0;
    std::optional<std::size_t> tensors;
    std::size_t files = 0;
    bool latest = false;
  };
  std::map<std::string, row> rows;
  auto number_of = [](const std::string& name) -> std::optional<std::int64_t> {
    auto dash = name.rfind('-');
    if (dash == std::string::npos || dash + 1 == name.size() || name.find_first_not_of("0123456789", dash + 1) != std::string::npos ||
        name.size() - dash > 18)
      return std::nullopt;
    return std::stoll(name.substr(dash + 1));
  };
  for (const auto& name : scan->checkpoints) {
    row r;
    r.name = name;
    r.number = number_of(name);
    auto m = read_manifest(b, join(dir, name));
    if (!m) {
      r.status = "unreadable: " + m.error().what();
    } else {
      r.status = "committed";
      r.created_ms = m->created_unix_ms;
      r.tensors = m->tensors.size();
      r.files = m->files.size();
      for (const auto& f : m->files) r.bytes += f.size;
    }
    rows[name] = r;
  }
  for (const auto& file : scan->leftovers) {
    auto k = format::classify(file);
    const std::string base = k.base.empty() ? file : k.base;
    auto& r = rows[base];
    if (r.name.empty()) {
      r.name = base;
      r.number = number_of(base);
      r.status = "incomplete (files of an interrupted save; the next save of this name removes them)";
    }
    struct stat st;
    if (::stat(join(dir, file).c_str(), &st) == 0) r.bytes += static_cast<std::uint64_t>(st.st_size);
    if (r.status != "committed") ++r.files;
  }
  std::string state_note;
  std::optional<std::string> latest;
  auto st = read_checkpoint_state(b, dir);
  if (st) {
    latest = st->model_checkpoint_path;
    if (auto it = rows.find(*latest); it != rows.end()) it->second.latest = true;
    else state_note = "the state file names " + *latest + ", which is missing";
  } else if (st.error().code != errc::not_found) {
    state_note = "the state file is unreadable: " + st.error().what();
  }
  std::vector<row> sorted;
  for (auto& [n, r] : rows) sorted.push_back(r);
  std::sort(sorted.begin(), sorted.end(), [](const row& x, const row& y) {
    auto px = x.name.substr(0, x.name.rfind('-')), py = y.name.substr(0, y.name.rfind('-'));
    if (x.number && y.number && px == py) return *x.number < *y.number;
    return x.name < y.name;
  });
  if (a.json) {
    std::string o = "{\"directory\":" + format::json_string(dir) + ",\"state_file\":{\"present\":" + (st ? "true" : "false") +
                    ",\"latest\":" + (latest ? format::json_string(*latest) : std::string("null")) +
                    ",\"problem\":" + (state_note.empty() ? std::string("null") : format::json_string(state_note)) + "},\"checkpoints\":[";
    for (std::size_t i = 0; i < sorted.size(); ++i) {
      const auto& r = sorted[i];
      o += std::string(i ? "," : "") + "{\"name\":" + format::json_string(r.name) +
           ",\"number\":" + (r.number ? std::to_string(*r.number) : "null") +
           ",\"created_unix_ms\":" + (r.created_ms ? std::to_string(*r.created_ms) : "null") + ",\"bytes\":" + std::to_string(r.bytes) +
           ",\"tensors\":" + (r.tensors ? std::to_string(*r.tensors) : "null") + ",\"files\":" + std::to_string(r.files) +
           ",\"status\":" + format::json_string(r.status == "committed" ? "committed" : r.status.starts_with("incomplete") ? "incomplete" : "unreadable") +
           ",\"latest\":" + (r.latest ? "true" : "false") + "}";
    }
    std::printf("%s]}\n", o.c_str());
    return 0;
  }
  std::printf("%s: %zu checkpoint%s", dir.c_str(), scan->checkpoints.size(), scan->checkpoints.size() == 1 ? "" : "s");
  if (latest) std::printf(", latest %s (from the state file)", latest->c_str());
  std::printf("\n");
  if (!state_note.empty()) std::printf("  note: %s\n", state_note.c_str());
  if (sorted.empty()) return 0;
  std::size_t w = 4;
  for (const auto& r : sorted) w = std::max(w, r.name.size());
  std::printf("  %-*s  %6s  %-20s  %10s  %7s  %5s  %s\n", static_cast<int>(w), "NAME", "NUMBER", "CREATED", "SIZE", "TENSORS", "FILES", "STATUS");
  for (const auto& r : sorted)
    std::printf("  %-*s  %6s  %-20s  %10s  %7s  %5zu  %s%s\n", static_cast<int>(w), r.name.c_str(), r.number ? std::to_string(*r.number).c_str() : "-",
                r.created_ms ? format::iso_time(*r.created_ms).c_str() : "-", format::human_bytes(r.bytes).c_str(),
                r.tensors ? std::to_string(*r.tensors).c_str() : "-", r.files, r.status.c_str(), r.latest ? ", latest" : "");
  return 0;
}

// Writes the tensors `which` of checkpoint `prefix` into the safetensors file `out` (through the
// backend, published durably: api/safetensors_io.hpp).
result<void> write_safetensors_file(io::backend& b, const std::string& prefix, const format::manifest& m,
                                    const std::vector<const format::saved_tensor*>& which, const std::map<std::string, std::string>& meta,
                                    const std::string& out) {
  std::vector<std::string> keys;
  for (const auto* t : which) keys.push_back(t->key);
  return export_safetensors(b, prefix, m, keys, meta, out);
}

// export PATH --to safetensors OUT [--shards N|processes]: every tensor, whole, into one
// safetensors file; or, with --shards, into OUT/model-0000k-of-0000N.safetensors plus
// OUT/model.safetensors.index.json, as Hugging Face tools expect.
int cmd_export(io::backend& b, const args& a) {
  const std::string prefix = normalize_prefix(a.path);
  auto m = load_manifest(b, prefix, a);
  if (!m) return 1;
  std::vector<const format::saved_tensor*> which;
  std::string skipped;
  std::uint64_t total = 0;
  for (const auto& t : m->tensors) {
    if (t.type == dtype::blob) {
      skipped += (skipped.empty() ? "" : ",") + t.key;
      continue;
    }
    which.push_back(&t);
    total += static_cast<std::uint64_t>(num_elements(t.global).value_or(0) * dtype_size(t.type));
  }
  std::map<std::string, std::string> meta = {{"format", "pt"}, {"meshckpt.source", prefix}, {"meshckpt.writer", m->writer}};
  if (!skipped.empty()) meta["meshckpt.skipped_blobs"] = skipped;
  const std::string skipped_note = skipped.empty() ? "" : " (opaque blobs skipped: " + skipped + ")";
  if (a.shards.empty()) {
    if (auto w = write_safetensors_file(b, prefix, *m, which, meta, a.out); !w) {
      std::fprintf(stderr, "meshckpt export: writing %s: %s\n", a.out.c_str(), w.error().what().c_str());
      return 1;
    }
    std::printf("exported %zu tensors of %s to %s%s\n", which.size(), prefix.c_str(), a.out.c_str(), skipped_note.c_str());
    return 0;
  }
  // The groups: by the process that wrote most of each tensor's bytes (data file k belongs to
  // process k / 10000, docs/FORMAT.md), or N groups of about equal size in key order.
  std::vector<std::vector<const format::saved_tensor*>> groups;
  if (a.shards == "processes") {
    std::map<std::uint64_t, std::vector<const format::saved_tensor*>> by_process;
    for (const auto* t : which) {
      std::map<std::uint64_t, std::uint64_t> bytes;
      for (const auto& sl : t->slices) {
        const auto& fname = m->files[sl.file].name;
        const auto dash = fname.rfind('-');
        const std::uint64_t k = dash == std::string::npos ? 0 : std::strtoull(fname.c_str() + dash + 1, nullptr, 10);
        bytes[k / 10000] += sl.length;
      }
      auto best = std::max_element(bytes.begin(), bytes.end(), [](auto& x, auto& y) { return x.second < y.second; });
      by_process[best == bytes.end() ? 0 : best->first].push_back(t);
    }
    for (auto& [p, g] : by_process) groups.push_back(std::move(g));
  } else {
    const long n = std::atol(a.shards.c_str());
    if (n < 1 || n > 99999 || a.shards.find_first_not_of("0123456789") != std::string::npos) {
      std::fprintf(stderr, "meshckpt export: --shards takes a count from 1 to 99999 or \"processes\", not \"%s\"\n", a.shards.c_str());
      return 2;
    }
    const std::uint64_t target = (total + static_cast<std::uint64_t>(n) - 1) / static_cast<std::uint64_t>(n);
    groups.emplace_back();
    std::uint64_t in_group = 0;
    for (const auto* t : which) {
      const auto bytes = static_cast<std::uint64_t>(num_elements(t->global).value_or(0) * dtype_size(t->type));
      if (!groups.back().empty() && in_group + bytes > target && static_cast<long>(groups.size()) < n) {
        groups.emplace_back();
        in_group = 0;
      }
      groups.back().push_back(t);
      in_group += bytes;
    }
  }
  if (::mkdir(a.out.c_str(), 0755) != 0 && errno != EEXIST) {
    std::fprintf(stderr, "meshckpt export: cannot create directory %s\n", a.out.c_str());
    return 1;
  }
  format::safetensors_index index;
  index.total_size = total;
  char name[64];
  for (std::size_t g = 0; g < groups.size(); ++g) {
    std::snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", g + 1, groups.size());
    if (auto w = write_safetensors_file(b, prefix, *m, groups[g], meta, join(a.out, name)); !w) {
      std::fprintf(stderr, "meshckpt export: writing %s: %s\n", join(a.out, name).c_str(), w.error().what().c_str());
      return 1;
    }
    for (const auto* t : groups[g]) index.weight_map[t->key] = name;
  }
  // The index last, under a temp name: a reader that finds it finds every shard.
  const std::string idx_path = join(a.out, "model.safetensors.index.json");
  const std::string text = format::encode_safetensors_index(index);
  if (auto w = write_file_durably(b, idx_path, std::as_bytes(std::span(text.data(), text.size()))); !w) {
    std::fprintf(stderr, "meshckpt export: writing %s: %s\n", idx_path.c_str(), w.error().what().c_str());
    return 1;
  }
  std::printf("exported %zu tensors of %s to %zu safetensors shards in %s (index: model.safetensors.index.json)%s\n", which.size(),
              prefix.c_str(), groups.size(), a.out.c_str(), skipped_note.c_str());
  return 0;
}

// import FILE --to PREFIX: a safetensors file, or a sharded model through its
// model.safetensors.index.json (validated by the format's safety rules), as a meshckpt
// checkpoint, each tensor whole on one device.
int cmd_import(io::backend& b, const args& a) {
  auto listed = list_safetensors(b, a.path);
  if (!listed) {
    std::fprintf(stderr, "meshckpt import: %s\n", listed.error().what().c_str());
    return 1;
  }
  auto one = mesh::create({{"x", 1}}).value();
  std::deque<dtensor> keep;
  std::vector<named_tensor> tensors;
  for (const auto& e : *listed) {
    auto l = layout::create(std::vector<std::string>(e.dims.size(), "unsharded"), one).value();
    auto d = dtensor::create(e.type, e.dims, l);
    if (!d) {
      std::fprintf(stderr, "meshckpt import: tensor \"%s\": %s\n", e.name.c_str(), d.error().what().c_str());
      return 1;
    }
    keep.push_back(std::move(*d));
    tensors.push_back({e.name, keep.back().view()});
  }
  if (auto r = read_safetensors(b, a.path, tensors); !r) {
    std::fprintf(stderr, "meshckpt import: %s\n", r.error().what().c_str());
    return 1;
  }
  auto w = write_tensors(b, a.to, tensors);
  if (!w) {
    std::fprintf(stderr, "meshckpt import: %s\n", w.error().what().c_str());
    return 1;
  }
  std::printf("imported %zu tensors from %s as %s\n", tensors.size(), a.path.c_str(), w->manifest_path.c_str());
  return 0;
}

// show PATH KEY: how one tensor was sharded when saved.
int cmd_show(io::backend& b, const args& a) {
  const std::string prefix = normalize_prefix(a.path);
  auto m = load_manifest(b, prefix, a);
  if (!m) return 1;
  const auto* t = m->find(a.key);
  if (!t) {
    std::fprintf(stderr, "meshckpt show: no tensor \"%s\" in %s (it has %zu; `meshckpt inspect %s` lists them)\n", a.key.c_str(),
                 prefix.c_str(), m->tensors.size(), prefix.c_str());
    return 1;
  }
  auto pic = format::describe_sharding(*m, *t);
  if (!pic) {
    std::fprintf(stderr, "meshckpt show: %s\n", pic.error().what().c_str());
    return 1;
  }
  std::fputs(pic->c_str(), stdout);
  return 0;
}

int cmd_inspect(io::backend& b, const args& a) {
  std::string prefix = normalize_prefix(a.path);
  if (is_directory(prefix) && !exists(prefix + ".manifest")) {
    auto scan = scan_directory(b, prefix);
    std::string names;
    if (scan)
      for (const auto& c : scan->checkpoints) names += "\n  " + join(prefix, c);
    std::fprintf(stderr, "meshckpt inspect: %s is a directory; give a checkpoint prefix DIR/NAME%s%s\n", prefix.c_str(),
                 names.empty() ? " (it holds no committed checkpoint)" : ". Checkpoints there:", names.c_str());
    return 1;
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
      std::fprintf(stderr, "meshckpt inspect: %s: object graph: %s\n", prefix.c_str(), g.error().what().c_str());
      return 1;
    }
    if (a.json) {
      std::string j = ",\"object_graph\":[";
      for (std::size_t i = 0; i < g->nodes.size(); ++i) {
        const auto& n = g->nodes[i];
        j += std::string(i ? "," : "") + "{\"id\":" + std::to_string(i) + ",\"value\":" + (n.has_value ? format::json_string(n.key) : "null") +
             ",\"children\":[";
        for (std::size_t c = 0; c < n.children.size(); ++c)
          j += std::string(c ? "," : "") + "{\"name\":" + format::json_string(n.children[c].first) + ",\"id\":" + std::to_string(n.children[c].second) + "}";
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
  const std::string prefix = normalize_prefix(a.path);
  auto m = load_manifest(b, prefix, a);
  if (!m) return 1;
  const auto* t = m->find(a.key);
  if (!t) {
    std::fprintf(stderr, "meshckpt cat: no tensor \"%s\" in %s (`meshckpt inspect %s` lists them)\n", a.key.c_str(), prefix.c_str(),
                 prefix.c_str());
    return 1;
  }
  if (t->type == dtype::blob) {
    std::fprintf(stderr, "meshckpt cat: tensor \"%s\" is an opaque blob (%s); meshckpt does not interpret its bytes\n", a.key.c_str(),
                 format::human_bytes(static_cast<std::uint64_t>(num_elements(t->global).value_or(0))).c_str());
    return 1;
  }
  auto sel = cli::parse_slice(a.slice, t->global);
  if (!sel) {
    std::fprintf(stderr, "meshckpt cat: %s\n", sel.error().what().c_str());
    return 2;
  }
  auto d = read_whole(b, prefix, *m, *t, std::uint64_t(4) << 30);
  if (!d) {
    std::fprintf(stderr, "meshckpt cat: %s\n", d.error().what().c_str());
    return 1;
  }
  const auto& data = d->view().shards().front().data;
  auto v = cli::select(t->type, data, t->global, *sel);
  auto shape_json = [](const shape& s) {
    std::string o = "[";
    for (std::size_t i = 0; i < s.size(); ++i) o += (i ? "," : "") + std::to_string(s[i]);
    return o + "]";
  };
  if (a.json) {
    if (v.offsets.size() > 10'000'000) {
      std::fprintf(stderr, "meshckpt cat: %zu values are too many for --json; select fewer with --slice\n", v.offsets.size());
      return 1;
    }
    std::string out = "{\"key\":" + format::json_string(t->key) + ",\"dtype\":" + format::json_string(std::string(dtype_name(t->type))) +
                      ",\"shape\":" + shape_json(t->global) + ",\"slice\":" + format::json_string(a.slice) +
                      ",\"selected_shape\":" + shape_json(v.dims) + ",\"values\":" + cli::json_values(t->type, data, v) + "}\n";
    std::fwrite(out.data(), 1, out.size(), stdout);
    return 0;
  }
  std::string dims;
  for (std::size_t i = 0; i < t->global.size(); ++i) dims += (i ? ", " : "") + std::to_string(t->global[i]);
  std::string out = t->key + ": " + std::string(dtype_name(t->type)) + "[" + dims + "]" + (a.slice.empty() ? "" : " [" + a.slice + "]") + "\n" +
                    cli::format_values(t->type, data, v) + "\n";
  std::fwrite(out.data(), 1, out.size(), stdout);
  return 0;
}

// diff A B: which tensors differ. Equal checksums of identically sliced tensors mean equal
// values without reading them; otherwise both are read (one tensor at a time) and compared.
int cmd_diff(io::backend& b, const args& a) {
  const std::string pa = normalize_prefix(a.path), pb = normalize_prefix(a.other);
  auto ma = load_manifest(b, pa, a);
  if (!ma) return 2;
  auto mb = load_manifest(b, pb, a);
  if (!mb) return 2;
  struct change {
    std::string key, kind, detail;
    std::optional<double> max_abs;
    std::uint64_t differing = 0;
  };
  std::vector<change> changes;
  std::size_t same = 0, compared_by_checksum = 0, compared_by_value = 0;
  std::map<std::string, std::pair<const format::saved_tensor*, const format::saved_tensor*>> keys;
  for (const auto& t : ma->tensors) keys[t.key].first = &t;
  for (const auto& t : mb->tensors) keys[t.key].second = &t;
  auto shape_text = [](const shape& s) {
    std::string o = "[";
    for (std::size_t i = 0; i < s.size(); ++i) o += (i ? ", " : "") + std::to_string(s[i]);
    return o + "]";
  };
  for (const auto& [key, pair] : keys) {
    const auto* x = pair.first;
    const auto* y = pair.second;
    if (!y) {
      changes.push_back({key, "removed", std::string(dtype_name(x->type)) + shape_text(x->global), {}, 0});
      continue;
    }
    if (!x) {
      changes.push_back({key, "added", std::string(dtype_name(y->type)) + shape_text(y->global), {}, 0});
      continue;
    }
    if (x->type != y->type || x->global != y->global) {
      changes.push_back({key, x->type != y->type ? "dtype" : "shape",
                         std::string(dtype_name(x->type)) + shape_text(x->global) + " -> " + std::string(dtype_name(y->type)) + shape_text(y->global),
                         {}, 0});
      continue;
    }
    // Same slicing and chunking: the checksums decide (XXH3-64 per chunk).
    bool same_slicing = ma->chunk_bytes == mb->chunk_bytes && x->slices.size() == y->slices.size();
    for (std::size_t i = 0; same_slicing && i < x->slices.size(); ++i)
      same_slicing = x->slices[i].where.origin == y->slices[i].where.origin && x->slices[i].where.extent == y->slices[i].where.extent;
    if (same_slicing) {
      bool equal = true;
      for (std::size_t i = 0; equal && i < x->slices.size(); ++i) equal = x->slices[i].checksums == y->slices[i].checksums;
      if (equal) {
        ++same;
        ++compared_by_checksum;
        continue;
      }
    }
    ++compared_by_value;
    auto da = read_whole(b, pa, *ma, *x);
    auto db = da ? read_whole(b, pb, *mb, *y) : result<dtensor>(da.error());
    if (!da || !db) {
      std::fprintf(stderr, "meshckpt diff: %s\n", (!da ? da.error() : db.error()).what().c_str());
      return 2;
    }
    const auto& bx = da->view().shards().front().data;
    const auto& by = db->view().shards().front().data;
    change c{key, "values", {}, {}, 0};
    if (x->type == dtype::blob) {
      for (std::size_t i = 0; i < bx.size(); ++i) c.differing += bx[i] != by[i];
    } else {
      const std::size_t n = bx.size() / static_cast<std::size_t>(dtype_size(x->type));
      const std::size_t es = static_cast<std::size_t>(dtype_size(x->type));
      double worst = 0;
      for (std::size_t i = 0; i < n; ++i) {
        if (std::memcmp(bx.data() + i * es, by.data() + i * es, es) == 0) continue;
        ++c.differing;
        double u = *cli::element(x->type, bx, i), w = *cli::element(x->type, by, i);
        double diff = std::fabs(u - w);
        if (std::isnan(diff)) diff = INFINITY;  // NaN on one side only, or NaNs of other bits
        worst = std::max(worst, diff);
      }
      if (c.differing) c.max_abs = worst;
    }
    if (c.differing == 0) {
      ++same;  // equal values stored differently (another slicing, or padding)
      continue;
    }
    char buf[96];
    if (c.max_abs) std::snprintf(buf, sizeof buf, "%llu element(s) differ, max abs difference %.9g", (unsigned long long)c.differing, *c.max_abs);
    else std::snprintf(buf, sizeof buf, "%llu byte(s) differ", (unsigned long long)c.differing);
    c.detail = buf;
    changes.push_back(std::move(c));
  }
  if (a.json) {
    std::string out = "{\"a\":" + format::json_string(pa) + ",\"b\":" + format::json_string(pb) + ",\"identical\":" +
                      (changes.empty() ? "true" : "false") + ",\"unchanged\":" + std::to_string(same) +
                      ",\"compared_by_checksum\":" + std::to_string(compared_by_checksum) +
                      ",\"compared_by_value\":" + std::to_string(compared_by_value) + ",\"changes\":[";
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
  } else {
    for (const auto& c : changes) std::printf("%-8s %s  %s\n", c.kind.c_str(), c.key.c_str(), c.detail.c_str());
    std::printf("%zu tensor(s) differ, %zu identical; %zu compared by checksum, %zu read and compared\n", changes.size(), same,
                compared_by_checksum, compared_by_value);
  }
  return changes.empty() ? 0 : 1;
}

// A progress bar on stderr while verify reads, when stderr is a terminal (or MESHCKPT_PROGRESS
// is set, for tests); redrawn at most ten times a second, erased at the end.
class progress_bar {
 public:
  progress_bar(bool enabled, std::string label) : on_(enabled), label_(std::move(label)), start_(std::chrono::steady_clock::now()) {}
  void update(std::uint64_t done, std::uint64_t total) {
    if (!on_) return;
    auto now = std::chrono::steady_clock::now();
    // Not before 0.2 s (no rate to speak of yet), then ten times a second, and the end.
    if (done < total && (now - start_ < std::chrono::milliseconds(200) || now - last_ < std::chrono::milliseconds(100))) return;
    last_ = now;
    const double secs = std::chrono::duration<double>(now - start_).count();
    const double rate = secs > 0 ? done / secs : 0;
    const double frac = total ? static_cast<double>(done) / total : 1.0;
    const int cells = 24, full = static_cast<int>(frac * cells);
    std::string bar(static_cast<std::size_t>(full), '#');
    bar += std::string(static_cast<std::size_t>(cells - full), '.');
    std::string eta = rate > 0 && done < total ? std::to_string(static_cast<long long>((total - done) / rate + 0.5)) + "s" : "-";
    std::fprintf(stderr, "\r%s [%s] %3d%%  %s / %s  %s/s  ETA %s\033[K", label_.c_str(), bar.c_str(), static_cast<int>(frac * 100),
                 format::human_bytes(done).c_str(), format::human_bytes(total).c_str(), format::human_bytes(static_cast<std::uint64_t>(rate)).c_str(),
                 eta.c_str());
    drawn_ = true;
  }
  ~progress_bar() {
    if (drawn_) std::fprintf(stderr, "\r\033[K");
  }

 private:
  bool on_;
  std::string label_;
  std::chrono::steady_clock::time_point start_, last_{};
  bool drawn_ = false;
};

std::string code_name(const error& e) { return e.code.message(); }

int cmd_verify(io::backend& b, const args& a) {
  std::string path = normalize_prefix(a.path);
  std::vector<std::string> prefixes;
  std::vector<std::string> leftovers;
  std::vector<std::string> state_problems;
  bool state_present = false;
  if (is_directory(path) && !exists(path + ".manifest")) {
    auto scan = scan_directory(b, path);
    if (!scan) {
      std::fprintf(stderr, "meshckpt verify: %s\n", scan.error().what().c_str());
      return 1;
    }
    for (const auto& c : scan->checkpoints) prefixes.push_back(join(path, c));
    for (const auto& l : scan->leftovers) leftovers.push_back(join(path, l));
    // The directory's `checkpoint` state file: every checkpoint it lists must be present (and,
    // like every checkpoint here, intact).
    auto st = read_checkpoint_state(b, path);
    if (st) {
      state_present = true;
      std::vector<std::string> listed = st->all_model_checkpoint_paths;
      if (!st->model_checkpoint_path.empty()) listed.push_back(st->model_checkpoint_path);
      for (const auto& name : listed)
        if (std::find(scan->checkpoints.begin(), scan->checkpoints.end(), name) == scan->checkpoints.end() &&
            std::find(state_problems.begin(), state_problems.end(), name) == state_problems.end())
          state_problems.push_back(join(path, "checkpoint") + " lists " + name + ", which is missing (no " + name + ".manifest)");
    } else if (st.error().code != errc::not_found) {
      state_present = true;
      state_problems.push_back(st.error().what());
    }
    if (prefixes.empty()) {
      if (a.json)
        std::printf("{\"ok\":false,\"error\":%s,\"checkpoints\":[],\"leftovers\":[]}\n",
                    format::json_string("no checkpoint found in " + path).c_str());
      std::fprintf(stderr, "meshckpt verify: no checkpoint found in %s%s\n", path.c_str(),
                   leftovers.empty() ? "" : " (only leftovers of interrupted saves)");
      return 1;
    }
  } else {
    prefixes.push_back(path);
  }
  bool all_ok = state_problems.empty();
  std::string json = "{\"checkpoints\":[";
  for (std::size_t i = 0; i < prefixes.size(); ++i) {
    const auto& p = prefixes[i];
    const bool show_progress = !a.no_progress && (std::getenv("MESHCKPT_PROGRESS") || (!a.json && ::isatty(STDERR_FILENO)));
    std::optional<progress_bar> bar;
    bar.emplace(show_progress, "verifying " + p);
    auto r = verify(b, p, [&bar](std::uint64_t done, std::uint64_t total) { bar->update(done, total); });
    bar.reset();
    std::vector<error> problems;
    verify_report rep;
    if (!r) problems.push_back(r.error());
    else {
      rep = *r;
      problems = rep.problems;
    }
    all_ok = all_ok && problems.empty();
    if (a.json) {
      json += std::string(i ? "," : "") + "{\"prefix\":" + format::json_string(p) + ",\"ok\":" + (problems.empty() ? "true" : "false") +
              ",\"tensors\":" + std::to_string(rep.tensors) + ",\"slices\":" + std::to_string(rep.slices) +
              ",\"files\":" + std::to_string(rep.files) + ",\"bytes_checked\":" + std::to_string(rep.bytes_checked) +
              ",\"problems\":[";
      for (std::size_t j = 0; j < problems.size(); ++j)
        json += std::string(j ? "," : "") + "{\"code\":" + format::json_string(code_name(problems[j])) +
                ",\"message\":" + format::json_string(problems[j].what()) + "}";
      json += "]}";
    } else if (problems.empty()) {
      std::printf("ok        %s  (%zu tensors, %zu slices, %zu data file%s, %s checked)\n", p.c_str(), rep.tensors, rep.slices,
                  rep.files, rep.files == 1 ? "" : "s", format::human_bytes(rep.bytes_checked).c_str());
    } else {
      std::printf("DAMAGED   %s\n", p.c_str());
      for (const auto& e : problems) std::printf("          %s\n", e.what().c_str());
    }
  }
  if (a.json) {
    json += "],\"leftovers\":[";
    for (std::size_t i = 0; i < leftovers.size(); ++i) json += std::string(i ? "," : "") + format::json_string(leftovers[i]);
    json += "],\"state_file\":{\"present\":" + std::string(state_present ? "true" : "false") + ",\"problems\":[";
    for (std::size_t i = 0; i < state_problems.size(); ++i) json += std::string(i ? "," : "") + format::json_string(state_problems[i]);
    json += "]},\"ok\":" + std::string(all_ok ? "true" : "false") + "}\n";
    std::fwrite(json.data(), 1, json.size(), stdout);
  } else {
    for (const auto& l : leftovers) std::printf("leftover  %s  (from an interrupted save; not a checkpoint, ignored)\n", l.c_str());
    for (const auto& p : state_problems) std::printf("DAMAGED   %s\n", p.c_str());
  }
  return all_ok ? 0 : 1;
}

int bench_main(const std::vector<std::string>& av) {
  cli::bench_args b;
  for (std::size_t i = 1; i < av.size(); ++i) {
    auto value = [&]() -> std::optional<std::string> {
      if (i + 1 >= av.size()) return std::nullopt;
      return av[++i];
    };
    std::optional<std::string> v;
    if (av[i] == "--json") b.json = true;
    else if (av[i] == "--help") {
      std::fputs(usage_text, stdout);
      return 0;
    } else if (av[i] == "--dir" && (v = value())) b.dir = *v;
    else if (av[i] == "--workload" && (v = value())) b.workload = *v;
    else if (av[i] == "--backend" && (v = value())) b.backend = *v;
    else if (av[i] == "--reps" && (v = value())) b.reps = std::max(1, std::atoi(v->c_str()));
    else return usage_error("bench: unknown or incomplete option " + av[i]);
  }
  if (b.dir.empty()) return usage_error("bench needs --dir DIR (on the disk to measure)");
  if (b.backend != "auto" && b.backend != "uring" && b.backend != "posix") return usage_error("bench: --backend is auto, uring or posix");
  return cli::run_bench(b);
}

// The subcommands: how each is called, its help, and what it accepts.
struct command_spec {
  const char* name;
  const char* synopsis;
  const char* help;
  std::size_t operands;
  bool json, to, slice, progress;
  int (*run)(io::backend&, const args&);
};

const command_spec commands[] = {
    {"inspect", "inspect PATH [--json]",
     "Lists every tensor of checkpoint PATH (DIR/NAME or DIR/NAME.manifest): dtype, global shape,\n"
     "saved layout and mesh, slices, bytes; then the object graph the checkpoint recorded (the\n"
     "tree of objects and the tensors they hold) and any other extensions.",
     1, true, false, false, false, cmd_inspect},
    {"verify", "verify PATH [--json] [--no-progress]",
     "Reads every byte of checkpoint PATH and checks every checksum and file size. PATH may be a\n"
     "directory: every committed checkpoint in it is verified, leftovers of interrupted saves are\n"
     "listed, and every checkpoint its `checkpoint` state file lists must exist. On a terminal a\n"
     "progress bar (bytes, rate, ETA) is drawn on stderr. Exit status 0 intact, 1 damaged.",
     1, true, false, false, true, cmd_verify},
    {"ls", "ls DIR [--json]",
     "The checkpoints in DIR: number, creation time, size, tensors, files, status (committed,\n"
     "incomplete leftovers, unreadable), and which one the state file names latest.",
     1, true, false, false, false, cmd_ls},
    {"show", "show PATH KEY",
     "A picture of how tensor KEY of checkpoint PATH was sharded: its global shape as a grid of\n"
     "slices, each labelled with the devices that held it (* marks the one that wrote it).",
     2, false, false, false, false, cmd_show},
    {"cat", "cat PATH KEY [--slice S] [--json]",
     "The values of tensor KEY of checkpoint PATH, numpy-style (summarized with ... beyond 1000\n"
     "elements). --slice selects like numpy, per dimension start:stop, an index, or : (e.g.\n"
     "0:4,2 or -1); --json prints every selected value as nested arrays. Reads the whole tensor\n"
     "(up to 4 GiB) onto one device, checksums verified.",
     2, true, false, true, false, cmd_cat},
    {"diff", "diff A B [--json]",
     "Which tensors differ between checkpoints A and B: added, removed, dtype or shape changed,\n"
     "values changed (count and largest absolute difference). Checksums are compared first;\n"
     "data is read only when they differ. Exit status 0 identical, 1 different, 2 trouble.",
     2, true, false, false, false, cmd_diff},
    {"export", "export PATH --to safetensors OUT [--shards N|processes]",
     "Every tensor of checkpoint PATH, whole, into the safetensors file OUT (written to a temp\n"
     "name, fsynced, renamed). Opaque blobs are skipped and named in __metadata__. With --shards,\n"
     "OUT is a directory receiving model-0000k-of-0000N.safetensors files and the\n"
     "model.safetensors.index.json Hugging Face tools read: N files of about equal size, or one\n"
     "per process that wrote the checkpoint (each tensor with the process that wrote most of it).",
     2, false, true, false, false, cmd_export},
    {"import", "import FILE --to PREFIX",
     "The safetensors FILE, or the sharded model of a model.safetensors.index.json (checked by\n"
     "the format's safety rules), as the checkpoint PREFIX, each tensor whole on one device.",
     1, false, true, false, false, cmd_import},
};

int command_usage_error(const command_spec& c, const std::string& msg) {
  std::fprintf(stderr, "meshckpt %s: %s\nusage: meshckpt %s\n(meshckpt %s --help for more)\n", c.name, msg.c_str(), c.synopsis, c.name);
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> av(argv + 1, argv + argc);
  if (!av.empty() && av[0] == "bench") return bench_main(av);
  args a;
  bool help = false;
  std::vector<std::string> positional;
  for (std::size_t i = 0; i < av.size(); ++i) {
    const auto& s = av[i];
    auto value = [&](std::string& out) {
      if (i + 1 >= av.size()) return false;
      out = av[++i];
      return true;
    };
    if (s == "--help" || s == "-h") help = true;
    else if (s == "--version") {
      std::printf("meshckpt %s\n", MESHCKPT_VERSION);
      return 0;
    } else if (s == "--json") a.json = true;
    else if (s == "--no-progress") a.no_progress = true;
    else if (s == "--to") {
      if (!value(a.to)) return usage_error("--to needs a value");
    } else if (s == "--slice") {
      if (!value(a.slice)) return usage_error("--slice needs a value");
    } else if (s == "--shards") {
      if (!value(a.shards)) return usage_error("--shards needs a value");
    } else if (s.starts_with("--") || (s.starts_with("-") && s.size() > 1 && !std::isdigit(static_cast<unsigned char>(s[1])))) {
      return usage_error("unknown option " + s);
    } else {
      positional.push_back(s);
    }
  }
  if (positional.empty()) {
    if (help) {
      std::fputs(usage_text, stdout);
      return 0;
    }
    return usage_error("no command given");
  }
  a.command = positional[0];
  const command_spec* cmd = nullptr;
  for (const auto& c : commands)
    if (a.command == c.name) cmd = &c;
  if (!cmd) return usage_error("unknown command \"" + a.command + "\"");
  if (help) {
    std::printf("usage: meshckpt %s\n\n%s\n", cmd->synopsis, cmd->help);
    return 0;
  }
  if (a.json && !cmd->json) return command_usage_error(*cmd, std::string("has no --json") + (a.command == "show" ? "; for data use inspect --json" : ""));
  if (!a.to.empty() && !cmd->to) return command_usage_error(*cmd, "has no --to");
  if (!a.slice.empty() && !cmd->slice) return command_usage_error(*cmd, "has no --slice");
  if (!a.shards.empty() && a.command != "export") return command_usage_error(*cmd, "has no --shards");
  if (a.no_progress && !cmd->progress) return command_usage_error(*cmd, "has no --no-progress");
  if (positional.size() - 1 != cmd->operands)
    return command_usage_error(*cmd, "takes " + std::to_string(cmd->operands) + " operand(s), got " + std::to_string(positional.size() - 1));
  if (cmd->to && a.to.empty()) return command_usage_error(*cmd, "needs --to");
  if (a.command == "export" && a.to != "safetensors") return command_usage_error(*cmd, "exports only --to safetensors");
  a.path = positional[1];
  if (cmd->operands == 2) {
    if (a.command == "show" || a.command == "cat") a.key = positional[2];
    else if (a.command == "diff") a.other = positional[2];
    else a.out = positional[2];
  }
  auto backend = backends::make_backend(backends::backend_kind::automatic);
  if (!backend) {
    std::fprintf(stderr, "meshckpt: %s\n", backend.error().what().c_str());
    return 1;
  }
  return cmd->run(**backend, a);
}
