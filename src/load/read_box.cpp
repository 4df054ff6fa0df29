// One box of one tensor (read_tensor_box) and one tensor checked whole (verify_tensor): the
// restore's matching, read planner and runner (read.cpp) on a box instead of shards, so memory
// and IO follow the box. A TensorFlow piece's one CRC covers it whole: a box of it is checked
// whole first (check_slices, in staging-sized reads), then only its pages are read.

#include <memory>
#include <optional>

#include "../pipeline/common.hpp"
#include "read.hpp"
#include "match_targets.hpp"
#include "../runtime/staging_pool.hpp"
#include "meshckpt/pipeline/tensor_io_async.hpp"

namespace meshckpt {

namespace detail {

namespace {

// Opens the data directory of `prefix` and a file cache (buffered), runs `body(files)`, and
// closes everything whatever happened.
template <class T, class Body>
task<T> with_data_files(io::backend& b, const std::string& prefix, const format::manifest& m, bool direct, Body body) {
  auto p = co_await open_prefix_dir(b, prefix);
  if (!p) co_return p.error();
  on_unwind last_resort([&] { io::close_detached(b, p->dir); });
  std::optional<file_cache> files;
  std::optional<result<T>> r;
  try {
    files.emplace(b, *p, m, direct);
    auto run = body(*files);
    r = co_await std::move(run);
  } catch (const std::bad_alloc&) {
    r = out_of_memory("reading");
  }
  if (files) co_await files->close_all();
  co_await close_quietly(b, p->dir);
  last_resort.disarm();
  co_return std::move(*r);
}

task<void> verify_tensor_coro(io::backend& b, std::string prefix, std::shared_ptr<const format::manifest> m, std::string key) {
  const auto* t = m->find(key);
  if (!t) co_return make_error(errc::not_found, "verify " + prefix + ": tensor \"" + key + "\" is not in the checkpoint");
  auto body = [&](file_cache& files) -> task<void> {
    std::vector<std::pair<const format::saved_tensor*, const format::saved_slice*>> from;
    for (const auto& s : t->slices) from.emplace_back(t, &s);
    co_return co_await check_slices(b, *m, from, files);
  };
  auto r = co_await with_data_files<void>(b, prefix, *m, false, body);
  if (!r) co_return with_context(r.error(), "verify tensor \"" + key + "\" of " + prefix);
  co_return success();
}

// read_tensor_box: one box of one tensor, only the ranges (whole checksum chunks) that hold it.
task<read_report> read_box_coro(io::backend& b, std::string prefix, std::shared_ptr<const format::manifest> m, std::string key, box where,
                                std::span<std::byte> out, read_options opt) {
  const bool whole_crc = format::whole_slice_crc(m->checksum);
  const bool direct = b.caps().direct_io && !whole_crc;
  // Unverified or checked whole first: ranges of whole pages suffice.
  const std::uint64_t granule = whole_crc || !opt.verify_checksums ? runtime::staging_alignment : m->chunk_bytes;
  auto body = [&](file_cache& files) -> task<read_report> {
    wanted w;
    BOOST_OUTCOME_CO_TRY(match_box(*m, key, where, out, granule, w));
    if (whole_crc && opt.verify_checksums) {
      BOOST_OUTCOME_CO_TRY(co_await check_slices(b, *m, w.from, files));
    }
    if (whole_crc || granule != m->chunk_bytes) opt.verify_checksums = false;
    read_report rep;
    rep.tensors = 1;
    BOOST_OUTCOME_CO_TRY(rep.bytes_read, co_await run_wanted(b, *m, w, granule, direct, opt, files));
    co_return rep;
  };
  auto r = co_await with_data_files<read_report>(b, prefix, *m, direct, body);
  if (!r) co_return with_context(r.error(), "read tensor \"" + key + "\" box " + to_string(where) + " of " + prefix);
  co_return std::move(*r);
}

}  // namespace

task<read_report> read_box(io::backend& b, std::string prefix, std::shared_ptr<const format::manifest> m, std::string key, box where,
                           std::span<std::byte> out, read_options opt) {
  return read_box_coro(b, std::move(prefix), std::move(m), std::move(key), std::move(where), out, std::move(opt));
}

task<void> verify_one_tensor(io::backend& b, std::string prefix, std::shared_ptr<const format::manifest> m, std::string key) {
  return verify_tensor_coro(b, std::move(prefix), std::move(m), std::move(key));
}

void start_read_tensor_box(asio::any_io_executor ex, io::backend& b, std::string prefix, std::shared_ptr<const format::manifest> m,
                           std::string key, box where, std::span<std::byte> out, read_options opt, io::completion<read_report> done) {
  spawn<read_report>(ex, read_box_coro(b, std::move(prefix), std::move(m), std::move(key), std::move(where), out, std::move(opt)),
                     std::move(done));
}

}  // namespace detail

result<read_report> read_tensor_box(io::backend& b, std::string_view prefix, const format::manifest& m, std::string_view key,
                                    const box& where, std::span<std::byte> out, const read_options& opt) {
  std::shared_ptr<const format::manifest> borrowed(&m, [](const format::manifest*) {});
  return runtime::run_blocking<read_report>("read_tensor_box", [&](auto ex, auto done) {
    detail::start_read_tensor_box(ex, b, std::string(prefix), borrowed, std::string(key), where, out, opt, std::move(done));
  });
}

result<void> verify_tensor(io::backend& b, std::string_view prefix, const format::manifest& m, std::string_view key) {
  std::shared_ptr<const format::manifest> borrowed(&m, [](const format::manifest*) {});
  return runtime::run_blocking<void>("verify_tensor", [&](auto ex, auto done) {
    detail::spawn<void>(ex, detail::verify_tensor_coro(b, std::string(prefix), borrowed, std::string(key)), std::move(done));
  });
}

}  // namespace meshckpt
