#include "durable_replace.hpp"

#include "meshckpt/io/async.hpp"

namespace meshckpt::runtime {

task<void> durable_replace(io::backend& b, io::handle dir, std::string temp, std::string name, std::span<const std::byte> bytes,
                           replace_options opt) {
  auto fill = [&b, bytes](io::handle h) -> task<void> {
    auto ex = co_await asio::this_coro::executor;
    co_return co_await io::async_write(b, ex, h, 0, bytes, use_awaitable);
  };
  auto op = durable_replace(b, dir, std::move(temp), std::move(name), std::function<task<void>(io::handle)>(fill), std::move(opt));
  co_return co_await std::move(op);
}

namespace {

// On an object store there is no rename: NAME itself is written and becomes visible whole at
// its fsync (create-only with `create_only`). A failure or a stop before the fsync publishes
// nothing: closing the unpublished file discards it.
task<void> publish_object(io::backend& b, io::handle dir, std::string name, std::function<task<void>(io::handle)> fill,
                          replace_options opt) {
  auto ex = co_await asio::this_coro::executor;
  const bool create = opt.create_only || (opt.if_version && opt.if_version->empty());
  auto h = co_await io::async_open(b, ex, dir, name, create ? io::open_mode::create_exclusive : io::open_mode::replace, use_awaitable);
  if (!h) co_return h.error();
  bool open = true;
  on_unwind last_resort([&] {
    if (open) io::close_detached(b, *h);
  });
  result<void> r = success();
  try {
    if (opt.if_version && !create) r = b.expect_version(*h, *opt.if_version);
    if (r) r = co_await fill(*h);
    if (r && opt.before_rename) r = opt.before_rename();
    if (r) r = co_await io::async_fsync(b, ex, *h, use_awaitable);
    if (r && opt.renamed) *opt.renamed = true;
    if (r && opt.new_version) *opt.new_version = b.version(*h);
  } catch (const std::bad_alloc&) {
    r = out_of_memory("writing " + name);
  }
  auto closed = co_await io::async_close(b, ex, *h, use_awaitable);
  if (!closed && closed.error().code == std::errc::not_enough_memory) io::close_detached(b, *h);
  open = false;
  co_return r;
}

}  // namespace

task<void> durable_replace(io::backend& b, io::handle dir, std::string temp, std::string name, std::function<task<void>(io::handle)> fill,
                           replace_options opt) {
  if (!b.caps(dir).atomic_rename) {
    auto op = publish_object(b, dir, std::move(name), std::move(fill), std::move(opt));
    co_return co_await std::move(op);
  }
  auto ex = co_await asio::this_coro::executor;
  auto h = co_await io::async_open(b, ex, dir, temp, opt.direct ? io::open_mode::create_exclusive_direct : io::open_mode::create_exclusive,
                                   use_awaitable);
  if (!h) co_return h.error();
  // Closes the temp file if an allocation failure unwinds this frame before its close.
  bool open = true;
  on_unwind last_resort([&] {
    if (open) io::close_detached(b, *h);
  });
  result<void> r = success();
  try {
    r = co_await fill(*h);
    if (r) r = co_await io::async_fsync(b, ex, *h, use_awaitable);
  } catch (const std::bad_alloc&) {
    r = out_of_memory("writing " + temp);
  }
  auto closed = co_await io::async_close(b, ex, *h, use_awaitable);
  if (!closed && closed.error().code == std::errc::not_enough_memory) io::close_detached(b, *h);  // it never started
  open = false;
  if (r && !closed) r = closed;
  if (r && opt.before_rename) r = opt.before_rename();
  if (r) {
    r = co_await io::async_rename(b, ex, dir, temp, name, use_awaitable);
    if (r) {
      if (opt.renamed) *opt.renamed = true;
      co_return co_await io::async_fsync(b, ex, dir, use_awaitable);
    }
  }
  (void)co_await io::async_unlink(b, ex, dir, temp, use_awaitable);
  co_return r;
}

}  // namespace meshckpt::runtime
