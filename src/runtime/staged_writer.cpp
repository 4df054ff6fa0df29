#include "staged_writer.hpp"

#include <algorithm>
#include <cassert>
#include <cstring>

#include "meshckpt/io/async.hpp"

namespace meshckpt::runtime {

staged_writer::staged_writer(io::backend& b, asio::any_io_executor ex, io::handle file, std::uint64_t expected_bytes, std::stop_token stop)
    : b_(b), file_(file), stop_(std::move(stop)), ops_(std::move(ex)) {
  const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(max_buffers, expected_bytes / block_bytes + 1));
  pool_.reserve(n);
  free_.reserve(n);
  for (std::size_t i = 0; i < n; ++i) {
    pool_.push_back(staging_buffer::acquire());
    b_.register_buffer({pool_.back().data(), staging_buffer::size()});  // pool buffers live for the process
    free_.push_back(i);
  }
  cur_ = free_.back();
  free_.pop_back();
}

std::span<std::byte> staged_writer::room(std::uint64_t pos) {
  assert(pos >= block_off_ + filled_);
  const std::uint64_t in_block = pos - block_off_;
  if (in_block >= block_bytes) return {};
  std::byte* at = pool_[cur_].data();
  if (in_block > filled_) std::memset(at + filled_, 0, in_block - filled_);  // an alignment gap
  filled_ = in_block;
  return {at + in_block, block_bytes - in_block};
}

void staged_writer::submit(std::size_t len) {
  std::size_t padded = (len + staging_alignment - 1) / staging_alignment * staging_alignment;
  std::memset(pool_[cur_].data() + len, 0, padded - len);
  const std::size_t idx = cur_;
  std::span<const std::byte> bytes(pool_[idx].data(), padded);
  ops_.launch([&] {
    io::async_write(b_, ops_.executor(), file_, block_off_, bytes, [this, idx, padded](result<void> r) {
      if (r && on_written) on_written(padded);
      free_.push_back(idx);  // within the reserved capacity: cannot throw
      ops_.finished(std::move(r));
    });
  });
}

task<void> staged_writer::next_block() {
  if (stop_.stop_requested()) co_return make_error(errc::cancelled, "save cancelled");
  std::memset(pool_[cur_].data() + filled_, 0, block_bytes - filled_);
  submit(block_bytes);
  block_off_ += block_bytes;
  filled_ = 0;
  BOOST_OUTCOME_CO_TRY(co_await ops_.wait_below(pool_.size()));  // a buffer is free again
  cur_ = free_.back();
  free_.pop_back();
  co_return success();
}

task<void> staged_writer::write(std::uint64_t pos, std::span<const std::byte> bytes) {
  while (!bytes.empty()) {
    auto into = room(pos);
    if (into.empty()) {
      BOOST_OUTCOME_CO_TRY(co_await next_block());
      continue;
    }
    const std::size_t n = std::min(into.size(), bytes.size());
    std::memcpy(into.data(), bytes.data(), n);
    bytes = bytes.subspan(n);
    pos += n;
    filled_to(pos);
  }
  co_return success();
}

void staged_writer::submit_last() {
  if (filled_ > 0) submit(static_cast<std::size_t>(filled_));
}

}  // namespace meshckpt::runtime
