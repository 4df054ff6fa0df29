// The commit protocol of a save (write_tensors). Prefix DIR/NAME, a fresh random TOKEN per
// attempt.
//
//   1. Plan: place every distinct slice in data files (pure; no IO).
//   2. Create DIR (and missing parents, each fsynced into its parent).
//   3. For each data file NAME.data-TOKEN-K: create exclusively, write all its slices (the XXH3
//      of every chunk is computed from the bytes written), fsync, close.
//   4. fsync DIR: the data files' directory entries are durable.
//   5. Encode the manifest; write it to NAME.manifest.tmp-TOKEN (created exclusively), fsync,
//      close.
//   6. rename NAME.manifest.tmp-TOKEN -> NAME.manifest (atomically replaces an older one).
//   7. fsync DIR. Only now is success reported: the checkpoint is durable.
//   8. Clean up (best effort): remove NAME's data files of other tokens (the replaced checkpoint,
//      or leftovers of crashed saves) and NAME's stray temp manifests.
//
// What a crash leaves behind:
//   before 6:  the old NAME.manifest (if any) and its data files, untouched: the old checkpoint
//              is intact; the new files are leftovers (never read as a checkpoint, since only
//              NAME.manifest makes one), removed by step 8 of the next save of NAME.
//   after 6, before 7 completes: either the old or the new manifest is visible; both reference
//              only fsynced data files whose entries are durable (step 4), so either restores.
//   after 7:   the new checkpoint; possibly leftovers of the old one, removed by the next save.
//
// A failure before step 6 removes the files this attempt created. A failure in step 6 or 7
// reports an error and removes nothing: the new manifest may be visible, and its data must stay.
// A failed fsync ends the attempt; it is never retried.

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <random>
#include <stop_token>
#include <unistd.h>

#include "../runtime/staging_pool.hpp"
#include "common.hpp"
#include "meshckpt/api/tensor_io_async.hpp"
#include "meshckpt/format/checksum.hpp"
#include "meshckpt/format/names.hpp"

namespace meshckpt {

namespace detail {

namespace {

std::uint64_t fresh_token() {
  static std::atomic<std::uint64_t> counter{0};
  static const std::uint64_t seed = [] {
    std::random_device rd;
    return (std::uint64_t{rd()} << 32) ^ rd();
  }();
  std::uint64_t parts[4] = {seed, static_cast<std::uint64_t>(::getpid()),
                            static_cast<std::uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count()),
                            counter.fetch_add(1)};
  return format::checksum(std::as_bytes(std::span(parts)));
}

// Staging: data files are produced sequentially in aligned blocks of `staging_bytes`, copied
// from the tensors into a small pool of aligned buffers and written with O_DIRECT (where the
// filesystem allows), several writes in flight; the last block is padded and the file then
// truncated to its exact size. Memory stays bounded by the pool, whatever the state's size.
constexpr std::size_t staging_bytes = runtime::staging_buffer_bytes;
constexpr std::size_t staging_buffers = 8;
constexpr std::size_t block = runtime::staging_alignment;

struct save_state {
  save_state(io::backend& be, std::string p, std::string d, std::string n)
      : b(be), prefix(std::move(p)), dir_path(std::move(d)), base(std::move(n)) {}
  std::stop_token stop;
  std::function<void(std::uint64_t, std::uint64_t)> progress;
  std::function<void()> sources_released;  // called at most once, then cleared
  std::uint64_t done_bytes = 0, total_bytes = 0;
  io::backend& b;
  std::string prefix;
  std::string dir_path;
  std::string base;
  std::uint64_t token = fresh_token();
  std::optional<io::handle> dir;
  std::vector<io::handle> open_files;
  std::vector<std::string> created;  // files to remove if the attempt fails before the rename
  bool renamed = false;
};

error at(const save_state& s, error e) { return with_context(std::move(e), "save " + s.prefix); }

// Writes of staging blocks in flight on one file.
class write_window {
 public:
  write_window(io::backend& b, asio::any_io_executor ex, io::handle h) : b_(b), h_(h), ops_(std::move(ex)) {}
  std::function<void(std::size_t)> on_written;  // bytes of each completed write

