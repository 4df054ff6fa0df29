#pragma once
// Private: what reading a checkpoint's data files takes, shared by restore (read.cpp) and
// verify (verify.cpp): the files opened on demand, each checked once against the manifest's
// size, and the chunk checksums of a slice's bytes.

#include <map>
#include <span>
#include <string>

#include "common.hpp"
#include "match_targets.hpp"
#include "meshckpt/format/manifest.hpp"

namespace meshckpt::detail {

// Opens data files on demand and checks each one's size against the manifest once.
class file_cache {
 public:
  // `direct`: open with O_DIRECT (every read then aligned to 4096 bytes).
  file_cache(io::backend& b, const opened_prefix& p, const format::manifest& m, bool direct = false)
      : b_(b), p_(p), m_(m), direct_(direct) {}
  file_cache(const file_cache&) = delete;
  file_cache& operator=(const file_cache&) = delete;
  // Handles left open when an exception skipped close_all.
  ~file_cache();

  task<io::handle> get(std::uint32_t index);
  asio::awaitable<void> close_all();

 private:
  io::backend& b_;
  const opened_prefix& p_;
  const format::manifest& m_;
  bool direct_;
  std::map<std::uint32_t, io::handle> open_;
};

// "tensor "K" slice BOX in FILE", for errors.
std::string slice_ctx(const format::manifest& m, const format::saved_tensor& t, const format::saved_slice& s);

// Checks the chunk checksums of `bytes`, the slice's bytes from chunk `first_chunk` on; the
// error names tensor, slice, file and offset.
result<void> check_chunks(const format::manifest& m, const format::saved_tensor& t, const format::saved_slice& s,
                          std::span<const std::byte> bytes, std::uint64_t first_chunk);

// Copies stored slice `s` of tensor `t` to `[out_offset, out_offset + s.length)` of the open
// file `out`, through `buf` (its size a multiple of the chunk size), checking every chunk on
// the way; returns the CRC-32C of the bytes (for a TensorFlow bundle's entry). Memory: `buf`,
// whatever the slice's size.
task<std::uint32_t> copy_slice(io::backend& b, const format::manifest& m, file_cache& src, const format::saved_tensor& t,
                               const format::saved_slice& s, io::handle out, std::uint64_t out_offset, std::vector<std::byte>& buf);

// A staging buffer for copy_slice: about 8 MiB, whole chunks.
std::vector<std::byte> copy_buffer(const format::manifest& m);

// Checks every byte of the slices `from` against their checksums (chunks, or a TensorFlow
// piece's whole CRC-32C), reading each in staging pieces: bounded memory. (read.cpp)
task<void> check_slices(io::backend& b, const format::manifest& m,
                        std::span<const std::pair<const format::saved_tensor*, const format::saved_slice*>> from, file_cache& files);

// Plans the reads of `w` (ranges rounded to `granule`; plan/read_plan) and runs them, `direct`
// as `files` was opened. Returns the bytes read. (read.cpp)
task<std::uint64_t> run_wanted(io::backend& b, const format::manifest& m, const wanted& w, std::uint64_t granule, bool direct,
                               const read_options& opt, file_cache& files);

}  // namespace meshckpt::detail
