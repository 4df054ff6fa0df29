// Reading side of the low-level API: manifest loading (with the missing "-N" hint), reading
// tensors into same-layout shards with checksum verification, verify, and directory scans.
// Every size and offset used here comes from a manifest that format::decode validated, and is
// checked again against the actual size of each data file before any byte is read.

#include <algorithm>
#include <deque>
#include <mutex>
#include <thread>
#include <cstring>
#include <memory>
#include <map>
#include <set>

#include "../runtime/executor_thread.hpp"
#include "../runtime/staging_pool.hpp"
#include "common.hpp"

#include <boost/asio/post.hpp>
#include "meshckpt/api/tensor_io_async.hpp"
#include "meshckpt/format/checksum.hpp"
#include "meshckpt/format/names.hpp"
#include "meshckpt/plan/restore_plan.hpp"
#include "meshckpt/tensor/convert.hpp"

namespace meshckpt {

std::pair<std::string, std::string> split_prefix(std::string_view prefix) {
  // No stripping of a trailing '/': "ckpts/" names a directory, not the checkpoint "ckpts" next
  // to it; its empty NAME is then refused (found by tests/api/test_edges.cpp).
  auto slash = prefix.rfind('/');
  if (slash == std::string_view::npos) return {".", std::string(prefix)};
  return {slash == 0 ? "/" : std::string(prefix.substr(0, slash)), std::string(prefix.substr(slash + 1))};
}

namespace detail {

asio::awaitable<void> close_quietly(io::backend& b, io::handle h) {
  auto ex = co_await asio::this_coro::executor;
  // A close that could not even start (no memory for the operation) is retried a few times:
  // giving up leaks the descriptor.
  for (int attempt = 0; attempt < 3; ++attempt) {
    auto r = co_await io::async_close(b, ex, h, use_awaitable);
    if (r || r.error().code != std::errc::not_enough_memory) co_return;
  }
  io::close_detached(b, h);
}

task<opened_prefix> open_prefix_dir(io::backend& b, std::string_view prefix) {
  auto ex = co_await asio::this_coro::executor;
  auto [dir_path, base] = split_prefix(prefix);
  BOOST_OUTCOME_CO_TRY(format::check_base_name(base));
  // Built before the open: nothing may allocate between opening the directory and handing it
  // over (an allocation failure would leak it).
  opened_prefix out{{}, std::move(dir_path), std::move(base)};
  auto dir = co_await io::async_open_dir(b, ex, out.dir_path, false, use_awaitable);
  if (!dir) {
    if (dir.error().code == std::errc::no_such_file_or_directory)
      co_return make_error(errc::not_found, "checkpoint " + std::string(prefix) + " not found: directory " + out.dir_path + " does not exist");
    co_return dir.error();
  }
  out.dir = *dir;
  co_return std::move(out);
}

namespace {

// "did you mean NAME-N?" when numbered checkpoints of this name exist.
task<std::string> missing_hint(io::backend& b, const opened_prefix& p) {
  auto ex = co_await asio::this_coro::executor;
  auto entries = co_await io::async_list(b, ex, p.dir, use_awaitable);
  if (!entries) co_return std::string();
  long best = -1;
  bool interrupted = false;
  for (const auto& e : *entries) {
    auto k = format::classify(e.name);
    if (k.k == format::name_kind::temp_manifest && k.base == p.base) interrupted = true;
    if (k.k != format::name_kind::manifest || !k.base.starts_with(p.base + "-")) continue;
    std::string_view n = std::string_view(k.base).substr(p.base.size() + 1);
    if (n.empty() || n.size() > 12 || !std::all_of(n.begin(), n.end(), [](char c) { return c >= '0' && c <= '9'; })) continue;
    best = std::max(best, std::stol(std::string(n)));
  }
  std::string hint;
  if (best >= 0)
    hint += " (checkpoints written by save() carry a -N suffix: did you mean " + p.base + "-" + std::to_string(best) + "?)";
  if (interrupted) hint += " (a save of it was interrupted before its commit; its leftovers are ignored)";
  co_return hint;
}

}  // namespace

task<format::manifest> load_manifest(io::backend& b, const opened_prefix& p, std::string_view prefix) {
  auto ex = co_await asio::this_coro::executor;
  std::string name = format::manifest_name(p.base);
  auto h = co_await io::async_open(b, ex, p.dir, name, io::open_mode::read, use_awaitable);
  if (!h) {
    if (h.error().code == std::errc::no_such_file_or_directory) {
      std::string hint = (co_await missing_hint(b, p)).value();
      co_return make_error(errc::not_found, "checkpoint " + std::string(prefix) + " not found: " + name + " does not exist in " + p.dir_path + hint);
    }
    co_return h.error();
  }
  on_unwind last_resort([&] { io::close_detached(b, *h); });
  // Errors name the manifest with its directory, like every other error of a checkpoint.
  const std::string where = p.dir_path == "." ? name : p.dir_path + "/" + name;
  auto body = [&]() -> task<format::manifest> {
    BOOST_OUTCOME_CO_TRY(auto size, co_await io::async_size(b, ex, *h, use_awaitable));
    format::limits lim;
    if (size > lim.max_manifest_bytes)
      co_return make_error(errc::limit_exceeded, where + " is " + std::to_string(size) + " bytes, above the manifest cap");
    std::vector<std::byte> bytes(size);
    BOOST_OUTCOME_CO_TRY(auto got, co_await io::async_read(b, ex, *h, 0, bytes, use_awaitable));
    if (got != size) co_return make_error(errc::short_read, where + " shrank while being read");
    auto m = format::decode(bytes, lim);
    if (!m) co_return with_context(m.error(), where);
    co_return std::move(*m);
  };
  std::optional<result<format::manifest>> r;
  try {
    r = co_await body();
  } catch (const std::bad_alloc&) {
    r = out_of_memory("reading " + name);
  }
  co_await close_quietly(b, *h);
  last_resort.disarm();
  co_return std::move(*r);
}

namespace {

// Opens data files on demand and checks each one's size against the manifest once.
class file_cache {
 public:
  // `direct`: open with O_DIRECT (every read then aligned to 4096 bytes).
  file_cache(io::backend& b, const opened_prefix& p, const format::manifest& m, bool direct = false)
      : b_(b), p_(p), m_(m), direct_(direct) {}