  // Starts a write; `release` runs when it completed (to return the buffer to the pool).
  void start(std::uint64_t offset, std::span<const std::byte> bytes, std::function<void()> release) {
    ops_.started();
    io::async_write(b_, ops_.executor(), h_, offset, bytes, [this, n = bytes.size(), release = std::move(release)](result<void> r) {
      if (r && on_written) on_written(n);
      release();
      ops_.finished(std::move(r));
    });
  }
  task<void> wait_below(std::size_t n) { return ops_.wait_below(n); }

 private:
  io::backend& b_;
  io::handle h_;
  op_window ops_;
};

task<void> write_data_file(save_state& s, format::manifest& m, std::uint32_t k, std::span<const plan::slice_write> writes,
                           std::uint64_t file_size, std::uint64_t chunk_bytes, bool last_file) {
  auto ex = co_await asio::this_coro::executor;
  std::string name = format::data_file_name(s.base, s.token, k);
  auto h = co_await io::async_open(s.b, ex, *s.dir, name, io::open_mode::create_exclusive_direct, use_awaitable);
  if (!h) co_return h.error();
  s.created.push_back(name);
  s.open_files.push_back(*h);

  std::vector<runtime::staging_buffer> pool;
  std::vector<std::size_t> free_list;
  const std::size_t nbuf = std::min<std::size_t>(staging_buffers, file_size / staging_bytes + 1);
  for (std::size_t i = 0; i < nbuf; ++i) {
    pool.push_back(runtime::staging_buffer::acquire());
    s.b.register_buffer({pool.back().data(), runtime::staging_buffer::size()});  // pool buffers live for the process
    free_list.push_back(i);
  }
  write_window window(s.b, ex, *h);
  window.on_written = [&s](std::size_t n) {
    s.done_bytes = std::min(s.total_bytes, s.done_bytes + n);  // padding counts up to the total only
    if (s.progress) s.progress(s.done_bytes, s.total_bytes);
  };
  // The block being filled: file range [block_off, block_off + staging_bytes) in pool[cur].
  std::uint64_t block_off = 0;
  std::size_t cur = free_list.back();
  free_list.pop_back();
  std::uint64_t filled = 0;  // bytes of the current block written so far (zero-filled gaps included)
  // Hands the current block (its first `len` bytes, zero-padded to whole O_DIRECT blocks) to the
  // window; the buffer returns to the free list when the write completes.
  auto submit = [&](std::size_t len) {
    std::size_t padded = (len + block - 1) / block * block;
    std::memset(pool[cur].data() + len, 0, padded - len);
    std::size_t idx = cur;
    window.start(block_off, std::span<const std::byte>(pool[idx].data(), padded), [&free_list, idx] { free_list.push_back(idx); });
  };
  auto emit = [&](std::size_t len) -> task<void> {
    if (s.stop.stop_requested()) co_return make_error(errc::cancelled, "save cancelled");
    submit(len);
    block_off += staging_bytes;
    filled = 0;
    BOOST_OUTCOME_CO_TRY(co_await window.wait_below(nbuf));  // a buffer is free again
    cur = free_list.back();
    free_list.pop_back();
    co_return success();
  };
  auto fill = [&]() -> task<void> {
    for (const auto& w : writes) {
      auto& slice = m.tensors[w.tensor].slices[w.slice];
      format::append_chunk_checksums(w.source, chunk_bytes, slice.checksums);
      std::uint64_t pos = slice.offset;
      std::span<const std::byte> src = w.source;
      while (!src.empty()) {
        std::uint64_t in_block = pos - block_off;
        if (in_block >= staging_bytes) {  // the slice starts in a later block: flush (with a gap)
          std::memset(pool[cur].data() + filled, 0, staging_bytes - filled);
          BOOST_OUTCOME_CO_TRY(co_await emit(staging_bytes));
          continue;
        }
        if (in_block > filled) std::memset(pool[cur].data() + filled, 0, in_block - filled);  // alignment gap
        std::size_t n = std::min<std::size_t>(src.size(), staging_bytes - in_block);
        std::memcpy(pool[cur].data() + in_block, src.data(), n);
        filled = in_block + n;
        src = src.subspan(n);
        pos += n;
        if (filled == staging_bytes) {
          BOOST_OUTCOME_CO_TRY(co_await emit(staging_bytes));
        }
      }
    }
    if (filled > 0) submit(static_cast<std::size_t>(filled));
    co_return success();
  };
  auto filled_ok = co_await fill();
  if (filled_ok && last_file && s.sources_released) std::exchange(s.sources_released, nullptr)();
  // TRICKY: every write must complete before `pool` goes away, error or not.
  auto drained = co_await window.wait_below(1);
  if (!filled_ok) co_return filled_ok.error();
  if (!drained) co_return drained.error();
  BOOST_OUTCOME_CO_TRY(co_await io::async_truncate(s.b, ex, *h, file_size, use_awaitable));
  BOOST_OUTCOME_CO_TRY(co_await io::async_fsync(s.b, ex, *h, use_awaitable));
  s.open_files.pop_back();
  BOOST_OUTCOME_CO_TRY(co_await io::async_close(s.b, ex, *h, use_awaitable));
  co_return success();
}

task<write_report> save_steps(save_state& s, std::span<const named_tensor> tensors, write_options opt) {
  auto ex = co_await asio::this_coro::executor;
  if (opt.chunk_bytes < 4096 || opt.chunk_bytes > (64u << 20) || (opt.chunk_bytes & (opt.chunk_bytes - 1)))
    co_return make_error(errc::invalid_argument, "chunk_bytes " + std::to_string(opt.chunk_bytes) + " is not a power of two in [4 KiB, 64 MiB]");
  BOOST_OUTCOME_CO_TRY(format::check_base_name(s.base));

  // 1. Plan.
  BOOST_OUTCOME_CO_TRY(auto p, plan::plan_write(tensors, opt.layout));
  format::manifest m = std::move(p.skeleton);
  m.chunk_bytes = opt.chunk_bytes;
  m.created_unix_ms = static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
      std::chrono::system_clock::now().time_since_epoch()).count());
  m.writer = "meshckpt " MESHCKPT_VERSION;
  m.extensions = std::move(opt.extensions);

