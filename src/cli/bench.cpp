// meshckpt bench: the workloads of BENCHMARKS.md, measured against baselines taken in the same
// run (fio for the disk, memcpy for the stall), medians of several repetitions. Every save is
// durable and checksummed; every restore reads from a cold page cache (when we may drop it)
// and verifies checksums.

#include "bench.hpp"

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <future>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>

#include "meshckpt/api/checkpoint.hpp"
#include "meshckpt/api/tensor_io.hpp"
#include "meshckpt/backends/uring.hpp"
#include "meshckpt/format/describe.hpp"

namespace meshckpt::cli {

namespace {

using clock_type = std::chrono::steady_clock;

double seconds_since(clock_type::time_point t0) { return std::chrono::duration<double>(clock_type::now() - t0).count(); }

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
}

// Drops the page cache so that the next read comes from the device. Needs root.
bool drop_caches() {
  ::sync();
  std::ofstream f("/proc/sys/vm/drop_caches");
  if (!f) return false;
  f << "3\n";
  return static_cast<bool>(f.flush());
}

std::uint64_t peak_rss_bytes() {
  rusage ru{};
  ::getrusage(RUSAGE_SELF, &ru);
  return static_cast<std::uint64_t>(ru.ru_maxrss) * 1024;
}

struct state {
  std::deque<dtensor> storage;
  std::vector<named_tensor> named;
  std::uint64_t bytes = 0;
};

// large: 32 tensors of 64 MiB float32 with a mix of layouts; small: 20,000 tensors of 4 KiB,
// mostly replicated. Both on mesh x=2,y=4.
state make_workload(const std::string& name, bool fill) {
  auto m = mesh::create({{"x", 2}, {"y", 4}}).value();
  state s;
  auto add = [&](std::string key, shape sh, std::vector<std::string> l) {
    s.storage.push_back(dtensor::create(dtype::float32, std::move(sh), layout::create(std::move(l), m).value()).value());
    if (fill)
      for (const auto& shd : s.storage.back().view().shards()) {
        auto* p = reinterpret_cast<std::uint32_t*>(shd.data.data());
        for (std::size_t i = 0; i < shd.data.size() / 4; ++i) p[i] = static_cast<std::uint32_t>(i * 2654435761u) ^ static_cast<std::uint32_t>(s.storage.size());
      }
    s.named.push_back({std::move(key), s.storage.back().view()});
    s.bytes += static_cast<std::uint64_t>(s.storage.back().view().global_bytes());
  };
  if (name == "large") {
    // A mix: over both mesh dims, over each one (the other replicates), and fully replicated.
    const std::vector<std::vector<std::string>> layouts = {{"x", "y"}, {"y", "x"}, {"x", "unsharded"}, {"unsharded", "unsharded"}};
    for (int i = 0; i < 32; ++i) add("layer" + std::to_string(i) + "/w", {4096, 4096}, layouts[static_cast<std::size_t>(i) % 4]);
  } else {
    for (int i = 0; i < 20000; ++i)
      add("t" + std::to_string(i), {1024}, i % 10 == 0 ? std::vector<std::string>{"y"} : std::vector<std::string>{"unsharded"});
  }
  return s;
}

// Runs fio and returns MiB/s, or nullopt when fio is missing or fails.
std::optional<double> run_fio(const std::string& dir, bool write, std::uint64_t bytes) {
  if (std::system("command -v fio >/dev/null 2>&1") != 0) return std::nullopt;
  std::string file = dir + "/fio.bench";
  std::string cmd = "fio --name=meshckpt --filename=" + file + " --rw=" + (write ? "write" : "read") +
                    " --bs=1M --size=" + std::to_string(bytes / (1 << 20)) + "M --ioengine=io_uring --iodepth=16 --direct=1" +
                    (write ? " --end_fsync=1" : "") + " --output-format=json 2>/dev/null";
  FILE* p = ::popen(cmd.c_str(), "r");
  if (!p) return std::nullopt;
  std::string out;
  char buf[4096];
  while (std::size_t n = std::fread(buf, 1, sizeof buf, p)) out.append(buf, n);
  if (::pclose(p) != 0) return std::nullopt;
  // "bw_bytes" of the job's read or write section.
  auto sec = out.find(write ? "\"write\" : {" : "\"read\" : {");
  if (sec == std::string::npos) return std::nullopt;
  auto bw = out.find("\"bw_bytes\"", sec);
  if (bw == std::string::npos) return std::nullopt;
  auto colon = out.find(':', bw);
  double v = std::strtod(out.c_str() + colon + 1, nullptr);
  return v / (1 << 20);
}

struct figures {
  std::string workload;
  std::uint64_t bytes = 0;
  std::size_t tensors = 0;
  double save_MiBps = 0, restore_MiBps = 0;
  std::optional<double> fio_write_MiBps, fio_read_MiBps;
  double memcpy_s = 0;
  std::optional<double> stall_s;
  std::uint64_t peak_rss = 0;
  bool cold = false;
  std::string backend;
};

}  // namespace

