#pragma once
// `meshckpt bench` (see bench.cpp).

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "meshckpt/io/backend.hpp"

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