  task<io::handle> get(std::uint32_t index) {
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
                           "data file " + f.name + " is " + std::to_string(size) + " bytes, the manifest says " +
                               std::to_string(f.size) + (size < f.size ? " (truncated)" : ""));
    co_return *h;
  }

  asio::awaitable<void> close_all() {
    while (!open_.empty()) {
      co_await close_quietly(b_, open_.begin()->second);
      open_.erase(open_.begin());
    }
  }
  // Handles left open when an exception skipped close_all.
  ~file_cache() {
    for (auto& [i, h] : open_) io::close_detached(b_, h);
  }

 private:
  io::backend& b_;
  const opened_prefix& p_;
  const format::manifest& m_;
  bool direct_;
  std::map<std::uint32_t, io::handle> open_;
};

std::string slice_ctx(const format::manifest& m, const format::saved_tensor& t, const format::saved_slice& s) {
  return "tensor \"" + t.key + "\" slice " + to_string(s.where) + " in " + m.files[s.file].name;
}

// Checks the chunk checksums of a slice's bytes; the error names tensor, slice, file and offset.
result<void> check_chunks(const format::manifest& m, const format::saved_tensor& t, const format::saved_slice& s,
                          std::span<const std::byte> bytes, std::uint64_t first_chunk) {
  for (std::uint64_t off = 0, c = first_chunk; off < bytes.size(); off += m.chunk_bytes, ++c) {
    auto n = std::min<std::uint64_t>(m.chunk_bytes, bytes.size() - off);
    if (format::checksum(bytes.subspan(off, n)) != s.checksums[c])
      return make_error(errc::checksum_mismatch,
                        "checksum mismatch in " + slice_ctx(m, t, s) + " at bytes [" +
                            std::to_string(s.offset + c * m.chunk_bytes) + ", " +
                            std::to_string(s.offset + c * m.chunk_bytes + n) + ")");
  }
  return success();
}

// One saved slice to read, and the local shards (replicas) that need its bytes.
struct need {
  const format::saved_tensor* t;
  const format::saved_slice* s;
  std::vector<std::span<std::byte>> dests;
};

// A saved slice that target shards of another layout need part of (resharding): the range of
// its chunks to read, and the runs that copy from it into those shards.
struct reshard_source {
  const format::saved_tensor* t;
  const format::saved_slice* s;
  std::uint64_t first_chunk = ~std::uint64_t{0}, last_chunk = 0;
  std::vector<std::pair<std::span<std::byte>, plan::copy_run>> runs;  // (target shard, run)
};

// Completed reads are settled (verified, scattered, copied to replicas) on the process-wide CPU
// pool.
asio::io_context::executor_type settling_threads() { return runtime::cpu_pool().executor(); }

// Reads of one restore in flight.
class read_window {
 public:
  read_window(io::backend& b, asio::any_io_executor ex) : b_(b), ops_(std::move(ex)) {}

