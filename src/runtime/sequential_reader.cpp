#include "sequential_reader.hpp"

#include <algorithm>
#include <cstring>

#include "meshckpt/io/async.hpp"

namespace meshckpt::runtime {

sequential_reader::sequential_reader(io::backend& b, asio::any_io_executor ex, io::handle file, std::uint64_t begin, std::uint64_t end,
                                     std::string what)
    : b_(b),
      file_(file),
      pos_(begin),
      end_(end),
      next_(begin / staging_alignment * staging_alignment),
      what_(std::move(what)),
      ops_(std::move(ex)) {
  // No more buffers than the range spans.
  const std::uint64_t span = end > next_ ? end - next_ : 0;
  const auto n = static_cast<std::size_t>(std::clamp<std::uint64_t>((span + block_bytes - 1) / block_bytes, 1, max_blocks));
  slots_.resize(n);
  for (auto& s : slots_) {
    s.buf = staging_buffer::acquire();
    b_.register_buffer({s.buf.data(), staging_buffer::size()});  // pool buffers live for the process
  }
  for (auto& s : slots_) start(s);
}

void sequential_reader::start(slot& s) {
  s.at = next_;
  s.len = 0;
  s.got = 0;
  if (next_ >= end_) return;
  const std::uint64_t want = std::min<std::uint64_t>(block_bytes, end_ - next_);
  s.len = static_cast<std::size_t>((want + staging_alignment - 1) / staging_alignment * staging_alignment);
  next_ += s.len;
  s.busy = true;
  try {
    ops_.launch([&] {
      io::async_read(b_, ops_.executor(), file_, s.at, std::span<std::byte>(s.buf.data(), s.len), [this, &s](result<std::size_t> r) {
        s.busy = false;
        if (r) s.got = *r;
        ops_.finished(r ? result<void>(success()) : result<void>(r.error()));
      });
    });
  } catch (...) {
    s.busy = false;
    throw;
  }
}

task<void> sequential_reader::read(std::span<std::byte> out) {
  while (!out.empty()) {
    slot& s = slots_[head_];
    while (s.busy) {
      BOOST_OUTCOME_CO_TRY(co_await ops_.wait_below(ops_.in_flight()));  // one more completes
    }
    BOOST_OUTCOME_CO_TRY(co_await ops_.wait_below(ops_.in_flight() + 1));  // a failure of an earlier read
    if (pos_ >= s.at + s.len) {                                            // this block is used up: read the next one into it
      if (s.len == 0) co_return make_error(errc::invalid_argument, "internal: read past the end of " + what_);
      start(s);
      head_ = (head_ + 1) % slots_.size();
      continue;
    }
    if (pos_ >= s.at + s.got)
      co_return make_error(errc::short_read, what_ + ": the file ends at byte " + std::to_string(s.at + s.got) + ", before byte " +
                                                 std::to_string(std::min(end_, s.at + s.len)));
    const auto n = static_cast<std::size_t>(std::min<std::uint64_t>(out.size(), s.at + s.got - pos_));
    std::memcpy(out.data(), s.buf.data() + (pos_ - s.at), n);
    out = out.subspan(n);
    pos_ += n;
  }
  co_return success();
}

}  // namespace meshckpt::runtime
