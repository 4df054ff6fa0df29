// meshckpt bench's output: the figures as JSON, or as a table with the sentences that say
// what each baseline is.

#include "bench.hpp"

#include <cstdio>

#include "meshckpt/format/describe.hpp"

namespace meshckpt::cli {

namespace {

std::string num(std::optional<double> v, const char* fmt = "%.1f") {
  if (!v) return std::string("null");
  char b[64];
  std::snprintf(b, sizeof b, fmt, *v);
  return std::string(b);
}

}  // namespace

void print_bench_json(const std::vector<figures>& all, const std::optional<convert_figures>& conv, std::string_view backend) {
  const std::string be(backend);
  std::printf("[");
  for (std::size_t i = 0; i < all.size(); ++i) {
    const auto& f = all[i];
    std::printf(
        "%s{\"workload\":\"%s\",\"backend\":\"%s\",\"bytes\":%llu,\"tensors\":%zu,\"save_MiBps\":%.1f,\"restore_MiBps\":%.1f,"
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
        static_cast<unsigned long long>(f.peak_rss), static_cast<unsigned long long>(f.rss_before),
        static_cast<unsigned long long>(f.snapshot_bytes), f.threads_idle ? std::to_string(*f.threads_idle).c_str() : "null",
        f.threads_saving ? std::to_string(*f.threads_saving).c_str() : "null");
  }
  if (conv)
    std::printf(
        "%s{\"workload\":\"convert\",\"backend\":\"%s\",\"bytes\":%llu,\"tensors\":1,\"import_MiBps\":%.1f,\"import_tf_MiBps\":%.1f,"
        "\"export_MiBps\":%.1f,\"export_tf_MiBps\":%.1f,\"restore_MiBps\":%.1f,\"import_vs_restore\":%.3f,\"import_tf_vs_restore\":%.3f,"
        "\"fio_write_MiBps\":%s,\"import_vs_fio\":%s,\"import_tf_vs_fio\":%s,\"export_vs_fio\":%s,\"export_tf_vs_fio\":%s,"
        "\"cold_cache\":%s}",
        all.empty() ? "" : ",", be.c_str(), static_cast<unsigned long long>(conv->bytes), conv->import_MiBps, conv->import_tf_MiBps,
        conv->export_MiBps, conv->export_tf_MiBps, conv->restore_MiBps, conv->import_vs_restore, conv->import_tf_vs_restore,
        num(conv->fio_write_MiBps).c_str(), num(conv->import_vs_fio, "%.3f").c_str(), num(conv->import_tf_vs_fio, "%.3f").c_str(),
        num(conv->export_vs_fio, "%.3f").c_str(), num(conv->export_tf_vs_fio, "%.3f").c_str(), conv->cold ? "true" : "false");
  std::printf("]\n");
}

void print_bench_table(const std::vector<figures>& all, const std::optional<convert_figures>& conv, int reps, bool have_fio) {
  if (!all.empty())
    std::printf("%-8s %-7s %10s %9s %12s %16s %14s %16s %11s\n", "workload", "backend", "bytes", "tensors", "save MiB/s", "fio write (x)",
                "restore MiB/s", "fio read (x)", "RSS growth");
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
    std::printf(
        "medians of %d repetitions; saves durable and checksummed; restores verified%s.\n"
        "fio (1 MiB blocks, io_uring, qd16, O_DIRECT) runs in each repetition next to ours; (x) is the median of the per-repetition "
        "ratios.\n"
        "Each save writes a new checkpoint name; deleting it afterwards is not timed.\n",
        reps, all.empty() || all[0].cold ? ", from a cold page cache" : " (page cache NOT dropped: run as root for cold reads)");
  if (!have_fio) std::printf("fio is not installed: no disk baseline (make bench installs it)\n");
  if (conv) {
    auto x = [&](std::optional<double> r) { return r ? ", " + num(r, "%.2f") + "x fio write" : std::string(); };
    std::printf("convert: one tensor of %s%s; fio write %s MiB/s\n", format::human_bytes(conv->bytes).c_str(),
                conv->cold ? ", each step from a cold page cache" : "", num(conv->fio_write_MiBps, "%.0f").c_str());
    std::printf(
        "convert: import safetensors %.0f MiB/s (%.2fx a cold verified restore of it, %.0f MiB/s%s); import tf %.0f MiB/s (%.2fx%s)\n",
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
      std::printf(
          "stall (copy mode): an async save of %s blocks its caller %.3f s = %.2fx one memcpy of the state (%.3f s); total save %.0f "
          "MiB/s\n",
          format::human_bytes(f.bytes).c_str(), *f.stall_s, *f.stall_s / f.memcpy_s, f.memcpy_s, f.save_MiBps);
      std::printf(
          "stall (lazy mode): the call returns in %.3f ms; a compute-bound loop keeps %.2f of its solo speed while the save copies and "
          "flushes\n",
          *f.lazy_stall_s * 1e3, *f.compute_ratio);
      if (f.threads_saving)
        std::printf(
            "threads: %d in the process with a checkpoint idle, %d while an async save flushes (backend %s; io_uring's kernel workers not "
            "counted)\n",
            *f.threads_idle, *f.threads_saving, f.backend.c_str());
      std::printf("memory: resident %s before the saves, peak %s (snapshot memory %s, staging 64 MiB)\n",
                  format::human_bytes(f.rss_before).c_str(), format::human_bytes(f.peak_rss).c_str(),
                  format::human_bytes(f.snapshot_bytes).c_str());
    }
}

}  // namespace meshckpt::cli
