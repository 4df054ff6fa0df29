#pragma once
/// \file
/// Choosing a backend, beside the interface it returns: io_uring where the kernel allows it,
/// else the POSIX reference backend (io_backends/uring, io_backends/posix). Other backends
/// (io_backends/memory, the fault decorator) are made by their own headers.

#include <memory>

#include "meshckpt/error.hpp"
#include "meshckpt/io/backend.hpp"

namespace meshckpt::backends {

/// Which backend `make_backend` returns.
enum class backend_kind { automatic, uring, posix };

/// `uring` or `posix` as asked; `automatic` tries io_uring and falls back to POSIX, printing the
/// reason once per process to stderr (and in `caps().notes`).
result<std::unique_ptr<io::backend>> make_backend(backend_kind kind = backend_kind::automatic);

}  // namespace meshckpt::backends
