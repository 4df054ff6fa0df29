// torch.save zip files from checkpoints (interchange/torch_io.hpp). The layout is fixed before a byte
// is written — records whose CRC is only known once their data went by carry it in a data
// descriptor after the data, as torch.save writes them — so the file is streamed front to back
// through the staging blocks, each tensor read from its slices as it is placed.

#include <algorithm>

#include "../pipeline/common.hpp"
#include "../pipeline/data_files.hpp"
#include "meshckpt/interchange/torch_io.hpp"
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
  std::vector<std::byte> block;
  auto produce = [&](runtime::staged_writer& w, detail::data_file_pair& src) -> task<void> {
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
      const std::uint64_t offset = z.offset();
      BOOST_OUTCOME_CO_TRY(co_await w.write(offset - h.size(), h));
      auto copying = detail::copy_tensor(b, prefix, m, src, *t, w, offset, block, detail::crc_of::crc32);
      BOOST_OUTCOME_CO_TRY(const std::uint32_t crc, co_await std::move(copying));
      auto descriptor = z.end_record(crc);
      BOOST_OUTCOME_CO_TRY(co_await w.write(z.offset() - descriptor.size(), descriptor));
    }
    BOOST_OUTCOME_CO_TRY(co_await small(root + "/version", bytes_of(version)));
    auto tail = z.finish();
    BOOST_OUTCOME_CO_TRY(co_await w.write(z.offset() - tail.size(), tail));
    co_return success();
  };
  auto op = detail::publish_from_checkpoint(b, prefix, m, out, size, produce);
  co_return co_await std::move(op);
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
