#include "staging_pool.hpp"

#include <cstdlib>
#include <mutex>
#include <new>
#include <vector>

namespace meshckpt::runtime {

namespace {

// Buffers are never freed while the process lives: a backend may have registered them with the
// kernel (io_uring fixed buffers), which requires their address to stay valid. The pool is
// therefore as large as the most buffers ever in use at once (8 per file being written, 16 per
// restore). The pool itself is never destroyed either: the library's threads outlive static
// destruction (they may still return a buffer while exit() runs), so a destroyed pool would be
// touched after its end.

struct pool {
  std::mutex mu;
  std::vector<std::byte*> idle;
};

pool& the_pool() {
  static pool* p = new pool;
  return *p;
}

}  // namespace

staging_buffer staging_buffer::acquire() {
  {
    auto& p = the_pool();
    std::lock_guard lk(p.mu);
    if (!p.idle.empty()) {
      auto* b = p.idle.back();
      p.idle.pop_back();
      return staging_buffer(b);
    }
  }
  void* mem = nullptr;
  if (::posix_memalign(&mem, staging_alignment, staging_buffer_bytes) != 0) throw std::bad_alloc();
  return staging_buffer(static_cast<std::byte*>(mem));
}

staging_buffer& staging_buffer::operator=(staging_buffer&& o) noexcept {
  if (this != &o) {
    staging_buffer tmp(std::move(*this));
    p_ = o.p_;
    o.p_ = nullptr;
  }
  return *this;
}

staging_buffer::~staging_buffer() {
  if (!p_) return;
  auto& p = the_pool();
  std::lock_guard lk(p.mu);
  p.idle.push_back(p_);
}

}  // namespace meshckpt::runtime
