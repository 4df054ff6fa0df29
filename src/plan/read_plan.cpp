#include "meshckpt/plan/read_plan.hpp"

#include <algorithm>
#include <limits>
#include <numeric>
#include <string>

namespace meshckpt::plan {

namespace {

constexpr std::uint64_t max_u64 = std::numeric_limits<std::uint64_t>::max();

bool power_of_two(std::uint64_t v) { return v && !(v & (v - 1)); }
std::uint64_t align_down(std::uint64_t v, std::uint64_t a) { return v / a * a; }
std::uint64_t align_up(std::uint64_t v, std::uint64_t a) { return (v + a - 1) / a * a; }

bool contiguous(const copy_run& r) { return r.count == 1 || (r.length == r.src_stride && r.length == r.dst_stride); }

// The last source byte of a run, without overflowing on runs that did not come from our planner.
std::optional<std::uint64_t> checked_src_end(const copy_run& r) {
  if (r.count == 0) return std::nullopt;
  std::uint64_t span = 0, end = 0;
  if (__builtin_mul_overflow(r.count - 1, r.src_stride, &span)) return std::nullopt;
  if (__builtin_add_overflow(r.src_offset, span, &end) || __builtin_add_overflow(end, r.length, &end)) return std::nullopt;
  return end;
}

result<void> check_want(const wanted_range& w, std::size_t i, std::uint64_t chunk_bytes, std::uint64_t alignment) {
  auto bad = [&](const std::string& what) { return make_error(errc::invalid_argument, "wanted range " + std::to_string(i) + ": " + what); };
  if (w.begin > w.end || w.end > w.length)
    return bad("bytes [" + std::to_string(w.begin) + ", " + std::to_string(w.end) + ") do not fit a slice of " + std::to_string(w.length));
  if (w.begin < w.end && w.begin % chunk_bytes != 0) return bad("does not start on a checksum chunk");
  // Aligning the file range up must not wrap around.
  if (w.file_offset > max_u64 - w.length || w.file_offset + w.length > max_u64 - 2 * alignment)
    return bad("the slice does not fit a file's address space");
  if (w.targets.empty()) return bad("has no destination");
  for (const auto& t : w.targets) {
    auto end = checked_src_end(t.run);
    if (!end || *end > w.length) return bad("a run reaches outside its slice");
  }
  return success();
}

class planner {
 public:
  planner(std::span<const wanted_range> wants, std::uint64_t chunk, const read_policy& pol) : wants_(wants), chunk_(chunk), pol_(pol) {}

  read_plan run() {
    std::vector<std::size_t> order;
    for (std::size_t i = 0; i < wants_.size(); ++i) {
      out_.bytes += wants_[i].end - wants_[i].begin;
      if (wants_[i].end > wants_[i].begin) order.push_back(i);
    }
    std::stable_sort(order.begin(), order.end(), [&](std::size_t x, std::size_t y) {
      return std::pair(wants_[x].file, start(x)) < std::pair(wants_[y].file, start(y));
    });
    for (std::size_t i = 0; i < order.size();) {
      const std::size_t k = order[i];
      if (large(k)) {
        pieces(k);
        ++i;
        continue;
      }
      // Small neighbours in one file become one read while the holes and the extent stay small.
      std::size_t j = i + 1;
      std::uint64_t first = start(k), last = finish(k);
      while (j < order.size()) {
        const std::size_t n = order[j];
        if (large(n) || wants_[n].file != wants_[k].file || (start(n) > last && start(n) - last > pol_.merge_gap) ||
            std::max(last, finish(n)) - first > pol_.max_extent)
          break;
        last = std::max(last, finish(n));
        ++j;
      }
      if (j == i + 1) {
        single(k, wants_[k].begin, wants_[k].end);
      } else {
        read_request r = staged(wants_[k].file, first, last);
        for (std::size_t g = i; g < j; ++g)
          r.pieces.push_back({order[g], wants_[order[g]].begin, wants_[order[g]].end, start(order[g]) - r.offset});
        out_.requests.push_back(std::move(r));
      }
      i = j;
    }
    return std::move(out_);
  }

