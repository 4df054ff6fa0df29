#include "recyclers.hpp"

namespace meshckpt::detail {

using runtime::recycler;

// Leaked on purpose, like the other process-wide runtime objects: a save or restore still
// running on another thread at exit may give memory back after static destruction began.
recycler<format::manifest>& manifests() {
  static auto* r = new recycler<format::manifest>([](const format::manifest& m) { return m.tensors.capacity() <= 65536; });
  return *r;
}

recycler<std::vector<std::byte>>& byte_buffers() {
  static auto* r = new recycler<std::vector<std::byte>>([](const std::vector<std::byte>& b) { return b.capacity() <= (16u << 20); });
  return *r;
}

recycler<std::vector<plan::slice_write>>& slice_writes() {
  static auto* r =
      new recycler<std::vector<plan::slice_write>>([](const std::vector<plan::slice_write>& w) { return w.capacity() <= 65536; });
  return *r;
}

}  // namespace meshckpt::detail
