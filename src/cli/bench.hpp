#pragma once
// `meshckpt bench` (see bench.cpp).

#include <cstdint>
#include <deque>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "meshckpt/io/backend.hpp"
#include "meshckpt/pipeline/tensor_io.hpp"
#include "meshckpt/tensor/dtensor.hpp"

namespace meshckpt::cli {

struct bench_args {
  std::string workload = "all";
  std::string dir;
  std::string backend = "auto";
  bool json = false;
  int reps = 3;
  std::uint64_t convert_mib = 2048;  // the convert workload's tensor
};

int run_bench(const bench_args& a);
// The object-store benchmark (bench_s3.cpp): `--dir s3://BUCKET/PREFIX`, large and small,
// against Debian's `aws s3 cp` of the same bytes to the same server in each repetition.
int run_bench_s3(const bench_args& a);

// A workload's state (bench.cpp): large, 32 tensors of 64 MiB float32 with a mix of layouts;
// small, 20,000 tensors of 4 KiB, mostly replicated. Both on mesh x=2,y=4.
struct state {
  std::deque<dtensor> storage;
  std::vector<named_tensor> named;
  std::uint64_t bytes = 0;
};
state make_workload(const std::string& name, bool fill);

// One workload's figures: medians over its repetitions.
struct figures {
  std::string workload;
  std::uint64_t bytes = 0;
  std::size_t tensors = 0;
  double save_MiBps = 0, restore_MiBps = 0;
  std::optional<double> fio_write_MiBps, fio_read_MiBps;
  std::optional<double> save_ratio, restore_ratio;           // median over repetitions of (ours / fio) in the same repetition
  std::optional<double> one_device_MiBps, one_device_ratio;  // reshard: restore onto a single device
  // reshard: the same checkpoint restored into its saved layout in the same repetition, and the
  // median per-repetition ratio of the x=4,y=2 restore to it (the cost of resharding itself,
  // independent of how fast the disk is that minute).
  std::optional<double> same_layout_MiBps, reshard_vs_same;
  double memcpy_s = 0;
  std::optional<double> stall_s, lazy_stall_s, compute_ratio;
  std::optional<int> threads_idle, threads_saving;  // threads of the process before and during an async save
  std::uint64_t peak_rss = 0;                       // peak resident set during the saves
  std::uint64_t rss_before = 0;                     // resident set before them (the state and the program)
  std::uint64_t snapshot_bytes = 0;                 // snapshot memory a copy-mode save holds
  bool cold = false;
  std::string backend;
};

// The convert workload (bench_convert.cpp): medians over the repetitions.
struct convert_figures {
  std::uint64_t bytes = 0;
  double import_MiBps = 0, import_tf_MiBps = 0, export_MiBps = 0, export_tf_MiBps = 0, restore_MiBps = 0;
  std::optional<double> fio_write_MiBps;
  // Per-repetition ratios, medians: the imports to a cold verified restore of the checkpoint
  // they wrote (BENCHMARKS.md's target), every conversion to fio's write.
  double import_vs_restore = 0, import_tf_vs_restore = 0;
  std::optional<double> import_vs_fio, import_tf_vs_fio, export_vs_fio, export_tf_vs_fio;
  bool cold = true;
};

// Prints the figures as one JSON array (bench_report.cpp).
void print_bench_json(const std::vector<figures>& all, const std::optional<convert_figures>& conv, std::string_view backend);
// Prints the figures as a table, with what each baseline is.
void print_bench_table(const std::vector<figures>& all, const std::optional<convert_figures>& conv, int reps, bool have_fio);

// The median of `v` (0 when empty); as optional (nullopt when empty). (bench.cpp)
double median(std::vector<double> v);
std::optional<double> median_opt(const std::vector<double>& v);
// Drops the page cache (needs root); false when it could not. (bench.cpp)
bool drop_caches();
// fio's sequential write of `bytes` in `dir` (O_DIRECT, qd16, final fsync), MiB/s. (bench.cpp)
std::optional<double> run_fio(const std::string& dir, bool write, std::uint64_t bytes);
// Runs the convert workload in `dir`; prints why on failure.
std::optional<convert_figures> run_convert(io::backend& be, const bench_args& a, bool have_fio);

}  // namespace meshckpt::cli
