#pragma once
/// \file
/// The io_uring backend: reads, writes and fsyncs go through one io_uring (liburing), many in
/// flight. No thread per ring: the ring signals completions on an eventfd, which the
/// process-wide pool of blocking_pool.hpp awaits (Asio), and reaps them there; metadata operations (open, close, rename, unlink,
/// list, size) are delegated to the POSIX backend. Picked automatically when the kernel allows
/// io_uring (`make_backend`, meshckpt/io/make_backend.hpp).

#include <memory>
#include <string>

#include "meshckpt/error.hpp"
#include "meshckpt/io/backend.hpp"
#include "meshckpt/io/make_backend.hpp"  // make_backend: the choice between this backend and POSIX

namespace meshckpt::backends {

/// Options of the io_uring backend.
struct uring_options {
  /// Submission queue entries (the completion queue has twice as many); at most this many
  /// reads/writes/fsyncs are in the kernel at once, more wait in a backlog, so the completion
  /// queue can never overflow.
  unsigned queue_depth = 64;
  /// Threads of its own for the metadata operations (the POSIX backend's); 0 (the default):
  /// the process-wide pool (blocking_pool.hpp).
  unsigned metadata_threads = 0;
};

/// Creates an io_uring backend, or explains why io_uring cannot be used here (ENOSYS on old
/// kernels, EPERM under seccomp or `kernel.io_uring_disabled`, ENOMEM for locked memory).
result<std::unique_ptr<io::backend>> make_uring_backend(uring_options opt = {});

}  // namespace meshckpt::backends
