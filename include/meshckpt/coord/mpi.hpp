#pragma once
/// \file
/// The MPI implementation of `coord::coordinator` (library `meshckpt::mpi`, built when CMake
/// finds MPI). Works with any MPI-3 implementation; tested with Open MPI.
///
/// Collectives are built from point-to-point messages (`MPI_Isend`, `MPI_Iprobe`, `MPI_Test`),
/// never a blocking MPI call, so that a collective can be polled (coord/coordinator.hpp) and a
/// dead or hung process turns into an `errc::timed_out` error naming it instead of a hang.
/// Every message carries its round number; what arrives is kept in a mailbox until the
/// collective of its round takes it, and a message of a round its receiver is over with
/// (finished, or given up on) is dropped, which keeps the ranks in step after a timeout.
///
/// Threads: a save polls its collectives from the library's engine thread, not the thread that
/// called it, so MPI must be initialized with at least `MPI_THREAD_SERIALIZED`
/// (`MPI_Init_thread`); `make_mpi_coordinator` checks. The coordinator serializes its own MPI
/// calls; the application must not make MPI calls concurrently with a save unless MPI
/// provides `MPI_THREAD_MULTIPLE`.
///
/// Whether the job survives a process's death depends on the MPI launcher: Open MPI's mpirun
/// ends the whole job when a rank dies (the others are killed), which is also safe — no
/// manifest is written unless every process reported success.

#include <mpi.h>

#include <memory>

#include "meshckpt/coord/coordinator.hpp"

namespace meshckpt::coord {

/// A coordinator over a duplicate of `comm` (collective over `comm`: every rank must call it).
/// Errors: `errc::unsupported` when MPI is not initialized or its thread level is below
/// `MPI_THREAD_SERIALIZED`; `errc::invalid_argument` when an MPI call fails.
result<std::unique_ptr<coordinator>> make_mpi_coordinator(MPI_Comm comm = MPI_COMM_WORLD);

}  // namespace meshckpt::coord
