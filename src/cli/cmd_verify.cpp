// meshckpt verify PATH|DIR: every byte, every checksum, the state file.

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
                 format::human_bytes(done).c_str(), format::human_bytes(total).c_str(),
                 format::human_bytes(static_cast<std::uint64_t>(rate)).c_str(), eta.c_str());
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

// What verify looks at in a directory: its checkpoints, the leftovers of interrupted saves,
// and its `checkpoint` state file, every checkpoint of which must be present (and, like every
// checkpoint here, intact).
struct directory_survey {
  std::vector<std::string> prefixes, leftovers, state_problems;
  bool state_present = false;
};

result<directory_survey> survey_directory(io::backend& b, const std::string& path) {
  directory_survey d;
  BOOST_OUTCOME_TRY(auto scan, scan_directory(b, path));
  for (const auto& c : scan.checkpoints) d.prefixes.push_back(join(path, c));
  for (const auto& l : scan.leftovers) d.leftovers.push_back(join(path, l));
  auto st = read_checkpoint_state(b, path);
  if (st) {
    d.state_present = true;
    std::vector<std::string> listed = st->all_model_checkpoint_paths;
    if (!st->model_checkpoint_path.empty()) listed.push_back(st->model_checkpoint_path);
    for (const auto& name : listed)
      if (std::find(scan.checkpoints.begin(), scan.checkpoints.end(), name) == scan.checkpoints.end() &&
          std::find(d.state_problems.begin(), d.state_problems.end(), name) == d.state_problems.end())
        d.state_problems.push_back(join(path, "checkpoint") + " lists " + name + ", which is missing (no " + name + ".manifest)");
  } else if (st.error().code != errc::not_found) {
    d.state_present = true;
    d.state_problems.push_back(st.error().what());
  }
  return d;
}

// One checkpoint's verdict: its report, its problems, and whether it was there at all.
struct verdict {
  verify_report rep;
  std::vector<error> problems;
  bool missing = false;
};

verdict verify_one(io::backend& b, const args& a, const std::string& p, bool tf) {
  const bool show_progress = !a.no_progress && (std::getenv("MESHCKPT_PROGRESS") || (!a.json && ::isatty(STDERR_FILENO)));
  std::optional<progress_bar> bar;
  bar.emplace(show_progress, "verifying " + p);
  auto on_progress = [&bar](std::uint64_t done, std::uint64_t total) { bar->update(done, total); };
  auto r = tf ? verify_tf_bundle(b, p, on_progress) : verify(b, p, on_progress);
  bar.reset();
  verdict v;
  // Nothing there is not damage: say what was looked for.
  v.missing = !r && r.error().code == errc::not_found && !exists(p + ".manifest") && !exists(p + ".index") && !exists(p + "/.metadata");
  if (v.missing)
    v.problems.push_back(tf ? r.error() : no_checkpoint_at(p, r.error()));
  else if (!r)
    v.problems.push_back(r.error());
  else {
    v.rep = *r;
    v.problems = v.rep.problems;
  }
  return v;
}

std::string verdict_json(const std::string& p, const verdict& v) {
  const auto& rep = v.rep;
  std::string json = "{\"prefix\":" + format::json_string(p) + ",\"ok\":" + (v.problems.empty() ? "true" : "false") +
                     ",\"found\":" + (v.missing ? "false" : "true") + ",\"tensors\":" + std::to_string(rep.tensors) +
                     ",\"slices\":" + std::to_string(rep.slices) + ",\"files\":" + std::to_string(rep.files) +
                     ",\"bytes_checked\":" + std::to_string(rep.bytes_checked) +
                     ",\"checksummed\":" + (rep.checksummed ? "true" : "false") + ",\"problems\":[";
  for (std::size_t j = 0; j < v.problems.size(); ++j)
    json += std::string(j ? "," : "") + "{\"code\":" + format::json_string(code_name(v.problems[j])) +
            ",\"message\":" + format::json_string(v.problems[j].what()) + "}";
  return json + "]}";
}

void print_verdict(const std::string& p, const verdict& v) {
  const auto& rep = v.rep;
  if (v.problems.empty()) {
    std::printf("ok        %s  (%zu tensors, %zu slices, %zu data file%s, %s %s)\n", p.c_str(), rep.tensors, rep.slices, rep.files,
                rep.files == 1 ? "" : "s", format::human_bytes(rep.bytes_checked).c_str(),
                rep.checksummed ? "checked" : "read: sizes checked, no checksum to verify them (torch.save's legacy format stores none)");
    return;
  }
  std::printf("%s %s\n", v.missing ? "NOT FOUND" : "DAMAGED  ", p.c_str());
  for (const auto& e : v.problems) std::printf("          %s\n", e.what().c_str());
}

std::string json_strings(const std::vector<std::string>& v) {
  std::string out = "[";
  for (std::size_t i = 0; i < v.size(); ++i) out += std::string(i ? "," : "") + format::json_string(v[i]);
  return out + "]";
}

}  // namespace

int cmd_verify(io::backend& b, const args& a) {
  std::string path = normalize_prefix(a.path);
  const auto tf =
      a.format == "meshckpt" ? std::nullopt : tf_bundle_prefix(a.path);  // a TensorFlow bundle: its tensors against their CRC-32C
  if (tf) path = *tf;
  directory_survey d;
  if (!tf && is_directory(path) && !exists(path + ".manifest") && !exists(join(path, ".metadata"))) {  // (not a DCP checkpoint)
    auto surveyed = survey_directory(b, path);
    if (!surveyed) return report_error("verify", surveyed.error());
    d = std::move(*surveyed);
    if (d.prefixes.empty()) {
      if (a.json)
        std::printf("{\"ok\":false,\"error\":%s,\"checkpoints\":[],\"leftovers\":[]}\n",
                    format::json_string("no checkpoint found in " + path).c_str());
      return report_failure("verify", "no checkpoint found in %s%s", path.c_str(),
                            d.leftovers.empty() ? "" : " (only leftovers of interrupted saves)");
    }
  } else {
    d.prefixes.push_back(path);
  }
  bool all_ok = d.state_problems.empty();
  std::string json = "{\"checkpoints\":[";
  for (std::size_t i = 0; i < d.prefixes.size(); ++i) {
    const auto& p = d.prefixes[i];
    const auto v = verify_one(b, a, p, tf.has_value());
    all_ok = all_ok && v.problems.empty();
    if (a.json)
      json += std::string(i ? "," : "") + verdict_json(p, v);
    else
      print_verdict(p, v);
  }
  if (a.json) {
    json += "],\"leftovers\":" + json_strings(d.leftovers) +
            ",\"state_file\":{\"present\":" + std::string(d.state_present ? "true" : "false") +
            ",\"problems\":" + json_strings(d.state_problems) + "},\"ok\":" + std::string(all_ok ? "true" : "false") + "}\n";
    std::fwrite(json.data(), 1, json.size(), stdout);
  } else {
    for (const auto& l : d.leftovers) std::printf("leftover  %s  (from an interrupted save; not a checkpoint, ignored)\n", l.c_str());
    for (const auto& p : d.state_problems) std::printf("DAMAGED   %s\n", p.c_str());
  }
  return all_ok ? 0 : 1;
}

}  // namespace meshckpt::cli
