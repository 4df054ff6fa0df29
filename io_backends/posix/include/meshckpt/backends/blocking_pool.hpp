#pragma once
/// \file
/// The process-wide pool of threads for blocking system calls (open, fsync, rename, and the
/// POSIX backend's pread/pwrite), shared by every POSIX backend that does not ask for threads
/// of its own; the io_uring backend's completions are delivered on it as well (its ring's
/// eventfd is awaited there). Its size is fixed, so the number of threads in a process does not
/// grow with the number of backends or checkpoints. A child of fork() starts a pool of its own
/// on first use; backends (and checkpoints) created before a fork are for the parent only.

#include <boost/asio/io_context.hpp>

namespace meshckpt::backends {

/// Threads of the shared pool.
inline constexpr unsigned blocking_pool_threads = 4;

/// The shared pool: an io_context run by `blocking_pool_threads` threads named "meshckpt-io"
/// (created on first use, never destroyed: completions may run during exit).
boost::asio::io_context& blocking_pool();

}  // namespace meshckpt::backends
