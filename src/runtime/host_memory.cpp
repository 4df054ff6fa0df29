#include "host_memory.hpp"

#include <sys/mman.h>

#include <new>

namespace meshckpt::runtime {

namespace {
constexpr std::size_t huge_page = std::size_t{2} << 20;
}

void host_memory_free::operator()(std::byte* p) const noexcept {
  if (!p) return;
  if (bytes >= huge_page)
    ::munmap(p, bytes);
  else
    delete[] p;
}

host_buffer allocate_host(std::size_t bytes) {
  if (bytes < huge_page) return host_buffer(new std::byte[bytes], host_memory_free{bytes});
  void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) throw std::bad_alloc();
  // Advice only: where THP is off ("never"), the mapping works with small pages.
  (void)::madvise(p, bytes, MADV_HUGEPAGE);
  return host_buffer(static_cast<std::byte*>(p), host_memory_free{bytes});
}

}  // namespace meshckpt::runtime