  for (auto sz : p.file_sizes) s.total_bytes += sz;
  s.stop = opt.stop;
  s.progress = opt.progress;
  s.sources_released = std::move(opt.sources_released);
  if (s.stop.stop_requested()) co_return make_error(errc::cancelled, "save cancelled before it started");

  // 2. Directory.
  BOOST_OUTCOME_CO_TRY(auto dir, co_await io::async_open_dir(s.b, ex, s.dir_path, true, use_awaitable));
  s.dir = dir;

  // 3. Data files.
  std::size_t begin = 0;
  for (std::uint32_t k = 0; k < p.file_sizes.size(); ++k) {
    std::size_t end = begin;
    while (end < p.writes.size() && m.tensors[p.writes[end].tensor].slices[p.writes[end].slice].file == k) ++end;
    BOOST_OUTCOME_CO_TRY(co_await write_data_file(s, m, k, std::span(p.writes).subspan(begin, end - begin), p.file_sizes[k], opt.chunk_bytes,
                                             k + 1 == p.file_sizes.size()));
    m.files.push_back({format::data_file_name(s.base, s.token, k), p.file_sizes[k]});
    begin = end;
  }

  if (s.sources_released) std::exchange(s.sources_released, nullptr)();  // no data files at all

  // 4. Data file entries durable.
  BOOST_OUTCOME_CO_TRY(co_await io::async_fsync(s.b, ex, dir, use_awaitable));

