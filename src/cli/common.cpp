// The CLI's shared helpers (commands.hpp) and its usage text.

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <functional>
#include <chrono>
#include <cmath>
#include <cstring>
#include <deque>
#include <unistd.h>
#include <ctime>
#include <map>
#include <optional>
#include <cstdarg>
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
#include "meshckpt/io/make_backend.hpp"
#include "meshckpt/io/url.hpp"

#include "meshckpt/interchange/tf_bundle_io.hpp"
#include "meshckpt/interchange/torch_io.hpp"
#include "commands.hpp"

namespace meshckpt::cli {

extern const char* const usage_text;
const char* const usage_text =
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
    "  export PATH --to safetensors OUT [--skip-unsupported] [--rename OLD=NEW]\n"
    "                          every tensor of checkpoint PATH, whole, into the safetensors\n"
    "                          file OUT (what it cannot hold fails the export, or is left out\n"
    "                          and listed with --skip-unsupported)\n"
    "  export PATH --to torch OUT [--skip-unsupported]\n"
    "                          every tensor of checkpoint PATH into the torch.save file OUT\n"
    "  export PATH --to tf OUT [--shards N]\n"
    "                          checkpoint PATH as the TensorFlow bundle OUT (keys verbatim,\n"
    "                          with its object graph), streamed\n"
    "  import SRC --to PREFIX  a safetensors file (checked by the format's safety rules), a\n"
    "                          TensorFlow checkpoint, a SavedModel directory or a torch.save\n"
    "                          file (its pickle read, never run) as the\n"
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
    "  bench --dir DIR [--workload large|small|stall|reshard|convert|all] [--backend auto|uring|posix|s3]\n"
    "        [--reps N] [--size MiB] [--json]\n"
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

namespace {

// The backend that answers is_directory, exists and file_size for s3:// URLs (made at the
// first such question; local paths are asked of the filesystem directly).
io::backend& url_backend() {
  static const std::unique_ptr<io::backend> b = backends::make_backend().value();
  return *b;
}

// The object at URL `p`, opened for reading.
std::optional<std::uint64_t> object_size(const std::string& p) {
  auto slash = p.rfind('/');
  if (slash == std::string::npos || slash < 5) return std::nullopt;
  auto& b = url_backend();
  auto d = io::wait<io::handle>([&](auto done) { b.open_dir(p.substr(0, slash), false, std::move(done)); });
  if (!d) return std::nullopt;
  std::optional<std::uint64_t> out;
  if (auto f = io::wait<io::handle>([&](auto done) { b.open(*d, p.substr(slash + 1), io::open_mode::read, std::move(done)); })) {
    if (auto n = io::wait<std::uint64_t>([&](auto done) { b.size(*f, std::move(done)); })) out = *n;
    io::close_now(b, *f);
  }
  io::close_now(b, *d);
  return out;
}

}  // namespace

bool is_directory(const std::string& p) {
  if (io::is_url(p)) {
    // A prefix with objects under it.
    auto& b = url_backend();
    auto d = io::wait<io::handle>([&](auto done) { b.open_dir(p, false, std::move(done)); });
    if (d) io::close_now(b, *d);
    return d.has_value();
  }
  struct stat st;
  return ::stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

bool exists(const std::string& p) {
  if (io::is_url(p)) return object_size(p).has_value();
  struct stat st;
  return ::lstat(p.c_str(), &st) == 0;
}

std::optional<std::uint64_t> file_size(const std::string& p) {
  if (io::is_url(p)) return object_size(p);
  struct stat st;
  if (::stat(p.c_str(), &st) != 0) return std::nullopt;
  return static_cast<std::uint64_t>(st.st_size);
}

std::optional<std::string> tf_bundle_prefix(const std::string& path) {
  if (is_directory(path) && exists(join(path, "variables/variables.index"))) return join(path, "variables/variables");
  std::string prefix = path.ends_with(".index") ? path.substr(0, path.size() - 6) : path;
  if (prefix.empty() || exists(prefix + ".manifest") || !exists(prefix + ".index") || is_directory(prefix + ".index")) return std::nullopt;
  return prefix;
}

std::string normalize_prefix(std::string p) {
  if (p.size() > format::manifest_suffix.size() && p.ends_with(format::manifest_suffix) && !exists(p + ".manifest"))
    p.resize(p.size() - format::manifest_suffix.size());
  while (p.size() > 1 && p.ends_with('/')) p.pop_back();
  return p;
}

std::string join(const std::string& dir, const std::string& name) {
  return dir == "." ? name : (dir.ends_with('/') ? dir + name : dir + "/" + name);
}

std::optional<format::manifest> load_manifest(io::backend& b, std::string& prefix, const args& a) {
  auto m = read_manifest(b, prefix);
  if (!m && m.error().code == errc::not_found && a.format != "meshckpt") {
    // A TensorFlow checkpoint (bundle or SavedModel) there: read as a manifest of its tensors.
    auto tf = read_tf_checkpoint(b, prefix);
    if (tf) {
      prefix = tf->prefix;
      return std::move(tf->manifest);
    }
    if (tf.error().code != errc::not_found || a.format == "tf") {
      m = tf.error();
    } else if (auto torch = read_torch_checkpoint(b, prefix); torch) {  // a torch.save file, read in place
      prefix = torch->prefix;
      return std::move(torch->manifest);
    } else {
      m = !no_torch_checkpoint(torch.error()) ? torch.error() : no_checkpoint_at(prefix, m.error());
    }
  }
  if (!m) {
    report_error(a.command, m.error());
    return std::nullopt;
  }
  return std::move(*m);
}

namespace {

void vreport(const char* command, const char* fmt, std::va_list ap) {
  std::fprintf(stderr, "meshckpt %s: ", command);
  std::vfprintf(stderr, fmt, ap);
  std::fputc('\n', stderr);
}

}  // namespace

int report_error(const std::string& command, const error& e, int status) {
  std::fprintf(stderr, "meshckpt %s: %s\n", command.c_str(), e.what().c_str());
  return status;
}

int report_failure(const char* command, const char* fmt, ...) {
  std::va_list ap;
  va_start(ap, fmt);
  vreport(command, fmt, ap);
  va_end(ap);
  return 1;
}

int report_usage(const char* command, const char* fmt, ...) {
  std::va_list ap;
  va_start(ap, fmt);
  vreport(command, fmt, ap);
  va_end(ap);
  return 2;
}

void report_note(const char* command, const char* fmt, ...) {
  std::va_list ap;
  va_start(ap, fmt);
  vreport(command, fmt, ap);
  va_end(ap);
}

result<std::map<std::string, std::string>> rename_map(const args& a) {
  std::map<std::string, std::string> out;
  auto add = [&](const std::string& spec, const std::string& where) -> result<void> {
    const auto eq = spec.find('=');
    if (eq == std::string::npos || eq == 0 || eq + 1 == spec.size())
      return make_error(errc::invalid_argument, where + ": \"" + spec + "\" is not OLD=NEW (write a '=' in a name as \\x3d)");
    BOOST_OUTCOME_TRY(auto from, format::unescape_display(spec.substr(0, eq)));
    BOOST_OUTCOME_TRY(auto to, format::unescape_display(spec.substr(eq + 1)));
    if (!out.emplace(std::move(from), std::move(to)).second)
      return make_error(errc::invalid_argument, where + ": \"" + spec.substr(0, eq) + "\" is renamed twice");
    return success();
  };
  if (!a.rename_file.empty()) {
    std::FILE* f = std::fopen(a.rename_file.c_str(), "rb");
    if (!f) return make_error(errc::not_found, "--rename-file " + a.rename_file + ": " + std::strerror(errno));
    std::string text;
    char buf[4096];
    for (std::size_t n; (n = std::fread(buf, 1, sizeof buf, f)) > 0;) {
      text.append(buf, n);
      if (text.size() > (std::size_t{64} << 20)) {
        std::fclose(f);
        return make_error(errc::limit_exceeded, "--rename-file " + a.rename_file + ": larger than 64 MiB");
      }
    }
    std::fclose(f);
    std::size_t line = 0;
    for (std::size_t at = 0; at < text.size();) {
      auto end = text.find('\n', at);
      if (end == std::string::npos) end = text.size();
      std::string l = text.substr(at, end - at);
      at = end + 1;
      ++line;
      if (!l.empty() && l.back() == '\r') l.pop_back();
      if (l.empty() || l[0] == '#') continue;
      BOOST_OUTCOME_TRY(add(l, "--rename-file " + a.rename_file + " line " + std::to_string(line)));
    }
  }
  for (const auto& r : a.renames) {
    BOOST_OUTCOME_TRY(add(r, "--rename"));
  }
  return out;
}

result<void> read_whole_checked(io::backend& b, const std::string& prefix, const format::manifest& m, const format::saved_tensor& t) {
  BOOST_OUTCOME_TRY(auto one, mesh::create({{"x", 1}}));
  BOOST_OUTCOME_TRY(auto l, layout::create(std::vector<std::string>(t.global.size(), "unsharded"), one));
  BOOST_OUTCOME_TRY(auto d, dtensor::create(t.type, t.global, l));
  std::vector<named_tensor> views{{t.key, d.view()}};
  BOOST_OUTCOME_TRY(read_tensors(b, prefix, m, views));
  return success();
}

}  // namespace meshckpt::cli
