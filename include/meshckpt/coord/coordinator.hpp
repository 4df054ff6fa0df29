#pragma once
/// \file
/// Coordination between the processes of a job that save or restore one checkpoint together:
/// a minimal set of collectives (gather to the root, broadcast from it, barrier), each with a
/// timeout, so that a process that died or hangs makes the operation fail everywhere instead of
/// blocking it forever. Implementations: a single process (every collective is trivial), a
/// group of in-process "ranks" on threads (for tests of multi-process protocols without MPI),
/// and MPI (coord/mpi.hpp, in the `meshckpt_mpi` library).
///
/// A collective is started, then polled: `start_gather`, `start_broadcast` and `start_barrier`
/// return a `collective` whose `poll()` makes what progress it can without waiting. So the
/// library's saves wait for other processes as coroutines on its engine (a timer between polls),
/// with no thread per collective; the blocking forms (`gather`, `broadcast`, `barrier`) poll
/// with a sleep in between, for application code.
///
/// Collectives must be called by every rank in the same order. Each rank numbers its own calls
/// of each kind, and a message belongs to the round its sender numbered: so after a rank timed
/// out waiting for a late one, the late rank's contribution goes to the round that was given up
/// (and is dropped), and both meet again in the next round. A multi-process save relies on this:
/// process 0 gives up on a late report, and the late process still hears the outcome.

#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "meshckpt/error.hpp"

namespace meshckpt::coord {

using std::chrono::milliseconds;
using bytes = std::vector<std::byte>;

/// A collective that has started and not finished yet. Destroying it before it finished gives
/// up its round, as a timeout does. It must not outlive its coordinator.
template <class T>
class collective {
 public:
  virtual ~collective() = default;
  /// Advances the collective as far as it can without waiting. Returns its outcome once it has
  /// one: the result, or `errc::timed_out` (naming the ranks it waited for) when the timeout
  /// given at the start has passed; nothing while it still waits for other ranks. Not called
  /// again after it returned an outcome.
  virtual std::optional<result<T>> poll() = 0;
  /// The event a waiter waits on instead of polling, where the collective has one (a thread
  /// group's: another rank's contribution). Registers `wake`, which is then called, from any
  /// thread and possibly more than once, whenever `poll()` may have an outcome — never after
  /// `poll()` returned one, nor once the collective is destroyed. It is called under the
  /// collective's lock: it must neither block nor call the collective, only signal (a thread
  /// group's waiter sends on a concurrent channel, whose completion is posted). Returns false
  /// when there is no such event (MPI, a key-value store): the waiter polls. Called at most
  /// once, before the first `poll()`. Throws std::bad_alloc.
  virtual bool notify(std::function<void()> wake) {
    (void)wake;
    return false;
  }
};

/// A collective whose outcome is known when it starts (a single process; a failed start).
template <class T>
std::unique_ptr<collective<T>> finished(result<T> outcome) {
  class done final : public collective<T> {
   public:
    explicit done(result<T> r) : r_(std::move(r)) {}
    std::optional<result<T>> poll() override { return std::move(r_); }

   private:
    result<T> r_;
  };
  return std::make_unique<done>(std::move(outcome));
}

/// How long to wait before poll number `attempt` (from 0) of one collective: 20 us, doubling up
/// to 1 ms. The quick answer comes quickly; a long wait (process 0 waiting for every process's
/// data writes) does not burn a core.
std::chrono::microseconds poll_delay(int attempt) noexcept;

/// One process's view of its job. Implementations provide the three `start_` calls; each copies
/// what it is given, so the arguments need not outlive the call.
class coordinator {
 public:
  virtual ~coordinator() = default;
  /// This process's rank in [0, size()); rank 0 is the root.
  virtual int rank() const noexcept = 0;
  virtual int size() const noexcept = 0;

  /// Every rank contributes `mine`; the root receives every contribution in rank order, the
  /// other ranks an empty vector (they do not wait for the root).
  virtual std::unique_ptr<collective<std::vector<bytes>>> start_gather(std::span<const std::byte> mine, milliseconds timeout) = 0;
  /// The root's `data` reaches every rank (the others' `data` is ignored); non-root ranks wait
  /// for it up to `timeout`.
  virtual std::unique_ptr<collective<bytes>> start_broadcast(std::span<const std::byte> data, milliseconds timeout) = 0;
  /// Completes once every rank has entered it, or fails after `timeout`.
  virtual std::unique_ptr<collective<void>> start_barrier(milliseconds timeout) = 0;

  /// The blocking forms: start, then poll until the outcome, sleeping `poll_delay` in between.
  result<std::vector<bytes>> gather(std::span<const std::byte> mine, milliseconds timeout);
  result<bytes> broadcast(std::span<const std::byte> data, milliseconds timeout);
  result<void> barrier(milliseconds timeout);
};

/// The coordinator of a job of one process.
std::unique_ptr<coordinator> make_single_process_coordinator();

/// `n` coordinators that talk through shared memory, to be used from `n` threads of one
/// process (or `n` saves on the library's engine) as if they were `n` processes: tests of
/// multi-process protocols. A "rank" that stops calling collectives behaves like a dead process.
std::vector<std::unique_ptr<coordinator>> make_thread_group(int n);

}  // namespace meshckpt::coord
