// meshckpt: the operator's command-line tool.
//
//   meshckpt inspect PATH [--json]   tensors, dtypes, shapes, saved layouts and meshes, bytes
//   meshckpt verify PATH [--json]    read every byte and check every checksum
//   meshckpt ls DIR [--json]         the checkpoints of a directory and their status
//   meshckpt show PATH KEY           how one tensor was sharded, as a picture
//
// Exit status: 0 success (and intact), 1 damage or error found, 2 usage error.

#include <sys/stat.h>

#include <algorithm>
#include <deque>
#include <unistd.h>
#include <ctime>
#include <map>
#include <optional>
#include <cstdio>
#include <string>
#include <vector>

#include "bench.hpp"
#include "meshckpt/api/checkpoint.hpp"
#include "meshckpt/api/tensor_io.hpp"
#include "meshckpt/backends/uring.hpp"
#include "meshckpt/format/describe.hpp"
#include "meshckpt/format/names.hpp"
#include "meshckpt/format/safetensors.hpp"

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
    "  bench --dir DIR [--workload large|small|stall|reshard|all] [--backend auto|uring|posix]\n"
    "        [--reps N] [--json]\n"
    "                          the workloads of BENCHMARKS.md against fio and memcpy, in the\n"
    "                          same run (medians; drops the page cache when root)\n"
    "\n"
    "PATH is a checkpoint prefix (DIR/NAME, the file DIR/NAME.manifest) or, for verify, a\n"
    "directory. Exit status: 0 ok, 1 damaged or failed, 2 usage error.\n"
    "  --help      this text\n"
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
  std::string command, path, key, to, out;
  bool json = false;
};

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

// export PATH --to safetensors OUT: every tensor, whole (restored onto one device, one at a
// time), into one safetensors file written to a temp name and renamed.
int cmd_export(io::backend& b, const args& a) {
  const std::string prefix = normalize_prefix(a.path);
  auto m = read_manifest(b, prefix);
  if (!m) {
    std::fprintf(stderr, "meshckpt export: %s\n", m.error().what().c_str());
    return 1;
  }
  std::vector<format::safetensor_entry> entries;
  std::vector<const format::saved_tensor*> which;
  std::string skipped;
  for (const auto& t : m->tensors) {
    if (t.type == dtype::blob) {
      skipped += (skipped.empty() ? "" : ",") + t.key;
      continue;
    }
    entries.push_back({t.key, t.type, t.global, 0, 0});
    which.push_back(&t);
  }
  std::map<std::string, std::string> meta = {{"format", "pt"}, {"meshckpt.source", prefix}, {"meshckpt.writer", m->writer}};
  if (!skipped.empty()) meta["meshckpt.skipped_blobs"] = skipped;
  auto header = format::encode_safetensors_header(entries, meta);
  if (!header) {
    std::fprintf(stderr, "meshckpt export: %s\n", header.error().what().c_str());
    return 1;
  }
  const std::string tmp = a.out + ".tmp-meshckpt";
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) {
    std::fprintf(stderr, "meshckpt export: cannot create %s\n", tmp.c_str());
    return 1;
  }
  bool ok = std::fwrite(header->data(), 1, header->size(), f) == header->size();
  auto one = mesh::create({{"x", 1}}).value();
  for (std::size_t i = 0; ok && i < which.size(); ++i) {
    const auto& t = *which[i];
    auto l = layout::create(std::vector<std::string>(t.global.size(), "unsharded"), one).value();
    auto d = dtensor::create(t.type, t.global, l);
    if (!d) {
      std::fprintf(stderr, "meshckpt export: tensor \"%s\": %s\n", t.key.c_str(), d.error().what().c_str());
      ok = false;
      break;
    }
    std::vector<named_tensor> target = {{t.key, d->view()}};
    auto r = read_tensors(b, prefix, *m, target);
    if (!r) {
      std::fprintf(stderr, "meshckpt export: %s\n", r.error().what().c_str());
      ok = false;
      break;
    }
    const auto& bytes = d->view().shards().front().data;
    ok = std::fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size();
  }
  ok = std::fflush(f) == 0 && ::fsync(::fileno(f)) == 0 && ok;
  ok = std::fclose(f) == 0 && ok;
  if (!ok || std::rename(tmp.c_str(), a.out.c_str()) != 0) {
    std::remove(tmp.c_str());
    std::fprintf(stderr, "meshckpt export: writing %s failed\n", a.out.c_str());
    return 1;
  }
  std::printf("exported %zu tensors of %s to %s%s\n", which.size(), prefix.c_str(), a.out.c_str(),
              skipped.empty() ? "" : (" (opaque blobs skipped: " + skipped + ")").c_str());
  return 0;
}

