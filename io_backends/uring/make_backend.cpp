// make_backend (meshckpt/io/make_backend.hpp): the runtime probe between io_uring and POSIX.

#include "meshckpt/io/make_backend.hpp"

#include <cstdio>
#include <mutex>

#include "meshckpt/backends/posix.hpp"
#include "meshckpt/backends/uring.hpp"

namespace meshckpt::backends {

result<std::unique_ptr<io::backend>> make_backend(backend_kind kind) {
  if (kind == backend_kind::posix) return make_posix_backend();
  auto u = make_uring_backend();
  if (u || kind == backend_kind::uring) return u;
  static std::once_flag once;
  std::call_once(once, [&] { std::fprintf(stderr, "meshckpt: using the POSIX backend: %s\n", u.error().what().c_str()); });
  return make_posix_backend();
}

}  // namespace meshckpt::backends
