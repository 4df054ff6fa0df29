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
#include "meshckpt/backends/s3.hpp"
#include "meshckpt/io/url.hpp"
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

}  // namespace

state make_workload(const std::string& name, bool fill) {
  auto m = mesh::create({{"x", 2}, {"y", 4}}).value();
  state s;
  auto add = [&](std::string key, shape sh, std::vector<std::string> l) {
    s.storage.push_back(dtensor::create(dtype::float32, std::move(sh), layout::create(std::move(l), m).value()).value());
    if (fill)
      for (const auto& shd : s.storage.back().view().shards()) {
        auto* p = reinterpret_cast<std::uint32_t*>(shd.data.data());
        for (std::size_t i = 0; i < shd.data.size() / 4; ++i)
          p[i] = static_cast<std::uint32_t>(i * 2654435761u) ^ static_cast<std::uint32_t>(s.storage.size());
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

namespace {

using runtime::thread_count;

}  // namespace

namespace {

// The samples of one workload's repetitions, reduced to `figures` by summarize.
struct samples {
  std::vector<double> same_s, vs_same, save_s, restore_s, one_s, stall_s, lazy_s, compute, save_ratio, restore_ratio, one_ratio, fio_w,
      fio_r;
};

// Copy mode: the time an asynchronous save blocks its caller (the snapshot copy), over saves
// after the first (warm snapshot memory), through the Checkpoint API. Lazy mode: the time the
// call takes, and how fast a compute-bound loop runs while the save copies and flushes in the
// background, against the same loop alone for as long. Returns the exit status on failure.
std::optional<int> bench_stall(const std::shared_ptr<io::backend>& be, const bench_args& a, const state& src, const std::string& prefix,
                               figures& f, samples& s) {
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
    if (!res) return report_failure("bench", "save failed: %s", res.error().what().c_str());
    if (r > 0) {
      s.stall_s.push_back(stall);
      s.save_s.push_back(total);
    }
  }
  f.snapshot_bytes = f.bytes;
  for (int r = 0; r < a.reps; ++r) {
    auto t0 = clock_type::now();
    auto pending = ck->write_lazy(prefix);
    s.lazy_s.push_back(seconds_since(t0));
    double during = compute_rate([&] { return pending.committed(); });
    double flush = seconds_since(t0);
    if (auto res = pending.wait_committed(); !res) return report_failure("bench", "lazy save failed: %s", res.error().what().c_str());
    auto t1 = clock_type::now();
    double solo = compute_rate([&] { return seconds_since(t1) >= flush; });
    s.compute.push_back(during / solo);
  }
  f.lazy_stall_s = median(s.lazy_s);
  f.compute_ratio = median(s.compute);
  return std::nullopt;
}

// Restores checkpoint `name` (saved on x=2,y=4) onto mesh `m` with the saved layout's
// dimension names, or onto one device holding every tensor whole; its seconds.
std::optional<double> restore_onto(io::backend& be, const state& src, const std::string& name, const mesh& m, bool whole, figures& f) {
  std::deque<dtensor> dst;
  std::vector<named_tensor> targets;
  for (const auto& n : src.named) {
    std::vector<std::string> names;
    for (int ax : n.tensor.layout().mesh_axes())
      names.push_back(whole || ax < 0 ? std::string("unsharded") : n.tensor.layout().mesh_ref().dims()[static_cast<std::size_t>(ax)].name);
    auto l = layout::create(names, m).value();
    dst.push_back(dtensor::create(n.tensor.type(), n.tensor.global_shape(), l).value());
    targets.push_back({n.key, dst.back().view()});
  }
  f.cold = drop_caches() && f.cold;
  auto t = clock_type::now();
  if (auto rd = read_tensors(be, name, targets); !rd) {
    report_note("bench", "reshard restore failed: %s", rd.error().what().c_str());
    return std::nullopt;
  }
  return seconds_since(t);
}

// The restores of one repetition: into the saved tensors themselves or, for reshard, into its
// saved layout, onto x=4,y=2 (the same layout names now split differently) and onto one device.
std::optional<int> bench_restores(io::backend& be, const std::string& w, const state& src, const std::string& name, figures& f,
                                  samples& s) {
  f.cold = drop_caches() && f.cold;
  auto t0 = clock_type::now();
  if (auto rd = read_tensors(be, name, src.named); !rd) return report_failure("bench", "restore failed: %s", rd.error().what().c_str());
  const double saved_layout = seconds_since(t0);
  if (w != "reshard") {
    s.restore_s.push_back(saved_layout);
    return std::nullopt;
  }
  s.same_s.push_back(saved_layout);
  auto a42 = restore_onto(be, src, name, mesh::create({{"x", 4}, {"y", 2}}).value(), false, f);
  auto one = restore_onto(be, src, name, mesh::create({{"x", 1}}).value(), true, f);
  if (!a42 || !one) return 1;
  s.vs_same.push_back(s.same_s.back() / *a42);
  s.restore_s.push_back(*a42);
  s.one_s.push_back(*one);
  return std::nullopt;
}

// One repetition of a save/restore workload. fio and our save/restore alternate within it, so
// a ratio compares the disk at (nearly) the same moment: this machine's speed drifts between
// minutes. fio's read follows its own write, as our restore follows our save: on a virtual
// disk the host may still cache recently written data, so both reads see data of the same age.
std::optional<int> bench_repetition(io::backend& be, const bench_args& a, const std::string& w, const state& src, const std::string& name,
                                    bool have_fio, figures& f, samples& s) {
  std::optional<double> fw, fr;
  if ((w == "large" || w == "reshard") && have_fio) {
    fw = run_fio(a.dir, true, f.bytes);
    f.cold = drop_caches() && f.cold;
    fr = run_fio(a.dir, false, f.bytes);
    std::filesystem::remove(a.dir + "/fio.bench");
    ::sync();
  }
  auto t0 = clock_type::now();
  if (auto wr = write_tensors(be, name, src.named); !wr) return report_failure("bench", "save failed: %s", wr.error().what().c_str());
  s.save_s.push_back(seconds_since(t0));
  if (auto failed = bench_restores(be, w, src, name, f, s)) return failed;
  // Each save goes to a new name, as a training job's do; deleting it is retention's work, not
  // timed, and done after the timed phases (the filesystem frees extents in the background,
  // which would slow the next phase), followed by a sync.
  if (auto del = delete_checkpoint(be, name); !del) return report_failure("bench", "cleanup failed: %s", del.error().what().c_str());
  ::sync();
  const double mib = static_cast<double>(f.bytes) / (1 << 20);
  if (fw) {
    s.fio_w.push_back(*fw);
    s.save_ratio.push_back(mib / s.save_s.back() / *fw);
  }
  if (fr) {
    s.fio_r.push_back(*fr);
    s.restore_ratio.push_back(mib / s.restore_s.back() / *fr);
    if (!s.one_s.empty()) s.one_ratio.push_back(mib / s.one_s.back() / *fr);
  }
  return std::nullopt;
}

// memcpy of the bytes a save writes (one copy of each distinct slice) into an already-touched
// buffer: the floor of a copy-mode snapshot. Median of 3, seconds.
double memcpy_floor(const state& src, std::uint64_t bytes) {
  std::vector<double> mc;
  std::vector<std::byte> scratch(static_cast<std::size_t>(std::min<std::uint64_t>(bytes, 256u << 20)));
  std::memset(scratch.data(), 1, scratch.size());
  for (int r = 0; r < 3; ++r) {
    auto t0 = clock_type::now();
    std::uint64_t copied = 0;
    for (const auto& n : src.named)
      for (const auto& sh : n.tensor.shards()) {
        if (copied >= bytes) break;
        auto len = std::min<std::uint64_t>(sh.data.size(), bytes - copied);
        for (std::uint64_t off = 0; off < len; off += scratch.size())
          std::memcpy(scratch.data(), sh.data.data() + off, std::min<std::uint64_t>(scratch.size(), len - off));
        copied += len;
      }
    mc.push_back(seconds_since(t0));
  }
  return median(mc);
}

void summarize(figures& f, const samples& s) {
  const double mib = static_cast<double>(f.bytes) / (1 << 20);
  f.save_MiBps = mib / median(s.save_s);
  f.restore_MiBps = s.restore_s.empty() ? 0 : mib / median(s.restore_s);
  f.fio_write_MiBps = median_opt(s.fio_w);
  f.fio_read_MiBps = median_opt(s.fio_r);
  f.save_ratio = median_opt(s.save_ratio);
  f.restore_ratio = median_opt(s.restore_ratio);
  f.stall_s = median_opt(s.stall_s);
  if (!s.one_s.empty()) f.one_device_MiBps = mib / median(s.one_s);
  f.one_device_ratio = median_opt(s.one_ratio);
  if (!s.same_s.empty()) f.same_layout_MiBps = mib / median(s.same_s);
  f.reshard_vs_same = median_opt(s.vs_same);
}

// Runs workload `w`: its repetitions, then the memcpy floor. Restores go into the saved
// tensors themselves (checksums prove the bytes): one copy of a state that, with 8 simulated
// devices holding replicas, is already several times its size.
std::optional<int> bench_workload(const std::shared_ptr<io::backend>& be, const bench_args& a, const std::string& w, bool have_fio,
                                  bool rss_resettable, figures& f) {
  f.workload = w;
  f.backend = std::string(be->name());
  auto src = make_workload(w == "stall" || w == "reshard" ? "large" : w, true);
  f.bytes = src.bytes;
  f.tensors = src.named.size();
  if (!a.json)
    std::fprintf(stderr, "bench %s: %zu tensors, %s, %d repetitions, backend %s\n", w.c_str(), f.tensors,
                 format::human_bytes(f.bytes).c_str(), a.reps, f.backend.c_str());
  const std::string prefix = a.dir + "/bench-" + w;
  samples s;
  f.cold = true;
  f.rss_before = rss_bytes();
  reset_peak_rss();
  if (w == "stall") {
    if (auto failed = bench_stall(be, a, src, prefix, f, s)) return failed;
  } else {
    for (int r = 0; r < a.reps; ++r)
      if (auto failed = bench_repetition(*be, a, w, src, prefix + "-" + std::to_string(r), have_fio, f, s)) return failed;
  }
  f.peak_rss = rss_resettable ? peak_rss_bytes() : 0;
  summarize(f, s);
  f.memcpy_s = memcpy_floor(src, f.bytes);
  return std::nullopt;
}

}  // namespace

int run_bench(const bench_args& a) {
  const auto kind = a.backend == "posix"   ? backends::backend_kind::posix
                    : a.backend == "uring" ? backends::backend_kind::uring
                                           : backends::backend_kind::automatic;
  auto made = backends::make_backend(kind);
  if (!made) return report_error("bench", made.error());
  std::shared_ptr<io::backend> be = std::move(*made);
  if (backends::is_s3_path(a.dir)) return run_bench_s3(a);
  if (io::is_url(a.dir)) return report_error("bench", io::url_refused(a.dir));
  std::filesystem::create_directories(a.dir);
  std::vector<std::string> workloads;
  if (a.workload == "all")
    workloads = {"large", "small", "stall", "reshard"};
  else if (a.workload == "large" || a.workload == "small" || a.workload == "stall" || a.workload == "reshard")
    workloads = {a.workload};
  else if (a.workload != "convert")
    return report_usage("bench", "unknown workload \"%s\" (large, small, stall, reshard, convert, all)", a.workload.c_str());
  const bool convert = a.workload == "convert" || a.workload == "all";
  const bool have_fio = std::system("command -v fio >/dev/null 2>&1") == 0;
  const bool rss_resettable = reset_peak_rss();
  std::vector<figures> all;
  for (const auto& w : workloads) {
    figures f;
    if (auto failed = bench_workload(be, a, w, have_fio, rss_resettable, f)) return *failed;
    all.push_back(std::move(f));
  }
  std::optional<convert_figures> conv;
  if (convert) {
    if (!a.json)
      std::fprintf(stderr, "bench convert: one tensor of %llu MiB, %d repetitions, backend %s\n",
                   static_cast<unsigned long long>(a.convert_mib), a.reps, std::string(be->name()).c_str());
    conv = run_convert(*be, a, have_fio);
    if (!conv) return 1;
  }
  if (a.json)
    print_bench_json(all, conv, be->name());
  else
    print_bench_table(all, conv, a.reps, have_fio);
  return 0;
}

}  // namespace meshckpt::cli
