#pragma once
// Private: writing one file front to back through staging buffers, the one way the library
// streams a large file out (a save's data files, imports, exports). Bytes are placed at
// increasing offsets into aligned blocks of `staging_buffer_bytes` taken from a small pool;
// each full block is written (O_DIRECT where the file was opened so) while the next one fills,
// several writes in flight, so producing the bytes (a copy, a hash, a read from another file)
// overlaps the disk. The last block is padded to whole 4096-byte pages: the caller truncates
// the file to its size afterwards. Memory stays bounded by the pool whatever the file's size.
//
//   staged_writer w(b, ex, file, size);
//   for each piece at file offset pos:  room(pos) -> fill a prefix -> filled_to(pos + n),
//                                       next_block() whenever room(pos) is empty
//   submit_last(); drain(); truncate(file, size)
//
// TRICKY: `drain()` must complete before the writer goes away, error or not: the writes in
// flight read its buffers (an allocation failure is no exception: tests/reliability/test_alloc.cpp).

#include <functional>
#include <span>
#include <stop_token>
#include <vector>

#include "op_window.hpp"
#include "staging_pool.hpp"
#include "task.hpp"

namespace meshckpt::runtime {

class staged_writer {
 public:
  // Takes no more buffers than a file of `expected_bytes` needs (at most `max_buffers`) and
  // registers them with the backend. `stop`: `next_block` fails with errc::cancelled once a stop
  // is requested. Throws std::bad_alloc.
  staged_writer(io::backend& b, asio::any_io_executor ex, io::handle file, std::uint64_t expected_bytes, std::stop_token stop = {});
  staged_writer(const staged_writer&) = delete;
  staged_writer& operator=(const staged_writer&) = delete;

  static constexpr std::size_t block_bytes = staging_buffer_bytes;
  static constexpr std::size_t max_buffers = 8;

  // Called with the size of each completed write (padding included), on the executor.
  std::function<void(std::size_t)> on_written;

  // Where the bytes at file offset `pos` go: the current block from `pos` to its end, the gap
  // since the last filled byte zero-filled. Empty when `pos` lies past the current block (or it
  // is full): call `next_block()`, then ask again. Precondition: `pos` is not before the end
  // of what was filled.
  std::span<std::byte> room(std::uint64_t pos);
  // The whole buffer of the current block (pool memory, alive for the process).
  std::span<std::byte> current_buffer() const { return {pool_[cur_].data(), block_bytes}; }
  // The bytes before file offset `pos` (in the current block) are filled.
  void filled_to(std::uint64_t pos) { filled_ = pos - block_off_; }
  // Hands the current block, zero-padded, to the writes and waits for a free buffer. Fails
  // with the first failed write's error, or errc::cancelled once a stop was requested.
  task<void> next_block();
  // Copies `bytes` to file offset `pos`.
  task<void> write(std::uint64_t pos, std::span<const std::byte> bytes);
  // Hands the last block (what was filled of it, padded to whole pages) to the writes.
  void submit_last();
  // Waits until every write completed, whatever happens meanwhile; the first failure.
  task<void> drain() { return ops_.drain(); }

 private:
  void submit(std::size_t len);

  io::backend& b_;
  io::handle file_;
  std::stop_token stop_;
  op_window ops_;
  std::vector<staging_buffer> pool_;
  std::vector<std::size_t> free_;  // indexes into pool_; its capacity never grows after construction
  std::size_t cur_ = 0;            // the block being filled: file range [block_off_, block_off_ + block_bytes)
  std::uint64_t block_off_ = 0;
  std::uint64_t filled_ = 0;  // bytes of the current block filled so far (zero-filled gaps included)
};

}  // namespace meshckpt::runtime
