// Reading side of the low-level API: manifest loading (with the missing "-N" hint) and
// restores: targets matched to saved ranges, reads planned by plan/read_plan, executed here.
// Every size and offset used here comes from a manifest that format::decode validated, and is
// checked again against the actual size of each data file before any byte is read.

#include <algorithm>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <set>

#include <boost/asio/post.hpp>

#include "../runtime/engine.hpp"
#include "../pipeline/recyclers.hpp"
#include "../runtime/staging_pool.hpp"
#include "../pipeline/common.hpp"
#include "read.hpp"
#include "match_targets.hpp"
#include "meshckpt/pipeline/tensor_io_async.hpp"
#include "meshckpt/format/crc32c.hpp"
#include "meshckpt/format/names.hpp"
#include "meshckpt/plan/read_plan.hpp"
#include "meshckpt/tensor/convert.hpp"

namespace meshckpt {
namespace detail {

namespace {

using progress_fn = std::function<void(std::uint64_t done, std::uint64_t total)>;

// Bytes read, verified and scattered; reported through read_options::progress.
class progress_meter {
 public:
  progress_meter(std::uint64_t total, const progress_fn& f) : total_(total), f_(f) {}
  void add(std::uint64_t n) {
    std::lock_guard lk(mu_);  // reads are settled on several threads
    done_ = std::min(total_, done_ + n);
    if (f_) f_(done_, total_);
  }

 private:
  std::mutex mu_;
  std::uint64_t total_, done_ = 0;
  const progress_fn& f_;
};

// Reads larger than a staging buffer (chunks above it) use aligned heap memory.
struct read_buffer {
  runtime::staging_buffer staging;
  std::unique_ptr<std::byte[], meshckpt::detail::aligned_free> heap;
  std::byte* data = nullptr;
};

// Executes a read plan: the requests in order, at most `in_flight` at once. Each completed
// read is settled on the process-wide CPU pool: its pieces verified (whole chunks) and copied
// along their runs into the target shards, while the next reads are in flight.
class plan_runner {
 public:
  plan_runner(io::backend& b, asio::any_io_executor ex, const format::manifest& m, const wanted& w, const plan::read_plan& rp,
              const read_options& opt, file_cache& files)
      : b_(b), ops_(std::move(ex)), m_(m), w_(w), plan_(rp), opt_(opt), files_(files), meter_(rp.bytes, opt.progress) {
    for (const auto& [want, target] : rp.verify_after) verified_later_.insert(want);
  }

  task<void> run() {
    // TRICKY: no buffer may go away while the kernel writes it — not even when an allocation
    // failed while issuing (std::bad_alloc; tests/reliability/test_alloc.cpp).
    result<void> issued = success();
    try {
      issued = co_await issue();
    } catch (const std::bad_alloc&) {
      issued = out_of_memory("reading");
    }
    auto drained = co_await ops_.drain();
    if (!issued) co_return issued.error();
    if (!drained) co_return drained.error();
    buffers_.clear();
    if (!opt_.verify_checksums) co_return success();
    for (const auto& [k, ti] : plan_.verify_after) {
      const auto& r = w_.ranges[k];
      const auto& run = r.targets[ti].run;
      std::span<const std::byte> bytes(r.targets[ti].base + run.dst_offset + (r.begin - run.src_offset), r.end - r.begin);
      BOOST_OUTCOME_CO_TRY(check_chunks(m_, *w_.from[k].first, *w_.from[k].second, bytes, r.begin / m_.chunk_bytes));
    }
    co_return success();
  }

 private:
  task<void> issue() {
    std::uint64_t longest = 1;
    for (const auto& q : plan_.requests) longest = std::max(longest, q.length);
    // At most 16 reads, and at most about 128 MiB of them when chunks are huge.
    const std::size_t in_flight = std::clamp<std::uint64_t>((128u << 20) / longest, 2, 16);
    for (const auto& q : plan_.requests) {
      BOOST_OUTCOME_CO_TRY(auto h, co_await files_.get(q.file));
      BOOST_OUTCOME_CO_TRY(co_await ops_.wait_below(in_flight));
      start(h, q);
    }
    co_return success();
  }

