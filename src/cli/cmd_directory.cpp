// meshckpt ls DIR: the checkpoints of a directory.

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
#include "meshckpt/interchange/safetensors_io.hpp"
#include "meshckpt/pipeline/tensor_io.hpp"
#include "meshckpt/format/describe.hpp"
#include "meshckpt/format/names.hpp"
#include "meshckpt/format/safetensors.hpp"
#include "meshckpt/graph/object_graph.hpp"

#include "commands.hpp"

namespace meshckpt::cli {

// ls DIR: the checkpoints of a directory, from its manifests, leftovers and state file.
int cmd_ls(io::backend& b, const args& a) {
  std::string dir = a.path;
  while (dir.size() > 1 && dir.ends_with('/')) dir.pop_back();
  if (!is_directory(dir)) {
    return report_failure("ls", "%s is not a directory", dir.c_str());
  }
  auto scan = scan_directory(b, dir);
  if (!scan) {
    return report_error("ls", scan.error());
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

}  // namespace meshckpt::cli
