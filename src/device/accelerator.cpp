// device_buffer, the blocking copies (through the one blocking bridge) and the awaitable
// copies the save and restore paths use.
#include <algorithm>
#include <map>
#include <mutex>
#include <optional>

#include "device_copy.hpp"

#include <boost/asio/post.hpp>
#include "meshckpt/io/async.hpp"
#include "../runtime/bridge.hpp"

namespace meshckpt::device {

result<device_buffer> device_buffer::allocate(accelerator& acc, int gpu, std::size_t bytes) {
  BOOST_OUTCOME_TRY(auto p, acc.allocate(gpu, bytes));
  device_buffer b;
  b.acc_ = &acc;
  b.gpu_ = gpu;
  b.p_ = p;
  b.n_ = bytes;
  return b;
}

device_buffer::~device_buffer() {
  if (acc_ && p_) acc_->free(gpu_, p_);
}

result<void> copy_to_host_blocking(accelerator& acc, int gpu, std::span<std::byte> dst, const std::byte* src) {
  return runtime::run_blocking<void>("device::copy_to_host_blocking", [&](auto, io::completion<void> done) {
    acc.copy_to_host(gpu, dst.data(), src, dst.size(), std::move(done));
  });
}

result<void> copy_to_device_blocking(accelerator& acc, int gpu, std::byte* dst, std::span<const std::byte> src) {
  return runtime::run_blocking<void>("device::copy_to_device_blocking", [&](auto, io::completion<void> done) {
    acc.copy_to_device(gpu, dst, src.data(), src.size(), std::move(done));
  });
}

namespace detail {

runtime::task<void> to_host(accelerator& acc, int gpu, std::span<std::byte> dst, const std::byte* src) {
  auto ex = co_await boost::asio::this_coro::executor;
  auto copied = io::async_op<void>(
      ex, [&acc, gpu, dst, src](io::completion<void> c) { acc.copy_to_host(gpu, dst.data(), src, dst.size(), std::move(c)); },
      runtime::use_awaitable);
  co_return co_await std::move(copied);
}

runtime::task<void> to_device(accelerator& acc, int gpu, std::byte* dst, std::span<const std::byte> src) {
  auto ex = co_await boost::asio::this_coro::executor;
  auto copied = io::async_op<void>(
      ex, [&acc, gpu, dst, src](io::completion<void> c) { acc.copy_to_device(gpu, dst, src.data(), src.size(), std::move(c)); },
      runtime::use_awaitable);
  co_return co_await std::move(copied);
}

result<void> pin_once(accelerator& acc, std::span<std::byte> host, std::vector<accelerator*>& pinned,
                      std::vector<std::shared_ptr<void>>& pins) {
  if (std::find(pinned.begin(), pinned.end(), &acc) != pinned.end()) return success();
  BOOST_OUTCOME_TRY(auto token, acc.pin(host));
  pinned.push_back(&acc);
  if (token) pins.push_back(std::move(token));
  return success();
}

struct copy_group::state {
  std::mutex mu;
  std::size_t pending = 0;
  std::optional<error> failed;
  io::completion<void> waiter;
};

copy_group::copy_group() : st_(std::make_shared<state>()) {}

namespace {

// One member of the group done: the waiter runs when it was the last.
void finish(const std::shared_ptr<copy_group::state>& st, result<void> r) {
  io::completion<void> wake;
  result<void> out = success();
  {
    std::lock_guard lk(st->mu);
    if (!r && !st->failed) st->failed = r.error();
    if (--st->pending == 0 && st->waiter) {
      wake = std::move(st->waiter);
      st->waiter = nullptr;
      if (st->failed) out = *st->failed;
    }
  }
  if (wake) wake(std::move(out));
}

}  // namespace

void copy_group::to_device(accelerator& acc, int gpu, std::byte* dst, std::span<const std::byte> src) {
  {
    std::lock_guard lk(st_->mu);
    ++st_->pending;
  }
  acc.copy_to_device(gpu, dst, src.data(), src.size(), [st = st_](result<void> r) { finish(st, std::move(r)); });
}

void copy_group::to_host(accelerator& acc, int gpu, std::span<std::byte> dst, const std::byte* src, std::string what) {
  {
    std::lock_guard lk(st_->mu);
    ++st_->pending;
  }
  acc.copy_to_host(gpu, dst.data(), src, dst.size(), [st = st_, what = std::move(what)](result<void> r) {
    finish(st, r ? std::move(r) : result<void>(with_context(r.error(), what)));
  });
}

void copy_group::post(boost::asio::any_io_executor ex, std::function<void()> f) {
  {
    std::lock_guard lk(st_->mu);
    ++st_->pending;
  }
  try {
    boost::asio::post(ex, [st = st_, f] {
      f();
      finish(st, success());
    });
  } catch (const std::bad_alloc&) {
    f();  // the handler never ran: do its work here
    finish(st_, success());
  }
}

runtime::task<void> copy_group::wait() {
  auto ex = co_await boost::asio::this_coro::executor;
  auto all = io::async_op<void>(
      ex,
      [st = st_](io::completion<void> c) {
        std::unique_lock lk(st->mu);
        if (st->pending == 0) {
          result<void> out = success();
          if (st->failed) out = *st->failed;
          lk.unlock();
          c(std::move(out));
          return;
        }
        st->waiter = std::move(c);
      },
      runtime::use_awaitable);
  co_return co_await std::move(all);
}

result<void> pin_staging_buffer(accelerator& acc, std::span<std::byte> buffer) {
  static std::mutex mu;
  // Never destroyed, as the staging pool's buffers are not: a save in flight during exit may
  // still pin one.
  static auto& pinned = *new std::map<std::pair<const accelerator*, const std::byte*>, std::shared_ptr<void>>;
  std::lock_guard lk(mu);
  auto key = std::make_pair(&acc, static_cast<const std::byte*>(buffer.data()));
  if (pinned.contains(key)) return success();
  BOOST_OUTCOME_TRY(auto token, acc.pin(buffer));
  pinned.emplace(key, std::move(token));
  return success();
}

result<staging> make_staging(std::size_t bytes, std::span<accelerator* const> with) {
  staging s;
  s.bytes = runtime::allocate_host(std::max<std::size_t>(bytes, 1));
  s.size = bytes;
  std::vector<accelerator*> pinned;
  const std::span<std::byte> host(s.bytes.get(), s.size);
  for (auto* a : with) {
    BOOST_OUTCOME_TRY(pin_once(*a, host, pinned, s.pins));
  }
  return s;
}

}  // namespace detail

}  // namespace meshckpt::device
