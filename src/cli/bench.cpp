// meshckpt bench: the workloads of BENCHMARKS.md, measured against baselines taken in the same
// run (fio for the disk, memcpy for the stall), medians of several repetitions. Every save is
// durable and checksummed; every restore reads from a cold page cache (when we may drop it)
// and verifies checksums.

#include "bench.hpp"
#include "commands.hpp"

#include "../runtime/thread_count.hpp"

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
#include "meshckpt/pipeline/tensor_io.hpp"
#include "meshckpt/backends/uring.hpp"
#include "meshckpt/format/describe.hpp"

namespace meshckpt::cli {

namespace {

using clock_type = std::chrono::steady_clock;

double seconds_since(clock_type::time_point t0) { return std::chrono::duration<double>(clock_type::now() - t0).count(); }

}  // namespace

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
}

std::optional<double> median_opt(const std::vector<double>& v) {
  if (v.empty()) return std::nullopt;
  return median(v);
}

// Drops the page cache so that the next read comes from the device. Needs root.
bool drop_caches() {
  ::sync();
  std::ofstream f("/proc/sys/vm/drop_caches");
  if (!f) return false;
  f << "3\n";
  return static_cast<bool>(f.flush());
}

namespace {

// Peak resident set since the last `reset_peak_rss()` (VmHWM), and the current one (VmRSS).
std::uint64_t status_kib(const char* field) {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind(field, 0) == 0) return std::strtoull(line.c_str() + std::strlen(field), nullptr, 10);
  return 0;
}
std::uint64_t peak_rss_bytes() { return status_kib("VmHWM:") * 1024; }
std::uint64_t rss_bytes() { return status_kib("VmRSS:") * 1024; }
// Resets VmHWM to the current RSS (Linux >= 4.0); false when not possible.
bool reset_peak_rss() {
  std::ofstream f("/proc/self/clear_refs");
  if (!f) return false;
  f << "5\n";
  return static_cast<bool>(f.flush());
}

// A compute-bound loop standing in for a training step's math: floating-point work on an
// L1-resident array. Runs until `stop()` (checked every unit of work); returns units per second.
template <class Stop>
double compute_rate(Stop stop) {
  static float a[2048];
  for (std::size_t i = 0; i < 2048; ++i) a[i] = static_cast<float>(i) * 1e-3f;
  auto t0 = clock_type::now();
  std::uint64_t units = 0;
  float acc = 0;
  while (!stop()) {
    for (int rep = 0; rep < 64; ++rep)
      for (std::size_t i = 0; i < 2048; ++i) acc = acc * 0.999f + a[i] * a[(i + 7) & 2047];
    ++units;
  }
  volatile float sink = acc;
  (void)sink;
  return static_cast<double>(units) / seconds_since(t0);
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

}  // namespace

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

namespace {

struct figures {
  std::string workload;
  std::uint64_t bytes = 0;
  std::size_t tensors = 0;
  double save_MiBps = 0, restore_MiBps = 0;
  std::optional<double> fio_write_MiBps, fio_read_MiBps;
  std::optional<double> save_ratio, restore_ratio;  // median over repetitions of (ours / fio) in the same repetition
  std::optional<double> one_device_MiBps, one_device_ratio;  // reshard: restore onto a single device
  // reshard: the same checkpoint restored into its saved layout in the same repetition, and the
  // median per-repetition ratio of the x=4,y=2 restore to it (the cost of resharding itself,
  // independent of how fast the disk is that minute).
  std::optional<double> same_layout_MiBps, reshard_vs_same;
  double memcpy_s = 0;
  std::optional<double> stall_s, lazy_stall_s, compute_ratio;
  std::optional<int> threads_idle, threads_saving;  // threads of the process before and during an async save
  std::uint64_t peak_rss = 0;         // peak resident set during the saves
  std::uint64_t rss_before = 0;       // resident set before them (the state and the program)
  std::uint64_t snapshot_bytes = 0;   // snapshot memory a copy-mode save holds
  bool cold = false;
  std::string backend;
};

using runtime::thread_count;

}  // namespace

