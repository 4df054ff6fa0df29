// The blocking collectives: each is its coroutine (await_collective) through the one blocking
// bridge, so a blocking collective and an awaited one poll the same way.

#include "../runtime/bridge.hpp"
#include "await_collective.hpp"

namespace meshckpt::coord {

namespace {

template <class T>
result<T> wait(const char* what, std::unique_ptr<collective<T>> c) {
  return runtime::run_blocking<T>(what,
                                  [&](auto ex, auto done) { runtime::spawn<T>(ex, await_collective(std::move(c)), std::move(done)); });
}

}  // namespace

result<std::vector<bytes>> coordinator::gather(std::span<const std::byte> mine, milliseconds timeout) {
  return wait("coordinator::gather", start_gather(mine, timeout));
}
result<bytes> coordinator::broadcast(std::span<const std::byte> data, milliseconds timeout) {
  return wait("coordinator::broadcast", start_broadcast(data, timeout));
}
result<void> coordinator::barrier(milliseconds timeout) { return wait("coordinator::barrier", start_barrier(timeout)); }

}  // namespace meshckpt::coord
