#pragma once
// The brute-force oracle for the read planner, shared by tests/unit/test_read_plan.cpp and
// fuzz_read_plan. A byte source chooses a policy, data files, wanted ranges of slices in them
// and destinations with strided runs (at odd addresses too). The plan is checked request by
// request against the policy (alignment, merge gap, extent, piece size, whole chunks, order),
// then executed on the simulated files exactly as the restore does (in-place reads, staged reads
// scattered along the runs), and every destination byte is compared with the file byte the run
// maps to it, byte by byte; bytes no run covers must stay untouched.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "byte_source.hpp"
#include "meshckpt/plan/read_plan.hpp"

namespace meshckpt::oracle {

inline std::byte file_byte(std::uint32_t file, std::uint64_t off) {
  return static_cast<std::byte>((off * 131 + file * 17 + (off >> 8)) & 0xff);
}
constexpr std::byte poison{0xee};

struct read_scenario {
  plan::read_policy policy;
  std::uint64_t chunk = 0;
  std::vector<std::uint64_t> file_sizes;
  std::vector<plan::wanted_range> wants;
  std::vector<std::vector<std::byte>> memory;  // one buffer per target, in order
};

// Builds a scenario from the source. Destinations point into `s.memory` (not moved afterwards).
inline read_scenario make_read_scenario(byte_source& in) {
  read_scenario s;
  const std::uint64_t aligns[] = {1, 8, 64};
  s.policy.alignment = aligns[in.next() % 3];
  s.chunk = std::uint64_t{8} << (in.next() % 5);  // 8 .. 128
  s.policy.piece_bytes = s.policy.alignment * (1 + in.next() % 16);
  s.policy.large_bytes = 1 + in.upto(400);
  s.policy.merge_gap = in.upto(200);
  s.policy.max_extent = 1 + in.upto(600);
  const std::size_t files = 1 + in.next() % 3;
  s.file_sizes.assign(files, 0);
  const std::size_t n = in.next() % 12;
  std::size_t targets = 0;
  for (std::size_t i = 0; i < n; ++i) {
    plan::wanted_range w;
    w.file = static_cast<std::uint32_t>(in.next() % files);
    w.file_offset = s.file_sizes[w.file] + (in.next() % 2 ? in.upto(40) : in.upto(300));  // slices of one file do not overlap
    w.length = in.upto(700);
    s.file_sizes[w.file] = w.file_offset + w.length + (in.next() % 2 ? 0 : in.upto(50));
    const std::uint64_t chunks = (w.length + s.chunk - 1) / s.chunk;
    const std::uint64_t c0 = in.upto(chunks), c1 = c0 + in.upto(chunks - c0);
    w.begin = std::min(w.length, c0 * s.chunk);
    w.end = std::min(w.length, c1 * s.chunk);
    if (in.next() % 2) w.begin = 0, w.end = w.length;
    const std::size_t nt = 1 + in.next() % 3;
    for (std::size_t t = 0; t < nt; ++t) {
      plan::copy_run r;
      const std::uint64_t span = w.end - w.begin;
      if (in.next() % 2 || span == 0) {
        r.src_offset = w.begin;
        r.length = span;
        r.count = 1;
      } else {  // a strided run inside [begin, end)
        r.src_offset = w.begin + in.upto(span - 1);
        r.length = 1 + in.upto(w.end - r.src_offset - 1);
        r.src_stride = r.length + in.upto(20);
        r.count = 1 + (w.end - r.src_offset - r.length) / r.src_stride;
        r.count = 1 + in.upto(r.count - 1);
      }
      r.dst_stride = r.count > 1 ? r.length + in.upto(10) : 0;
      r.dst_offset = in.upto(70);
      w.targets.push_back({nullptr, r});
      ++targets;
    }
    s.wants.push_back(std::move(w));
  }
  // Destinations: aligned storage, then an offset that is aligned or not.
  s.memory.reserve(targets);
  for (auto& w : s.wants)
    for (auto& t : w.targets) {
      const std::uint64_t need = t.run.dst_offset + (t.run.count - 1) * t.run.dst_stride + t.run.length;
      const std::uint64_t skew = in.next() % 2 ? 0 : in.upto(63);
      s.memory.emplace_back(need + skew + 128, poison);
      auto addr = reinterpret_cast<std::uintptr_t>(s.memory.back().data());
      t.base = s.memory.back().data() + ((64 - addr % 64) % 64) + skew;
    }
  return s;
}

// Empty when the plan is right; else what is wrong.
inline std::string check_read_plan(const read_scenario& s, const plan::read_plan& p) {
  const auto& pol = s.policy;
  const std::uint64_t a = pol.alignment;
  auto start = [&](std::size_t k) { return s.wants[k].file_offset + s.wants[k].begin; };
  std::uint64_t wanted = 0;
  for (const auto& w : s.wants) wanted += w.end - w.begin;
  if (p.bytes != wanted) return "bytes " + std::to_string(p.bytes) + " != " + std::to_string(wanted);
  auto later = [&](std::size_t k) {
    return std::any_of(p.verify_after.begin(), p.verify_after.end(), [&](const auto& v) { return v.first == k; });
  };
  std::vector<std::vector<std::pair<std::uint64_t, std::uint64_t>>> covered(s.wants.size());
  for (std::size_t i = 0; i < p.requests.size(); ++i) {
    const auto& q = p.requests[i];
    const std::string at = "request " + std::to_string(i) + ": ";
    if (q.offset % a || q.length % a) return at + "not aligned";
    if (q.required == 0 || q.required > q.length) return at + "required bytes out of range";
    if (q.pieces.empty()) return at + "no pieces";
    if (q.file >= s.file_sizes.size() || q.offset + q.required > s.file_sizes[q.file]) return at + "reads past the data";
    if (i > 0 && std::pair(p.requests[i - 1].file, p.requests[i - 1].offset) > std::pair(q.file, q.offset)) return at + "out of order";
    std::uint64_t reach = 0;
    for (std::size_t j = 0; j < q.pieces.size(); ++j) {
      const auto& pc = q.pieces[j];
      const auto& w = s.wants[pc.want];
      if (w.file != q.file) return at + "piece of another file";
      if (pc.begin >= pc.end || pc.begin < w.begin || pc.end > w.end) return at + "piece outside its range";
      if (q.offset + pc.at != w.file_offset + pc.begin) return at + "piece at the wrong place";
      if (pc.at + (pc.end - pc.begin) > q.required) return at + "piece beyond the required bytes";
      if (!later(pc.want) && (pc.begin % s.chunk || (pc.end % s.chunk && pc.end != w.length))) return at + "piece of partial chunks";
      if (w.end - w.begin >= pol.large_bytes && pc.end - pc.begin > std::max(pol.piece_bytes, s.chunk)) return at + "piece too large";
      if (j > 0 && pc.at > reach + pol.merge_gap) return at + "merged over a gap above the policy";
      reach = std::max(reach, pc.at + (pc.end - pc.begin));
      covered[pc.want].emplace_back(pc.begin, pc.end);
    }
    if (q.pieces.size() > 1) {
      if (reach - q.pieces.front().at > pol.max_extent) return at + "merged extent above the policy";
      for (const auto& pc : q.pieces)
        if (s.wants[pc.want].end - s.wants[pc.want].begin >= pol.large_bytes) return at + "large range merged";
    }
    if (q.direct) {
      if (q.pieces.size() != 1) return at + "direct read of several pieces";
      const auto& pc = q.pieces.front();
      const auto& w = s.wants[pc.want];
      if (q.direct->target >= w.targets.size()) return at + "direct target out of range";
      const auto& r = w.targets[q.direct->target].run;
      if (q.length != pc.end - pc.begin || q.required != q.length) return at + "direct read of other bytes";
      if (!(r.count == 1 || (r.length == r.src_stride && r.length == r.dst_stride)) || r.src_offset > pc.begin || r.src_end() < pc.end ||
          q.direct->offset != r.dst_offset + (pc.begin - r.src_offset))
        return at + "direct read into a run that does not hold it contiguous";
      if ((reinterpret_cast<std::uintptr_t>(w.targets[q.direct->target].base) + q.direct->offset) % a)
        return at + "direct address not aligned";
    }
  }
  for (std::size_t k = 0; k < s.wants.size(); ++k) {
    auto& c = covered[k];
    std::sort(c.begin(), c.end());
    std::uint64_t next = s.wants[k].begin;
    for (const auto& [b, e] : c) {
      if (b != next) return "range " + std::to_string(k) + " covered with a hole or twice at " + std::to_string(b);
      next = e;
    }
    if (next != s.wants[k].end && s.wants[k].end > s.wants[k].begin) return "range " + std::to_string(k) + " not covered to its end";
  }
  (void)start;
  return {};
}

// Runs the plan on the simulated files, then compares every destination byte.
inline std::string execute_and_compare(read_scenario& s, const plan::read_plan& p) {
  for (const auto& q : p.requests) {
    std::vector<std::byte> staging;
    std::byte* buf;
    if (q.direct) {
      buf = s.wants[q.pieces.front().want].targets[q.direct->target].base + q.direct->offset;
    } else {
      staging.assign(q.length, poison);
      buf = staging.data();
    }
    const std::uint64_t avail = std::min(q.length, s.file_sizes[q.file] - q.offset);
    for (std::uint64_t i = 0; i < avail; ++i) buf[i] = file_byte(q.file, q.offset + i);
    for (const auto& pc : q.pieces) {
      const auto& w = s.wants[pc.want];
      for (std::size_t t = 0; t < w.targets.size(); ++t) {
        if (q.direct && q.direct->target == t) continue;
        std::byte* base = w.targets[t].base;
        plan::for_each_block(w.targets[t].run, pc.begin, pc.end, [&](std::uint64_t src, std::uint64_t dst, std::uint64_t len) {
          std::memcpy(base + dst, buf + pc.at + (src - pc.begin), len);
        });
      }
    }
  }
  std::size_t mi = 0;
  for (std::size_t k = 0; k < s.wants.size(); ++k)
    for (const auto& t : s.wants[k].targets) {
      const auto& mem = s.memory[mi++];
      std::vector<bool> expect(mem.size(), false);
      const auto& r = t.run;
      const auto first = static_cast<std::size_t>(t.base - mem.data());
      for (std::uint64_t j = 0; j < r.count; ++j)
        for (std::uint64_t i = 0; i < r.length; ++i) {
          const std::uint64_t d = r.dst_offset + j * r.dst_stride + i;
          const std::byte want = file_byte(s.wants[k].file, s.wants[k].file_offset + r.src_offset + j * r.src_stride + i);
          if (t.base[d] != want) return "range " + std::to_string(k) + ": destination byte " + std::to_string(d) + " is wrong";
          expect[first + d] = true;
        }
      for (std::size_t i = 0; i < mem.size(); ++i)
        if (!expect[i] && mem[i] != poison) return "range " + std::to_string(k) + ": a byte outside every run was written";
    }
  return {};
}

}  // namespace meshckpt::oracle
