#pragma once
// Private: the one polled wait. Where no event says that something became ready (an MPI
// request, a key-value store's counter), a coroutine asks again and again, a timer in between, so the
// executor runs other saves and restores meanwhile: no thread waits. The delays grow (the quick
// answer comes quickly; a long wait does not burn a core), and are cut short at the deadline so
// that the last poll sees it.

#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>

#include <algorithm>
#include <chrono>
#include <optional>
#include <type_traits>

#include "task.hpp"

namespace meshckpt::runtime {

using poll_clock = std::chrono::steady_clock;

// Awaits `poll()` (a std::optional<R>) until it holds a value, and returns that value. Between
// polls it waits `delay(attempt)` (attempt counting from 0), cut to what is left before
// `deadline`; `poll` decides what the deadline means (an error, a last answer).
template <class Poll, class Delay>
auto poll_with_backoff(Poll poll, Delay delay, poll_clock::time_point deadline = poll_clock::time_point::max())
    -> asio::awaitable<typename std::invoke_result_t<Poll&>::value_type> {
  auto ex = co_await asio::this_coro::executor;
  for (int attempt = 0;; ++attempt) {
    if (auto r = poll()) co_return std::move(*r);
    const poll_clock::duration wait = delay(attempt);
    const auto left = deadline - poll_clock::now();
    asio::steady_timer t(ex, std::max(poll_clock::duration::zero(), std::min(wait, left)));
    boost::system::error_code ec;
    co_await t.async_wait(asio::redirect_error(use_awaitable, ec));
  }
}

}  // namespace meshckpt::runtime
