// Publishing files other than checkpoints (api/safetensors_io.hpp): exported safetensors files
// and their index. Through the backend and runtime::durable_replace, like a manifest, so the
// fault backend sees every step and a crash leaves the old file or the whole new one.

#include <chrono>
#include <random>

#include "../runtime/durable_replace.hpp"
#include "common.hpp"
#include "data_files.hpp"
#include "meshckpt/api/safetensors_io.hpp"
#include "meshckpt/format/names.hpp"
#include "meshckpt/format/safetensors.hpp"

namespace meshckpt {

namespace {

using runtime::task;
using runtime::use_awaitable;
namespace asio = boost::asio;

std::string temp_name_for(const std::string& name) {
  static std::atomic<std::uint64_t> counter{0};
  std::uint64_t token = (static_cast<std::uint64_t>(std::random_device{}()) << 32) ^ counter++ ^
                        static_cast<std::uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
  return name + ".tmp-" + format::token_hex(token);
}

}  // namespace

namespace detail {

task<void> publish_file(io::backend& b, std::string path, std::function<task<void>(io::handle)> fill) {
  auto ex = co_await asio::this_coro::executor;
  auto [dir, name] = split_prefix(path);
  if (!format::is_plain_name(name)) co_return make_error(errc::invalid_argument, "\"" + path + "\" does not name a file");
  auto d = co_await io::async_open_dir(b, ex, dir, false, use_awaitable);
  if (!d) co_return d.error();
  runtime::on_unwind last_resort([&] { io::close_detached(b, *d); });
  std::optional<result<void>> r;
  try {
    auto op = runtime::durable_replace(b, *d, temp_name_for(name), name, std::move(fill));
    r = co_await std::move(op);
  } catch (const std::bad_alloc&) {
    r = out_of_memory("writing " + path);
  }
  co_await detail::close_quietly(b, *d);
  last_resort.disarm();
  co_return std::move(*r);
}

}  // namespace detail

namespace {

using detail::publish_file;

task<void> export_coro(io::backend& b, std::string prefix, std::shared_ptr<const format::manifest> m,
                       std::vector<const format::saved_tensor*> which, std::vector<std::byte> header, std::string out) {
  auto sp = co_await detail::open_prefix_dir(b, prefix);
  if (!sp) co_return sp.error();
  detail::file_cache src(b, *sp, *m);
  runtime::on_unwind last_resort([&] { io::close_detached(b, sp->dir); });
  std::vector<std::byte> buf;
  auto fill = [&](io::handle h) -> task<void> {
    auto ex = co_await asio::this_coro::executor;
    BOOST_OUTCOME_CO_TRY(co_await io::async_write(b, ex, h, 0, header, use_awaitable));
    std::uint64_t offset = header.size();
    auto one = mesh::create({{"x", 1}}).value();
    for (const auto* t : which) {
      if (t->slices.size() == 1 && t->slices[0].where == box::whole(t->global)) {
        // Stored whole: its bytes are the row-major tensor, copied in pieces, checked on the way.
        if (buf.empty()) buf = detail::copy_buffer(*m);
        auto copied = detail::copy_slice(b, *m, src, *t, t->slices[0], h, offset, buf);
        BOOST_OUTCOME_CO_TRY(co_await std::move(copied));
        offset += t->slices[0].length;
        continue;
      }
      // Stored as several slices: gathered whole in memory, one tensor at a time, on one device.
      BOOST_OUTCOME_CO_TRY(auto l, layout::create(std::vector<std::string>(t->global.size(), "unsharded"), one));
      BOOST_OUTCOME_CO_TRY(auto whole, dtensor::create(t->type, t->global, l));
      std::vector<named_tensor> target = {{t->key, whole.view()}};
      auto rd = detail::read_into(b, prefix, target, {}, m);
      BOOST_OUTCOME_CO_TRY(co_await std::move(rd));
      const auto& bytes = whole.view().shards().front().data;
      BOOST_OUTCOME_CO_TRY(co_await io::async_write(b, ex, h, offset, bytes, use_awaitable));
      offset += bytes.size();
    }
    co_return success();
  };
  auto op = publish_file(b, out, fill);
  auto r = co_await std::move(op);
  co_await src.close_all();
  co_await detail::close_quietly(b, sp->dir);
  last_resort.disarm();
  co_return r;
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
