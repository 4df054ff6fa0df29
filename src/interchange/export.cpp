// Exporting a checkpoint's tensors as a safetensors file (interchange/safetensors_io.hpp),
// streamed through pipeline/publish.cpp: verified on the way, published durably.

#include <chrono>
#include <random>

#include "../runtime/durable_replace.hpp"
#include "../pipeline/common.hpp"
#include "../pipeline/data_files.hpp"
#include "meshckpt/interchange/safetensors_io.hpp"
#include "meshckpt/format/names.hpp"
#include "meshckpt/format/crc32c.hpp"
#include "meshckpt/format/safetensors.hpp"
#include "meshckpt/format/zip.hpp"

namespace meshckpt {
namespace {

using runtime::task;
using runtime::use_awaitable;
namespace asio = boost::asio;
using detail::publish_file;

task<void> export_coro(io::backend& b, std::string prefix, std::shared_ptr<const format::manifest> m,
                       std::vector<const format::saved_tensor*> which, std::vector<std::byte> header, std::string out) {
  std::uint64_t size = header.size();
  for (const auto* t : which) size += static_cast<std::uint64_t>(num_elements(t->global).value_or(0)) * dtype_size(t->type);
  std::vector<std::byte> block;
  auto produce = [&](runtime::staged_writer& w, detail::data_file_pair& src) -> task<void> {
    BOOST_OUTCOME_CO_TRY(co_await w.write(0, header));
    std::uint64_t offset = header.size();
    for (const auto* t : which) {
      auto copying = detail::copy_tensor(b, prefix, m, src, *t, w, offset, block, detail::crc_of::none);
      BOOST_OUTCOME_CO_TRY(co_await std::move(copying));
      offset += static_cast<std::uint64_t>(num_elements(t->global).value_or(0)) * dtype_size(t->type);
    }
    co_return success();
  };
  auto op = detail::publish_from_checkpoint(b, prefix, m, out, size, produce);
  co_return co_await std::move(op);
}

}  // namespace

result<void> export_safetensors(io::backend& b, std::string_view prefix, const format::manifest& m, const std::vector<std::string>& keys,
                                const std::map<std::string, std::string>& metadata, std::string_view out) {
  std::vector<const format::saved_tensor*> which;
  std::vector<format::safetensor_entry> entries;
  for (const auto& k : keys) {
    const auto* t = m.find(k);
    if (!t) return make_error(errc::not_found, "checkpoint " + std::string(prefix) + " has no tensor \"" + k + "\"");
    which.push_back(t);
    entries.push_back({t->key, t->type, t->global, 0, 0});
  }
  BOOST_OUTCOME_TRY(auto header, format::encode_safetensors_header(entries, metadata));
  // Borrowed: the manifest outlives this blocking call.
  std::shared_ptr<const format::manifest> borrowed(&m, [](const format::manifest*) {});
  return runtime::run_blocking<void>("export_safetensors", [&](auto ex, auto done) {
    runtime::spawn<void>(ex, export_coro(b, std::string(prefix), borrowed, which, std::move(header), std::string(out)), std::move(done));
  });
}

result<void> write_file_durably(io::backend& b, std::string_view path, std::span<const std::byte> bytes) {
  return runtime::run_blocking<void>("write_file_durably", [&](auto ex, auto done) {
    auto fill = [&b, bytes](io::handle h) -> task<void> {
      auto e = co_await asio::this_coro::executor;
      co_return co_await io::async_write(b, e, h, 0, bytes, use_awaitable);
    };
    runtime::spawn<void>(ex, publish_file(b, std::string(path), fill), std::move(done));
  });
}

}  // namespace meshckpt
