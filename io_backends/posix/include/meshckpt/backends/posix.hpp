#pragma once
/// \file
/// The POSIX backend: pread/pwrite/fsync/renameat/unlinkat on a thread pool (by default the
/// process-wide one of blocking_pool.hpp). The
/// reference implementation of `io::backend`, and the fallback wherever io_uring is not
/// available.

#include <memory>

#include "meshckpt/io/backend.hpp"

namespace meshckpt::backends {

/// Options of the POSIX backend.
struct posix_options {
  /// Worker threads of its own for the blocking system calls; 0 (the default): the
  /// process-wide pool shared by every backend (blocking_pool.hpp).
  unsigned threads = 0;
};

/// Creates a POSIX backend. Files opened `create_exclusive_direct` / `read_direct` use O_DIRECT
/// where the filesystem allows it (4096-aligned buffers, offsets and lengths; buffered
/// elsewhere); other files are buffered, with any alignment.
std::unique_ptr<io::backend> make_posix_backend(posix_options opt = {});

}  // namespace meshckpt::backends
