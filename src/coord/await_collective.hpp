#pragma once
// Private: waiting for a collective of a multi-process save as a coroutine, polled
// (runtime::poll_with_backoff, coord::poll_delay between polls), so the executor keeps running
// other saves and restores — and the other ranks of a thread group sharing this process — while
// this rank waits. No thread per collective. The blocking forms (coordinator::gather, ...) are
// this through the one blocking bridge.

#include <memory>

#include "../runtime/poll.hpp"
#include "meshckpt/coord/coordinator.hpp"

namespace meshckpt::coord {

template <class T>
runtime::task<T> await_collective(std::unique_ptr<collective<T>> c) {
  auto polled = runtime::poll_with_backoff([&c] { return c->poll(); }, poll_delay);  // named: GCC 12
  co_return co_await std::move(polled);
}

}  // namespace meshckpt::coord
