// Property: reading a torch.save file made of arbitrary bytes never crashes, hangs, runs
// anything, reads outside the file or allocates beyond a cap: every input ends in a result. A
// file it accepts is consistent (entries sorted and unique, each slice inside the file and as
// long as its tensor), and verifying and restoring it end in a result too. Runs over the
// in-memory backend (io_backends/memory).
//
// The first byte chooses what the rest is:
//   0: a whole file (a zip, a legacy-format file, or anything);
//   1: a pickle, which the harness puts into a well-formed zip as <root>/data.pkl (its CRC
//      right, so that mutations reach the pickle machine) with records data/0 to data/7 of
//      0, 4, 8, ... 28 bytes;
//   2: a pickle read alone, then its state;
//   3: a DCP .metadata pickle, read alone, then its records.

#include <cstdint>
#include <cstdlib>
#include <deque>
#include <span>
#include <string>
#include <vector>

#include "mem_backend.hpp"
#include "meshckpt/pipeline/tensor_io.hpp"
#include "meshckpt/interchange/torch_io.hpp"
#include "meshckpt/format/dcp.hpp"
#include "meshckpt/format/pickle.hpp"
#include "meshckpt/format/torch_file.hpp"
#include "meshckpt/format/zip.hpp"

using namespace meshckpt;

namespace {

constexpr std::uint64_t max_target_bytes = 4u << 20;  // per restore: the harness's own memory cap

std::vector<std::byte> zip_around(std::span<const std::byte> pkl) {
  format::zip::zip_writer z;
  std::vector<std::byte> out;
  auto add = [&](const std::string& name, std::span<const std::byte> data) {
    auto h = z.begin_record(name, data.size(), format::zip::crc32_extend(0, data));
    out.insert(out.end(), h.begin(), h.end());
    out.insert(out.end(), data.begin(), data.end());
    (void)z.end_record();
  };
  add("m/data.pkl", pkl);
  std::vector<std::byte> data(28);
  for (std::size_t i = 0; i < data.size(); ++i) data[i] = static_cast<std::byte>(i * 7);
  for (int k = 0; k < 8; ++k) add("m/data/" + std::to_string(k), std::span(data).first(static_cast<std::size_t>(4 * k)));
  auto tail = z.finish();
  out.insert(out.end(), tail.begin(), tail.end());
  return out;
}

void read_file(const std::vector<std::byte>& file) {
  fuzzing::mem_backend be;
  be.file("m.pt") = file;
  auto t = read_torch_checkpoint(be, "m.pt");
  if (!t) return;
  const auto& m = t->manifest;
  for (std::size_t i = 0; i < m.tensors.size(); ++i) {
    const auto& x = m.tensors[i];
    if (i > 0 && !(m.tensors[i - 1].key < x.key)) std::abort();
    if (x.slices.size() != 1 || x.slices[0].file != 0) std::abort();
    const auto& s = x.slices[0];
    if (s.offset > file.size() || s.length > file.size() - s.offset) std::abort();
    const auto n = num_elements(x.global);
    if (!n || static_cast<std::uint64_t>(*n) * dtype_size(x.type) != s.length) std::abort();
  }
  if (t->skeleton.empty()) std::abort();
  (void)verify(be, "m.pt");
  std::deque<dtensor> keep;
  std::vector<named_tensor> targets;
  std::uint64_t total = 0;
  auto one = mesh::create({{"x", 1}}).value();
  for (const auto& x : m.tensors) {
    const std::uint64_t bytes = x.slices[0].length;
    if (total + bytes > max_target_bytes) continue;
    auto l = layout::create(std::vector<std::string>(x.global.size(), "unsharded"), one);
    if (!l) continue;
    auto d = dtensor::create(x.type, x.global, *l);
    if (!d) continue;
    total += bytes;
    keep.push_back(std::move(*d));
    targets.push_back({x.key, keep.back().view()});
  }
  (void)read_tensors(be, "m.pt", m, targets);
}

void read_pickle(std::span<const std::byte> in) {
  auto d = format::pickle::read(in, format::torch::state_policy(), "fuzz");
  if (!d) return;
  if (d->root >= d->nodes.size()) std::abort();
  auto s = format::torch::read_state(*d, "fuzz");
  if (!s) return;
  for (const auto& e : s->entries) {
    if (e.storage >= s->storages.size()) std::abort();
    const auto n = num_elements(e.dims);
    const auto& st = s->storages[e.storage];
    if (!n || static_cast<std::uint64_t>(*n) * dtype_size(e.type) != st.numel * dtype_size(st.type)) std::abort();
  }
}

void read_metadata(std::span<const std::byte> in) {
  auto d = format::pickle::read(in, format::dcp::metadata_policy(), "fuzz");
  if (!d) return;
  auto m = format::dcp::read_metadata(*d, "fuzz");
  if (!m) return;
  for (const auto& it : m->items) {
    if (!it.tensor) continue;
    std::int64_t sum = 0;
    for (const auto& c : it.chunks) sum += c.where.volume().value_or(0);
    if (sum != box::whole(it.size).volume().value_or(-1)) std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  auto in = std::as_bytes(std::span(data + 1, size - 1));
  switch (data[0] % 4) {
    case 0: read_file(std::vector<std::byte>(in.begin(), in.end())); break;
    case 1: read_file(zip_around(in)); break;
    case 2: read_pickle(in); break;
    default: read_metadata(in); break;
  }
  return 0;
}