  void start(io::handle h, const plan::read_request& q) {
    read_buffer* buf = &buffers_.emplace_back();  // a deque: settling threads hold pointers into it
    if (q.direct) {
      const auto& piece = q.pieces.front();
      buf->data = w_.ranges[piece.want].targets[q.direct->target].base + q.direct->offset;
    } else if (q.length <= runtime::staging_buffer::size()) {
      buf->staging = runtime::staging_buffer::acquire();
      buf->data = buf->staging.data();
      b_.register_buffer({buf->data, runtime::staging_buffer::size()});  // pool buffers live for the process
    } else {
      buf->data = static_cast<std::byte*>(::operator new (static_cast<std::size_t>(q.length), std::align_val_t{4096}));
      buf->heap.reset(buf->data);
    }
    ops_.launch([&] {
      io::async_read(b_, ops_.executor(), h, q.offset, std::span<std::byte>(buf->data, q.length), [this, &q, buf](result<std::size_t> r) {
        if (!r) return ops_.finished(r.error());
        // TRICKY: the settling thread holds outstanding work on the executor until
        // its post has returned; otherwise the io_context (run_blocking's, say)
        // could finish and be destroyed while the post is still signalling it
        // (found by TSan).
        try {
          auto work = asio::prefer(ops_.executor(), asio::execution::outstanding_work.tracked);
          asio::post(runtime::cpu_pool().executor(), [this, &q, buf, n = *r, work = std::move(work)] {
            auto out = settle(q, buf, n);
            asio::post(work, [this, out = std::move(out)]() mutable { ops_.finished(std::move(out)); });
          });
        } catch (const std::bad_alloc&) {
          // The read completed, so its buffer is free; without settling it is simply failed.
          ops_.finished(out_of_memory("verifying a read"));
        }
      });
    });
  }

  // On a settling thread: verifies and scatters the pieces of one completed read.
  result<void> settle(const plan::read_request& q, read_buffer* buf, std::size_t got) {
    read_buffer release = std::move(*buf);  // a staging buffer goes back to the pool on return
    const std::byte* data = release.data;
    if (got < q.required) {
      const auto& [t, s] = w_.from[q.pieces.front().want];
      return make_error(errc::short_read, slice_ctx(m_, *t, *s) + ": file ended early");
    }
    std::uint64_t settled = 0;
    for (const auto& piece : q.pieces) {
      const auto& r = w_.ranges[piece.want];
      const auto& [t, s] = w_.from[piece.want];
      const std::byte* bytes = data + piece.at;
      if (opt_.verify_checksums && !verified_later_.count(piece.want)) {
        BOOST_OUTCOME_TRY(check_chunks(m_, *t, *s, std::span(bytes, piece.end - piece.begin), piece.begin / m_.chunk_bytes));
      }
      for (std::size_t ti = 0; ti < r.targets.size(); ++ti) {
        if (q.direct && q.direct->target == ti) continue;  // read in place
        std::byte* base = r.targets[ti].base;
        plan::for_each_block(r.targets[ti].run, piece.begin, piece.end, [&](std::uint64_t src, std::uint64_t dst, std::uint64_t len) {
          std::memcpy(base + dst, bytes + (src - piece.begin), len);
        });
      }
      settled += piece.end - piece.begin;
    }
    meter_.add(settled);  // once per read: the meter takes a lock
    return success();
  }

