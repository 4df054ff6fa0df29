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
#include "meshckpt/interchange/safetensors_io.hpp"
#include "meshckpt/pipeline/tensor_io.hpp"
#include "meshckpt/backends/s3.hpp"
#include "meshckpt/io/make_backend.hpp"
#include "meshckpt/io/url.hpp"
#include "meshckpt/format/describe.hpp"
#include "meshckpt/format/names.hpp"
#include "meshckpt/format/safetensors.hpp"
#include "meshckpt/graph/object_graph.hpp"

#include "commands.hpp"

namespace {

using namespace meshckpt;
using namespace meshckpt::cli;

int bench_main(const std::vector<std::string>& av) {
  cli::bench_args b;
  for (std::size_t i = 1; i < av.size(); ++i) {
    auto value = [&]() -> std::optional<std::string> {
      if (i + 1 >= av.size()) return std::nullopt;
      return av[++i];
    };
    std::optional<std::string> v;
    if (av[i] == "--json")
      b.json = true;
    else if (av[i] == "--help") {
      std::fputs(usage_text, stdout);
      return 0;
    } else if (av[i] == "--dir" && (v = value()))
      b.dir = *v;
    else if (av[i] == "--workload" && (v = value()))
      b.workload = *v;
    else if (av[i] == "--backend" && (v = value()))
      b.backend = *v;
    else if (av[i] == "--reps" && (v = value()))
      b.reps = std::max(1, std::atoi(v->c_str()));
    else if (av[i] == "--size" && (v = value()))
      b.convert_mib = static_cast<std::uint64_t>(std::max(1, std::atoi(v->c_str())));
    else
      return usage_error("bench: unknown or incomplete option " + av[i]);
  }
  if (b.dir.empty()) return usage_error("bench needs --dir DIR (on the disk to measure)");
  if (b.backend != "auto" && b.backend != "uring" && b.backend != "posix" && b.backend != "s3")
    return usage_error("bench: --backend is auto, uring, posix or s3");
  // The backend follows from the directory; --backend s3 says so explicitly.
  if ((b.backend == "s3") != io::is_url(b.dir) && b.backend != "auto")
    return usage_error(b.backend == "s3" ? "bench: --backend s3 needs --dir s3://BUCKET/PREFIX"
                                         : "bench: --backend " + b.backend + " measures a local disk, not " + b.dir);
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
    {"inspect", "inspect PATH [--json] [--format meshckpt|tf]",
     "Lists every tensor of checkpoint PATH (DIR/NAME or DIR/NAME.manifest): dtype, global shape,\n"
     "saved layout and mesh, slices, bytes; then the object graph the checkpoint recorded (the\n"
     "tree of objects and the tensors they hold) and any other extensions. PATH may be a\n"
     "TensorFlow checkpoint (PREFIX or PREFIX.index) or a SavedModel directory: its entries,\n"
     "with TensorFlow's dtype names and partitioned slices. --format says which PATH is.",
     1, true, false, false, false, cmd_inspect},
    {"verify", "verify PATH [--json] [--no-progress] [--format meshckpt|tf]",
     "Reads every byte of checkpoint PATH and checks every checksum and file size. PATH may be a\n"
     "directory: every committed checkpoint in it is verified, leftovers of interrupted saves are\n"
     "listed, and every checkpoint its `checkpoint` state file lists must exist. A TensorFlow\n"
     "checkpoint (PATH.index, or a SavedModel directory) is checked tensor by tensor against its\n"
     "CRC-32C (--format tf or meshckpt says which PATH is). On a terminal a\n"
     "progress bar (bytes, rate, ETA) is drawn on stderr. Exit status 0 intact, 1 damaged.",
     1, true, false, false, true, cmd_verify},
    {"ls", "ls DIR [--json]",
     "The checkpoints in DIR: number, creation time, size, tensors, files, status (committed,\n"
     "incomplete leftovers, unreadable), and which one the state file names latest.",
     1, true, false, false, false, cmd_ls},
    {"show", "show PATH KEY [--format meshckpt|tf]",
     "A picture of how tensor KEY of checkpoint PATH was sharded: its global shape as a grid of\n"
     "slices, each labelled with the devices that held it (* marks the one that wrote it).\n"
     "For a TensorFlow checkpoint, the slices of a partitioned variable.",
     2, false, false, false, false, cmd_show},
    {"cat", "cat PATH KEY [--slice S] [--json] [--format meshckpt|tf]",
     "The values of tensor KEY of checkpoint PATH, numpy-style (summarized with ... beyond 1000\n"
     "elements). --slice selects like numpy, per dimension start:stop, an index, or : (e.g.\n"
     "0:4,2 or -1); --json prints every selected value as nested arrays. Reads only the box that\n"
     "bounds the selection (up to 4 GiB), checksums verified. PATH may be a TensorFlow checkpoint\n"
     "or SavedModel directory (KEY is TensorFlow's name).",
     2, true, false, true, false, cmd_cat},
    {"diff", "diff A B [--json] [--format meshckpt|tf]",
     "Which tensors differ between checkpoints A and B: added, removed, dtype or shape changed,\n"
     "values changed (count and largest absolute difference). Checksums are compared first;\n"
     "data is read only when they differ, in blocks of rows (bounded memory). A and B may be\n"
     "TensorFlow checkpoints (compared by key with meshckpt ones). Exit status 0 identical,\n"
     "1 different, 2 trouble.",
     2, true, false, false, false, cmd_diff},
    {"export",
     "export PATH --to safetensors|tf|torch OUT [--shards N|processes] [--skip-unsupported] [--rename OLD=NEW]... [--rename-file FILE]",
     "Every tensor of checkpoint PATH, whole, into the safetensors file OUT (written to a temp\n"
     "name, fsynced, renamed). A tensor safetensors cannot hold (an opaque blob; a TensorFlow\n"
     "string, complex or unknown dtype) fails the export, naming it; --skip-unsupported leaves\n"
     "such tensors out, lists them on stderr and in __metadata__ (meshckpt.skipped), once\n"
     "checked intact. A name that is not valid UTF-8 is refused; --rename OLD=NEW (repeatable)\n"
     "or --rename-file FILE (one OLD=NEW per line) renames tensors, names written as messages\n"
     "show them (\\xNN a byte, \\\\ a backslash). With --shards,\n"
     "OUT is a directory receiving model-0000k-of-0000N.safetensors files and the\n"
     "model.safetensors.index.json Hugging Face tools read: N files of about equal size, or one\n"
     "per process that wrote the checkpoint (each tensor with the process that wrote most of it).\n"
     "With --to tf, OUT is the prefix of a TensorFlow V2 bundle (OUT.index,\n"
     "OUT.data-0000k-of-0000N, N from --shards, default 1), keys verbatim, the object graph\n"
     "included; a tensor saved sharded is a partitioned variable of its shard boxes. Streamed:\n"
     "each stored slice is copied in 8 MiB pieces, checksums verified on the way.\n"
     "With --to torch, OUT is a torch.save zip file of an OrderedDict of every tensor under its\n"
     "key, which torch.load(OUT, weights_only=True) loads; an opaque blob or an unsigned dtype\n"
     "torch lacks fails the export, naming it, unless --skip-unsupported leaves it out.",
     2, false, true, false, false, cmd_export},
    {"import", "import SRC --to PREFIX",
     "SRC as the checkpoint PREFIX, each tensor whole on one device: a safetensors file, the\n"
     "sharded model of a model.safetensors.index.json (checked by the format's safety rules), a\n"
     "TensorFlow checkpoint (a bundle prefix or its .index) or a SavedModel directory (TensorFlow\n"
     "keys verbatim, the TF2 object graph kept, every tensor checked against its CRC-32C), or a\n"
     "torch.save file (its pickle read, never run: only the globals of tensors, storages,\n"
     "dtypes and containers are allowed; keys are the state dict's, nested keys joined by '.';\n"
     "views and tied weights keep their sharing for meshckpt.torch.load; every storage checked\n"
     "against its CRC-32).\n"
     "Streamed: memory stays at the save's staging buffers whatever the tensor size.",
     1, false, true, false, false, cmd_import},
};

int command_usage_error(const command_spec& c, const std::string& msg) {
  std::fprintf(stderr, "meshckpt %s: %s\nusage: meshckpt %s\n(meshckpt %s --help for more)\n", c.name, msg.c_str(), c.synopsis, c.name);
  return 2;
}

// Parses the options into `a` and the operands into `positional`; an exit status when the run
// ends here (--version, an unknown or incomplete option).
std::optional<int> parse_args(const std::vector<std::string>& av, args& a, bool& help, std::vector<std::string>& positional) {
  for (std::size_t i = 0; i < av.size(); ++i) {
    const auto& s = av[i];
    auto value = [&](std::string& out) {
      if (i + 1 >= av.size()) return false;
      out = av[++i];
      return true;
    };
    if (s == "--help" || s == "-h")
      help = true;
    else if (s == "--version") {
      std::printf("meshckpt %s\n", MESHCKPT_VERSION);
      return 0;
    } else if (s == "--json")
      a.json = true;
    else if (s == "--no-progress")
      a.no_progress = true;
    else if (s == "--to") {
      if (!value(a.to)) return usage_error("--to needs a value");
    } else if (s == "--slice") {
      if (!value(a.slice)) return usage_error("--slice needs a value");
    } else if (s == "--shards") {
      if (!value(a.shards)) return usage_error("--shards needs a value");
    } else if (s == "--skip-unsupported") {
      a.skip_unsupported = true;
    } else if (s == "--rename") {
      std::string r;
      if (!value(r)) return usage_error("--rename needs OLD=NEW");
      a.renames.push_back(std::move(r));
    } else if (s == "--rename-file") {
      if (!value(a.rename_file)) return usage_error("--rename-file needs a file");
    } else if (s == "--format") {
      if (!value(a.format)) return usage_error("--format needs a value");
      if (a.format != "meshckpt" && a.format != "tf") return usage_error("--format is meshckpt or tf, not " + a.format);
    } else if (s.starts_with("--") || (s.starts_with("-") && s.size() > 1 && !std::isdigit(static_cast<unsigned char>(s[1])))) {
      return usage_error("unknown option " + s);
    } else {
      positional.push_back(s);
    }
  }
  return std::nullopt;
}

// The options command `c` does not take, and its operand count; an exit status on a misuse.
std::optional<int> check_args(const command_spec& c, const args& a, std::size_t operands) {
  if (a.json && !c.json)
    return command_usage_error(c, std::string("has no --json") + (a.command == "show" ? "; for data use inspect --json" : ""));
  if (!a.to.empty() && !c.to) return command_usage_error(c, "has no --to");
  if (!a.slice.empty() && !c.slice) return command_usage_error(c, "has no --slice");
  if (!a.shards.empty() && a.command != "export") return command_usage_error(c, "has no --shards");
  if (!a.format.empty() && a.command != "inspect" && a.command != "verify" && a.command != "cat" && a.command != "diff" &&
      a.command != "show")
    return command_usage_error(c, "has no --format");
  if (a.no_progress && !c.progress) return command_usage_error(c, "has no --no-progress");
  if ((a.skip_unsupported || !a.renames.empty() || !a.rename_file.empty()) && (a.command != "export" || a.to != "safetensors") &&
      !(a.skip_unsupported && a.renames.empty() && a.rename_file.empty() && a.command == "export" && a.to == "torch"))
    return command_usage_error(
        c, "--skip-unsupported, --rename and --rename-file are options of export --to safetensors (and --skip-unsupported of --to torch)");
  if (operands != c.operands)
    return command_usage_error(c, "takes " + std::to_string(c.operands) + " operand(s), got " + std::to_string(operands));
  if (c.to && a.to.empty()) return command_usage_error(c, "needs --to");
  if (a.command == "export" && a.to != "safetensors" && a.to != "tf" && a.to != "torch")
    return command_usage_error(c, "exports --to safetensors, --to tf or --to torch");
  if (a.command == "export" && a.to == "torch" && !a.shards.empty())
    return command_usage_error(c, "--to torch writes one file: no --shards");
  if (a.command == "export" && a.to == "tf" && a.shards == "processes") return command_usage_error(c, "--to tf takes --shards N");
  return std::nullopt;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> av(argv + 1, argv + argc);
  if (!av.empty() && av[0] == "bench") return bench_main(av);
  args a;
  bool help = false;
  std::vector<std::string> positional;
  if (auto ended = parse_args(av, a, help, positional)) return *ended;
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
  if (auto misuse = check_args(*cmd, a, positional.size() - 1)) return *misuse;
  a.path = positional[1];
  if (cmd->operands == 2) {
    if (a.command == "show" || a.command == "cat")
      a.key = positional[2];
    else if (a.command == "diff")
      a.other = positional[2];
    else
      a.out = positional[2];
  }
  // A URL only where a backend serves its scheme (s3://), never a local directory named "gs:".
  for (const std::string* p : {&a.path, &a.to, &a.out, &a.other})
    if (io::is_url(*p) && !backends::is_s3_path(*p)) return report_error(a.command, io::url_refused(*p));
  auto backend = backends::make_backend(backends::backend_kind::automatic);
  if (!backend) {
    std::fprintf(stderr, "meshckpt: %s\n", backend.error().what().c_str());
    return 1;
  }
  return cmd->run(**backend, a);
}