 private:
  std::uint64_t start(std::size_t k) const { return wants_[k].file_offset + wants_[k].begin; }
  std::uint64_t finish(std::size_t k) const { return wants_[k].file_offset + wants_[k].end; }
  bool large(std::size_t k) const { return wants_[k].end - wants_[k].begin >= pol_.large_bytes; }

  // Pieces hold whole chunks. When the chunks are larger than a piece, a range that lies
  // contiguous in one destination is read in pieces anyway and verified there at the end;
  // otherwise (resharding) its pieces are whole chunks.
  void pieces(std::size_t k) {
    const auto& w = wants_[k];
    std::uint64_t piece = pol_.piece_bytes >= chunk_ ? align_down(pol_.piece_bytes, chunk_) : chunk_;
    if (pol_.piece_bytes < chunk_) {
      for (std::size_t t = 0; t < w.targets.size(); ++t) {
        const auto& r = w.targets[t].run;
        if (contiguous(r) && r.src_offset <= w.begin && r.src_end() >= w.end) {
          piece = pol_.piece_bytes;
          out_.verify_after.emplace_back(k, t);
          break;
        }
      }
    }
    for (std::uint64_t p0 = w.begin; p0 < w.end;) {
      const std::uint64_t p1 = w.end - p0 > piece ? p0 + piece : w.end;
      single(k, p0, p1);
      p0 = p1;
    }
  }

  // Bytes [p0, p1) of one wanted range: in place when a destination holds them contiguous at an
  // aligned address and the file range is aligned, else staged.
  void single(std::size_t k, std::uint64_t p0, std::uint64_t p1) {
    const auto& w = wants_[k];
    const std::uint64_t at = w.file_offset + p0, len = p1 - p0, a = pol_.alignment;
    if (at % a == 0 && len % a == 0) {
      for (std::size_t t = 0; t < w.targets.size(); ++t) {
        const auto& tg = w.targets[t];
        const auto& r = tg.run;
        if (!contiguous(r) || r.src_offset > p0 || r.src_end() < p1) continue;
        const std::uint64_t dst = r.dst_offset + (p0 - r.src_offset);
        if ((reinterpret_cast<std::uintptr_t>(tg.base) + dst) % a != 0) continue;
        read_request q{w.file, at, len, len, direct_dest{t, dst}, {{k, p0, p1, 0}}};
        out_.requests.push_back(std::move(q));
        return;
      }
    }
    read_request q = staged(w.file, at, at + len);
    q.pieces.push_back({k, p0, p1, at - q.offset});
    out_.requests.push_back(std::move(q));
  }

  // A staged read covering file bytes [first, last), aligned outwards.
  read_request staged(std::uint32_t file, std::uint64_t first, std::uint64_t last) const {
    read_request q;
    q.file = file;
    q.offset = align_down(first, pol_.alignment);
    q.length = align_up(last, pol_.alignment) - q.offset;
    q.required = last - q.offset;
    return q;
  }

  std::span<const wanted_range> wants_;
  std::uint64_t chunk_;
  const read_policy& pol_;
  read_plan out_;
};

}  // namespace

result<read_plan> plan_reads(std::span<const wanted_range> wants, std::uint64_t chunk_bytes, const read_policy& policy) {
  if (chunk_bytes == 0) return make_error(errc::invalid_argument, "checksum chunk size is 0");
  if (!power_of_two(policy.alignment) || policy.alignment > (std::uint64_t{1} << 30))
    return make_error(errc::invalid_argument, "read alignment " + std::to_string(policy.alignment) + " is not a power of two up to 2^30");
  if (policy.piece_bytes == 0 || policy.piece_bytes % policy.alignment != 0)
    return make_error(errc::invalid_argument,
                      "read piece size " + std::to_string(policy.piece_bytes) + " is not a positive multiple of the alignment");
  if (policy.max_extent == 0 || policy.large_bytes == 0 || policy.merge_gap > (std::uint64_t{1} << 40))
    return make_error(errc::invalid_argument, "read merge limits out of range");
  for (std::size_t i = 0; i < wants.size(); ++i) {
    BOOST_OUTCOME_TRY(check_want(wants[i], i, chunk_bytes, policy.alignment));
  }
  return planner(wants, chunk_bytes, policy).run();
}

}  // namespace meshckpt::plan
