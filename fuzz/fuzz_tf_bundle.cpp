// Property: decoding a TensorFlow bundle index, or a DT_STRING tensor, never crashes, never
// reads outside its input and never allocates beyond the caps; an index it accepts is
// consistent (entries in key order, each found by its key, every slice backed by an entry).
//
// The first byte chooses what the rest is:
//   0: a whole .index file;
//   1: a list of table entries, each [u8 key length][key][u16 value length, little-endian]
//      [value], written into a table whose checksums are right, so that mutations reach the
//      header and entry messages instead of stopping at a block checksum;
//   2: a string tensor: [u8 element count][u32 CRC-32C, little-endian][stored bytes];
//   3: a serialized TrackableObjectGraph (a TF2 checkpoint's object graph).

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <span>
#include <string>
#include <vector>

#include "format/tf_table.hpp"
#include "meshckpt/format/tf_bundle.hpp"

namespace {

using namespace meshckpt::format::tf;

void check_index(std::span<const std::byte> index) {
  auto idx = decode_bundle_index(index);
  if (!idx) return;
  for (std::size_t i = 0; i < idx->entries.size(); ++i) {
    const auto& e = idx->entries[i];
    if (i > 0 && !(idx->entries[i - 1].key < e.key)) std::abort();
    if (idx->find(e.key) != &e) std::abort();
    if (e.shard < 0 || e.shard >= idx->num_shards) std::abort();
    for (const auto& s : e.slices)
      if (!idx->find(slice_key(e.key, s))) std::abort();
  }
}

void check_graph(std::span<const std::byte> bytes) {
  auto g = decode_trackable_graph(bytes);
  if (!g) return;
  if (g->nodes.empty()) std::abort();
  for (const auto& n : g->nodes) {
    for (const auto& [name, id] : n.children)
      if (id >= g->nodes.size()) std::abort();
    for (const auto& sv : n.slot_variables)
      if (sv.original >= g->nodes.size() || sv.slot >= g->nodes.size()) std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  auto in = std::as_bytes(std::span(data + 1, size - 1));
  switch (data[0] % 4) {
    case 0: check_index(in); break;
    case 1: {
      std::vector<table_entry> entries;
      std::size_t p = 0;
      while (p < in.size()) {
        const std::size_t kn = static_cast<std::uint8_t>(in[p++]);
        if (in.size() - p < kn + 2) break;
        std::string key(reinterpret_cast<const char*>(in.data() + p), kn);
        p += kn;
        const std::size_t vn = static_cast<std::uint8_t>(in[p]) | static_cast<std::size_t>(static_cast<std::uint8_t>(in[p + 1])) << 8;
        p += 2;
        if (in.size() - p < vn) break;
        entries.push_back({std::move(key), std::string(reinterpret_cast<const char*>(in.data() + p), vn)});
        p += vn;
      }
      std::stable_sort(entries.begin(), entries.end(), [](const auto& a, const auto& b) { return a.key < b.key; });
      entries.erase(std::unique(entries.begin(), entries.end(), [](const auto& a, const auto& b) { return a.key == b.key; }),
                    entries.end());
      auto table = write_table(entries);
      if (!table) std::abort();
      check_index(*table);
      break;
    }
    case 3: check_graph(in); break;
    default: {
      if (in.size() < 5) return 0;
      const std::uint64_t count = static_cast<std::uint8_t>(in[0]);
      std::uint32_t crc = 0;
      for (int i = 0; i < 4; ++i) crc |= std::uint32_t{static_cast<std::uint8_t>(in[1 + static_cast<std::size_t>(i)])} << (8 * i);
      auto s = decode_string_tensor(in.subspan(5), count, crc);
      if (s && s->size() != count) std::abort();
      break;
    }
  }
  return 0;
}
