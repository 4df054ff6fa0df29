#pragma once
// Private: reading one byte range of a file front to back, ahead of its consumer, the one way
// the library streams a large range in (an import's source tensors, an export's stored
// slices). The range is read in aligned blocks of `staging_buffer_bytes` into staging buffers,
// up to `max_blocks` reads in flight, so the disk works while the consumer copies and hashes
// what arrived; with the file opened `read_direct`, the bytes bypass the page cache (a cold
// buffered read costs a page allocation and a kernel copy per page, which made the CPU, not
// the disk, the limit of an import). Buffered files work the same way.
//
// TRICKY: `drain()` must complete before the reader goes away, error or not: the reads in
// flight write into its buffers.

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "op_window.hpp"
#include "staging_pool.hpp"
#include "task.hpp"

namespace meshckpt::runtime {

// Ranges shorter than this are better read buffered: O_DIRECT has no readahead, so each small
// range would cost a round trip to the disk where the page cache has its neighbours already.
inline constexpr std::uint64_t direct_read_min = 1u << 20;

class sequential_reader {
 public:
  static constexpr std::size_t block_bytes = staging_buffer_bytes;
  static constexpr std::size_t max_blocks = 3;

  // Reads bytes [begin, end) of `file`; `what` names them in errors ("tensor "w" in FILE").
  // Starts the first reads at once. Throws std::bad_alloc.
  sequential_reader(io::backend& b, asio::any_io_executor ex, io::handle file, std::uint64_t begin, std::uint64_t end, std::string what);
  sequential_reader(const sequential_reader&) = delete;
  sequential_reader& operator=(const sequential_reader&) = delete;

  // The next `out.size()` bytes of the range (precondition: no more than it has left).
  // errc::short_read when the file ends early; a failed read's error.
  task<void> read(std::span<std::byte> out);
  // Waits until every read completed, whatever happens meanwhile.
  task<void> drain() { return ops_.drain(); }
  // The file offset of the next byte `read` gives.
  std::uint64_t position() const { return pos_; }
  io::handle file() const { return file_; }
  std::uint64_t end() const { return end_; }

 private:
  struct slot {
    staging_buffer buf;
    std::uint64_t at = 0;  // file offset of the block (aligned)
    std::size_t len = 0;   // bytes asked for (whole pages)
    std::size_t got = 0;   // bytes the read returned
    bool busy = false;
  };
  void start(slot& s);  // the next block, if the range has one left

  io::backend& b_;
  io::handle file_;
  std::uint64_t pos_, end_;
  std::uint64_t next_;  // aligned file offset of the next block to read
  std::string what_;
  op_window ops_;
  std::vector<slot> slots_;  // used in turn: slots_[head_] holds the block `pos_` is in
  std::size_t head_ = 0;
};

}  // namespace meshckpt::runtime
