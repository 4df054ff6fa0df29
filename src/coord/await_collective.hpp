#pragma once
// Private: waiting for a collective of a multi-process save as a coroutine, so the executor
// keeps running other saves and restores — and the other ranks of a thread group sharing this
// process — while this rank waits. No thread per collective. Where the collective has an event
// (collective::notify: a thread group's ranks contribute in this process), the coroutine waits
// on it, and on a timer only to see the collective's timeout; otherwise (MPI, a key-value
// store) it polls (runtime::poll_with_backoff, coord::poll_delay between polls). The blocking
// forms (coordinator::gather, ...) are this through the one blocking bridge.

#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/experimental/concurrent_channel.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>

#include <chrono>
#include <memory>

#include "../runtime/poll.hpp"
#include "meshckpt/coord/coordinator.hpp"

namespace meshckpt::coord {

// How often a collective that has an event is polled anyway: its timeout is seen by poll().
inline constexpr std::chrono::milliseconds event_poll_interval{100};

template <class T>
runtime::task<T> await_collective(std::unique_ptr<collective<T>> c) {
  namespace asio = boost::asio;
  using wake_channel = asio::experimental::concurrent_channel<void(boost::system::error_code)>;
  auto ex = co_await asio::this_coro::executor;
  // Thread-safe, and holding one wake: a wake that comes while this rank is not waiting is kept
  // for its next wait, and those after it add nothing. Its sends complete a waiting receive by
  // posting it (never inline), so a wake may be sent under the collective's lock.
  wake_channel wakes(ex, 1);
  // TRICKY: declared after `wakes`, so destroyed before it, however the frame ends: the
  // collective takes its wake back (under its lock) before the channel the wake sends on goes.
  // The channel lives in this frame, never longer: it must not outlive its executor's context.
  const std::unique_ptr<collective<T>> owned = std::move(c);
  if (!owned->notify([&wakes] { (void)wakes.try_send(boost::system::error_code{}); })) {
    auto polled = runtime::poll_with_backoff([&owned] { return owned->poll(); }, poll_delay);  // named: GCC 12
    co_return co_await std::move(polled);
  }
  for (;;) {
    if (auto r = owned->poll()) co_return std::move(*r);
    using namespace asio::experimental::awaitable_operators;
    asio::steady_timer t(ex, event_poll_interval);
    boost::system::error_code ec1, ec2;
    // Named: GCC 12 mishandles non-trivial temporaries inside co_await expressions.
    auto woken = wakes.async_receive(asio::redirect_error(asio::use_awaitable, ec1));
    auto timed = t.async_wait(asio::redirect_error(asio::use_awaitable, ec2));
    auto either = std::move(woken) || std::move(timed);
    (void)co_await std::move(either);
  }
}

}  // namespace meshckpt::coord
