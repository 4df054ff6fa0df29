#include "data_files.hpp"

#include <algorithm>

#include "meshckpt/format/checksum.hpp"
#include "meshckpt/format/crc32c.hpp"
#include "meshckpt/format/zip.hpp"

namespace meshckpt::detail {

file_cache::~file_cache() {
  for (auto& [i, h] : open_) io::close_detached(b_, h);
}

task<io::handle> file_cache::get(std::uint32_t index) {
  auto ex = co_await asio::this_coro::executor;
  if (auto it = open_.find(index); it != open_.end()) co_return it->second;
  const auto& f = m_.files[index];
  auto h = co_await io::async_open(b_, ex, p_.dir, f.name, direct_ ? io::open_mode::read_direct : io::open_mode::read, use_awaitable);
  if (!h) {
    if (h.error().code == std::errc::no_such_file_or_directory)
      co_return make_error(errc::not_found, "data file " + f.name + " is missing");
    co_return h.error();
  }
  bool kept = false;  // or the handle would leak when the map cannot grow
  try {
    open_[index] = *h;
    kept = true;
  } catch (const std::bad_alloc&) {
  }
  if (!kept) {
    io::close_detached(b_, *h);
    co_return out_of_memory("opening " + f.name);
  }
  BOOST_OUTCOME_CO_TRY(auto size, co_await io::async_size(b_, ex, *h, use_awaitable));
  if (size != f.size)
    co_return make_error(size < f.size ? errc::short_read : errc::corrupt_manifest,
                         "data file " + f.name + " is " + std::to_string(size) + " bytes, the manifest says " + std::to_string(f.size) +
                             (size < f.size ? " (truncated)" : ""));
  co_return *h;
}

asio::awaitable<void> file_cache::close_all() {
  while (!open_.empty()) {
    co_await close_quietly(b_, open_.begin()->second);
    open_.erase(open_.begin());
  }
}

task<void> source_stream::read(io::handle direct, io::handle buffered, std::uint64_t at, std::uint64_t end, std::span<std::byte> out,
                               std::string what) {
  auto ex = co_await asio::this_coro::executor;
  if (!cur_ || cur_->file() != direct || cur_->position() != at || cur_->end() != end) {
    co_await close();
    if (end - at < runtime::direct_read_min) {
      BOOST_OUTCOME_CO_TRY(auto got, co_await io::async_read(b_, ex, buffered, at, out, use_awaitable));
      if (got != out.size())
        co_return make_error(errc::short_read, what + ": the file ends at byte " + std::to_string(at + got) + ", before byte " +
                                                   std::to_string(at + out.size()));
      co_return success();
    }
    cur_.emplace(b_, ex, direct, at, end, std::move(what));
  }
  co_return co_await cur_->read(out);
}

asio::awaitable<void> source_stream::close() {
  if (!cur_) co_return;
  (void)co_await cur_->drain();  // before the reader goes away (sequential_reader.hpp)
  cur_.reset();
}

source_files::~source_files() {
  for (const auto* v : {&buffered_, &direct_})
    for (const auto& h : *v)
      if (h) io::close_detached(b_, *h);
}

task<void> source_files::open(std::size_t i, io::handle dir, std::string name, std::string what) {
  auto ex = co_await asio::this_coro::executor;
  for (auto* v : {&buffered_, &direct_}) {
    auto h = co_await io::async_open(b_, ex, dir, name, v == &buffered_ ? io::open_mode::read : io::open_mode::read_direct, use_awaitable);
    if (!h) {
      if (h.error().code == std::errc::no_such_file_or_directory) co_return make_error(errc::not_found, what + " does not exist");
      co_return with_context(h.error(), what);
    }
    (*v)[i] = *h;
  }
  co_return success();
}

task<void> source_files::read(std::size_t i, std::uint64_t at, std::uint64_t end, std::span<std::byte> out, std::string what) {
  return stream_.read(*direct_[i], *buffered_[i], at, end, out, std::move(what));
}

asio::awaitable<void> source_files::close() {
  co_await stream_.close();  // before the files it reads
  for (auto* v : {&buffered_, &direct_})
    for (auto& h : *v)
      if (h) {
        co_await close_quietly(b_, *h);
        h.reset();
      }
}

std::string slice_ctx(const format::manifest& m, const format::saved_tensor& t, const format::saved_slice& s) {
  return "tensor \"" + t.key + "\" slice " + to_string(s.where) + " in " + m.files[s.file].name;
}

result<void> check_chunks(const format::manifest& m, const format::saved_tensor& t, const format::saved_slice& s,
                          std::span<const std::byte> bytes, std::uint64_t first_chunk) {
  if (format::whole_slice_crc(m.checksum)) {
    // A foreign tensor (TensorFlow, torch): its one checksum covers the whole slice, which a
    // restore of it therefore always reads whole (its chunk is larger than any slice).
    if (first_chunk != 0 || bytes.size() != s.length || s.checksums.size() != 1)
      return make_error(errc::invalid_argument, "internal: a partial check of " + slice_ctx(m, t, s) + " (its " +
                                                    format::crc_name(m.checksum) + " covers it whole)");
    slice_checker whole(m, t, s);  // allocates nothing for a whole-slice CRC
    return whole.update(bytes);
  }
  for (std::uint64_t off = 0, c = first_chunk; off < bytes.size(); off += m.chunk_bytes, ++c) {
    auto n = std::min<std::uint64_t>(m.chunk_bytes, bytes.size() - off);
    if (format::checksum(bytes.subspan(off, n)) != s.checksums[c])
      return make_error(errc::checksum_mismatch, "checksum mismatch in " + slice_ctx(m, t, s) + " at bytes [" +
                                                     std::to_string(s.offset + c * m.chunk_bytes) + ", " +
                                                     std::to_string(s.offset + c * m.chunk_bytes + n) + ")");
  }
  return success();
}

slice_checker::slice_checker(const format::manifest& m, const format::saved_tensor& t, const format::saved_slice& s, crc_of want)
    : m_(m),
      t_(t),
      s_(s),
      whole_crc_(format::whole_slice_crc(m.checksum)),
      want_(want),
      hasher_(std::max<std::uint64_t>(m.chunk_bytes, 1)) {
  if (!whole_crc_) hasher_.start(s.length, sums_);
}

result<void> slice_checker::update(std::span<const std::byte> bytes) {
  if (want_ == crc_of::crc32c)
    crc_ = format::crc32c::extend(crc_, bytes);
  else if (want_ == crc_of::crc32)
    crc_ = format::zip::crc32_extend(crc_, bytes);
  fed_ += bytes.size();
  if (whole_crc_) {
    // The source's CRC, computed once when it is also the one asked for.
    const bool same = (m_.checksum == format::checksum_kind::crc32c_whole && want_ == crc_of::crc32c) ||
                      (m_.checksum == format::checksum_kind::crc32_whole && want_ == crc_of::crc32);
    source_crc_ = same ? crc_ : format::extend_crc(m_.checksum, source_crc_, bytes);
    if (fed_ == s_.length && (s_.checksums.size() != 1 || source_crc_ != s_.checksums[0]))
      return make_error(errc::checksum_mismatch, std::string(format::crc_name(m_.checksum)) + " mismatch in " + slice_ctx(m_, t_, s_) +
                                                     " at bytes [" + std::to_string(s_.offset) + ", " +
                                                     std::to_string(s_.offset + s_.length) + ")");
    return success();
  }
  const std::size_t before = sums_.size();
  hasher_.update(bytes);
  for (std::size_t c = before; c < sums_.size(); ++c)
    if (c >= s_.checksums.size() || sums_[c] != s_.checksums[c]) {
      const std::uint64_t from = s_.offset + c * m_.chunk_bytes;
      const std::uint64_t to = std::min(from + m_.chunk_bytes, s_.offset + s_.length);
      return make_error(errc::checksum_mismatch, "checksum mismatch in " + slice_ctx(m_, t_, s_) + " at bytes [" + std::to_string(from) +
                                                     ", " + std::to_string(to) + ")");
    }
  return success();
}

task<std::uint32_t> copy_slice(io::backend& b, const format::manifest& m, data_file_pair& files, const format::saved_tensor& t,
                               const format::saved_slice& s, runtime::staged_writer& out, std::uint64_t out_offset, crc_of want) {
  auto ex = co_await asio::this_coro::executor;
  slice_checker check(m, t, s, want);
  const bool small = s.length < runtime::direct_read_min;
  file_cache& which = small ? files.buffered : files.direct;
  BOOST_OUTCOME_CO_TRY(auto h, co_await which.get(s.file));
  std::optional<runtime::sequential_reader> ahead;
  if (!small) ahead.emplace(b, ex, h, s.offset, s.offset + s.length, slice_ctx(m, t, s));
  auto copy = [&]() -> task<void> {
    for (std::uint64_t done = 0; done < s.length;) {
      auto into = out.room(out_offset + done);
      if (into.empty()) {
        BOOST_OUTCOME_CO_TRY(co_await out.next_block());
        continue;
      }
      into = into.first(static_cast<std::size_t>(std::min<std::uint64_t>(into.size(), s.length - done)));
      if (ahead) {
        BOOST_OUTCOME_CO_TRY(co_await ahead->read(into));
      } else {
        BOOST_OUTCOME_CO_TRY(auto got, co_await io::async_read(b, ex, h, s.offset + done, into, use_awaitable));
        if (got != into.size()) co_return make_error(errc::short_read, slice_ctx(m, t, s) + ": file ended early");
      }
      BOOST_OUTCOME_CO_TRY(check.update(into));
      done += into.size();
      out.filled_to(out_offset + done);
    }
    co_return success();
  };
  result<void> r = success();
  try {
    r = co_await copy();
  } catch (const std::bad_alloc&) {
    r = out_of_memory("copying " + slice_ctx(m, t, s));
  }
  if (ahead) (void)co_await ahead->drain();  // before the reader goes away (sequential_reader.hpp)
  BOOST_OUTCOME_CO_TRY(std::move(r));
  co_return check.crc();
}

}  // namespace meshckpt::detail