int run_bench(const bench_args& a) {
  const auto kind = a.backend == "posix" ? backends::backend_kind::posix
                    : a.backend == "uring" ? backends::backend_kind::uring
                                           : backends::backend_kind::automatic;
  auto be = backends::make_backend(kind);
  if (!be) {
    std::fprintf(stderr, "meshckpt bench: %s\n", be.error().what().c_str());
    return 1;
  }
  std::filesystem::create_directories(a.dir);
  std::vector<std::string> workloads;
  if (a.workload == "all") workloads = {"large", "small", "stall"};
  else if (a.workload == "large" || a.workload == "small" || a.workload == "stall") workloads = {a.workload};
  else {
    std::fprintf(stderr, "meshckpt bench: unknown workload \"%s\" (large, small, stall, all)\n", a.workload.c_str());
    return 2;
  }
  std::vector<figures> all;
  for (const auto& w : workloads) {
    figures f;
    f.workload = w;
    f.backend = std::string((*be)->name());
    // Restores go into the saved tensors themselves (checksums prove the bytes): one copy of a
    // state that, with 8 simulated devices holding replicas, is already several times its size.
    auto src = make_workload(w == "stall" ? "large" : w, true);
    auto& dst = src;
    f.bytes = src.bytes;
    f.tensors = src.named.size();
    if (!a.json) std::fprintf(stderr, "bench %s: %zu tensors, %s, %d repetitions, backend %s\n", w.c_str(), f.tensors,
                              format::human_bytes(f.bytes).c_str(), a.reps, f.backend.c_str());
    std::string prefix = a.dir + "/bench-" + w;
    std::vector<double> save_s, restore_s, stall_s;
    f.cold = true;
    if (w == "stall") {
      // The time an asynchronous save blocks its caller (the snapshot copy), over saves after
      // the first (warm snapshot memory), through the Checkpoint API.
      graph::state_dict sd;
      std::deque<graph::variable> vars;
      for (const auto& n : src.named) {
        vars.emplace_back(n.tensor);
        sd.insert(n.key, vars.back());
      }
      checkpoint_options copt;
      copt.backend = std::shared_ptr<io::backend>(std::move(*be));
      auto ck = checkpoint::create(mesh::create({{"x", 2}, {"y", 4}}).value(), &sd, {}, copt).value();
      for (int r = 0; r < a.reps + 1; ++r) {
        std::promise<result<std::string>> done;
        auto t0 = clock_type::now();
        ck->start_save(prefix, false, [&](result<std::string> res) { done.set_value(std::move(res)); });
        double stall = seconds_since(t0);
        auto res = done.get_future().get();
        double total = seconds_since(t0);
        if (!res) {
          std::fprintf(stderr, "meshckpt bench: save failed: %s\n", res.error().what().c_str());
          return 1;
        }
        if (r > 0) {
          stall_s.push_back(stall);
          save_s.push_back(total);
        }
      }
      f.stall_s = median(stall_s);
      be = backends::make_backend(kind);
    }
    for (int r = 0; r < (w == "stall" ? 0 : a.reps); ++r) {
      auto t0 = clock_type::now();
      auto wr = write_tensors(**be, prefix, src.named);
      if (!wr) {
        std::fprintf(stderr, "meshckpt bench: save failed: %s\n", wr.error().what().c_str());
        return 1;
      }
      save_s.push_back(seconds_since(t0));
      f.cold = drop_caches() && f.cold;
      t0 = clock_type::now();
      auto rd = read_tensors(**be, prefix, dst.named);
      if (!rd) {
        std::fprintf(stderr, "meshckpt bench: restore failed: %s\n", rd.error().what().c_str());
        return 1;
      }
      restore_s.push_back(seconds_since(t0));
    }
    f.save_MiBps = static_cast<double>(f.bytes) / (1 << 20) / median(save_s);
    f.restore_MiBps = restore_s.empty() ? 0 : static_cast<double>(f.bytes) / (1 << 20) / median(restore_s);
    // memcpy of the bytes a save writes (one copy of each distinct slice) into an already-touched
    // buffer: the floor of a copy-mode snapshot.
    std::vector<double> mc;
    {
      std::vector<std::byte> scratch(static_cast<std::size_t>(std::min<std::uint64_t>(f.bytes, 256u << 20)));
      std::memset(scratch.data(), 1, scratch.size());
      for (int r = 0; r < 3; ++r) {
        auto t0 = clock_type::now();
        std::uint64_t copied = 0;
        for (const auto& n : src.named)
          for (const auto& sh : n.tensor.shards()) {
            if (copied >= f.bytes) break;
            auto len = std::min<std::uint64_t>(sh.data.size(), f.bytes - copied);
            for (std::uint64_t off = 0; off < len; off += scratch.size())
              std::memcpy(scratch.data(), sh.data.data() + off, std::min<std::uint64_t>(scratch.size(), len - off));
            copied += len;
          }
        mc.push_back(seconds_since(t0));
      }
    }
    f.memcpy_s = median(mc);
    if (w == "large") {
      f.fio_write_MiBps = run_fio(a.dir, true, f.bytes);
      drop_caches();
      f.fio_read_MiBps = run_fio(a.dir, false, f.bytes);
      std::filesystem::remove(a.dir + "/fio.bench");
    }
    f.peak_rss = peak_rss_bytes();
    all.push_back(f);
  }
  auto num = [](std::optional<double> v) { return v ? std::to_string(*v) : std::string("null"); };
  if (a.json) {
    std::printf("[");
    for (std::size_t i = 0; i < all.size(); ++i) {
      const auto& f = all[i];
      std::printf("%s{\"workload\":\"%s\",\"backend\":\"%s\",\"bytes\":%llu,\"tensors\":%zu,\"save_MiBps\":%.1f,\"restore_MiBps\":%.1f,"
                  "\"restore_cold_cache\":%s,\"fio_write_MiBps\":%s,\"fio_read_MiBps\":%s,\"stall_s\":%s,\"memcpy_s\":%.4f,"
                  "\"peak_rss_bytes\":%llu}",
                  i ? "," : "", f.workload.c_str(), f.backend.c_str(), static_cast<unsigned long long>(f.bytes), f.tensors, f.save_MiBps,
                  f.restore_MiBps, f.cold ? "true" : "false", num(f.fio_write_MiBps).c_str(), num(f.fio_read_MiBps).c_str(), num(f.stall_s).c_str(), f.memcpy_s,
                  static_cast<unsigned long long>(f.peak_rss));
    }
    std::printf("]\n");
    return 0;
  }
  std::printf("%-8s %-7s %10s %9s %12s %12s %12s %12s %9s %10s\n", "workload", "backend", "bytes", "tensors", "save MiB/s",
              "fio write", "restore MiB/s", "fio read", "memcpy s", "peak RSS");
  for (const auto& f : all) {
    auto ratio = [](double v, std::optional<double> base) {
      char b[32];
      if (!base) return std::string("—");
      std::snprintf(b, sizeof b, "%.0f (%.2fx)", *base, v / *base);
      return std::string(b);
    };
    std::printf("%-8s %-7s %10s %9zu %12.0f %12s %12.0f %12s %9.3f %10s\n", f.workload.c_str(), f.backend.c_str(),
                format::human_bytes(f.bytes).c_str(), f.tensors, f.save_MiBps, ratio(f.save_MiBps, f.fio_write_MiBps).c_str(),
                f.restore_MiBps, ratio(f.restore_MiBps, f.fio_read_MiBps).c_str(), f.memcpy_s, format::human_bytes(f.peak_rss).c_str());
  }
  std::printf("medians of %d repetitions; saves durable and checksummed; restores verified%s. fio: 1 MiB blocks, io_uring, qd16, O_DIRECT.\n",
              a.reps, all.empty() || all[0].cold ? ", from a cold page cache" : " (page cache NOT dropped: run as root for cold reads)");
  for (const auto& f : all)
    if (f.stall_s)
      std::printf("stall: an async save of %s blocks its caller %.3f s (snapshot copy) = %.2fx one memcpy of the state (%.3f s); "
                  "total save %.0f MiB/s\n",
                  format::human_bytes(f.bytes).c_str(), *f.stall_s, *f.stall_s / f.memcpy_s, f.memcpy_s, f.save_MiBps);
  return 0;
}

}  // namespace meshckpt::cli