// import FILE --to PREFIX: a safetensors file (validated by the format's safety rules) as a
// meshckpt checkpoint, each tensor whole on one device.
int cmd_import(io::backend& b, const args& a) {
  std::FILE* f = std::fopen(a.path.c_str(), "rb");
  struct stat st;
  if (!f || ::fstat(::fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
    if (f) std::fclose(f);
    std::fprintf(stderr, "meshckpt import: %s is not a readable regular file\n", a.path.c_str());
    return 1;
  }
  const auto size = static_cast<std::uint64_t>(st.st_size);
  std::vector<std::byte> head(8);
  bool ok = std::fread(head.data(), 1, 8, f) == 8;
  std::uint64_t n = 0;
  for (int i = 0; i < 8 && ok; ++i) n |= std::uint64_t{static_cast<std::uint8_t>(head[static_cast<std::size_t>(i)])} << (8 * i);
  if (ok && n <= format::safetensors_max_header && n <= size - 8) {
    head.resize(8 + n);
    ok = std::fread(head.data() + 8, 1, n, f) == n;
  }
  auto h = format::decode_safetensors_header(head, size);
  if (!h) {
    std::fclose(f);
    std::fprintf(stderr, "meshckpt import: %s: %s\n", a.path.c_str(), h.error().what().c_str());
    return 1;
  }
  auto one = mesh::create({{"x", 1}}).value();
  std::deque<dtensor> keep;
  std::vector<named_tensor> tensors;
  for (const auto& e : h->tensors) {
    auto l = layout::create(std::vector<std::string>(e.dims.size(), "unsharded"), one).value();
    auto d = dtensor::create(e.type, e.dims, l);
    if (!d) {
      std::fclose(f);
      std::fprintf(stderr, "meshckpt import: tensor \"%s\": %s\n", e.name.c_str(), d.error().what().c_str());
      return 1;
    }
    keep.push_back(std::move(*d));
    const auto& dst = keep.back().view().shards().front().data;
    if (std::fseek(f, static_cast<long>(h->data_start + e.begin), SEEK_SET) != 0 || std::fread(dst.data(), 1, dst.size(), f) != dst.size()) {
      std::fclose(f);
      std::fprintf(stderr, "meshckpt import: %s: reading tensor \"%s\" failed\n", a.path.c_str(), e.name.c_str());
      return 1;
    }
    tensors.push_back({e.name, keep.back().view()});
  }
  std::fclose(f);
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
  auto m = read_manifest(b, prefix);
  if (!m) {
    std::fprintf(stderr, "meshckpt show: %s\n", m.error().what().c_str());
    return 1;
  }
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
  auto m = read_manifest(b, prefix);
  if (!m) {
    std::fprintf(stderr, "meshckpt inspect: %s\n", m.error().what().c_str());
    return 1;
  }
  std::string out = a.json ? format::describe_json(*m, prefix) + "\n" : format::describe_text(*m, prefix);
  std::fwrite(out.data(), 1, out.size(), stdout);
  return 0;
}

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
    auto r = verify(b, p);
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

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> av(argv + 1, argv + argc);
  if (!av.empty() && av[0] == "bench") return bench_main(av);
  args a;
  std::vector<std::string> positional;
  for (const auto& s : av) {
    if (s == "--help" || s == "-h") {
      std::fputs(usage_text, stdout);
      return 0;
    }
    if (s == "--version") {
      std::printf("meshckpt %s\n", MESHCKPT_VERSION);
      return 0;
    }
    if (s == "--json") a.json = true;
    else if (s == "--to" && &s != &av.back()) a.to = *(&s + 1);
    else if (s.starts_with("--")) return usage_error("unknown option " + s);
    else if (&s != &av.front() && *(&s - 1) == "--to") continue;
    else positional.push_back(s);
  }
  if (positional.empty()) return usage_error("no command given");
  a.command = positional[0];
  if (a.command == "export" || a.command == "import") {
    if (a.json) return usage_error(a.command + " has no --json");
    if (a.command == "export" && (positional.size() != 3 || a.to != "safetensors"))
      return usage_error("export takes PATH --to safetensors OUT");
    if (a.command == "import" && (positional.size() != 2 || a.to.empty())) return usage_error("import takes FILE.safetensors --to PREFIX");
    a.path = positional[1];
    if (a.command == "export") a.out = positional[2];
    auto be = backends::make_backend(backends::backend_kind::automatic);
    if (!be) {
      std::fprintf(stderr, "meshckpt: %s\n", be.error().what().c_str());
      return 1;
    }
    return a.command == "export" ? cmd_export(**be, a) : cmd_import(**be, a);
  }
  if (a.command != "inspect" && a.command != "verify" && a.command != "show" && a.command != "ls") return usage_error("unknown command \"" + a.command + "\"");
  if (a.command == "show") {
    if (positional.size() != 3) return usage_error("show takes a checkpoint PATH and a tensor KEY");
    if (a.json) return usage_error("show draws a picture; for data use inspect --json");
    a.key = positional[2];
  } else if (positional.size() != 2) {
    return usage_error(a.command + " takes exactly one PATH");
  }
  a.path = positional[1];
  auto backend = backends::make_backend(backends::backend_kind::automatic);
  if (!backend) {
    std::fprintf(stderr, "meshckpt: %s\n", backend.error().what().c_str());
    return 1;
  }
  if (a.command == "show") return cmd_show(**backend, a);
  if (a.command == "ls") return cmd_ls(**backend, a);
  return a.command == "inspect" ? cmd_inspect(**backend, a) : cmd_verify(**backend, a);
}
