#pragma once
// Private: a process-wide pool of 4096-aligned staging buffers of one size (8 MiB), reused
// across saves and restores so that their pages are touched once, not on every checkpoint.
// Buffers are kept for the life of the process (backends may register them with the kernel);
// callers bound how many they hold at once, which bounds the pool.

#include <cstddef>
#include <memory>

namespace meshckpt::runtime {

inline constexpr std::size_t staging_buffer_bytes = 8u << 20;
inline constexpr std::size_t staging_alignment = 4096;

// A staging buffer; returns itself to the pool when destroyed.
class staging_buffer {
 public:
  staging_buffer() = default;
  staging_buffer(staging_buffer&& o) noexcept : p_(o.p_) { o.p_ = nullptr; }
  staging_buffer& operator=(staging_buffer&& o) noexcept;
  staging_buffer(const staging_buffer&) = delete;
  ~staging_buffer();
  std::byte* data() const { return p_; }
  static constexpr std::size_t size() { return staging_buffer_bytes; }

  // Takes an idle buffer from the pool, or allocates one (throws std::bad_alloc).
  static staging_buffer acquire();

 private:
  explicit staging_buffer(std::byte* p) : p_(p) {}
  std::byte* p_ = nullptr;
};

}  // namespace meshckpt::runtime
