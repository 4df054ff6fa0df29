// `meshckpt bench --dir s3://BUCKET/PREFIX`: the large and small workloads saved to and restored
// from an object store, each repetition next to Debian's `aws s3 cp` (multipart, its defaults:
// 8 MiB parts, 10 threads) of a file of the same size to the same server, so a ratio compares
// the server at the same moment. Also the requests each checkpoint costs.

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "bench.hpp"
#include "commands.hpp"
#include "meshckpt/backends/s3.hpp"
#include "meshckpt/api/checkpoint_files.hpp"
#include "meshckpt/format/describe.hpp"

namespace meshckpt::cli {

namespace {

using clock_type = std::chrono::steady_clock;
double seconds_since(clock_type::time_point t0) { return std::chrono::duration<double>(clock_type::now() - t0).count(); }

// Debian's awscli (2.9 predates AWS_ENDPOINT_URL: the endpoint is passed explicitly).
std::string aws_command() {
  std::string aws = ::access("/usr/bin/aws", X_OK) == 0 ? "/usr/bin/aws" : "aws";
  if (const char* e = std::getenv("AWS_ENDPOINT_URL"); e && *e) aws += std::string(" --endpoint-url ") + e;
  return aws + " --only-show-errors";
}

// Seconds of one shell command, or nullopt when it fails.
std::optional<double> timed(const std::string& cmd) {
  auto t0 = clock_type::now();
  if (std::system(cmd.c_str()) != 0) return std::nullopt;
  return seconds_since(t0);
}

struct s3_samples {
  std::vector<double> save_s, restore_s, aws_up_s, aws_down_s, save_ratio, restore_ratio;
  backends::s3_request_counts save_requests, restore_requests;
};

backends::s3_request_counts minus(backends::s3_request_counts a, const backends::s3_request_counts& b) {
  a.put -= b.put;
  a.get -= b.get;
  a.list -= b.list;
  a.del -= b.del;
  a.retries -= b.retries;
  return a;
}

std::string requests_text(const backends::s3_request_counts& c) {
  return std::to_string(c.put) + " PUT, " + std::to_string(c.get) + " GET, " + std::to_string(c.list) + " LIST" +
         (c.retries ? ", " + std::to_string(c.retries) + " retried" : "");
}

}  // namespace

int run_bench_s3(const bench_args& a) {
  auto made = backends::make_s3_backend(backends::s3_options_from_env());
  if (!made) return report_error("bench", made.error());
  auto& be = **made;
  std::vector<std::string> workloads;
  if (a.workload == "all")
    workloads = {"large", "small"};
  else if (a.workload == "large" || a.workload == "small")
    workloads = {a.workload};
  else
    return report_usage("bench", "workload \"%s\" is not measured on an object store (large, small, all)", a.workload.c_str());
  const std::string aws = aws_command();
  if (std::system((aws + " --version >/dev/null 2>&1").c_str()) != 0)
    return report_failure("bench", "awscli is not installed: no baseline (Debian package awscli)");
  const std::string local = (std::filesystem::temp_directory_path() / ("meshckpt-bench-aws-" + std::to_string(::getpid()))).string();
  const std::string remote = a.dir + "/bench-aws-baseline.bin";
  struct remove_at_exit {
    std::string path;
    ~remove_at_exit() {
      std::error_code ec;
      std::filesystem::remove(path, ec);
      std::filesystem::remove(path + ".down", ec);
    }
  } cleanup{local};

  std::printf("%-8s %10s %9s %12s %16s %14s %16s\n", "workload", "bytes", "tensors", "save MiB/s", "aws up (x)", "restore MiB/s",
              "aws down (x)");
  std::vector<std::pair<std::string, s3_samples>> all;
  for (const auto& w : workloads) {
    auto src = make_workload(w, true);
    std::fprintf(stderr, "bench %s on %s: %zu tensors, %s, %d repetitions\n", w.c_str(), a.dir.c_str(), src.named.size(),
                 format::human_bytes(src.bytes).c_str(), a.reps);
    {
      std::ofstream f(local, std::ios::binary);
      std::vector<char> block(1 << 20);
      for (std::size_t i = 0; i < block.size(); ++i) block[i] = static_cast<char>(i * 2654435761u >> 13);
      for (std::uint64_t at = 0; at < src.bytes; at += block.size())
        f.write(block.data(), static_cast<std::streamsize>(std::min<std::uint64_t>(block.size(), src.bytes - at)));
    }
    s3_samples s;
    const double mib = static_cast<double>(src.bytes) / (1 << 20);
    for (int r = 0; r < a.reps; ++r) {
      auto up = timed(aws + " s3 cp " + local + " " + remote);
      auto down = timed(aws + " s3 cp " + remote + " " + local + ".down");
      std::filesystem::remove(local + ".down");
      (void)std::system((aws + " s3 rm " + remote + " >/dev/null 2>&1").c_str());
      if (!up || !down) return report_failure("bench", "aws s3 cp to %s failed", remote.c_str());
      const std::string name = a.dir + "/bench-" + w + "-" + std::to_string(::getpid()) + "-" + std::to_string(r);
      auto c0 = be.counts();
      auto t0 = clock_type::now();
      if (auto wr = write_tensors(be, name, src.named); !wr) return report_failure("bench", "save failed: %s", wr.error().what().c_str());
      s.save_s.push_back(seconds_since(t0));
      auto c1 = be.counts();
      auto dst = make_workload(w, false);
      t0 = clock_type::now();
      if (auto rd = read_tensors(be, name, dst.named); !rd) return report_failure("bench", "restore failed: %s", rd.error().what().c_str());
      s.restore_s.push_back(seconds_since(t0));
      s.save_requests = minus(c1, c0);
      s.restore_requests = minus(be.counts(), c1);
      if (auto del = delete_checkpoint(be, name); !del) return report_failure("bench", "cleanup failed: %s", del.error().what().c_str());
      s.aws_up_s.push_back(*up);
      s.aws_down_s.push_back(*down);
      s.save_ratio.push_back(*up / s.save_s.back());
      s.restore_ratio.push_back(*down / s.restore_s.back());
    }
    std::filesystem::remove(local);
    std::printf("%-8s %10s %9zu %12.0f %9.0f (%.2fx) %14.0f %9.0f (%.2fx)\n", w.c_str(), format::human_bytes(src.bytes).c_str(),
                src.named.size(), mib / median(s.save_s), mib / median(s.aws_up_s), median(s.save_ratio), mib / median(s.restore_s),
                mib / median(s.aws_down_s), median(s.restore_ratio));
    all.emplace_back(w, std::move(s));
  }
  std::printf(
      "medians of %d repetitions; aws s3 cp (Debian's awscli, multipart) of the same bytes to the same server runs in each repetition "
      "next to ours; (x) is the median of the per-repetition ratios ours / aws\n",
      a.reps);
  for (const auto& [w, s] : all)
    std::printf("requests per checkpoint, %s: save %s; restore %s\n", w.c_str(), requests_text(s.save_requests).c_str(),
                requests_text(s.restore_requests).c_str());
  return 0;
}

}  // namespace meshckpt::cli
