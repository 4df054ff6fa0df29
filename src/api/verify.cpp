// Verify (every byte of a checkpoint against its checksums, damage listed rather than thrown)
// and the directory scan (committed checkpoints and the leftovers of interrupted saves).

#include <set>

#include "../pipeline/common.hpp"
#include "../pipeline/data_files.hpp"
#include "meshckpt/pipeline/tensor_io_async.hpp"
#include "meshckpt/interchange/torch_io.hpp"
#include "meshckpt/format/names.hpp"
#include "../interchange/restorable.hpp"

namespace meshckpt {

namespace detail {

namespace {

task<verify_report> verify_files(io::backend& b, const opened_prefix& p, const std::string& prefix,
                                 std::optional<format::manifest>& manifest, std::optional<file_cache>& cache,
                                 const verify_progress& progress) {
  auto ex = co_await asio::this_coro::executor;
  // A DCP directory (verify_coro found its .metadata), else meshckpt's manifest, else a
  // torch.save file: its storages against their CRC-32.
  const bool dcp = prefix.ends_with("/.metadata");
  // (no co_await inside a conditional expression: GCC 12 miscompiles it, freeing the result twice)
  result<format::manifest> loaded = make_error(errc::not_found, prefix);
  if (!dcp) loaded = co_await load_manifest(b, p, prefix);
  if (!loaded && loaded.error().code == errc::not_found) {
    // (a named task: GCC 12 destroys a temporary argument of a coroutine inside co_await twice)
    auto loading_torch = dcp ? load_dcp(b, prefix.substr(0, prefix.size() - 10)) : load_torch_file(b, prefix);
    auto torch = co_await std::move(loading_torch);
    if (torch)
      loaded = std::move(torch->manifest);
    else if (!no_torch_checkpoint(torch.error()))
      loaded = torch.error();
  }
  if (!loaded) co_return loaded.error();
  const auto* m = &manifest.emplace(std::move(*loaded));
  // A whole-slice CRC is checked as the pieces go by; XXH3 chunks piece by piece.
  const bool whole = format::whole_slice_crc(m->checksum);
  verify_report rep;
  rep.files = m->files.size();
  rep.tensors = m->tensors.size();
  rep.checksummed = m->checksum != format::checksum_kind::unchecked;
  const std::uint64_t total = m->stored_bytes();
  auto& files = cache.emplace(b, p, *m);
  std::set<std::uint32_t> bad_files;
  // Bounded memory: one buffer of at most 64 chunks, never larger than the slice being read.
  std::vector<std::byte> buf;
  for (const auto& t : m->tensors) {
    for (const auto& s : t.slices) {
      ++rep.slices;
      if (bad_files.count(s.file)) {
        continue;
      }
      auto h = co_await files.get(s.file);
      if (!h) {
        rep.problems.push_back(with_context(h.error(), "tensor \"" + t.key + "\""));
        bad_files.insert(s.file);
        continue;
      }
      std::uint64_t step = whole ? std::uint64_t{8} << 20 : m->chunk_bytes * std::max<std::uint64_t>(1, (8u << 20) / m->chunk_bytes);
      std::optional<slice_checker> whole_check;
      if (whole) whole_check.emplace(*m, t, s);
      for (std::uint64_t off = 0; off < s.length; off += step) {
        std::uint64_t n = std::min(step, s.length - off);
        buf.resize(n);
        auto got = co_await io::async_read(b, ex, *h, s.offset + off, buf, use_awaitable);
        if (!got) {
          rep.problems.push_back(with_context(got.error(), "tensor \"" + t.key + "\""));
          break;
        }
        if (*got != n) {
          rep.problems.push_back(make_error(errc::short_read, slice_ctx(*m, t, s) + ": file ended early"));
          break;
        }
        rep.bytes_checked += n;
        if (progress) progress(rep.bytes_checked, total);
        if (auto c = whole ? whole_check->update(buf) : check_chunks(*m, t, s, buf, off / m->chunk_bytes); !c) {
          rep.problems.push_back(c.error());
          break;
        }
      }
    }
  }
  co_return rep;
}

task<verify_report> verify_coro(io::backend& b, std::string prefix, verify_progress progress) {
  {  // A DCP directory: its files are in it, named by its .metadata
    auto probing = has_file(b, prefix, ".metadata");
    auto dcp = co_await std::move(probing);
    if (dcp && *dcp) prefix += "/.metadata";
  }
  auto p = co_await open_prefix_dir(b, prefix);
  if (!p) co_return p.error();
  on_unwind last_resort([&] { io::close_detached(b, p->dir); });
  // Declared here so that the files are closed whatever happens (an allocation failure too).
  std::optional<format::manifest> manifest;
  std::optional<file_cache> files;
  std::optional<result<verify_report>> rep;
  try {
    rep = co_await verify_files(b, *p, prefix, manifest, files, progress);
  } catch (const std::bad_alloc&) {
    rep = out_of_memory("verifying");
  }
  if (files) co_await files->close_all();
  co_await close_quietly(b, p->dir);
  last_resort.disarm();
  co_return std::move(*rep);
}

}  // namespace

void start_verify(asio::any_io_executor ex, io::backend& b, std::string prefix, io::completion<verify_report> done,
                  verify_progress progress) {
  spawn<verify_report>(ex, verify_coro(b, std::move(prefix), std::move(progress)), std::move(done));
}

}  // namespace detail

result<verify_report> verify(io::backend& b, std::string_view prefix, verify_progress progress) {
  return runtime::run_blocking<verify_report>(
      "verify", [&](auto ex, auto done) { detail::start_verify(ex, b, std::string(prefix), std::move(done), std::move(progress)); });
}

namespace detail {

namespace {

task<directory_scan> scan_coro(io::backend& b, std::string d) {
  auto ex = co_await asio::this_coro::executor;
  auto h = co_await io::async_open_dir(b, ex, d, false, use_awaitable);
  if (!h) co_return h.error();
  auto entries = co_await io::async_list(b, ex, *h, use_awaitable);
  co_await close_quietly(b, *h);
  if (!entries) co_return entries.error();
  directory_scan scan;
  std::set<std::string> referenced;
  for (const auto& e : *entries) {
    auto k = format::classify(e.name);
    if (k.k != format::name_kind::manifest || e.type != io::dir_entry::regular) continue;
    scan.checkpoints.push_back(k.base);
    auto loading = load_manifest_at(b, d + "/" + k.base);
    if (auto m = co_await std::move(loading))
      for (const auto& f : m->files) referenced.insert(f.name);
  }
  for (const auto& e : *entries) {
    auto k = format::classify(e.name);
    if (k.k == format::name_kind::temp_manifest || (k.k == format::name_kind::data && !referenced.count(e.name)))
      scan.leftovers.push_back(e.name);
  }
  co_return scan;
}

}  // namespace

}  // namespace detail

result<directory_scan> scan_directory(io::backend& b, std::string_view dir) {
  std::string d(dir.empty() ? "." : dir);
  return runtime::run_blocking<directory_scan>(
      "scan_directory", [&](auto ex, auto done) { detail::spawn<directory_scan>(ex, detail::scan_coro(b, d), std::move(done)); });
}

}  // namespace meshckpt
