#pragma once
// `meshckpt bench` (see bench.cpp).

#include <string>

namespace meshckpt::cli {

struct bench_args {
  std::string workload = "all";
  std::string dir;
  std::string backend = "auto";
  bool json = false;
  int reps = 3;
};

int run_bench(const bench_args& a);

}  // namespace meshckpt::cli
