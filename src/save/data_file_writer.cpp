// Step 3 of the commit protocol (commit.cpp): a data file written front to back through the
// staging blocks, from memory, device memory or a streamed source, each chunk hashed from the
// bytes written.

#include <cstring>
#include <type_traits>

#include "../device/device_copy.hpp"
#include "../runtime/staged_writer.hpp"
#include "save_state.hpp"
#include "meshckpt/format/checksum.hpp"
#include "meshckpt/format/names.hpp"

namespace meshckpt::detail {

namespace {

// The one staging loop, for every source of a slice's bytes: [pos, pos + length) of the file
// goes through the staging blocks, at most `max_step` bytes at a time, each piece hashed right
// after it was placed, from the staging buffer (the bytes hashed are the bytes written, read
// from cache rather than a second time from the source). `place(into, done)` puts the slice's
// bytes from `done` on into `into`: a result<void> when it copies, a task<void> when it waits
// (a streamed read, a device copy).
template <class Place>
task<void> fill_slice(runtime::staged_writer& out, format::chunk_hasher& hasher, std::uint64_t pos, std::uint64_t length,
                      std::uint64_t max_step, Place place) {
  std::uint64_t done = 0;
  while (done < length) {
    auto into = out.room(pos);
    if (into.empty()) {
      BOOST_OUTCOME_CO_TRY(co_await out.next_block());
      continue;
    }
    into = into.first(static_cast<std::size_t>(std::min<std::uint64_t>({length - done, into.size(), max_step})));
    if constexpr (std::is_same_v<std::invoke_result_t<Place&, std::span<std::byte>, std::uint64_t>, task<void>>) {
      auto placing = place(into, done);
      BOOST_OUTCOME_CO_TRY(co_await std::move(placing));
    } else {
      BOOST_OUTCOME_CO_TRY(place(into, done));
    }
    hasher.update(into);
    done += into.size();
    pos += into.size();
    out.filled_to(pos);
  }
  co_return success();
}

// Slice write `w` into the file through `out`: a streamed slice read straight into the staging
// block, as much of it as fits at a time (so each read is large); device memory copied there
// by its accelerator; host memory copied a piece at a time (so the hash finds it in cache).
// The blocks before it are being written meanwhile.
task<void> fill_one(save_state& s, const format::manifest& m, const plan::slice_write& w, const format::saved_slice& slice,
                    runtime::staged_writer& out, format::chunk_hasher& hasher) {
  constexpr auto any = ~std::uint64_t{0};
  if (w.streamed != plan::not_streamed) {
    auto filling = fill_slice(out, hasher, slice.offset, slice.length, any,
                              [&](std::span<std::byte> into, std::uint64_t done) { return s.read_stream(w.streamed, done, into); });
    co_return co_await std::move(filling);
  }
  if (w.memory) {
    auto place = [&](std::span<std::byte> into, std::uint64_t done) -> task<void> {
      BOOST_OUTCOME_CO_TRY(device::detail::pin_staging_buffer(*w.memory, out.current_buffer()));
      auto copied = device::detail::to_host(*w.memory, w.gpu, into, w.source.data() + done);
      if (auto r = co_await std::move(copied); !r)
        co_return with_context(r.error(), "copying tensor \"" + m.tensors[w.tensor].key + "\" slice " + to_string(slice.where) + " from " +
                                              std::string(w.memory->name()) + " device " + std::to_string(w.gpu));
      co_return success();
    };
    auto filling = fill_slice(out, hasher, slice.offset, w.source.size(), any, place);
    co_return co_await std::move(filling);
  }
  auto filling = fill_slice(out, hasher, slice.offset, w.source.size(), copy_piece,
                            [&](std::span<std::byte> into, std::uint64_t done) -> result<void> {
                              std::memcpy(into.data(), w.source.data() + done, into.size());
                              return success();
                            });
  co_return co_await std::move(filling);
}

// Opens data file `k` for a new checkpoint, recorded in the save's state before anything may
// fail: the bookkeeping after the open must not allocate, or a failure there would lose the file.
task<io::handle> create_data_file(save_state& s, const std::string& name) {
  auto ex = co_await asio::this_coro::executor;
  std::string entry = name;
  s.created.reserve(s.created.size() + 1);
  s.open_files.reserve(s.open_files.size() + 1);
  auto h = co_await io::async_open(s.b, ex, *s.dir, name, io::open_mode::create_exclusive_direct, use_awaitable);
  if (!h) co_return h.error();
  s.created.push_back(std::move(entry));
  s.open_files.push_back(*h);
  co_return *h;
}

}  // namespace

task<void> write_data_file(save_state& s, format::manifest& m, std::uint32_t k, std::span<const plan::slice_write> writes,
                           std::uint64_t file_size, std::uint64_t chunk_bytes, bool last_file) {
  auto ex = co_await asio::this_coro::executor;
  std::string name = format::data_file_name(s.base, s.token, k);
  auto creating = create_data_file(s, name);
  BOOST_OUTCOME_CO_TRY(auto h, co_await std::move(creating));
  runtime::staged_writer out(s.b, ex, h, file_size, s.stop);
  out.on_written = [&s](std::size_t n) {
    s.done_bytes = std::min(s.total_bytes, s.done_bytes + n);  // padding counts up to the total only
    if (s.progress) s.progress(s.done_bytes, s.total_bytes);
  };
  format::chunk_hasher hasher(chunk_bytes);
  auto fill = [&]() -> task<void> {
    for (std::size_t wi = 0; wi < writes.size(); ++wi) {
      const auto& w = writes[wi];
      auto& slice = m.tensors[w.tensor].slices[w.slice];
      hasher.start(slice.length, slice.checksums);
      // Small slices are scattered over the heap, where the hardware prefetcher loses the
      // stream at each one: ask for the next one's first lines while this one is copied.
      if (wi + 1 < writes.size() && !writes[wi + 1].memory)
        for (std::size_t off = 0; off < std::min<std::size_t>(writes[wi + 1].source.size(), 1024); off += 64)
          __builtin_prefetch(writes[wi + 1].source.data() + off);
      auto filling = fill_one(s, m, w, slice, out, hasher);
      BOOST_OUTCOME_CO_TRY(co_await std::move(filling));
    }
    out.submit_last();
    co_return success();
  };
  result<void> filled_ok = success();
  try {
    filled_ok = co_await fill();
  } catch (const std::bad_alloc&) {
    filled_ok = out_of_memory("writing " + name);
  }
  if (filled_ok && last_file && s.sources_released) std::exchange(s.sources_released, nullptr)();
  auto drained = co_await out.drain();  // before `out` goes away, error or not (staged_writer.hpp)
  if (!filled_ok) co_return filled_ok.error();
  if (!drained) co_return drained.error();
  BOOST_OUTCOME_CO_TRY(co_await io::async_truncate(s.b, ex, h, file_size, use_awaitable));
  BOOST_OUTCOME_CO_TRY(co_await io::async_fsync(s.b, ex, h, use_awaitable));
  // Forgotten only once closed (a close always releases the handle): until then the cleanup of
  // last resort closes it if an allocation fails.
  auto closed = co_await io::async_close(s.b, ex, h, use_awaitable);
  if (!closed && closed.error().code == std::errc::not_enough_memory) io::close_detached(s.b, h);  // it never started
  s.open_files.pop_back();
  co_return closed;
}

}  // namespace meshckpt::detail
