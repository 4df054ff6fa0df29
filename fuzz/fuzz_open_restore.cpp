// Property: opening, verifying and restoring a checkpoint made of arbitrary bytes never
// crashes, hangs, reads outside a file or allocates beyond a cap: every input ends in a result
// (usually an error). Runs over an in-memory backend (io_backends/memory).
//
// Input: [manifest length, 4 bytes LE][manifest][data files' bytes]. The manifest is resealed
// (body length and trailing checksum recomputed, as in fuzz_manifest_decode) so mutations
// reach the reader, and the data is split over the files the manifest names by their recorded
// sizes. Targets are built from the manifest itself: every tensor (up to a size cap) in its
// saved mesh and layout, and again on a single device (the resharding path).

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <span>
#include <vector>

#include "mem_backend.hpp"
#include "meshckpt/pipeline/tensor_io.hpp"
#include "meshckpt/format/checksum.hpp"

using namespace meshckpt;

namespace {

constexpr std::uint64_t max_target_bytes = 4u << 20;                   // per restore: the harness's own memory cap
const bool verbose = std::getenv("MESHCKPT_FUZZ_VERBOSE") != nullptr;  // say what each input led to

void run(std::span<const std::byte> input) {
  if (input.size() < 4) return;
  std::uint32_t mlen = 0;
  for (int i = 0; i < 4; ++i) mlen |= std::uint32_t{static_cast<std::uint8_t>(input[static_cast<std::size_t>(i)])} << (8 * i);
  input = input.subspan(4);
  if (mlen > input.size()) mlen = static_cast<std::uint32_t>(input.size());
  std::vector<std::byte> man(input.begin(), input.begin() + mlen);
  auto data = input.subspan(mlen);
  if (man.size() >= 32) {
    std::uint64_t body = man.size() - 32;
    for (int i = 0; i < 8; ++i) man[16 + static_cast<std::size_t>(i)] = static_cast<std::byte>(body >> (8 * i));
    std::uint64_t c = format::checksum(std::span(man).first(man.size() - 8));
    for (int i = 0; i < 8; ++i) man[man.size() - 8 + static_cast<std::size_t>(i)] = static_cast<std::byte>(c >> (8 * i));
  }
  fuzzing::mem_backend be;
  be.file("ck.manifest") = man;
  format::limits lim;
  lim.max_manifest_bytes = 1 << 20;
  auto m = format::decode(man, lim);
  if (m) {
    // Give each named data file its share of the data (as far as the input reaches).
    std::size_t at = 0;
    for (std::size_t i = 0; i < m->files.size(); ++i) {
      std::size_t want =
          i + 1 == m->files.size()
              ? data.size() - at
              : std::min<std::size_t>(static_cast<std::size_t>(std::min<std::uint64_t>(m->files[i].size, data.size())), data.size() - at);
      be.file(m->files[i].name)
          .assign(data.begin() + static_cast<std::ptrdiff_t>(at), data.begin() + static_cast<std::ptrdiff_t>(at + want));
      at += want;
    }
  }
  auto v = verify(be, "ck");
  auto rm = read_manifest(be, "ck");
  if (verbose) std::fprintf(stderr, "verify: %s\n", !v ? v.error().what().c_str() : v->ok() ? "ok" : v->problems.front().what().c_str());
  if (!rm) return;
  for (int pass = 0; pass < 2; ++pass) {
    std::deque<dtensor> keep;
    std::vector<named_tensor> targets;
    std::uint64_t total = 0;
    auto one = mesh::create({{"x", 1}}).value();
    for (const auto& t : rm->tensors) {
      auto volume = box{std::vector<std::int64_t>(t.global.size(), 0), t.global}.volume();
      if (!volume) continue;
      const std::uint64_t bytes = static_cast<std::uint64_t>(*volume) * static_cast<std::uint64_t>(dtype_size(t.type));
      // A saved layout replicates each slice on every device holding it: count the mesh too.
      const std::uint64_t devices = pass == 0 ? static_cast<std::uint64_t>(rm->meshes[t.mesh].device_ids.size()) : 1;
      if (bytes > max_target_bytes || total + bytes * devices > max_target_bytes) continue;
      result<layout> l =
          pass == 0 ? format::saved_layout_of(*rm, t) : layout::create(std::vector<std::string>(t.global.size(), "unsharded"), one);
      if (!l) continue;
      auto d = dtensor::create(t.type, t.global, *l);
      if (!d) continue;
      total += bytes * devices;
      keep.push_back(std::move(*d));
      targets.push_back({t.key, keep.back().view()});
    }
    auto r = read_tensors(be, "ck", *rm, targets);
    if (verbose) std::fprintf(stderr, "restore pass %d: %zu targets: %s\n", pass, targets.size(), r ? "ok" : r.error().what().c_str());
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  run(std::as_bytes(std::span(data, size)));
  return 0;
}
