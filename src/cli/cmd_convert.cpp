// meshckpt export / import: safetensors and TensorFlow interchange.

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
#include <set>
#include <optional>
#include <cstdio>
#include <string>
#include <vector>

#include "bench.hpp"
#include "values.hpp"
#include "meshckpt/api/checkpoint.hpp"
#include "meshckpt/interchange/safetensors_io.hpp"
#include "meshckpt/interchange/torch_io.hpp"
#include "meshckpt/pipeline/tensor_io.hpp"
#include "meshckpt/interchange/tf_bundle_io.hpp"
#include "meshckpt/format/describe.hpp"
#include "meshckpt/format/names.hpp"
#include "meshckpt/format/safetensors.hpp"
#include "meshckpt/graph/object_graph.hpp"

#include "commands.hpp"

namespace meshckpt::cli {

// Writes the tensors `which` of checkpoint `prefix` into the safetensors file `out` (through the
// backend, published durably: api/safetensors_io.hpp).
result<void> write_safetensors_file(io::backend& b, const std::string& prefix, const format::manifest& m,
                                    const std::vector<const format::saved_tensor*>& which, const std::map<std::string, std::string>& meta,
                                    const std::string& out) {
  std::vector<std::string> keys;
  for (const auto* t : which) keys.push_back(t->key);
  return export_safetensors(b, prefix, m, keys, meta, out);
}

// export PATH --to torch OUT [--skip-unsupported]: every tensor into one torch.save file.
// What torch cannot hold is refused, or left out and listed, never dropped silently.
int export_to_torch(io::backend& b, const args& a, std::string prefix) {
  auto m = load_manifest(b, prefix, a);
  if (!m) return 1;
  std::vector<std::string> keys, skipped;
  for (const auto& t : m->tensors) {
    const bool unsigned_wide = t.type == dtype::uint16 || t.type == dtype::uint32 || t.type == dtype::uint64;
    if (t.type == dtype::blob || unsigned_wide) {
      skipped.push_back("\"" + format::display_bytes(t.key) + "\" (" +
                        (unsigned_wide ? std::string(dtype_name(t.type)) : "an opaque blob") + ")");
      continue;
    }
    keys.push_back(t.key);
  }
  std::string list;
  for (const auto& s : skipped) list += (list.empty() ? "" : ", ") + s;
  if (!skipped.empty() && !a.skip_unsupported)
    return report_error("export", make_error(errc::unsupported, std::to_string(skipped.size()) + " tensor(s) of " + prefix +
                                                                    " cannot be written to a torch.save file that torch 1.13 loads: " +
                                                                    list + " (--skip-unsupported leaves them out)"));
  if (auto w = export_torch(b, prefix, *m, keys, a.out); !w) return report_error("export", w.error());
  if (!skipped.empty()) report_note("export", "skipped %zu tensor(s): %s", skipped.size(), list.c_str());
  std::printf("exported %zu tensors of %s to the torch.save file %s\n", keys.size(), prefix.c_str(), a.out.c_str());
  return 0;
}

namespace {

// --shards N: a count from 1 to 99999; nullopt when it is not one.
std::optional<long> shard_count(const std::string& shards) {
  const long n = std::atol(shards.c_str());
  if (n < 1 || n > 99999 || shards.find_first_not_of("0123456789") != std::string::npos) return std::nullopt;
  return n;
}

// export PATH --to tf OUT [--shards N]: a TensorFlow bundle of N data files.
int export_to_tf(io::backend& b, const args& a, const std::string& prefix) {
  tf_export_options opt;
  if (!a.shards.empty()) {
    auto n = shard_count(a.shards);
    if (!n) return report_usage("export", "--shards takes a count from 1 to 99999, not \"%s\"", a.shards.c_str());
    opt.num_shards = static_cast<int>(*n);
  }
  auto r = export_tf_bundle(b, prefix, a.out, opt);
  if (!r) return report_error("export", r.error());
  std::printf(
      "exported %zu tensors of %s to the TensorFlow bundle %s (%zu index entries, %zu data file%s, %s)%s\n", r->tensors, prefix.c_str(),
      a.out.c_str(), r->entries, r->files, r->files == 1 ? "" : "s", r->object_graph ? "with its object graph" : "no object graph",
      r->opaque ? (" (" + std::to_string(r->opaque) + " opaque value" + (r->opaque == 1 ? "" : "s") + " as DT_STRING)").c_str() : "");
  return 0;
}

using unsupported_list = std::vector<std::pair<std::string, std::string>>;  // key, why

std::string listed(const unsupported_list& v) {
  std::string out;
  for (const auto& [k, why] : v) out += (out.empty() ? "" : ", ") + ("\"" + format::display_bytes(k) + "\" (" + why + ")");
  return out;
}

// What safetensors cannot hold: opaque blobs, and a TensorFlow bundle's entries of dtypes
// meshckpt lacks (strings, complex, unknown numbers; the reader leaves them out of the
// manifest). Never skipped silently: refused, or with --skip-unsupported left out once checked
// to be intact (a damaged entry fails the export even when it is left out).
result<unsupported_list> unsupported_for_safetensors(io::backend& b, const std::string& prefix, const format::manifest& m, const args& a) {
  unsupported_list unsupported;
  std::set<std::string> tf_skipped;
  for (const auto& t : m.tensors)
    if (!format::safetensors_dtype(t.type))
      unsupported.emplace_back(t.key, t.type == dtype::blob ? "an opaque blob" : std::string(dtype_name(t.type)));
  if (m.checksum == format::checksum_kind::crc32c_whole) {
    BOOST_OUTCOME_TRY(auto idx, read_tf_bundle_index(b, prefix));
    for (const auto& e : idx.entries)
      if (!e.type && e.key != format::tf::object_graph_key) {
        unsupported.emplace_back(e.key, format::tf::tf_dtype_name(e.tf_type));
        tf_skipped.insert(e.key);
      }
  }
  if (unsupported.empty()) return unsupported;
  if (!a.skip_unsupported)
    return make_error(errc::unsupported, std::to_string(unsupported.size()) + " tensor(s) of " + prefix +
                                             " cannot be converted to safetensors: " + listed(unsupported) +
                                             " (--skip-unsupported leaves them out and records them in the metadata)");
  if (!tf_skipped.empty()) {
    BOOST_OUTCOME_TRY(auto v, verify_tf_bundle(b, prefix, {}, &tf_skipped));
    if (!v.problems.empty()) return with_context(v.problems.front(), "checkpoint " + prefix + " is damaged");
  }
  for (const auto& t : m.tensors)
    if (!format::safetensors_dtype(t.type))
      if (auto r = read_whole_checked(b, prefix, m, t); !r) return with_context(r.error(), "checkpoint " + prefix + " is damaged");
  return unsupported;
}

// Renames (--rename OLD=NEW, --rename-file): every OLD must be a tensor that is exported, and
// no two tensors may end with one name. The tensors stay in key order.
result<void> apply_renames(const std::string& prefix, format::manifest& m, const args& a) {
  format::manifest renamed = m;
  BOOST_OUTCOME_TRY(auto map, rename_map(a));
  for (const auto& [from, to] : map) {
    auto* t = const_cast<format::saved_tensor*>(renamed.find(from));
    if (!t) return make_error(errc::not_found, "--rename: " + prefix + " has no tensor \"" + format::display_bytes(from) + "\"");
    t->key = to;
  }
  std::sort(renamed.tensors.begin(), renamed.tensors.end(), [](const auto& x, const auto& y) { return x.key < y.key; });
  for (std::size_t i = 1; i < renamed.tensors.size(); ++i)
    if (renamed.tensors[i].key == renamed.tensors[i - 1].key)
      return make_error(errc::invalid_argument,
                        "--rename: two tensors would be called \"" + format::display_bytes(renamed.tensors[i].key) + "\"");
  m = std::move(renamed);
  return success();
}

std::uint64_t tensor_bytes(const format::saved_tensor& t) {
  return static_cast<std::uint64_t>(num_elements(t.global).value_or(0) * dtype_size(t.type));
}

// The tensors safetensors holds. A safetensors header is JSON: a name must be valid UTF-8 (a
// TensorFlow key need not be).
result<std::vector<const format::saved_tensor*>> safetensors_selection(const format::manifest& m) {
  std::vector<const format::saved_tensor*> which;
  for (const auto& t : m.tensors) {
    if (!format::safetensors_dtype(t.type)) continue;
    if (!format::is_utf8(t.key))
      return make_error(
          errc::invalid_argument,
          "tensor \"" + format::display_bytes(t.key) +
              "\" has a name that is not valid UTF-8, which a safetensors header cannot hold; give it another with --rename '" +
              format::display_bytes(t.key) + "=NEW'");
    which.push_back(&t);
  }
  return which;
}

// The metadata: an imported safetensors file's go back out as they came in; the tensors left
// out are listed under meshckpt.skipped.
result<std::map<std::string, std::string>> safetensors_metadata(const std::string& prefix, const format::manifest& m,
                                                                const unsupported_list& skipped) {
  std::map<std::string, std::string> meta = {{"format", "pt"}, {"meshckpt.source", prefix}, {"meshckpt.writer", m.writer}};
  for (const auto& e : m.extensions) {
    if (e.name != safetensors_metadata_extension) continue;
    auto kept = format::decode_string_map(e.bytes);
    if (!kept) return with_context(kept.error(), prefix + ": extension " + e.name);
    meta = std::move(*kept);
  }
  if (!skipped.empty()) {
    std::string list = "[";
    for (const auto& [k, why] : skipped) list += (list.size() > 1 ? "," : "") + format::json_string(k);
    meta["meshckpt.skipped"] = list + "]";
  }
  return meta;
}

using tensor_groups = std::vector<std::vector<const format::saved_tensor*>>;

// By the process that wrote most of each tensor's bytes (data file k belongs to process
// k / 10000, docs/FORMAT.md).
tensor_groups group_by_process(const format::manifest& m, const std::vector<const format::saved_tensor*>& which) {
  std::map<std::uint64_t, std::vector<const format::saved_tensor*>> by_process;
  for (const auto* t : which) {
    std::map<std::uint64_t, std::uint64_t> bytes;
    for (const auto& sl : t->slices) {
      const auto& fname = m.files[sl.file].name;
      const auto dash = fname.rfind('-');
      const std::uint64_t k = dash == std::string::npos ? 0 : std::strtoull(fname.c_str() + dash + 1, nullptr, 10);
      bytes[k / 10000] += sl.length;
    }
    auto best = std::max_element(bytes.begin(), bytes.end(), [](auto& x, auto& y) { return x.second < y.second; });
    by_process[best == bytes.end() ? 0 : best->first].push_back(t);
  }
  tensor_groups groups;
  for (auto& [p, g] : by_process) groups.push_back(std::move(g));
  return groups;
}

// At most `n` groups of about equal size, in key order.
tensor_groups group_by_size(const std::vector<const format::saved_tensor*>& which, long n) {
  std::uint64_t total = 0;
  for (const auto* t : which) total += tensor_bytes(*t);
  const std::uint64_t target = (total + static_cast<std::uint64_t>(n) - 1) / static_cast<std::uint64_t>(n);
  tensor_groups groups(1);
  std::uint64_t in_group = 0;
  for (const auto* t : which) {
    const auto bytes = tensor_bytes(*t);
    if (!groups.back().empty() && in_group + bytes > target && static_cast<long>(groups.size()) < n) {
      groups.emplace_back();
      in_group = 0;
    }
    groups.back().push_back(t);
    in_group += bytes;
  }
  return groups;
}

// OUT/model-0000k-of-0000N.safetensors, one per group, then the index last under a temp name:
// a reader that finds it finds every shard.
int write_safetensors_shards(io::backend& b, const std::string& prefix, const format::manifest& m, const tensor_groups& groups,
                             const std::map<std::string, std::string>& meta, const std::string& out) {
  if (::mkdir(out.c_str(), 0755) != 0 && errno != EEXIST) return report_failure("export", "cannot create directory %s", out.c_str());
  format::safetensors_index index;
  char name[64];
  for (std::size_t g = 0; g < groups.size(); ++g) {
    std::snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", g + 1, groups.size());
    if (auto w = write_safetensors_file(b, prefix, m, groups[g], meta, join(out, name)); !w)
      return report_failure("export", "writing %s: %s", join(out, name).c_str(), w.error().what().c_str());
    for (const auto* t : groups[g]) {
      index.weight_map[t->key] = name;
      index.total_size += tensor_bytes(*t);
    }
  }
  const std::string idx_path = join(out, "model.safetensors.index.json");
  const std::string text = format::encode_safetensors_index(index);
  if (auto w = write_file_durably(b, idx_path, std::as_bytes(std::span(text.data(), text.size()))); !w)
    return report_failure("export", "writing %s: %s", idx_path.c_str(), w.error().what().c_str());
  return 0;
}

}  // namespace

// export PATH --to safetensors OUT [--shards N|processes]: every tensor, whole, into one
// safetensors file; or, with --shards, into OUT/model-0000k-of-0000N.safetensors plus
// OUT/model.safetensors.index.json, as Hugging Face tools expect.
int cmd_export(io::backend& b, const args& a) {
  std::string prefix = normalize_prefix(a.path);
  if (a.to == "tf") return export_to_tf(b, a, prefix);
  if (a.to == "torch") return export_to_torch(b, a, prefix);
  std::optional<long> shards;
  if (!a.shards.empty() && a.shards != "processes" && !(shards = shard_count(a.shards)))
    return report_usage("export", "--shards takes a count from 1 to 99999 or \"processes\", not \"%s\"", a.shards.c_str());
  auto m = load_manifest(b, prefix, a);
  if (!m) return 1;
  auto unsupported = unsupported_for_safetensors(b, prefix, *m, a);
  if (!unsupported) return report_error("export", unsupported.error());
  if (auto renamed = apply_renames(prefix, *m, a); !renamed) return report_error("export", renamed.error());
  auto which = safetensors_selection(*m);
  if (!which) return report_error("export", which.error());
  auto meta = safetensors_metadata(prefix, *m, *unsupported);
  if (!meta) return report_error("export", meta.error());
  std::string skipped_note;
  if (!unsupported->empty()) {
    report_note("export", "skipped %zu tensor(s) that safetensors cannot hold: %s", unsupported->size(), listed(*unsupported).c_str());
    skipped_note = " (" + std::to_string(unsupported->size()) + " skipped, listed in __metadata__ meshckpt.skipped)";
  }
  if (a.shards.empty()) {
    if (auto w = write_safetensors_file(b, prefix, *m, *which, *meta, a.out); !w)
      return report_failure("export", "writing %s: %s", a.out.c_str(), w.error().what().c_str());
    std::printf("exported %zu tensors of %s to %s%s\n", which->size(), prefix.c_str(), a.out.c_str(), skipped_note.c_str());
    return 0;
  }
  auto groups = shards ? group_by_size(*which, *shards) : group_by_process(*m, *which);
  if (int failed = write_safetensors_shards(b, prefix, *m, groups, *meta, a.out)) return failed;
  std::printf("exported %zu tensors of %s to %zu safetensors shards in %s (index: model.safetensors.index.json)%s\n", which->size(),
              prefix.c_str(), groups.size(), a.out.c_str(), skipped_note.c_str());
  return 0;
}

// import FILE --to PREFIX: a safetensors file, or a sharded model through its
// model.safetensors.index.json (validated by the format's safety rules), a TensorFlow
// checkpoint or a torch.save file, as a meshckpt checkpoint, each tensor whole on one device.
int cmd_import(io::backend& b, const args& a) {
  if (auto tf = tf_bundle_prefix(a.path)) {
    auto w = import_tf_checkpoint(b, *tf, a.to);
    if (!w) {
      return report_error("import", w.error());
    }
    std::printf("imported %zu tensors from the TensorFlow checkpoint %s as %s\n", w->tensors, a.path.c_str(), w->manifest_path.c_str());
    // What meshckpt cannot hold is named, never dropped silently.
    auto idx = read_tf_bundle_index(b, *tf);
    auto m = read_manifest(b, w->manifest_path.substr(0, w->manifest_path.size() - format::manifest_suffix.size()));
    if (idx && m) {
      std::string left;
      std::size_t n = 0;
      for (const auto& e : idx->entries)
        if (!e.type && e.key != format::tf::object_graph_key && !m->find(e.key)) {
          left += (left.empty() ? "" : ", ") + ("\"" + format::display_bytes(e.key) + "\" (" + format::tf::tf_dtype_name(e.tf_type) + ")");
          ++n;
        }
      if (n) report_note("import", "left out %zu entr%s of a dtype meshckpt cannot hold: %s", n, n == 1 ? "y" : "ies", left.c_str());
    }
    return 0;
  }
  // A torch.save file or a DCP directory; not_found: neither, try the other formats.
  if (auto w = import_torch_checkpoint(b, a.path, a.to); w || !no_torch_checkpoint(w.error())) {
    if (!w) return report_error("import", w.error());
    std::printf("imported %zu entries from the %s %s as %s (its pickles read, not run)\n", w->tensors - 1,
                is_directory(a.path) ? "PyTorch distributed checkpoint" : "torch.save file", a.path.c_str(), w->manifest_path.c_str());
    return 0;
  }
  // A file of no kind it reads is named as such, not as a safetensors file with a wild header.
  const std::string kinds =
      "a safetensors file (an 8-byte header length, then a JSON header), a model.safetensors.index.json, a TensorFlow checkpoint "
      "(PREFIX or PREFIX.index, with PREFIX.data-*), a SavedModel directory (with variables/variables.index), a torch.save file or a "
      "PyTorch distributed checkpoint directory (with .metadata)";
  if (!exists(a.path)) return report_error("import", make_error(errc::not_found, a.path + " does not exist (import reads " + kinds + ")"));
  if (is_directory(a.path))
    return report_error(
        "import",
        make_error(
            errc::invalid_argument,
            a.path +
                " is a directory but not a SavedModel (no variables/variables.index) nor a DCP checkpoint (no .metadata); import reads " +
                kinds));
  if (!a.path.ends_with(".json")) {
    unsigned char head[9] = {};
    std::FILE* f = std::fopen(a.path.c_str(), "rb");
    const std::size_t got = f ? std::fread(head, 1, sizeof head, f) : 0;
    if (f) std::fclose(f);
    if (f && (got < sizeof head || head[8] != '{'))
      return report_error("import", make_error(errc::unsupported, a.path + " is none of the formats import reads: " + kinds));
  }
  auto w = import_safetensors(b, a.path, a.to);
  if (!w) {
    return report_error("import", w.error());
  }
  std::printf("imported %zu tensors from %s as %s\n", w->tensors, a.path.c_str(), w->manifest_path.c_str());
  return 0;
}

}  // namespace meshckpt::cli
