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
/// reason once per process to stderr (and in `caps().notes`). Directory paths that are
/// `s3://BUCKET/PREFIX` URLs go to the S3 backend (meshckpt/backends/s3.hpp), made at the first
/// such path from the AWS environment (`s3_options_from_env`); `caps(dir)` then tells an object
/// store's directories from the disk's. A URL of any other scheme is refused (errc::unsupported).
result<std::unique_ptr<io::backend>> make_backend(backend_kind kind = backend_kind::automatic);

}  // namespace meshckpt::backends