  // 5. Manifest to a temp name.
  BOOST_OUTCOME_CO_TRY(auto bytes, format::encode(m));
  std::string tmp = format::temp_manifest_name(s.base, s.token);
  BOOST_OUTCOME_CO_TRY(auto mh, co_await io::async_open(s.b, ex, dir, tmp, io::open_mode::create_exclusive, use_awaitable));
  s.created.push_back(tmp);
  s.open_files.push_back(mh);
  BOOST_OUTCOME_CO_TRY(co_await io::async_write(s.b, ex, mh, 0, bytes, use_awaitable));
  BOOST_OUTCOME_CO_TRY(co_await io::async_fsync(s.b, ex, mh, use_awaitable));
  s.open_files.pop_back();
  BOOST_OUTCOME_CO_TRY(co_await io::async_close(s.b, ex, mh, use_awaitable));

  // 6. Publish (the last moment a cancellation can still take effect).
  if (s.stop.stop_requested()) co_return make_error(errc::cancelled, "save cancelled before its commit");
  std::string final_name = format::manifest_name(s.base);
  auto rn = co_await io::async_rename(s.b, ex, dir, tmp, final_name, use_awaitable);
  if (!rn) co_return rn.error();
  s.renamed = true;

  // 7. Durable.
  BOOST_OUTCOME_CO_TRY(co_await io::async_fsync(s.b, ex, dir, use_awaitable));

  write_report rep;
  rep.manifest_path = (s.dir_path == "." ? std::string() : s.dir_path + "/") + final_name;
  rep.bytes = m.stored_bytes();
  rep.tensors = m.tensors.size();
  for (const auto& t : m.tensors) rep.slices += t.slices.size();
  rep.files = m.files.size();

  // 8. Clean up older files of this checkpoint name.
  if (auto entries = co_await io::async_list(s.b, ex, dir, use_awaitable)) {
    for (const auto& e : *entries) {
      if (e.type != io::dir_entry::regular) continue;
      auto kind = format::classify(e.name);
      if (kind.base != s.base || kind.token == s.token) continue;
      if (kind.k != format::name_kind::data && kind.k != format::name_kind::temp_manifest) continue;
      if (co_await io::async_unlink(s.b, ex, dir, e.name, use_awaitable)) ++rep.cleaned_files;
    }
  }
  co_return rep;
}

task<write_report> save_coro(io::backend& b, std::string prefix, std::span<const named_tensor> tensors, write_options opt) {
  auto ex = co_await asio::this_coro::executor;
  auto [dir_path, base] = split_prefix(prefix);
  save_state s{b, prefix, dir_path, base};
  auto r = co_await save_steps(s, tensors, std::move(opt));
  for (auto h : s.open_files) co_await close_quietly(b, h);
  if (!r && !s.renamed && s.dir)
    for (const auto& name : s.created) (void)co_await io::async_unlink(b, ex, *s.dir, name, use_awaitable);
  if (s.dir) co_await close_quietly(b, *s.dir);
  if (!r) co_return at(s, r.error());
  co_return r;
}

}  // namespace

void start_write_tensors(asio::any_io_executor ex, io::backend& b, std::string prefix, std::vector<named_tensor> tensors,
                         write_options opt, io::completion<write_report> done) {
  auto owned = std::make_shared<std::vector<named_tensor>>(std::move(tensors));
  spawn<write_report>(ex, save_coro(b, std::move(prefix), *owned, std::move(opt)),
                      [owned, done = std::move(done)](result<write_report> r) { done(std::move(r)); });
}

}  // namespace detail

result<write_report> write_tensors(io::backend& b, std::string_view prefix, std::span<const named_tensor> tensors,
                                   const write_options& opt) {
  return detail::run_blocking<write_report>([&](auto ex, auto done) {
    // The caller's tensors outlive the blocking call: no copy of the list.
    detail::spawn<write_report>(ex, detail::save_coro(b, std::string(prefix), tensors, opt), std::move(done));
  });
}

}  // namespace meshckpt
