// The pipelines' common steps (pipeline/common.hpp): a prefix's directory opened, its manifest
// loaded (with the missing "-N" hint), small files read whole, handles closed quietly.

#include "common.hpp"
#include "recyclers.hpp"
#include "meshckpt/format/names.hpp"

namespace meshckpt {

std::pair<std::string, std::string> split_prefix(std::string_view prefix) {
  // No stripping of a trailing '/': "ckpts/" names a directory, not the checkpoint "ckpts" next
  // to it; its empty NAME is then refused (found by tests/api/test_edges.cpp).
  auto slash = prefix.rfind('/');
  if (slash == std::string_view::npos) return {".", std::string(prefix)};
  return {slash == 0 ? "/" : std::string(prefix.substr(0, slash)), std::string(prefix.substr(slash + 1))};
}

namespace detail {

asio::awaitable<void> close_quietly(io::backend& b, io::handle h) {
  auto ex = co_await asio::this_coro::executor;
  // A close that could not even start (no memory for the operation) is retried a few times:
  // giving up leaks the descriptor.
  for (int attempt = 0; attempt < 3; ++attempt) {
    auto r = co_await io::async_close(b, ex, h, use_awaitable);
    if (r || r.error().code != std::errc::not_enough_memory) co_return;
  }
  io::close_detached(b, h);
}

task<opened_prefix> open_prefix_dir(io::backend& b, std::string_view prefix) {
  auto ex = co_await asio::this_coro::executor;
  auto [dir_path, base] = split_prefix(prefix);
  BOOST_OUTCOME_CO_TRY(format::check_base_name(base));
  // Built before the open: nothing may allocate between opening the directory and handing it
  // over (an allocation failure would leak it).
  opened_prefix out{{}, std::move(dir_path), std::move(base)};
  auto dir = co_await io::async_open_dir(b, ex, out.dir_path, false, use_awaitable);
  if (!dir) {
    if (dir.error().code == std::errc::no_such_file_or_directory)
      co_return make_error(errc::not_found,
                           "checkpoint " + std::string(prefix) + " not found: directory " + out.dir_path + " does not exist");
    co_return dir.error();
  }
  out.dir = *dir;
  co_return std::move(out);
}

namespace {

// "did you mean NAME-N?" when numbered checkpoints of this name exist.
task<std::string> missing_hint(io::backend& b, const opened_prefix& p) {
  auto ex = co_await asio::this_coro::executor;
  auto entries = co_await io::async_list(b, ex, p.dir, use_awaitable);
  if (!entries) co_return std::string();
  long best = -1;
  bool interrupted = false;
  for (const auto& e : *entries) {
    auto k = format::classify(e.name);
    if (k.k == format::name_kind::temp_manifest && k.base == p.base) interrupted = true;
    if (k.k != format::name_kind::manifest || !k.base.starts_with(p.base + "-")) continue;
    std::string_view n = std::string_view(k.base).substr(p.base.size() + 1);
    if (n.empty() || n.size() > 12 || !std::all_of(n.begin(), n.end(), [](char c) { return c >= '0' && c <= '9'; })) continue;
    best = std::max(best, std::stol(std::string(n)));
  }
  std::string hint;
  if (best >= 0) hint += " (checkpoints written by save() carry a -N suffix: did you mean " + p.base + "-" + std::to_string(best) + "?)";
  if (interrupted) hint += " (a save of it was interrupted before its commit; its leftovers are ignored)";
  co_return hint;
}

}  // namespace

task<void> read_small_file(io::backend& b, const opened_prefix& p, const std::string& name, std::uint64_t cap,
                           std::vector<std::byte>& into) {
  auto ex = co_await asio::this_coro::executor;
  auto h = co_await io::async_open(b, ex, p.dir, name, io::open_mode::read, use_awaitable);
  if (!h) co_return h.error();
  on_unwind last_resort([&] { io::close_detached(b, *h); });
  const std::string where = p.dir_path == "." ? name : p.dir_path + "/" + name;
  auto body = [&]() -> task<void> {
    BOOST_OUTCOME_CO_TRY(auto size, co_await io::async_size(b, ex, *h, use_awaitable));
    if (size > cap)
      co_return make_error(errc::limit_exceeded, where + " is " + std::to_string(size) + " bytes, above the cap of " + std::to_string(cap));
    into.clear();
    into.resize(size);
    BOOST_OUTCOME_CO_TRY(auto got, co_await io::async_read(b, ex, *h, 0, into, use_awaitable));
    if (got != size) co_return make_error(errc::short_read, where + " shrank while being read");
    co_return success();
  };
  std::optional<result<void>> r;
  try {
    r = co_await body();
  } catch (const std::bad_alloc&) {
    r = out_of_memory("reading " + where);
  }
  co_await close_quietly(b, *h);
  last_resort.disarm();
  co_return std::move(*r);
}

task<format::manifest> load_manifest(io::backend& b, const opened_prefix& p, std::string_view prefix) {
  std::string name = format::manifest_name(p.base);
  // Errors name the manifest with its directory, like every other error of a checkpoint.
  const std::string where = p.dir_path == "." ? name : p.dir_path + "/" + name;
  auto bytes = detail::byte_buffers().take();
  runtime::give_back_at_exit bytes_back(detail::byte_buffers(), bytes);
  format::limits lim;
  auto read = co_await read_small_file(b, p, name, lim.max_manifest_bytes, bytes);
  if (!read) {
    if (read.error().code == std::errc::no_such_file_or_directory) {
      std::string hint = (co_await missing_hint(b, p)).value();
      co_return make_error(errc::not_found,
                           "checkpoint " + std::string(prefix) + " not found: " + name + " does not exist in " + p.dir_path + hint);
    }
    co_return read.error();
  }
  auto m = detail::manifests().take();
  if (auto d = format::decode_into(bytes, m, lim); !d) co_return with_context(d.error(), where);
  co_return std::move(m);
}

task<format::manifest> load_manifest_at(io::backend& b, std::string prefix) {
  auto p = co_await open_prefix_dir(b, prefix);
  if (!p) co_return p.error();
  on_unwind last_resort([&] { io::close_detached(b, p->dir); });
  std::optional<result<format::manifest>> m;
  try {
    m = co_await load_manifest(b, *p, prefix);
  } catch (const std::bad_alloc&) {
    m = out_of_memory("reading the manifest");
  }
  co_await close_quietly(b, p->dir);
  last_resort.disarm();
  co_return std::move(*m);
}

}  // namespace detail
}  // namespace meshckpt
