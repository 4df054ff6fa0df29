// torch.save zip files from checkpoints (api/torch_io.hpp). The layout is fixed before a byte
// is written — records whose CRC is only known once their data went by carry it in a data
// descriptor after the data, as torch.save writes them — so the file is streamed front to back
// through the staging blocks, each tensor read from its slices as it is placed.

#include <algorithm>

#include "common.hpp"
#include "data_files.hpp"
#include "meshckpt/api/torch_io.hpp"
#include "meshckpt/format/describe.hpp"
#include "meshckpt/format/torch_file.hpp"
#include "meshckpt/format/zip.hpp"

namespace meshckpt {

namespace {

using detail::task;
using detail::use_awaitable;

std::span<const std::byte> bytes_of(std::string_view s) { return std::as_bytes(std::span(s.data(), s.size())); }

task<void> export_coro(io::backend& b, std::string prefix, std::shared_ptr<const format::manifest> m,
                       std::vector<const format::saved_tensor*> which, std::vector<std::byte> pickle, std::string out) {
  std::string root = split_prefix(out).second;
  if (auto dot = root.rfind('.'); dot != std::string::npos && dot > 0) root.resize(dot);
  if (root.empty() || !format::is_utf8(root)) root = "archive";
  const std::string byteorder = "little", version = "3\n";
  auto size_of = [](const format::saved_tensor* t) {
    return static_cast<std::uint64_t>(num_elements(t->global).value_or(0)) * dtype_size(t->type);
  };
  // The layout, from a first pass of the writer: the file's size.
  std::uint64_t size = 0;
  {
    format::zip::zip_writer z;
    (void)z.begin_record(root + "/data.pkl", pickle.size(), 0);
    (void)z.end_record();
    (void)z.begin_record(root + "/byteorder", byteorder.size(), 0);
    (void)z.end_record();
    for (std::size_t i = 0; i < which.size(); ++i) {
      (void)z.begin_record(root + "/data/" + std::to_string(i), size_of(which[i]), 0, 64, true);
      (void)z.end_record();
    }
    (void)z.begin_record(root + "/version", version.size(), 0);
    (void)z.end_record();
    size = z.offset() + z.finish().size();
  }
  auto sp = co_await detail::open_prefix_dir(b, prefix);
  if (!sp) co_return sp.error();
  detail::file_cache src(b, *sp, *m), src_direct(b, *sp, *m, true);  // small slices buffered, large ones O_DIRECT
  runtime::on_unwind last_resort([&] { io::close_detached(b, sp->dir); });
  std::vector<std::byte> block;
  auto produce = [&](runtime::staged_writer& w) -> task<void> {
    format::zip::zip_writer z;
    auto small = [&](const std::string& name, std::span<const std::byte> data) -> task<void> {
      auto h = z.begin_record(name, data.size(), format::zip::crc32_extend(0, data));
      const std::uint64_t at = z.offset();
      BOOST_OUTCOME_CO_TRY(co_await w.write(at - h.size(), h));
      BOOST_OUTCOME_CO_TRY(co_await w.write(at, data));
      (void)z.end_record();
      co_return success();
    };
    BOOST_OUTCOME_CO_TRY(co_await small(root + "/data.pkl", pickle));
    BOOST_OUTCOME_CO_TRY(co_await small(root + "/byteorder", bytes_of(byteorder)));
    for (std::size_t i = 0; i < which.size(); ++i) {
      const auto* t = which[i];
      auto h = z.begin_record(root + "/data/" + std::to_string(i), size_of(t), 0, 64, true);
      std::uint64_t offset = z.offset();
      BOOST_OUTCOME_CO_TRY(co_await w.write(offset - h.size(), h));
      std::uint32_t crc = 0;
      if (t->slices.size() == 1 && t->slices[0].where == box::whole(t->global)) {
        // Stored whole: its bytes are the row-major tensor, read straight into the staging
        // blocks, checked and their CRC-32 computed on the way.
        auto copied = detail::copy_slice(b, *m, src, src_direct, *t, t->slices[0], w, offset, detail::crc_of::crc32);
        BOOST_OUTCOME_CO_TRY(crc, co_await std::move(copied));
      } else if (size_of(t) > 0) {
        // Stored as several slices: assembled in blocks of whole rows of about 8 MiB.
        read_options block_opt;
        if (format::whole_slice_crc(m->checksum)) {  // one CRC covers each piece whole: checked once, first
          auto checking = detail::verify_one_tensor(b, prefix, m, t->key);
          BOOST_OUTCOME_CO_TRY(co_await std::move(checking));
          block_opt.verify_checksums = false;
        }
        const std::int64_t rows = t->global.empty() ? 1 : t->global[0];
        const auto row_bytes = size_of(t) / static_cast<std::uint64_t>(rows);
        const std::int64_t per_block = static_cast<std::int64_t>(std::max<std::uint64_t>(1, (8u << 20) / row_bytes));
        for (std::int64_t r0 = 0; r0 < rows; r0 += per_block) {
          box where = box::whole(t->global);
          if (!t->global.empty()) {
            where.origin[0] = r0;
            where.extent[0] = std::min(per_block, rows - r0);
          }
          block.resize(static_cast<std::size_t>(where.volume().value_or(0) * static_cast<std::int64_t>(dtype_size(t->type))));
          auto rd = detail::read_box(b, prefix, m, t->key, where, block, block_opt);
          BOOST_OUTCOME_CO_TRY(co_await std::move(rd));
          crc = format::zip::crc32_extend(crc, block);
          BOOST_OUTCOME_CO_TRY(co_await w.write(offset, block));
          offset += block.size();
        }
      }
      auto descriptor = z.end_record(crc);
      BOOST_OUTCOME_CO_TRY(co_await w.write(z.offset() - descriptor.size(), descriptor));
    }
    BOOST_OUTCOME_CO_TRY(co_await small(root + "/version", bytes_of(version)));
    auto tail = z.finish();
    BOOST_OUTCOME_CO_TRY(co_await w.write(z.offset() - tail.size(), tail));
    co_return success();
  };
  auto op = detail::publish_streamed(b, out, size, produce);
  auto r = co_await std::move(op);
  co_await src.close_all();
  co_await src_direct.close_all();
  co_await detail::close_quietly(b, sp->dir);
  last_resort.disarm();
  co_return r;
}

}  // namespace

result<void> export_torch(io::backend& b, std::string_view prefix, const format::manifest& m, const std::vector<std::string>& keys,
                          std::string_view out) {
  std::vector<const format::saved_tensor*> which;
  std::vector<format::torch::flat_entry> entries;
  for (const auto& k : keys) {
    const auto* t = m.find(k);
    if (!t) return make_error(errc::not_found, "checkpoint " + std::string(prefix) + " has no tensor \"" + k + "\"");
    which.push_back(t);
    entries.push_back({t->key, t->type, t->global, std::to_string(entries.size())});
  }
  BOOST_OUTCOME_TRY(auto pickle, format::torch::encode_flat_state(entries));
  // Borrowed: the manifest outlives this blocking call.
  std::shared_ptr<const format::manifest> borrowed(&m, [](const format::manifest*) {});
  return runtime::run_blocking<void>("export_torch", [&](auto ex, auto done) {
    runtime::spawn<void>(ex, export_coro(b, std::string(prefix), borrowed, which, std::move(pickle), std::string(out)), std::move(done));
  });
}

}  // namespace meshckpt