  io::backend& b_;
  op_window ops_;
  const format::manifest& m_;
  const wanted& w_;
  const plan::read_plan& plan_;
  const read_options& opt_;
  file_cache& files_;
  progress_meter meter_;
  std::set<std::size_t> verified_later_;
  std::deque<read_buffer> buffers_;
};

}  // namespace

// Checks every byte of the slices `from` against their checksums, reading each in staging
// pieces: memory stays bounded whatever the slice's size. A TensorFlow tensor's one CRC-32C
// covers it whole, so a read of part of it checks it this way first.
task<void> check_slices(io::backend& b, const format::manifest& m,
                        std::span<const std::pair<const format::saved_tensor*, const format::saved_slice*>> from, file_cache& files) {
  auto ex = co_await asio::this_coro::executor;
  std::vector<std::byte> buf(runtime::staging_buffer_bytes);
  for (const auto& [t, s] : from) {
    BOOST_OUTCOME_CO_TRY(auto h, co_await files.get(s->file));
    slice_checker check(m, *t, *s);
    for (std::uint64_t off = 0; off < s->length; off += buf.size()) {
      std::span<std::byte> part(buf.data(), static_cast<std::size_t>(std::min<std::uint64_t>(buf.size(), s->length - off)));
      BOOST_OUTCOME_CO_TRY(auto got, co_await io::async_read(b, ex, h, s->offset + off, part, use_awaitable));
      if (got != part.size()) co_return make_error(errc::short_read, slice_ctx(m, *t, *s) + ": file ended early");
      BOOST_OUTCOME_CO_TRY(check.update(part));
    }
  }
  co_return success();
}

// Plans the reads of `w` (ranges rounded to `granule`; plan/read_plan) and runs them.
// Returns the bytes read.
task<std::uint64_t> run_wanted(io::backend& b, const format::manifest& m, const wanted& w, std::uint64_t granule, bool direct,
                               const read_options& opt, file_cache& files) {
  auto ex = co_await asio::this_coro::executor;
  plan::read_policy policy;
  // Without O_DIRECT nothing needs aligning, and every range that lies contiguous in a shard
  // is read in place.
  if (!direct) policy.alignment = 1;
  BOOST_OUTCOME_CO_TRY(auto rp, plan::plan_reads(w.ranges, granule, policy));
  plan_runner runner(b, ex, m, w, rp, opt, files);
  BOOST_OUTCOME_CO_TRY(co_await runner.run());
  co_return rp.bytes;
}

namespace {

// A restore: match the targets to saved ranges, plan the reads, run them.
task<read_report> read_steps(io::backend& b, const format::manifest& m, std::span<const named_tensor> targets, const read_options& opt,
                             file_cache& files) {
  read_report rep;
  auto w = wanted_recycler().take();
  runtime::give_back_at_exit w_back(wanted_recycler(), w, [](wanted& x) {
    for (auto& r : x.ranges) r.targets.clear();  // nothing kept points into the targets
    x.from.clear();
  });
  if (!format::whole_slice_crc(m.checksum)) {
    BOOST_OUTCOME_CO_TRY(match_targets(m, targets, rep, w));
    BOOST_OUTCOME_CO_TRY(rep.bytes_read, co_await run_wanted(b, m, w, m.chunk_bytes, b.caps().direct_io, opt, files));
    co_return rep;
  }
  // A TensorFlow tensor's one CRC covers it whole. Stored pieces copied whole into shards are
  // read once, checked as they land; pieces that shards need parts of (resharding) are first
  // checked in staging-sized reads, then only the pages needed are read: memory stays bounded
  // whatever the stored tensor's size (never a buffer of a whole piece).
  BOOST_OUTCOME_CO_TRY(match_targets(m, targets, rep, w, runtime::staging_alignment));
  wanted whole, partial;
  for (std::size_t k = 0; k < w.ranges.size(); ++k) {
    const auto& r = w.ranges[k];
    const bool copied_whole = std::all_of(r.targets.begin(), r.targets.end(), [&](const plan::read_target& t) {
      return t.run.count <= 1 && t.run.src_offset == 0 && t.run.length == r.length;
    });
    auto& into = copied_whole ? whole : partial;
    into.ranges.push_back(r);
    into.from.push_back(w.from[k]);
  }
  std::uint64_t bytes = 0;
  if (!whole.ranges.empty()) {
    BOOST_OUTCOME_CO_TRY(bytes, co_await run_wanted(b, m, whole, m.chunk_bytes, false, opt, files));
  }
  if (!partial.ranges.empty()) {
    read_options unchecked = opt;
    if (opt.verify_checksums) {
      BOOST_OUTCOME_CO_TRY(co_await check_slices(b, m, partial.from, files));
      unchecked.verify_checksums = false;
    }
    BOOST_OUTCOME_CO_TRY(auto more, co_await run_wanted(b, m, partial, runtime::staging_alignment, false, unchecked, files));
    bytes += more;
  }
  rep.bytes_read = bytes;
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
      // Its memory goes back to the recycler once the restore is done with it.
      m = std::shared_ptr<const format::manifest>(new format::manifest(std::move(loaded)), [](const format::manifest* x) {
        detail::manifests().give(std::move(*const_cast<format::manifest*>(x)));
        delete x;
      });
    }
    // A TensorFlow bundle's tensors lie at any offset, and a partial read of one checks it
    // whole first: buffered reads.
    file_cache files(b, *p, *m, b.caps().direct_io && !format::whole_slice_crc(m->checksum));
    const staged_round round = [&](std::span<const named_tensor> ts) -> task<read_report> {
      // Targets of another floating dtype (when asked): read into temporaries of the saved
      // dtype and the target's layout, then convert into the target's shards.
      std::deque<dtensor> temps;
      std::vector<std::pair<const named_tensor*, const dtensor*>> casts;
      std::vector<named_tensor> all;
      if (opt.convert_dtypes) {
        for (const auto& t : ts) {
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
      BOOST_OUTCOME_CO_TRY(auto rep, co_await read_steps(b, *m, opt.convert_dtypes ? std::span<const named_tensor>(all) : ts, opt, files));
      for (const auto& [target, tmp] : casts)
        for (const auto& sh : target->tensor.shards()) {
          const local_shard* from = tmp->view().shard_of(sh.device);
          if (from) convert(tmp->view().type(), from->data, target->tensor.type(), sh.data);
        }
      co_return rep;
    };
    const bool on_device =
        std::any_of(targets.begin(), targets.end(), [](const named_tensor& t) { return any_on_device(t.tensor.shards()); });
    std::optional<result<read_report>> rr;
    try {
      auto reading = on_device ? read_through_staging(targets, round) : round(targets);
      rr = co_await std::move(reading);
    } catch (const std::bad_alloc&) {
      rr = out_of_memory("restoring");
    }
    co_await files.close_all();
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

}  // namespace

task<read_report> read_into(io::backend& b, std::string prefix, std::span<const named_tensor> targets, read_options opt,
                            std::shared_ptr<const format::manifest> m) {
  return read_coro(b, std::move(prefix), targets, opt, std::move(m));
}

void start_read_tensors(asio::any_io_executor ex, io::backend& b, std::string prefix, std::vector<named_tensor> targets, read_options opt,
                        io::completion<read_report> done) {
  auto owned = std::make_shared<std::vector<named_tensor>>(std::move(targets));
  spawn<read_report>(ex, read_coro(b, std::move(prefix), *owned, opt, nullptr),
                     [owned, done = std::move(done)](result<read_report> r) { done(std::move(r)); });
}

void start_read_manifest(asio::any_io_executor ex, io::backend& b, std::string prefix, io::completion<format::manifest> done) {
  spawn<format::manifest>(ex, load_manifest_at(b, std::move(prefix)), std::move(done));
}

}  // namespace detail

result<format::manifest> read_manifest(io::backend& b, std::string_view prefix) {
  return runtime::run_blocking<format::manifest>(
      "read_manifest", [&](auto ex, auto done) { detail::start_read_manifest(ex, b, std::string(prefix), std::move(done)); });
}

result<read_report> read_tensors(io::backend& b, std::string_view prefix, std::span<const named_tensor> targets, const read_options& opt) {
  return runtime::run_blocking<read_report>("read_tensors", [&](auto ex, auto done) {
    // The caller's targets outlive the blocking call: no copy of the list.
    detail::spawn<read_report>(ex, detail::read_coro(b, std::string(prefix), targets, opt, nullptr), std::move(done));
  });
}

result<read_report> read_tensors(io::backend& b, std::string_view prefix, const format::manifest& m, std::span<const named_tensor> targets,
                                 const read_options& opt) {
  // Borrowed, not copied: the manifest outlives this blocking call.
  std::shared_ptr<const format::manifest> borrowed(&m, [](const format::manifest*) {});
  return runtime::run_blocking<read_report>("read_tensors", [&](auto ex, auto done) {
    detail::spawn<read_report>(ex, detail::read_coro(b, std::string(prefix), targets, opt, borrowed), std::move(done));
  });
}

}  // namespace meshckpt
