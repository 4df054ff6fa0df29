#pragma once
// Private: what reading a checkpoint's data files takes, shared by restore (read.cpp) and
// verify (verify.cpp): the files opened on demand, each checked once against the manifest's
// size, and the chunk checksums of a slice's bytes.

#include <map>
#include <span>
#include <string>

#include "../runtime/sequential_reader.hpp"
#include "common.hpp"
#include "meshckpt/format/checksum.hpp"
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

// A checkpoint's data files, each opened on demand both ways a copy reads them: buffered
// (slices shorter than runtime::direct_read_min) and O_DIRECT (the rest). `close_all()` before
// it goes away; handles left open are closed detached.
struct data_file_pair {
  data_file_pair(io::backend& b, const opened_prefix& p, const format::manifest& m) : buffered(b, p, m), direct(b, p, m, true) {}
  file_cache buffered, direct;
  asio::awaitable<void> close_all() {
    co_await buffered.close_all();
    co_await direct.close_all();
  }
};

// "tensor "K" slice BOX in FILE", for errors.
std::string slice_ctx(const format::manifest& m, const format::saved_tensor& t, const format::saved_slice& s);

// Checks the chunk checksums of `bytes`, the slice's bytes from chunk `first_chunk` on; the
// error names tensor, slice, file and offset.
result<void> check_chunks(const format::manifest& m, const format::saved_tensor& t, const format::saved_slice& s,
                          std::span<const std::byte> bytes, std::uint64_t first_chunk);

// Checks a stored slice's bytes as they arrive in order, in pieces of any size: each chunk
// against its checksum once its last byte is in (a TensorFlow piece's one CRC-32C at the
// slice's end). Errors name tensor, slice, file and byte range.
// Which CRC of the bytes a copy also computes, for the file it writes: none, CRC-32C (a
// TensorFlow bundle entry's) or CRC-32 (a zip record's).
enum class crc_of { none, crc32c, crc32 };

class slice_checker {
 public:
  // `want`: also compute that CRC of the bytes. Throws std::bad_alloc.
  slice_checker(const format::manifest& m, const format::saved_tensor& t, const format::saved_slice& s, crc_of want = crc_of::none);
  // The next bytes of the slice. Precondition: no more than it has left.
  result<void> update(std::span<const std::byte> bytes);
  // The CRC `want` asked for, of the bytes fed so far.
  std::uint32_t crc() const { return crc_; }

 private:
  const format::manifest& m_;
  const format::saved_tensor& t_;
  const format::saved_slice& s_;
  bool whole_crc_;
  crc_of want_;
  std::uint64_t fed_ = 0;
  std::uint32_t crc_ = 0, source_crc_ = 0;
  format::chunk_hasher hasher_;
  std::vector<std::uint64_t> sums_;  // of the chunks complete so far
};

// Copies stored slice `s` of tensor `t` to `[out_offset, out_offset + s.length)` of the file
// `out` writes, reading it into the staging blocks and checking it on the way (slice_checker):
// through a runtime::sequential_reader from `files.direct`, or from `files.buffered` when it is
// shorter than runtime::direct_read_min. Returns the CRC `want` asks for
// (0 for none). A mismatch fails the copy after some of the bytes were placed: the caller's
// file is discarded.
task<std::uint32_t> copy_slice(io::backend& b, const format::manifest& m, data_file_pair& files, const format::saved_tensor& t,
                               const format::saved_slice& s, runtime::staged_writer& out, std::uint64_t out_offset, crc_of want);

// Copies tensor `t` of checkpoint `prefix` (manifest `m`), whole and row-major, to
// `[offset, offset + its bytes)` of the file `w` writes: a tensor stored whole through
// `copy_slice`; one stored as several slices assembled in blocks of rows of about 8 MiB (in
// `block`), verified (a foreign one against its CRCs first). Returns the CRC `want` asks for.
task<std::uint32_t> copy_tensor(io::backend& b, const std::string& prefix, std::shared_ptr<const format::manifest> m, data_file_pair& src,
                                const format::saved_tensor& t, runtime::staged_writer& w, std::uint64_t offset,
                                std::vector<std::byte>& block, crc_of want);

// Publishes the file `out` of `size` bytes (publish_streamed) from checkpoint `prefix`
// (manifest `m`): `produce` writes it through the staged writer, reading the checkpoint's data
// files through `src`, which is closed after.
using checkpoint_producer = std::function<task<void>(runtime::staged_writer&, data_file_pair& src)>;
task<void> publish_from_checkpoint(io::backend& b, std::string prefix, std::shared_ptr<const format::manifest> m, std::string out,
                                   std::uint64_t size, checkpoint_producer produce);

// Reads the byte ranges an import streams from its source files, each ahead of the save that
// asks for it (runtime::sequential_reader on `direct`, the file opened read_direct, one range at
// a time): a read where the current reader does not stand starts a new one over [at, end). A
// range shorter than runtime::direct_read_min is read from `buffered`, the file opened
// buffered. `close()` before it goes away.
class source_stream {
 public:
  explicit source_stream(io::backend& b) : b_(b) {}
  task<void> read(io::handle direct, io::handle buffered, std::uint64_t at, std::uint64_t end, std::span<std::byte> out, std::string what);
  asio::awaitable<void> close();

 private:
  io::backend& b_;
  std::optional<runtime::sequential_reader> cur_;
};

// The files an import streams from, each open twice: buffered (headers, pieces shorter than
// runtime::direct_read_min) and O_DIRECT (the rest), read through one source_stream. `close()`
// closes them; handles it did not close (an exception skipped it) are closed detached.
class source_files {
 public:
  // Room for `n` files, taken before any open: nothing may throw between an open and its
  // bookkeeping. Throws std::bad_alloc.
  source_files(io::backend& b, std::size_t n) : b_(b), stream_(b), buffered_(n), direct_(n) {}
  source_files(const source_files&) = delete;
  source_files& operator=(const source_files&) = delete;
  ~source_files();

  // Opens file `i`, `name` in `dir`, both ways. A missing file is errc::not_found, "WHAT does
  // not exist"; other errors name `what`.
  task<void> open(std::size_t i, io::handle dir, std::string name, std::string what);
  // File `i`'s buffered handle. Precondition: opened.
  io::handle buffered(std::size_t i) const { return *buffered_[i]; }
  // Bytes [at, at + out.size()) of file `i`, whose current range ends at `end` (source_stream).
  task<void> read(std::size_t i, std::uint64_t at, std::uint64_t end, std::span<std::byte> out, std::string what);
  asio::awaitable<void> close();

 private:
  io::backend& b_;
  source_stream stream_;
  std::vector<std::optional<io::handle>> buffered_, direct_;
};

}  // namespace meshckpt::detail