  // Reads `buf` at `offset`; `done(bytes_read)` runs on completion (not on error), on one of the
  // settling threads: verifying checksums and filling replicas is CPU work that would otherwise
  // serialize behind the coroutine's strand while the disk waits. The op counts as in flight
  // until `done` returned, so its buffer stays valid.
  void start(io::handle h, std::uint64_t offset, std::span<std::byte> buf, std::function<result<void>(std::size_t)> done) {
    ops_.launch([&] {
      io::async_read(b_, ops_.executor(), h, offset, buf, [this, done = std::move(done)](result<std::size_t> r) mutable {
        if (!r) return ops_.finished(r.error());
        // TRICKY: the settling thread holds outstanding work on the executor until its post has
        // returned; otherwise the io_context (run_blocking's, say) could finish and be destroyed
        // while the post is still signalling it (found by TSan).
        try {
          auto work = asio::prefer(ops_.executor(), asio::execution::outstanding_work.tracked);
          asio::post(settling_threads(), [this, done = std::move(done), n = *r, work = std::move(work)] {
            auto out = done(n);
            asio::post(work, [this, out = std::move(out)]() mutable { ops_.finished(std::move(out)); });
          });
        } catch (const std::bad_alloc&) {
          // The read completed, so its buffer is free; without settling it is simply failed.
          ops_.finished(out_of_memory("verifying a read"));
        }
      });
    });
  }
  task<void> wait_below(std::size_t n) { return ops_.wait_below(n); }
  task<void> drain() { return ops_.drain(); }

