#pragma once
// Private: waiting for a collective of a multi-process save as a coroutine. The collective is
// polled with a timer in between (coord::poll_delay), so the executor keeps running other
// saves and restores — and the other ranks of a thread group sharing this process — while this
// rank waits. No thread per collective.

#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>

#include <memory>

#include "meshckpt/coord/coordinator.hpp"
#include "task.hpp"

namespace meshckpt::runtime {

template <class T>
task<T> await_collective(std::unique_ptr<coord::collective<T>> c) {
  auto ex = co_await asio::this_coro::executor;
  for (int attempt = 0;; ++attempt) {
    if (auto r = c->poll()) co_return std::move(*r);
    asio::steady_timer t(ex, coord::poll_delay(attempt));
    boost::system::error_code ec;
    co_await t.async_wait(asio::redirect_error(use_awaitable, ec));
  }
}

}  // namespace meshckpt::runtime
