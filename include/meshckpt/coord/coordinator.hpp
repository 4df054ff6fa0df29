#pragma once
/// \file
/// Coordination between the processes of a job that save or restore one checkpoint together:
/// a minimal set of collectives (gather to the root, broadcast from it, barrier), each with a
/// timeout, so that a process that died or hangs makes the operation fail everywhere instead of
/// blocking it forever. Implementations: a single process (every collective is trivial), a
/// group of in-process "ranks" on threads (for tests of multi-process protocols without MPI),
/// and MPI (coord/mpi.hpp, in the `meshckpt_mpi` library).
///
/// Collectives must be called by every rank in the same order. Each rank numbers its own calls
/// of each kind, and a message belongs to the round its sender numbered: so after a rank timed
/// out waiting for a late one, the late rank's contribution goes to the round that was given up
/// (and is dropped), and both meet again in the next round. A multi-process save relies on this:
/// process 0 gives up on a late report, and the late process still hears the outcome.

#include <chrono>
#include <cstddef>
#include <memory>
#include <span>
#include <vector>

#include "meshckpt/error.hpp"

namespace meshckpt::coord {

using std::chrono::milliseconds;

/// One process's view of its job.
class coordinator {
 public:
  virtual ~coordinator() = default;
  /// This process's rank in [0, size()); rank 0 is the root.
  virtual int rank() const noexcept = 0;
  virtual int size() const noexcept = 0;
  /// Every rank contributes `mine`; the root receives every contribution in rank order, the
  /// other ranks an empty vector (they do not wait for the root).
  virtual result<std::vector<std::vector<std::byte>>> gather(std::span<const std::byte> mine, milliseconds timeout) = 0;
  /// The root's `data` reaches every rank (the others' `data` is ignored); non-root ranks wait
  /// for it up to `timeout`.
  virtual result<std::vector<std::byte>> broadcast(std::span<const std::byte> data, milliseconds timeout) = 0;
  /// Returns once every rank has entered it, or fails after `timeout`.
  virtual result<void> barrier(milliseconds timeout) = 0;
};

/// The coordinator of a job of one process.
std::unique_ptr<coordinator> make_single_process_coordinator();

/// `n` coordinators that talk through shared memory, to be used from `n` threads of one
/// process as if they were `n` processes (tests of multi-process protocols: a "rank" that stops
/// calling collectives behaves like a dead process).
std::vector<std::unique_ptr<coordinator>> make_thread_group(int n);

}  // namespace meshckpt::coord
