#pragma once
// Private to the CLI: what every command shares (arguments, prefix spelling, loading a manifest,
// reading a tensor whole) and the commands themselves, one file per family:
// cmd_directory.cpp (ls), cmd_inspect.cpp (inspect, show, cat, diff), cmd_verify.cpp (verify),
// cmd_convert.cpp (export, import); main.cpp parses and dispatches.

#include <cstdint>
#include <map>
#include <vector>
#include <optional>
#include <string>

#include "meshckpt/pipeline/tensor_io.hpp"
#include "meshckpt/interchange/tf_bundle_io.hpp"
#include "meshckpt/format/manifest.hpp"
#include "meshckpt/io/backend.hpp"
#include "meshckpt/tensor/dtensor.hpp"

namespace meshckpt::cli {

// The tool's usage text (meshckpt --help).
extern const char* const usage_text;

struct args {
  std::string command, path, key, to, out, other, slice, shards;
  std::string format;  // --format meshckpt|tf: what PATH is, instead of detecting it
  bool json = false;
  bool no_progress = false;
  bool skip_unsupported = false;     // export: leave out what the target format cannot hold
  std::vector<std::string> renames;  // export: --rename OLD=NEW, in order
  std::string rename_file;           // export: --rename-file FILE, one OLD=NEW per line
};

// The one way the tool reports a failure: "meshckpt COMMAND: MESSAGE" on stderr. Each returns
// the exit status: 1 for a failure, 2 for a usage error (report_usage, or `status`).
int report_error(const std::string& command, const error& e, int status = 1);
[[gnu::format(printf, 2, 3)]] int report_failure(const char* command, const char* fmt, ...);
[[gnu::format(printf, 2, 3)]] int report_usage(const char* command, const char* fmt, ...);
// A note on stderr in the same form (what a command left out), the command going on.
[[gnu::format(printf, 2, 3)]] void report_note(const char* command, const char* fmt, ...);

// The renames of `a` (--rename-file first, then each --rename), OLD and NEW as messages show
// keys (`format::unescape_display`: \xNN for a byte, \\ for a backslash). Errors:
// invalid_argument (no '=', an empty side, a bad escape, OLD twice), a file that cannot be read.
result<std::map<std::string, std::string>> rename_map(const args& a);

// Reads tensor `t` of checkpoint `prefix` (manifest `m`) whole into memory, every checksum
// verified; the bytes are dropped (a check that it is intact).
result<void> read_whole_checked(io::backend& b, const std::string& prefix, const format::manifest& m, const format::saved_tensor& t);

// Prints `msg` and the usage text; returns the usage exit status (2).
int usage_error(const std::string& msg);
bool is_directory(const std::string& p);
bool exists(const std::string& p);
// The size of file (or s3:// object) `p`, if it exists.
std::optional<std::uint64_t> file_size(const std::string& p);
// The prefix of the TensorFlow bundle that `path` names (PREFIX, or PREFIX.index, with
// PREFIX.index present and no meshckpt manifest of that name; a SavedModel directory D with
// D/variables/variables.index names D/variables/variables), or nothing.
std::optional<std::string> tf_bundle_prefix(const std::string& path);
// Accepts "DIR/NAME.manifest" as a spelling of the prefix "DIR/NAME".
std::string normalize_prefix(std::string p);
std::string join(const std::string& dir, const std::string& name);
// The manifest of `prefix`, or nullopt after printing why not.
std::optional<format::manifest> load_manifest(io::backend& b, std::string& prefix, const args& a);

int cmd_ls(io::backend& b, const args& a);
int cmd_export(io::backend& b, const args& a);
int cmd_import(io::backend& b, const args& a);
int cmd_show(io::backend& b, const args& a);
int cmd_inspect(io::backend& b, const args& a);
int cmd_cat(io::backend& b, const args& a);
int cmd_diff(io::backend& b, const args& a);
int cmd_verify(io::backend& b, const args& a);

}  // namespace meshckpt::cli
