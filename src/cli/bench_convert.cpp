// meshckpt bench --workload convert: the conversions of BENCHMARKS.md on one large tensor
// (larger than the staging pool, so every byte streams): importing a safetensors file and a
// TensorFlow bundle, and exporting the checkpoint back to both. Each repetition also runs fio's
// write and a cold verified restore of the imported checkpoint, so the ratios compare the disk
// at (nearly) the same moment.

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <vector>

#include "bench.hpp"
#include "commands.hpp"
#include "meshckpt/api/checkpoint_files.hpp"
#include "meshckpt/interchange/safetensors_io.hpp"
#include "meshckpt/pipeline/tensor_io.hpp"
#include "meshckpt/interchange/tf_bundle_io.hpp"
#include "meshckpt/format/safetensors.hpp"

namespace meshckpt::cli {

namespace {

using clock_type = std::chrono::steady_clock;

// Writes the source: a safetensors file holding one float32 tensor of `rows` x 4096.
bool write_source(const std::string& path, std::int64_t rows) {
  std::vector<format::safetensor_entry> e{{"weight", dtype::float32, {rows, 4096}, 0, 0}};
  auto header = format::encode_safetensors_header(e, {});
  if (!header) return false;
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(header->data()), static_cast<std::streamsize>(header->size()));
  std::vector<std::uint32_t> row(4096);
  for (std::int64_t r = 0; r < rows; ++r) {
    for (std::size_t i = 0; i < row.size(); ++i)
      row[i] = static_cast<std::uint32_t>((static_cast<std::uint64_t>(r) * 4096 + i) * 2654435761u);
    out.write(reinterpret_cast<const char*>(row.data()), static_cast<std::streamsize>(row.size() * 4));
  }
  out.close();
  return static_cast<bool>(out);
}

template <class F>
std::optional<double> timed(const char* what, F&& f) {
  auto t0 = clock_type::now();
  if (auto r = f(); !r) {
    report_note("bench", "%s failed: %s", what, r.error().what().c_str());
    return std::nullopt;
  }
  return std::chrono::duration<double>(clock_type::now() - t0).count();
}

// The repetitions' timings (seconds) and per-repetition ratios.
struct convert_samples {
  std::vector<double> imp, imp_tf, exp, exp_tf, rst, fio, imp_r, imp_tf_r, imp_f, imp_tf_f, exp_f, exp_tf_f;
};

// Medians of the samples.
void summarize(convert_figures& f, const convert_samples& c, double mib) {
  f.import_MiBps = mib / median(c.imp);
  f.import_tf_MiBps = mib / median(c.imp_tf);
  f.export_MiBps = mib / median(c.exp);
  f.export_tf_MiBps = mib / median(c.exp_tf);
  f.restore_MiBps = mib / median(c.rst);
  f.import_vs_restore = median(c.imp_r);
  f.import_tf_vs_restore = median(c.imp_tf_r);
  f.fio_write_MiBps = median_opt(c.fio);
  f.import_vs_fio = median_opt(c.imp_f);
  f.import_tf_vs_fio = median_opt(c.imp_tf_f);
  f.export_vs_fio = median_opt(c.exp_f);
  f.export_tf_vs_fio = median_opt(c.exp_tf_f);
}

}  // namespace

std::optional<convert_figures> run_convert(io::backend& be, const bench_args& a, bool have_fio) {
  const std::int64_t rows = static_cast<std::int64_t>(a.convert_mib) * (1 << 20) / (4096 * 4);
  convert_figures f;
  f.bytes = static_cast<std::uint64_t>(rows) * 4096 * 4;
  const std::string src = a.dir + "/convert-src.safetensors", ref = a.dir + "/convert-ref", tf = a.dir + "/convert-tf";
  if (!write_source(src, rows)) {
    report_note("bench", "cannot write %s", src.c_str());
    return std::nullopt;
  }
  // The sources of the exports and of the TF import, written once, untimed.
  if (!timed("import", [&] { return import_safetensors(be, src, ref); }) ||
      !timed("export to tf", [&] { return export_tf_bundle(be, ref, tf); }))
    return std::nullopt;
  auto m = read_manifest(be, ref);
  if (!m) return std::nullopt;
  auto one = mesh::create({{"x", 1}}).value();
  auto back = dtensor::create(dtype::float32, {rows, 4096}, layout::create({"unsharded", "unsharded"}, one).value()).value();
  std::vector<named_tensor> target{{"weight", back.view()}};
  convert_samples c;
  auto& [imp, imp_tf, exp, exp_tf, rst, fio, imp_r, imp_tf_r, imp_f, imp_tf_f, exp_f, exp_tf_f] = c;
  const double mib = static_cast<double>(f.bytes) / (1 << 20);
  auto remove_outputs = [&](const std::string& prefix) {
    for (const auto& e : std::filesystem::directory_iterator(a.dir))
      if (e.path().filename().string().rfind(std::filesystem::path(prefix).filename().string() + ".", 0) == 0)
        std::filesystem::remove(e.path());
    ::sync();
  };
  for (int r = 0; r < a.reps; ++r) {
    std::optional<double> fw;
    if (have_fio) {
      fw = run_fio(a.dir, true, f.bytes);
      std::filesystem::remove(a.dir + "/fio.bench");
      ::sync();
    }
    const std::string imp_to = a.dir + "/convert-imp", imp_tf_to = a.dir + "/convert-imptf", out = a.dir + "/convert-out";
    f.cold = drop_caches() && f.cold;
    auto ti = timed("import safetensors", [&] { return import_safetensors(be, src, imp_to); });
    f.cold = drop_caches() && f.cold;
    auto tr = timed("restore", [&] { return read_tensors(be, imp_to, target); });
    remove_outputs(imp_to);
    f.cold = drop_caches() && f.cold;
    auto tt = timed("import tf", [&] { return import_tf_checkpoint(be, tf, imp_tf_to); });
    remove_outputs(imp_tf_to);
    f.cold = drop_caches() && f.cold;
    auto te = timed("export safetensors", [&] { return export_safetensors(be, ref, *m, {"weight"}, {}, out + ".safetensors"); });
    remove_outputs(out);
    f.cold = drop_caches() && f.cold;
    auto tx = timed("export tf", [&] { return export_tf_bundle(be, ref, out); });
    remove_outputs(out);
    if (!ti || !tr || !tt || !te || !tx) return std::nullopt;
    imp.push_back(*ti);
    imp_tf.push_back(*tt);
    exp.push_back(*te);
    exp_tf.push_back(*tx);
    rst.push_back(*tr);
    imp_r.push_back(*tr / *ti);
    imp_tf_r.push_back(*tr / *tt);
    if (fw) {
      fio.push_back(*fw);
      imp_f.push_back(mib / *ti / *fw);
      imp_tf_f.push_back(mib / *tt / *fw);
      exp_f.push_back(mib / *te / *fw);
      exp_tf_f.push_back(mib / *tx / *fw);
    }
  }
  remove_outputs(ref);
  remove_outputs(tf);
  std::filesystem::remove(src);
  summarize(f, c, mib);
  return f;
}

}  // namespace meshckpt::cli