 private:
  io::backend& b_;
  op_window ops_;
};

constexpr std::size_t read_piece = 4u << 20;  // large slices: reads of this size (a multiple of every chunk size up to it)
constexpr std::uint64_t dio = 4096;            // O_DIRECT alignment of offsets, lengths and buffers
constexpr std::size_t extent_max = runtime::staging_buffer_bytes - 2 * dio;  // merged reads, before alignment
constexpr std::uint64_t merge_gap = 256u << 10;  // merge neighbours closer than this
constexpr std::size_t reads_in_flight = 16;

std::uint64_t align_down(std::uint64_t v) { return v / dio * dio; }
std::uint64_t align_up(std::uint64_t v) { return (v + dio - 1) / dio * dio; }

task<read_report> read_steps(io::backend& b, const opened_prefix& p, const format::manifest& m,
                             std::span<const named_tensor> targets, read_options opt, file_cache& files) {
  auto ex = co_await asio::this_coro::executor;
  read_report rep;
  // 1. Match every target shard to the saved slice with its box, or (another layout) plan it
  //    from the saved slices that intersect it.
  std::vector<need> needs;
  std::vector<reshard_source> sources;
  std::map<const format::saved_slice*, std::size_t> reshard_slot;
  std::vector<box> boxes;  // the saved boxes of `boxes_of`
  const format::saved_tensor* boxes_of = nullptr;
  for (const auto& target : targets) {
    const auto* t = m.find(target.key);
    if (!t) co_return make_error(errc::not_found, "tensor \"" + target.key + "\" is not in the checkpoint");
    const auto& v = target.tensor;
    if (v.type() != t->type)
      co_return make_error(errc::dtype_mismatch, "tensor \"" + t->key + "\": saved dtype " + std::string(dtype_name(t->type)) +
                                                     ", requested " + std::string(dtype_name(v.type())) +
                                                     (convertible(t->type, v.type()) ? " (set read_options::convert_dtypes to convert)" : ""));
    if (v.global_shape() != t->global)
      co_return make_error(errc::shape_mismatch, "tensor \"" + t->key + "\": saved shape " + to_string(t->global) +
                                                     ", requested " + to_string(v.global_shape()));
    std::map<std::size_t, std::size_t> slot;  // saved slice index -> index in needs
    for (const auto& sh : v.shards()) {
      BOOST_OUTCOME_CO_TRY(auto bx, v.layout().shard_box(v.global_shape(), sh.device));
      if (bx.empty()) continue;
      auto it = std::find_if(t->slices.begin(), t->slices.end(), [&](const auto& s) { return s.where == bx; });
      if (it == t->slices.end()) {
        // Resharding: assemble the shard from the saved slices that intersect it.
        if (boxes_of != t) {
          boxes.clear();
          for (const auto& sl : t->slices) boxes.push_back(sl.where);
          boxes_of = t;
        }
        auto runs = plan::plan_shard_restore(t->global, static_cast<std::int64_t>(dtype_size(t->type)), boxes, bx);
        if (!runs) {
          auto saved = format::saved_layout_of(m, *t);
          co_return with_context(runs.error(), "tensor \"" + t->key + "\": shard " + to_string(bx) + " of device " +
                                                   std::to_string(sh.device) + " (saved layout " + (saved ? saved->to_string() : "?") +
                                                   " on mesh " + (saved ? saved->mesh_ref().to_string() : "?") + ", requested " +
                                                   v.layout().to_string() + " on mesh " + v.layout().mesh_ref().to_string() + ")");
        }
        for (const auto& r : *runs) {
          const auto* sl = &t->slices[r.slice];
          auto [pos, fresh] = reshard_slot.emplace(sl, sources.size());
          if (fresh) sources.push_back({t, sl, ~std::uint64_t{0}, 0, {}});
          auto& src = sources[pos->second];
          src.first_chunk = std::min(src.first_chunk, r.src_offset / m.chunk_bytes);
          src.last_chunk = std::max(src.last_chunk, (r.src_end() - 1) / m.chunk_bytes);
          src.runs.emplace_back(sh.data, r);
        }
        ++rep.resharded_shards;
        continue;
      }
      auto si = static_cast<std::size_t>(it - t->slices.begin());
      auto [pos, fresh] = slot.emplace(si, needs.size());
      if (fresh) needs.push_back({t, &*it, {}});
      needs[pos->second].dests.push_back(sh.data);
    }
    ++rep.tensors;
  }
  // 2. Read: sorted by (file, offset); large slices in pieces, small neighbours merged into one
  //    read. Data files are open with O_DIRECT (where allowed), so every read is aligned: a
  //    piece whose file range and destination are aligned goes straight into its shard, others
  //    through a staging buffer covering the aligned range. As each read completes, its bytes
  //    are verified (whole chunks) and copied to the replicas, while the next reads are in
  //    flight. Memory beyond the shards is bounded by the staging buffers.
  std::sort(needs.begin(), needs.end(), [](const need& x, const need& y) {
    return std::pair(x.s->file, x.s->offset) < std::pair(y.s->file, y.s->offset);
  });
  // Pieces cover whole chunks when the chunk size divides the piece size (chunk sizes are powers
  // of two); otherwise verification waits for the whole slice (step 3).
  const bool inline_verify = opt.verify_checksums && m.chunk_bytes <= read_piece;
  read_window window(b, ex);
  std::uint64_t total = 0, done_bytes = 0;
  for (const auto& n : needs) total += n.s->length;
  for (const auto& src : sources)
    total += std::min(src.s->length, (src.last_chunk + 1) * m.chunk_bytes) - src.first_chunk * m.chunk_bytes;
  std::mutex progress_mu;  // reads are settled on several threads
  auto progressed = [&](std::uint64_t n) {
    std::lock_guard lk(progress_mu);
    done_bytes = std::min(total, done_bytes + n);
    if (opt.progress) opt.progress(done_bytes, total);
  };
  // Verifies [off, off + len) of a need's bytes in its first shard and copies them to the others.
  auto settle = [&m, inline_verify](const need& n, std::uint64_t off, std::uint64_t len) -> result<void> {
    auto bytes = n.dests.front().subspan(off, len);
    if (inline_verify) {
      BOOST_OUTCOME_TRY(check_chunks(m, *n.t, *n.s, bytes, off / m.chunk_bytes));
    }
    for (std::size_t i = 1; i < n.dests.size(); ++i) std::memcpy(n.dests[i].data() + off, bytes.data(), len);
    return success();
  };
  // One slot per staged read; each buffer goes back to the pool (or is freed) as soon as its read
  // was settled. Reads larger than a staging buffer (chunks above 4 MiB) use aligned heap memory.
  struct held {
    runtime::staging_buffer staging;
    std::unique_ptr<std::byte[], meshckpt::detail::aligned_free> heap;
  };
  std::deque<held> staging;  // a deque: settling threads hold pointers to elements while more are added
  auto staged_read = [&](io::handle h, const format::saved_tensor& t, const format::saved_slice& sl, std::uint64_t begin, std::uint64_t end,
                         std::function<result<void>(const std::byte*)> scatter) {
    const std::uint64_t a0 = align_down(begin), a1 = align_up(end);
    std::byte* buf;
    staging.emplace_back();
    if (a1 - a0 <= runtime::staging_buffer::size()) {
      staging.back().staging = runtime::staging_buffer::acquire();
      buf = staging.back().staging.data();
      b.register_buffer({buf, runtime::staging_buffer::size()});  // pool buffers live for the process
    } else {
      buf = static_cast<std::byte*>(::operator new(static_cast<std::size_t>(a1 - a0), std::align_val_t{dio}));
      staging.back().heap.reset(buf);
    }
    held* slot = &staging.back();
    window.start(h, a0, std::span<std::byte>(buf, a1 - a0),
                 [buf, a0, begin, end, slot, &m, t = &t, sl = &sl, scatter = std::move(scatter)](std::size_t got) -> result<void> {
                   held release = std::move(*slot);  // freed on return
                   if (got < end - a0) return make_error(errc::short_read, slice_ctx(m, *t, *sl) + ": file ended early");
                   return scatter(buf + (begin - a0));
                 });
  };
  auto issue = [&]() -> task<void> {
    for (std::size_t i = 0; i < needs.size();) {
      const auto& n = needs[i];
      BOOST_OUTCOME_CO_TRY(auto h, co_await files.get(n.s->file));
      if (n.s->length >= (1u << 20)) {
        for (std::uint64_t off = 0; off < n.s->length; off += read_piece) {
          std::uint64_t len = std::min<std::uint64_t>(read_piece, n.s->length - off);
          BOOST_OUTCOME_CO_TRY(co_await window.wait_below(reads_in_flight));
          const need* np = &n;
          auto dst = n.dests.front().subspan(off, len);
          const std::uint64_t at = n.s->offset + off;
          auto finish = [np, off, len, &progressed, &settle]() -> result<void> {
            if (auto r = settle(*np, off, len); !r) return r;
            progressed(len);
            return success();
          };
          if (at % dio == 0 && len % dio == 0 && reinterpret_cast<std::uintptr_t>(dst.data()) % dio == 0) {
            window.start(h, at, dst, [np, len, &m, finish](std::size_t got) -> result<void> {
              if (got != len) return make_error(errc::short_read, slice_ctx(m, *np->t, *np->s) + ": file ended early");
              return finish();
            });
          } else {
            staged_read(h, *n.t, *n.s, at, at + len, [dst, len, finish](const std::byte* src) -> result<void> {
              std::memcpy(dst.data(), src, len);
              return finish();
            });
          }
        }
        ++i;
        continue;
      }
      // Merge small neighbours in the same file into one extent.
      std::size_t j = i + 1;
      std::uint64_t begin = n.s->offset, end = n.s->offset + n.s->length;
      while (j < needs.size() && needs[j].s->file == n.s->file && needs[j].s->length < (1u << 20) &&
             needs[j].s->offset <= end + merge_gap && needs[j].s->offset + needs[j].s->length - begin <= extent_max) {
        end = std::max(end, needs[j].s->offset + needs[j].s->length);
        ++j;
      }
      BOOST_OUTCOME_CO_TRY(co_await window.wait_below(reads_in_flight));
      std::span<const need> group(needs.data() + i, j - i);
      staged_read(h, *n.t, *n.s, begin, end, [group, begin, &progressed, &settle](const std::byte* src) -> result<void> {
        std::uint64_t bytes = 0;
        for (const auto& g : group) {
          std::memcpy(g.dests.front().data(), src + (g.s->offset - begin), g.s->length);
          if (auto r = settle(g, 0, g.s->length); !r) return r;
          bytes += g.s->length;
        }
        progressed(bytes);
        return success();
      });
      i = j;
    }
    // Resharding sources: only the chunks some target needs, in pieces of whole chunks; each
    // piece is verified, then every run overlapping it is copied into its target shard.
    const std::uint64_t piece = std::max<std::uint64_t>(read_piece, m.chunk_bytes);
    for (const auto& src : sources) {
      BOOST_OUTCOME_CO_TRY(auto h, co_await files.get(src.s->file));
      const std::uint64_t lo = src.first_chunk * m.chunk_bytes;
      const std::uint64_t hi = std::min(src.s->length, (src.last_chunk + 1) * m.chunk_bytes);
      for (std::uint64_t p0 = lo; p0 < hi; p0 += piece) {
        const std::uint64_t p1 = std::min(hi, p0 + piece);
        BOOST_OUTCOME_CO_TRY(co_await window.wait_below(reads_in_flight));
        const reshard_source* sp = &src;
        // A piece that lands, whole and contiguous, in one place of one shard (a row split onto
        // fewer or more rows, say) is read straight into it when O_DIRECT alignment allows, and
        // verified there: no staging copy.
        const std::pair<std::span<std::byte>, plan::copy_run>* only = nullptr;
        std::size_t overlapping = 0;
        for (const auto& dr : src.runs)
          if (dr.second.src_end() > p0 && dr.second.src_offset < p1 && ++overlapping == 1) only = &dr;
        if (overlapping == 1) {
          const auto& r = only->second;
          const bool contiguous = r.count == 1 || (r.length == r.src_stride && r.length == r.dst_stride);
          const std::uint64_t at = src.s->offset + p0, len = p1 - p0;
          if (contiguous && r.src_offset <= p0 && r.src_end() >= p1 && at % dio == 0 && len % dio == 0) {
            std::byte* dst = only->first.data() + r.dst_offset + (p0 - r.src_offset);
            if (reinterpret_cast<std::uintptr_t>(dst) % dio == 0) {
              window.start(h, at, std::span<std::byte>(dst, len), [sp, p0, len, dst, &m, &opt, &progressed](std::size_t got) -> result<void> {
                if (got != len) return make_error(errc::short_read, slice_ctx(m, *sp->t, *sp->s) + ": file ended early");
                if (opt.verify_checksums) {
                  BOOST_OUTCOME_TRY(check_chunks(m, *sp->t, *sp->s, std::span<const std::byte>(dst, len), p0 / m.chunk_bytes));
                }
                progressed(len);
                return success();
              });
              continue;
            }
          }
        }
        staged_read(h, *src.t, *src.s, src.s->offset + p0, src.s->offset + p1,
                    [sp, p0, p1, &m, &opt, &progressed](const std::byte* bytes) -> result<void> {
                      if (opt.verify_checksums) {
                        BOOST_OUTCOME_TRY(check_chunks(m, *sp->t, *sp->s, std::span(bytes, p1 - p0), p0 / m.chunk_bytes));
                      }
                      for (const auto& [dst, r] : sp->runs) {
                        if (r.src_end() <= p0 || r.src_offset >= p1) continue;
                        // The blocks j that overlap [p0, p1): src_offset + j*stride + length > p0
                        // and src_offset + j*stride < p1.
                        std::uint64_t j0 = 0, j1 = r.count - 1;
                        if (r.count > 1) {
                          if (p0 >= r.src_offset + r.length) j0 = (p0 - r.src_offset - r.length) / r.src_stride + 1;
                          j1 = std::min(j1, (p1 - 1 - r.src_offset) / r.src_stride);
                        }
                        for (std::uint64_t j = j0; j <= j1; ++j) {
                          std::uint64_t so = r.src_offset + j * r.src_stride;
                          std::uint64_t a = std::max(p0, so), e = std::min(p1, so + r.length);
                          if (a < e) std::memcpy(dst.data() + r.dst_offset + j * r.dst_stride + (a - so), bytes + (a - p0), e - a);
                        }
                      }
                      progressed(p1 - p0);
                      return success();
                    });
      }
    }
    co_return success();
  };
  // TRICKY: no buffer may go away while the kernel writes it — not even when an allocation
  // failed while issuing (std::bad_alloc; tests/reliability/test_alloc.cpp).
  result<void> issued = success();
  try {
    issued = co_await issue();
  } catch (const std::bad_alloc&) {
    issued = out_of_memory("reading");
  }
  auto drained = co_await window.drain();
  if (!issued) co_return issued.error();
  if (!drained) co_return drained.error();
  staging.clear();
  // 3. Chunks larger than a read piece are verified now, on the whole slice (the replicas were
  //    filled as pieces arrived; on a mismatch the restore fails either way).
  for (const auto& n : needs) {
    if (opt.verify_checksums && !inline_verify) {
      BOOST_OUTCOME_CO_TRY(check_chunks(m, *n.t, *n.s, n.dests.front().first(n.s->length), 0));
    }
    rep.bytes_read += n.s->length;
  }
  for (const auto& src : sources)
    rep.bytes_read += std::min(src.s->length, (src.last_chunk + 1) * m.chunk_bytes) - src.first_chunk * m.chunk_bytes;
  (void)p;
  co_return rep;
}

task<read_report> read_coro(io::backend& b, std::string prefix, std::span<const named_tensor> targets, read_options opt,
                            std::shared_ptr<const format::manifest> preloaded) {
  auto p = co_await open_prefix_dir(b, prefix);
  if (!p) co_return with_context(p.error(), "restore " + prefix);
  on_unwind last_resort([&] { io::close_detached(b, p->dir); });
  auto r = [&]() -> task<read_report> {
    std::shared_ptr<const format::manifest> m = preloaded;
    if (!m) {
      BOOST_OUTCOME_CO_TRY(auto loaded, co_await load_manifest(b, *p, prefix));
      m = std::make_shared<const format::manifest>(std::move(loaded));
    }
    // Targets of another floating dtype (when asked): read into temporaries of the saved dtype
    // and the target's layout, then convert into the target's shards.
    std::deque<dtensor> temps;
    std::vector<std::pair<const named_tensor*, const dtensor*>> casts;
    std::vector<named_tensor> all;
    if (opt.convert_dtypes) {
      for (const auto& t : targets) {
        const auto* saved = m->find(t.key);
        if (saved && saved->type != t.tensor.type() && convertible(saved->type, t.tensor.type())) {
          BOOST_OUTCOME_CO_TRY(auto tmp, dtensor::create(saved->type, t.tensor.global_shape(), t.tensor.layout()));
          temps.push_back(std::move(tmp));
          casts.emplace_back(&t, &temps.back());
          all.push_back({t.key, temps.back().view()});
        } else {
          all.push_back(t);
        }
      }
    }
    file_cache files(b, *p, *m, b.caps().direct_io);
    std::optional<result<read_report>> rr;
    try {
      rr = co_await read_steps(b, *p, *m, opt.convert_dtypes ? std::span<const named_tensor>(all) : targets, opt, files);
    } catch (const std::bad_alloc&) {
      rr = out_of_memory("restoring");
    }
    co_await files.close_all();
    if (*rr)
      for (const auto& [target, tmp] : casts)
        for (const auto& sh : target->tensor.shards()) {
          const local_shard* from = tmp->view().shard_of(sh.device);
          if (from) convert(tmp->view().type(), from->data, target->tensor.type(), sh.data);
        }
    co_return std::move(*rr);
  };
  std::optional<result<read_report>> out;
  try {
    out = co_await r();
  } catch (const std::bad_alloc&) {
    out = out_of_memory("restoring");
  }
  co_await close_quietly(b, p->dir);
  last_resort.disarm();
  if (!*out) co_return with_context(out->error(), "restore " + prefix);
  co_return std::move(*out);
}

task<format::manifest> manifest_coro(io::backend& b, std::string prefix) {
  auto p = co_await open_prefix_dir(b, prefix);
  if (!p) co_return p.error();
  on_unwind last_resort([&] { io::close_detached(b, p->dir); });
  std::optional<result<format::manifest>> m;
  try {
    m = co_await load_manifest(b, *p, prefix);
  } catch (const std::bad_alloc&) {
    m = out_of_memory("reading the manifest");
  }
  co_await close_quietly(b, p->dir);
  last_resort.disarm();
  co_return std::move(*m);
}

task<verify_report> verify_files(io::backend& b, const opened_prefix& p, const std::string& prefix,
                                 std::optional<format::manifest>& manifest, std::optional<file_cache>& cache,
                                 const verify_progress& progress) {
  auto ex = co_await asio::this_coro::executor;
  BOOST_OUTCOME_CO_TRY(auto loaded, co_await load_manifest(b, p, prefix));
  const auto* m = &manifest.emplace(std::move(loaded));
  verify_report rep;
  rep.files = m->files.size();
  rep.tensors = m->tensors.size();
  const std::uint64_t total = m->stored_bytes();
  auto& files = cache.emplace(b, p, *m);
  std::set<std::uint32_t> bad_files;
  // Bounded memory: one buffer of at most 64 chunks, never larger than the slice being read.
  std::vector<std::byte> buf;
  for (const auto& t : m->tensors) {
    for (const auto& s : t.slices) {
      ++rep.slices;
      if (bad_files.count(s.file)) {
        continue;
      }
      auto h = co_await files.get(s.file);
      if (!h) {
        rep.problems.push_back(with_context(h.error(), "tensor \"" + t.key + "\""));
        bad_files.insert(s.file);
        continue;
      }
      std::uint64_t step = m->chunk_bytes * std::max<std::uint64_t>(1, (8u << 20) / m->chunk_bytes);
      for (std::uint64_t off = 0; off < s.length; off += step) {
        std::uint64_t n = std::min(step, s.length - off);
        buf.resize(n);
        auto got = co_await io::async_read(b, ex, *h, s.offset + off, buf, use_awaitable);
        if (!got) {
          rep.problems.push_back(with_context(got.error(), "tensor \"" + t.key + "\""));
          break;
        }
        if (*got != n) {
          rep.problems.push_back(make_error(errc::short_read, slice_ctx(*m, t, s) + ": file ended early"));
          break;
        }
        rep.bytes_checked += n;
        if (progress) progress(rep.bytes_checked, total);
        if (auto c = check_chunks(*m, t, s, buf, off / m->chunk_bytes); !c) {
          rep.problems.push_back(c.error());
          break;
        }
      }
    }
  }
  co_return rep;
}

task<verify_report> verify_coro(io::backend& b, std::string prefix, verify_progress progress) {
  auto p = co_await open_prefix_dir(b, prefix);
  if (!p) co_return p.error();
  on_unwind last_resort([&] { io::close_detached(b, p->dir); });
  // Declared here so that the files are closed whatever happens (an allocation failure too).
  std::optional<format::manifest> manifest;
  std::optional<file_cache> files;
  std::optional<result<verify_report>> rep;
  try {
    rep = co_await verify_files(b, *p, prefix, manifest, files, progress);
  } catch (const std::bad_alloc&) {
    rep = out_of_memory("verifying");
  }
  if (files) co_await files->close_all();
  co_await close_quietly(b, p->dir);
  last_resort.disarm();
  co_return std::move(*rep);
}

}  // namespace

task<read_report> read_into(io::backend& b, std::string prefix, std::span<const named_tensor> targets, read_options opt,
                            std::shared_ptr<const format::manifest> m) {
  return read_coro(b, std::move(prefix), targets, opt, std::move(m));
}

void start_read_tensors(asio::any_io_executor ex, io::backend& b, std::string prefix, std::vector<named_tensor> targets,
                        read_options opt, io::completion<read_report> done) {
  auto owned = std::make_shared<std::vector<named_tensor>>(std::move(targets));
  spawn<read_report>(ex, read_coro(b, std::move(prefix), *owned, opt, nullptr),
                     [owned, done = std::move(done)](result<read_report> r) { done(std::move(r)); });
}

void start_read_manifest(asio::any_io_executor ex, io::backend& b, std::string prefix, io::completion<format::manifest> done) {
  spawn<format::manifest>(ex, manifest_coro(b, std::move(prefix)), std::move(done));
}

void start_verify(asio::any_io_executor ex, io::backend& b, std::string prefix, io::completion<verify_report> done,
                  verify_progress progress) {
  spawn<verify_report>(ex, verify_coro(b, std::move(prefix), std::move(progress)), std::move(done));
}

}  // namespace detail

