#pragma once
/// \file
/// The POSIX backend: pread/pwrite/fsync/renameat/unlinkat on a small thread pool. The
/// reference implementation of `io::backend`, and the fallback wherever io_uring is not
/// available.

#include <memory>

#include "meshckpt/io/backend.hpp"

namespace meshckpt::backends {

/// Options of the POSIX backend.
struct posix_options {
  /// Worker threads running blocking system calls (at least 1).
  unsigned threads = 4;
};

/// Creates a POSIX backend. Buffered IO (no O_DIRECT); any alignment.
std::unique_ptr<io::backend> make_posix_backend(posix_options opt = {});

}  // namespace meshckpt::backends
