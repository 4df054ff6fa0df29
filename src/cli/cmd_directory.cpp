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

namespace {

// One line of `ls`: a committed checkpoint, or the files of an interrupted save.
struct ls_row {
  std::string name, status;
  std::optional<std::int64_t> number;
  std::optional<std::uint64_t> created_ms;
  std::uint64_t bytes = 0;
  std::optional<std::size_t> tensors;
  std::size_t files = 0;
  bool latest = false;
};

// What the state file says, for `ls`.
struct ls_state {
  bool present = false;
  std::optional<std::string> latest;
  std::string note;  // a problem with it, if any
};

// N of NAME-N, when the name ends in one.
std::optional<std::int64_t> number_of(const std::string& name) {
  auto dash = name.rfind('-');
  if (dash == std::string::npos || dash + 1 == name.size() || name.find_first_not_of("0123456789", dash + 1) != std::string::npos ||
      name.size() - dash > 18)
    return std::nullopt;
  return std::stoll(name.substr(dash + 1));
}

// The rows of the committed checkpoints (from their manifests) and of the leftovers.
std::map<std::string, ls_row> ls_rows(io::backend& b, const std::string& dir, const directory_scan& scan) {
  std::map<std::string, ls_row> rows;
  for (const auto& name : scan.checkpoints) {
    ls_row r;
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
  for (const auto& file : scan.leftovers) {
    auto k = format::classify(file);
    const std::string base = k.base.empty() ? file : k.base;
    auto& r = rows[base];
    if (r.name.empty()) {
      r.name = base;
      r.number = number_of(base);
      r.status = "incomplete (files of an interrupted save; the next save of this name removes them)";
    }
    if (auto n = file_size(join(dir, file))) r.bytes += *n;
    if (r.status != "committed") ++r.files;
  }
  return rows;
}

// Reads the state file and marks the row it names latest.
ls_state ls_read_state(io::backend& b, const std::string& dir, std::map<std::string, ls_row>& rows) {
  ls_state out;
  auto st = read_checkpoint_state(b, dir);
  out.present = static_cast<bool>(st);
  if (st) {
    out.latest = st->model_checkpoint_path;
    if (auto it = rows.find(*out.latest); it != rows.end())
      it->second.latest = true;
    else
      out.note = "the state file names " + *out.latest + ", which is missing";
  } else if (st.error().code != errc::not_found) {
    out.note = "the state file is unreadable: " + st.error().what();
  }
  return out;
}

// Rows in name order, numbered checkpoints of one name by number.
std::vector<ls_row> ls_sorted(const std::map<std::string, ls_row>& rows) {
  std::vector<ls_row> sorted;
  for (const auto& [n, r] : rows) sorted.push_back(r);
  std::sort(sorted.begin(), sorted.end(), [](const ls_row& x, const ls_row& y) {
    auto px = x.name.substr(0, x.name.rfind('-')), py = y.name.substr(0, y.name.rfind('-'));
    if (x.number && y.number && px == py) return *x.number < *y.number;
    return x.name < y.name;
  });
  return sorted;
}

void ls_print_json(const std::string& dir, const ls_state& st, const std::vector<ls_row>& sorted) {
  std::string o = "{\"directory\":" + format::json_string(dir) + ",\"state_file\":{\"present\":" + (st.present ? "true" : "false") +
                  ",\"latest\":" + (st.latest ? format::json_string(*st.latest) : std::string("null")) +
                  ",\"problem\":" + (st.note.empty() ? std::string("null") : format::json_string(st.note)) + "},\"checkpoints\":[";
  for (std::size_t i = 0; i < sorted.size(); ++i) {
    const auto& r = sorted[i];
    o += std::string(i ? "," : "") + "{\"name\":" + format::json_string(r.name) +
         ",\"number\":" + (r.number ? std::to_string(*r.number) : "null") +
         ",\"created_unix_ms\":" + (r.created_ms ? std::to_string(*r.created_ms) : "null") + ",\"bytes\":" + std::to_string(r.bytes) +
         ",\"tensors\":" + (r.tensors ? std::to_string(*r.tensors) : "null") + ",\"files\":" + std::to_string(r.files) + ",\"status\":" +
         format::json_string(r.status == "committed"              ? "committed"
                             : r.status.starts_with("incomplete") ? "incomplete"
                                                                  : "unreadable") +
         ",\"latest\":" + (r.latest ? "true" : "false") + "}";
  }
  std::printf("%s]}\n", o.c_str());
}

void ls_print_table(const std::string& dir, std::size_t committed, const ls_state& st, const std::vector<ls_row>& sorted) {
  std::printf("%s: %zu checkpoint%s", dir.c_str(), committed, committed == 1 ? "" : "s");
  if (st.latest) std::printf(", latest %s (from the state file)", st.latest->c_str());
  std::printf("\n");
  if (!st.note.empty()) std::printf("  note: %s\n", st.note.c_str());
  if (sorted.empty()) return;
  std::size_t w = 4;
  for (const auto& r : sorted) w = std::max(w, r.name.size());
  std::printf("  %-*s  %6s  %-20s  %10s  %7s  %5s  %s\n", static_cast<int>(w), "NAME", "NUMBER", "CREATED", "SIZE", "TENSORS", "FILES",
              "STATUS");
  for (const auto& r : sorted)
    std::printf("  %-*s  %6s  %-20s  %10s  %7s  %5zu  %s%s\n", static_cast<int>(w), r.name.c_str(),
                r.number ? std::to_string(*r.number).c_str() : "-", r.created_ms ? format::iso_time(*r.created_ms).c_str() : "-",
                format::human_bytes(r.bytes).c_str(), r.tensors ? std::to_string(*r.tensors).c_str() : "-", r.files, r.status.c_str(),
                r.latest ? ", latest" : "");
}

}  // namespace

// ls DIR: the checkpoints of a directory, from its manifests, leftovers and state file.
int cmd_ls(io::backend& b, const args& a) {
  std::string dir = a.path;
  while (dir.size() > 1 && dir.ends_with('/')) dir.pop_back();
  if (!is_directory(dir)) return report_failure("ls", "%s is not a directory", dir.c_str());
  auto scan = scan_directory(b, dir);
  if (!scan) return report_error("ls", scan.error());
  auto rows = ls_rows(b, dir, *scan);
  const auto st = ls_read_state(b, dir, rows);
  const auto sorted = ls_sorted(rows);
  if (a.json)
    ls_print_json(dir, st, sorted);
  else
    ls_print_table(dir, scan->checkpoints.size(), st, sorted);
  return 0;
}

}  // namespace meshckpt::cli