result<format::manifest> read_manifest(io::backend& b, std::string_view prefix) {
  return runtime::run_blocking<format::manifest>("read_manifest",
      [&](auto ex, auto done) { detail::start_read_manifest(ex, b, std::string(prefix), std::move(done)); });
}

result<read_report> read_tensors(io::backend& b, std::string_view prefix, std::span<const named_tensor> targets,
                                 const read_options& opt) {
  return runtime::run_blocking<read_report>("read_tensors", [&](auto ex, auto done) {
    // The caller's targets outlive the blocking call: no copy of the list.
    detail::spawn<read_report>(ex, detail::read_coro(b, std::string(prefix), targets, opt, nullptr), std::move(done));
  });
}

result<read_report> read_tensors(io::backend& b, std::string_view prefix, const format::manifest& m,
                                 std::span<const named_tensor> targets, const read_options& opt) {
  // Borrowed, not copied: the manifest outlives this blocking call.
  std::shared_ptr<const format::manifest> borrowed(&m, [](const format::manifest*) {});
  return runtime::run_blocking<read_report>("read_tensors", [&](auto ex, auto done) {
    detail::spawn<read_report>(ex, detail::read_coro(b, std::string(prefix), targets, opt, borrowed),
                               std::move(done));
  });
}

result<verify_report> verify(io::backend& b, std::string_view prefix, verify_progress progress) {
  return runtime::run_blocking<verify_report>("verify",
      [&](auto ex, auto done) { detail::start_verify(ex, b, std::string(prefix), std::move(done), std::move(progress)); });
}