int run_bench(const bench_args& a) {
  const auto kind = a.backend == "posix" ? backends::backend_kind::posix
                    : a.backend == "uring" ? backends::backend_kind::uring
                                           : backends::backend_kind::automatic;
  auto made = backends::make_backend(kind);
  if (!made) {
    return report_error("bench", made.error());
  }
  std::shared_ptr<io::backend> be = std::move(*made);
  std::filesystem::create_directories(a.dir);
  std::vector<std::string> workloads;
  if (a.workload == "all") workloads = {"large", "small", "stall", "reshard"};
  else if (a.workload == "large" || a.workload == "small" || a.workload == "stall" || a.workload == "reshard") workloads = {a.workload};
  else if (a.workload != "convert") {
    return report_usage("bench", "unknown workload \"%s\" (large, small, stall, reshard, convert, all)", a.workload.c_str());
  }
  const bool convert = a.workload == "convert" || a.workload == "all";
  const bool have_fio = std::system("command -v fio >/dev/null 2>&1") == 0;
  const bool rss_resettable = reset_peak_rss();
  std::vector<figures> all;
  for (const auto& w : workloads) {
    figures f;
    f.workload = w;
    f.backend = std::string(be->name());
    // Restores go into the saved tensors themselves (checksums prove the bytes): one copy of a
    // state that, with 8 simulated devices holding replicas, is already several times its size.
    auto src = make_workload(w == "stall" || w == "reshard" ? "large" : w, true);
    f.bytes = src.bytes;
    f.tensors = src.named.size();
    if (!a.json) std::fprintf(stderr, "bench %s: %zu tensors, %s, %d repetitions, backend %s\n", w.c_str(), f.tensors,
                              format::human_bytes(f.bytes).c_str(), a.reps, f.backend.c_str());
    std::string prefix = a.dir + "/bench-" + w;
    std::vector<double> same_s, vs_same, save_s, restore_s, one_s, stall_s, lazy_s, compute, save_ratio, restore_ratio, one_ratio, fio_w, fio_r;
    f.cold = true;
    f.rss_before = rss_bytes();
    reset_peak_rss();
    if (w == "stall") {
      // Copy mode: the time an asynchronous save blocks its caller (the snapshot copy), over
      // saves after the first (warm snapshot memory), through the Checkpoint API.
      graph::state_dict sd;
      std::deque<graph::variable> vars;
      for (const auto& n : src.named) {
        vars.emplace_back(n.tensor);
        sd.insert(n.key, vars.back());
      }
      checkpoint_options copt;
      copt.backend = be;
      auto ck = checkpoint::create(mesh::create({{"x", 2}, {"y", 4}}).value(), &sd, {}, copt).value();
      f.threads_idle = thread_count();
      for (int r = 0; r < a.reps + 1; ++r) {
        std::promise<result<std::string>> done;
        auto t0 = clock_type::now();
        ck->start_save(prefix, false, [&](result<std::string> res) { done.set_value(std::move(res)); });
        double stall = seconds_since(t0);
        f.threads_saving = std::max(f.threads_saving.value_or(0), thread_count());  // the flush is in flight
        auto res = done.get_future().get();
        double total = seconds_since(t0);
        if (!res) {
          return report_failure("bench", "save failed: %s", res.error().what().c_str());
        }
        if (r > 0) {
          stall_s.push_back(stall);
          save_s.push_back(total);
        }
      }
      f.snapshot_bytes = f.bytes;
      // Lazy mode: the time the call takes, and how fast a compute-bound loop runs while the
      // save copies and flushes in the background, against the same loop alone for as long.
      for (int r = 0; r < a.reps; ++r) {
        auto t0 = clock_type::now();
        auto pending = ck->write_lazy(prefix);
        lazy_s.push_back(seconds_since(t0));
        double during = compute_rate([&] { return pending.committed(); });
        double flush = seconds_since(t0);
        if (auto res = pending.wait_committed(); !res) {
          return report_failure("bench", "lazy save failed: %s", res.error().what().c_str());
        }
        auto t1 = clock_type::now();
        double solo = compute_rate([&] { return seconds_since(t1) >= flush; });
        compute.push_back(during / solo);
      }
      f.lazy_stall_s = median(lazy_s);
      f.compute_ratio = median(compute);
    }
    for (int r = 0; r < (w == "stall" ? 0 : a.reps); ++r) {
      // fio and our save/restore alternate within each repetition, so a ratio compares the
      // disk at (nearly) the same moment: this machine's speed drifts between minutes.
      std::optional<double> fw, fr;
      // fio's read follows its own write, as our restore follows our save: on a virtual disk the
      // host may still cache recently written data, so both reads see data of the same age.
      const bool disk_baseline = (w == "large" || w == "reshard") && have_fio;
      if (disk_baseline) {
        fw = run_fio(a.dir, true, f.bytes);
        f.cold = drop_caches() && f.cold;
        fr = run_fio(a.dir, false, f.bytes);
        std::filesystem::remove(a.dir + "/fio.bench");
        ::sync();
      }
      // Each save goes to a new name, as a training job's do; removing it afterwards is not
      // timed (it is retention's work, not the save's).
      const std::string name = prefix + "-" + std::to_string(r);
      auto t0 = clock_type::now();
      auto wr = write_tensors(*be, name, src.named);
      if (!wr) {
        return report_failure("bench", "save failed: %s", wr.error().what().c_str());
      }
      save_s.push_back(seconds_since(t0));
      f.cold = drop_caches() && f.cold;
      if (w == "reshard") {
        // Saved on x=2,y=4; restored onto x=4,y=2 (the same layout names now split differently)
        // and, separately, onto one device holding every tensor whole.
        auto onto = [&](const mesh& m, bool whole) -> std::optional<double> {
          std::deque<dtensor> dst;
          std::vector<named_tensor> targets;
          for (const auto& n : src.named) {
            // The saved layout's dimension names ("x", "y", "unsharded"), on the target mesh.
            std::vector<std::string> names;
            for (int ax : n.tensor.layout().mesh_axes())
              names.push_back(whole || ax < 0 ? std::string("unsharded") : n.tensor.layout().mesh_ref().dims()[static_cast<std::size_t>(ax)].name);
            auto l = layout::create(names, m).value();
            dst.push_back(dtensor::create(n.tensor.type(), n.tensor.global_shape(), l).value());
            targets.push_back({n.key, dst.back().view()});
          }
          f.cold = drop_caches() && f.cold;
          auto t = clock_type::now();
          auto rd = read_tensors(*be, name, targets);
          if (!rd) {
            report_note("bench", "reshard restore failed: %s", rd.error().what().c_str());
            return std::nullopt;
          }
          return seconds_since(t);
        };
        f.cold = drop_caches() && f.cold;
        auto ts = clock_type::now();
        if (auto rd = read_tensors(*be, name, src.named); !rd) {
          return report_failure("bench", "restore failed: %s", rd.error().what().c_str());
        }
        same_s.push_back(seconds_since(ts));
        auto a42 = onto(mesh::create({{"x", 4}, {"y", 2}}).value(), false);
        auto one = onto(mesh::create({{"x", 1}}).value(), true);
        if (!a42 || !one) return 1;
        vs_same.push_back(same_s.back() / *a42);
        restore_s.push_back(*a42);
        one_s.push_back(*one);
      } else {
        t0 = clock_type::now();
        auto rd = read_tensors(*be, name, src.named);
        if (!rd) {
          return report_failure("bench", "restore failed: %s", rd.error().what().c_str());
        }
        restore_s.push_back(seconds_since(t0));
      }
      // Deleting large files right before a timed phase slows it (the filesystem frees extents
      // in the background): deletions happen after the timed phases, followed by a sync.
      if (auto del = delete_checkpoint(*be, name); !del) {
        return report_failure("bench", "cleanup failed: %s", del.error().what().c_str());
      }
      ::sync();
      double mib = static_cast<double>(f.bytes) / (1 << 20);
      if (fw) {
        fio_w.push_back(*fw);
        save_ratio.push_back(mib / save_s.back() / *fw);
      }
      if (fr) {
        fio_r.push_back(*fr);
        restore_ratio.push_back(mib / restore_s.back() / *fr);
        if (!one_s.empty()) one_ratio.push_back(mib / one_s.back() / *fr);
      }
    }
    f.peak_rss = rss_resettable ? peak_rss_bytes() : 0;
    f.save_MiBps = static_cast<double>(f.bytes) / (1 << 20) / median(save_s);
    f.restore_MiBps = restore_s.empty() ? 0 : static_cast<double>(f.bytes) / (1 << 20) / median(restore_s);
    f.fio_write_MiBps = median_opt(fio_w);
    f.fio_read_MiBps = median_opt(fio_r);
    f.save_ratio = median_opt(save_ratio);
    f.restore_ratio = median_opt(restore_ratio);
    f.stall_s = median_opt(stall_s);
    if (!one_s.empty()) f.one_device_MiBps = static_cast<double>(f.bytes) / (1 << 20) / median(one_s);
    f.one_device_ratio = median_opt(one_ratio);
    if (!same_s.empty()) f.same_layout_MiBps = static_cast<double>(f.bytes) / (1 << 20) / median(same_s);
    f.reshard_vs_same = median_opt(vs_same);
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
    all.push_back(f);
  }
  std::optional<convert_figures> conv;
  if (convert) {
    if (!a.json) std::fprintf(stderr, "bench convert: one tensor of %llu MiB, %d repetitions, backend %s\n",
                              static_cast<unsigned long long>(a.convert_mib), a.reps, std::string(be->name()).c_str());
    conv = run_convert(*be, a, have_fio);
    if (!conv) return 1;
  }
  auto num = [](std::optional<double> v, const char* fmt = "%.1f") {
    if (!v) return std::string("null");
    char b[64];
    std::snprintf(b, sizeof b, fmt, *v);
    return std::string(b);
  };
  if (a.json) {
    std::printf("[");
    for (std::size_t i = 0; i < all.size(); ++i) {
      const auto& f = all[i];
      std::printf("%s{\"workload\":\"%s\",\"backend\":\"%s\",\"bytes\":%llu,\"tensors\":%zu,\"save_MiBps\":%.1f,\"restore_MiBps\":%.1f,"
                  "\"restore_cold_cache\":%s,\"fio_write_MiBps\":%s,\"fio_read_MiBps\":%s,\"save_vs_fio\":%s,\"restore_vs_fio\":%s,"
                  "\"stall_s\":%s,\"memcpy_s\":%.4f,\"lazy_stall_s\":%s,\"compute_ratio\":%s,"
                  "\"restore_one_device_MiBps\":%s,\"restore_one_device_vs_fio\":%s,"
                  "\"restore_same_layout_MiBps\":%s,\"reshard_vs_same_layout\":%s,"
                  "\"peak_rss_bytes\":%llu,\"rss_before_bytes\":%llu,\"snapshot_bytes\":%llu,\"threads_idle\":%s,\"threads_saving\":%s}",
                  i ? "," : "", f.workload.c_str(), f.backend.c_str(), static_cast<unsigned long long>(f.bytes), f.tensors, f.save_MiBps,
                  f.restore_MiBps, f.cold ? "true" : "false", num(f.fio_write_MiBps).c_str(), num(f.fio_read_MiBps).c_str(),
                  num(f.save_ratio, "%.3f").c_str(), num(f.restore_ratio, "%.3f").c_str(), num(f.stall_s, "%.4f").c_str(), f.memcpy_s,
                  num(f.lazy_stall_s, "%.6f").c_str(), num(f.compute_ratio, "%.3f").c_str(), num(f.one_device_MiBps).c_str(),
                  num(f.one_device_ratio, "%.3f").c_str(), num(f.same_layout_MiBps).c_str(), num(f.reshard_vs_same, "%.3f").c_str(),
                  static_cast<unsigned long long>(f.peak_rss),
                  static_cast<unsigned long long>(f.rss_before), static_cast<unsigned long long>(f.snapshot_bytes),
                  f.threads_idle ? std::to_string(*f.threads_idle).c_str() : "null",
                  f.threads_saving ? std::to_string(*f.threads_saving).c_str() : "null");
    }
    if (conv)
      std::printf("%s{\"workload\":\"convert\",\"backend\":\"%s\",\"bytes\":%llu,\"tensors\":1,\"import_MiBps\":%.1f,\"import_tf_MiBps\":%.1f,"
                  "\"export_MiBps\":%.1f,\"export_tf_MiBps\":%.1f,\"restore_MiBps\":%.1f,\"import_vs_restore\":%.3f,\"import_tf_vs_restore\":%.3f,"
                  "\"fio_write_MiBps\":%s,\"import_vs_fio\":%s,\"import_tf_vs_fio\":%s,\"export_vs_fio\":%s,\"export_tf_vs_fio\":%s,"
                  "\"cold_cache\":%s}",
                  all.empty() ? "" : ",", std::string(be->name()).c_str(), static_cast<unsigned long long>(conv->bytes), conv->import_MiBps,
                  conv->import_tf_MiBps, conv->export_MiBps, conv->export_tf_MiBps, conv->restore_MiBps, conv->import_vs_restore,
                  conv->import_tf_vs_restore, num(conv->fio_write_MiBps).c_str(), num(conv->import_vs_fio, "%.3f").c_str(),
                  num(conv->import_tf_vs_fio, "%.3f").c_str(), num(conv->export_vs_fio, "%.3f").c_str(), num(conv->export_tf_vs_fio, "%.3f").c_str(),
                  conv->cold ? "true" : "false");
    std::printf("]\n");
    return 0;
  }
  if (!all.empty()) std::printf("%-8s %-7s %10s %9s %12s %16s %14s %16s %11s\n", "workload", "backend", "bytes", "tensors", "save MiB/s",
              "fio write (x)", "restore MiB/s", "fio read (x)", "RSS growth");
  for (const auto& f : all) {
    auto ratio = [](std::optional<double> base, std::optional<double> r) {
      char b[48];
      if (!base || !r) return std::string("-");
      std::snprintf(b, sizeof b, "%.0f (%.2fx)", *base, *r);
      return std::string(b);
    };
    std::printf("%-8s %-7s %10s %9zu %12.0f %16s %14.0f %16s %11s\n", f.workload.c_str(), f.backend.c_str(),
                format::human_bytes(f.bytes).c_str(), f.tensors, f.save_MiBps, ratio(f.fio_write_MiBps, f.save_ratio).c_str(),
                f.restore_MiBps, ratio(f.fio_read_MiBps, f.restore_ratio).c_str(),
                f.peak_rss ? format::human_bytes(f.peak_rss > f.rss_before ? f.peak_rss - f.rss_before : 0).c_str() : "?");
  }
  if (!all.empty())
    std::printf("medians of %d repetitions; saves durable and checksummed; restores verified%s.\n"
              "fio (1 MiB blocks, io_uring, qd16, O_DIRECT) runs in each repetition next to ours; (x) is the median of the per-repetition ratios.\n"
              "Each save writes a new checkpoint name; deleting it afterwards is not timed.\n",
              a.reps, all.empty() || all[0].cold ? ", from a cold page cache" : " (page cache NOT dropped: run as root for cold reads)");
  if (!have_fio) std::printf("fio is not installed: no disk baseline (make bench installs it)\n");
  if (conv) {
    auto x = [&](std::optional<double> r) { return r ? ", " + num(r, "%.2f") + "x fio write" : std::string(); };
    std::printf("convert: one tensor of %s%s; fio write %s MiB/s\n", format::human_bytes(conv->bytes).c_str(),
                conv->cold ? ", each step from a cold page cache" : "", num(conv->fio_write_MiBps, "%.0f").c_str());
    std::printf("convert: import safetensors %.0f MiB/s (%.2fx a cold verified restore of it, %.0f MiB/s%s); import tf %.0f MiB/s (%.2fx%s)\n",
                conv->import_MiBps, conv->import_vs_restore, conv->restore_MiBps, x(conv->import_vs_fio).c_str(), conv->import_tf_MiBps,
                conv->import_tf_vs_restore, x(conv->import_tf_vs_fio).c_str());
    std::printf("convert: export safetensors %.0f MiB/s%s; export tf %.0f MiB/s%s\n", conv->export_MiBps, x(conv->export_vs_fio).c_str(),
                conv->export_tf_MiBps, x(conv->export_tf_vs_fio).c_str());
  }
  for (const auto& f : all)
    if (f.workload == "reshard")
      std::printf("reshard: saved on x=2,y=4; restore onto x=4,y=2 %.0f MiB/s%s; onto one device %.0f MiB/s%s\n", f.restore_MiBps,
                  f.restore_ratio ? (" (" + num(f.restore_ratio, "%.2f") + "x fio read)").c_str() : "", f.one_device_MiBps.value_or(0),
                  f.one_device_ratio ? (" (" + num(f.one_device_ratio, "%.2f") + "x fio read)").c_str() : "");
  for (const auto& f : all)
    if (f.workload == "reshard" && f.same_layout_MiBps)
      std::printf("reshard: the same checkpoint restored into its saved layout %.0f MiB/s; resharding onto x=4,y=2 runs at %.2fx of that\n",
                  *f.same_layout_MiBps, f.reshard_vs_same.value_or(0));
  for (const auto& f : all)
    if (f.stall_s) {
      std::printf("stall (copy mode): an async save of %s blocks its caller %.3f s = %.2fx one memcpy of the state (%.3f s); total save %.0f MiB/s\n",
                  format::human_bytes(f.bytes).c_str(), *f.stall_s, *f.stall_s / f.memcpy_s, f.memcpy_s, f.save_MiBps);
      std::printf("stall (lazy mode): the call returns in %.3f ms; a compute-bound loop keeps %.2f of its solo speed while the save copies and flushes\n",
                  *f.lazy_stall_s * 1e3, *f.compute_ratio);
      if (f.threads_saving)
        std::printf("threads: %d in the process with a checkpoint idle, %d while an async save flushes (backend %s; io_uring's kernel workers not counted)\n", *f.threads_idle,
                    *f.threads_saving, f.backend.c_str());
      std::printf("memory: resident %s before the saves, peak %s (snapshot memory %s, staging 64 MiB)\n", format::human_bytes(f.rss_before).c_str(),
                  format::human_bytes(f.peak_rss).c_str(), format::human_bytes(f.snapshot_bytes).c_str());
    }
  return 0;
}

}  // namespace meshckpt::cli