namespace detail {

namespace {

task<directory_scan> scan_coro(io::backend& b, std::string d) {
  auto ex = co_await asio::this_coro::executor;
  auto h = co_await io::async_open_dir(b, ex, d, false, use_awaitable);
  if (!h) co_return h.error();
  auto entries = co_await io::async_list(b, ex, *h, use_awaitable);
  co_await close_quietly(b, *h);
  if (!entries) co_return entries.error();
  directory_scan scan;
  std::set<std::string> referenced;
  for (const auto& e : *entries) {
    auto k = format::classify(e.name);
    if (k.k != format::name_kind::manifest || e.type != io::dir_entry::regular) continue;
    scan.checkpoints.push_back(k.base);
    auto loading = manifest_coro(b, d + "/" + k.base);
    if (auto m = co_await std::move(loading))
      for (const auto& f : m->files) referenced.insert(f.name);
  }
  for (const auto& e : *entries) {
    auto k = format::classify(e.name);
    if (k.k == format::name_kind::temp_manifest || (k.k == format::name_kind::data && !referenced.count(e.name)))
      scan.leftovers.push_back(e.name);
  }
  co_return scan;
}

}  // namespace

}  // namespace detail

result<directory_scan> scan_directory(io::backend& b, std::string_view dir) {
  std::string d(dir.empty() ? "." : dir);
  return runtime::run_blocking<directory_scan>("scan_directory", [&](auto ex, auto done) {
    detail::spawn<directory_scan>(ex, detail::scan_coro(b, d), std::move(done));
  });
}

}  // namespace meshckpt
