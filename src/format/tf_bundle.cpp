#include "meshckpt/format/tf_bundle.hpp"

#include <algorithm>
#include <bit>
#include <cstdio>
#include <limits>

#include "codec.hpp"
#include "meshckpt/format/crc32c.hpp"
#include <google/protobuf/arena.h>

#include "tensor_bundle.pb.h"
#include "trackable_object_graph.pb.h"
#include "tf_table.hpp"

namespace meshckpt::format::tf {

namespace {

struct dtype_row {
  int tf;
  const char* name;
  std::optional<dtype> ours;
  // A quantized type: stored as the plain integers of `ours` (TensorFlow's own storage), never
  // what a meshckpt dtype is written back as.
  bool storage_only = false;
};

// TensorFlow's types.proto, the part that has names worth printing.
constexpr dtype_row dtype_table[] = {
    {0, "DT_INVALID", std::nullopt},
    {1, "DT_FLOAT", dtype::float32},
    {2, "DT_DOUBLE", dtype::float64},
    {3, "DT_INT32", dtype::int32},
    {4, "DT_UINT8", dtype::uint8},
    {5, "DT_INT16", dtype::int16},
    {6, "DT_INT8", dtype::int8},
    {7, "DT_STRING", std::nullopt},
    {8, "DT_COMPLEX64", dtype::complex64},
    {9, "DT_INT64", dtype::int64},
    {10, "DT_BOOL", dtype::boolean},
    {11, "DT_QINT8", dtype::int8, true},
    {12, "DT_QUINT8", dtype::uint8, true},
    {13, "DT_QINT32", dtype::int32, true},
    {14, "DT_BFLOAT16", dtype::bfloat16},
    {15, "DT_QINT16", dtype::int16, true},
    {16, "DT_QUINT16", dtype::uint16, true},
    {17, "DT_UINT16", dtype::uint16},
    {18, "DT_COMPLEX128", dtype::complex128},
    {19, "DT_HALF", dtype::float16},
    {20, "DT_RESOURCE", std::nullopt},
    {21, "DT_VARIANT", std::nullopt},
    {22, "DT_UINT32", dtype::uint32},
    {23, "DT_UINT64", dtype::uint64},
    {24, "DT_FLOAT8_E5M2", dtype::float8_e5m2},
    {25, "DT_FLOAT8_E4M3FN", dtype::float8_e4m3},
};

constexpr std::int64_t max_rank = 64;
constexpr int max_shards = 100000;

error corrupt(std::string_view key, const std::string& what) {
  return make_error(errc::corrupt_manifest, "TF bundle index, entry \"" + std::string(key) + "\": " + what);
}

result<tf_slice> slice_of(std::string_view key, const tfproto::TensorSliceProto& p, const shape& global) {
  if (static_cast<std::size_t>(p.extent_size()) != global.size())
    return corrupt(key, "a slice of rank " + std::to_string(p.extent_size()) + " in a tensor of rank " + std::to_string(global.size()));
  tf_slice s;
  for (int d = 0; d < p.extent_size(); ++d) {
    const auto& e = p.extent(d);
    const std::int64_t start = e.start();
    const std::int64_t length = e.has_length_case() == tfproto::TensorSliceProto::Extent::kLength ? e.length() : -1;
    const std::int64_t dim = global[static_cast<std::size_t>(d)];
    const bool whole = length == -1;
    if (whole ? start != 0 : (start < 0 || length < 0 || start > dim || length > dim - start))
      return corrupt(key, "slice extent " + std::to_string(d) + " (start " + std::to_string(start) + ", length " + std::to_string(length) +
                              ") does not fit the dimension of " + std::to_string(dim));
    s.start.push_back(start);
    s.length.push_back(length);
  }
  return s;
}

result<bundle_entry> entry_of(const table_entry& t, int num_shards) {
  // Parsed on an arena: protobuf is not exception-safe, and an allocation failure in the middle
  // of a parse would leak what it had built; the arena frees it whatever happened.
  google::protobuf::Arena arena;
  auto& p = *google::protobuf::Arena::CreateMessage<tfproto::BundleEntryProto>(&arena);
  if (!p.ParseFromString(t.value)) return corrupt(t.key, "not a BundleEntryProto");
  bundle_entry e;
  e.key = t.key;
  e.tf_type = p.dtype();
  e.type = from_tf_dtype(e.tf_type);
  if (p.shape().unknown_rank()) return corrupt(t.key, "a shape of unknown rank");
  if (p.shape().dim_size() > max_rank)
    return corrupt(t.key, "rank " + std::to_string(p.shape().dim_size()) + " exceeds " + std::to_string(max_rank));
  for (const auto& d : p.shape().dim()) {
    if (d.size() < 0) return corrupt(t.key, "a dimension of size " + std::to_string(d.size()));
    e.global.push_back(d.size());
  }
  auto elements = num_elements(e.global);
  if (!elements) return corrupt(t.key, "shape " + to_string(e.global) + " has more elements than int64 holds");
  if (p.shard_id() < 0 || p.shard_id() >= num_shards)
    return corrupt(t.key, "data file " + std::to_string(p.shard_id()) + " of a bundle of " + std::to_string(num_shards));
  if (p.offset() < 0 || p.size() < 0 || static_cast<std::uint64_t>(p.offset()) > UINT64_MAX / 2 - static_cast<std::uint64_t>(p.size()))
    return corrupt(t.key, "offset " + std::to_string(p.offset()) + " and size " + std::to_string(p.size()) + " out of range");
  e.shard = p.shard_id();
  e.offset = static_cast<std::uint64_t>(p.offset());
  e.size = static_cast<std::uint64_t>(p.size());
  e.crc32c = crc32c::unmask(p.crc32c());
  for (const auto& sp : p.slices()) {
    BOOST_OUTCOME_TRY(auto s, slice_of(t.key, sp, e.global));
    e.slices.push_back(std::move(s));
  }
  if (e.slices.empty() && e.type) {
    const auto want = static_cast<std::uint64_t>(*elements) * static_cast<std::uint64_t>(dtype_size(*e.type));
    if (*elements > INT64_MAX / 8 || e.size != want)
      return corrupt(t.key, tf_dtype_name(e.tf_type) + " " + to_string(e.global) + " takes " + std::to_string(want) + " bytes, not " +
                                std::to_string(e.size));
  }
  return e;
}

// OrderedCode (TensorFlow's strings::OrderedCode) pieces.
void ordered_unsigned(std::string& out, std::uint64_t v) {
  const int n = v == 0 ? 0 : (64 - std::countl_zero(v) + 7) / 8;
  out += static_cast<char>(n);
  for (int i = n - 1; i >= 0; --i) out += static_cast<char>(static_cast<std::uint8_t>(v >> (8 * i)));
}

void ordered_string(std::string& out, std::string_view s) {
  for (char c : s) {
    out += c;
    if (c == '\x00')
      out += '\xff';
    else if (c == '\xff')
      out += '\x00';
  }
  out += '\x00';
  out += '\x01';
}

}  // namespace

std::string tf_dtype_name(int t) {
  for (const auto& r : dtype_table)
    if (r.tf == t) return r.name;
  if (t > 100 && t < 200) {
    for (const auto& r : dtype_table)
      if (r.tf == t - 100) return std::string(r.name) + "_REF";
  }
  return "unknown TensorFlow dtype " + std::to_string(t);
}

std::optional<dtype> from_tf_dtype(int t) noexcept {
  for (const auto& r : dtype_table)
    if (r.tf == t) return r.ours;
  return std::nullopt;
}

std::optional<int> to_tf_dtype(dtype t) noexcept {
  for (const auto& r : dtype_table)
    if (r.ours == t && !r.storage_only) return r.tf;
  return std::nullopt;
}

bool is_quantized(int t) noexcept {
  for (const auto& r : dtype_table)
    if (r.tf == t) return r.storage_only;
  return false;
}

box tf_slice::in(const shape& global) const {
  box b;
  for (std::size_t d = 0; d < start.size(); ++d) {
    const bool whole = length[d] == -1;
    b.origin.push_back(whole ? 0 : start[d]);
    b.extent.push_back(whole ? global[d] : length[d]);
  }
  return b;
}

const bundle_entry* bundle_index::find(std::string_view key) const {
  auto it = std::lower_bound(entries.begin(), entries.end(), key, [](const bundle_entry& e, std::string_view k) { return e.key < k; });
  return it != entries.end() && it->key == key ? &*it : nullptr;
}

result<bundle_index> decode_bundle_index(std::span<const std::byte> index_file) {
  try {
    BOOST_OUTCOME_TRY(auto table, read_table(index_file));
    if (table.empty() || !table.front().key.empty())
      return make_error(errc::unsupported,
                        "a LevelDB-format table without a tensor-bundle header (the empty key): a TensorFlow 1 \"V1\" "
                        "checkpoint (tf.compat.v1.train.Saver with write_version=V1), which meshckpt does not read; "
                        "convert it to V2 with TensorFlow, or it is not a checkpoint");
    google::protobuf::Arena arena;  // as in entry_of
    auto& h = *google::protobuf::Arena::CreateMessage<tfproto::BundleHeaderProto>(&arena);
    if (!h.ParseFromString(table.front().value))
      return make_error(errc::corrupt_manifest, "TF bundle index: the header is not a BundleHeaderProto");
    if (h.endianness() == tfproto::BundleHeaderProto::BIG)
      return make_error(errc::unsupported,
                        "TF bundle index: the bundle was written on a big-endian machine; meshckpt reads little-endian bundles");
    if (h.endianness() != tfproto::BundleHeaderProto::LITTLE)
      return make_error(errc::corrupt_manifest, "TF bundle index: endianness " + std::to_string(h.endianness()));
    if (h.version().min_consumer() > bundle_version)
      return make_error(errc::unsupported, "TF bundle index: needs a reader of bundle version " +
                                               std::to_string(h.version().min_consumer()) + "; meshckpt reads version " +
                                               std::to_string(bundle_version));
    for (int bad : h.version().bad_consumers())
      if (bad == bundle_version)
        return make_error(errc::unsupported, "TF bundle index: bundle version " + std::to_string(bundle_version) + " readers are excluded");
    if (h.num_shards() < 1 || h.num_shards() > max_shards)
      return make_error(errc::corrupt_manifest, "TF bundle index: " + std::to_string(h.num_shards()) + " data files");
    bundle_index out;
    out.num_shards = h.num_shards();
    out.producer = h.version().producer();
    out.min_consumer = h.version().min_consumer();
    out.entries.reserve(table.size() - 1);
    for (std::size_t i = 1; i < table.size(); ++i) {
      BOOST_OUTCOME_TRY(auto e, entry_of(table[i], out.num_shards));
      out.entries.push_back(std::move(e));
    }
    // Every slice of a partitioned tensor has its own entry, of the slice's shape.
    for (const auto& e : out.entries)
      for (const auto& s : e.slices) {
        const auto* part = out.find(slice_key(e.key, s));
        const auto b = s.in(e.global);
        if (!part) return corrupt(e.key, "slice " + to_string(b) + " has no entry of its own");
        if (part->tf_type != e.tf_type || part->global != b.extent || !part->slices.empty())
          return corrupt(e.key, "the entry of slice " + to_string(b) + " is of another dtype or shape");
      }
    return out;
  } catch (const std::bad_alloc&) {
    return out_of_memory("decoding a TF bundle index");
  }
}

result<std::vector<std::byte>> encode_bundle_index(const bundle_index& idx) {
  try {
    std::vector<table_entry> table;
    table.reserve(idx.entries.size() + 1);
    tfproto::BundleHeaderProto h;
    h.set_num_shards(idx.num_shards);
    h.set_endianness(tfproto::BundleHeaderProto::LITTLE);
    h.mutable_version()->set_producer(idx.producer);
    h.mutable_version()->set_min_consumer(idx.min_consumer);
    table.push_back({"", h.SerializeAsString()});
    for (std::size_t i = 0; i < idx.entries.size(); ++i) {
      const auto& e = idx.entries[i];
      if (e.key.empty()) return make_error(errc::invalid_argument, "TF bundle: an entry with an empty key (the header's)");
      if (i > 0 && !(idx.entries[i - 1].key < e.key))
        return make_error(errc::invalid_argument, "TF bundle: entry \"" + e.key + "\" out of key order");
      tfproto::BundleEntryProto p;
      p.set_dtype(static_cast<tfproto::DataType>(e.tf_type));
      for (auto d : e.global) p.mutable_shape()->add_dim()->set_size(d);
      if (e.slices.empty()) {
        p.set_shard_id(e.shard);
        p.set_offset(static_cast<std::int64_t>(e.offset));
        p.set_size(static_cast<std::int64_t>(e.size));
        p.set_crc32c(crc32c::mask(e.crc32c));
      }
      for (const auto& sl : e.slices) {
        auto* sp = p.add_slices();
        for (std::size_t d = 0; d < sl.start.size(); ++d) {
          auto* x = sp->add_extent();
          // TensorFlow leaves a whole dimension's extent empty (start 0, no length).
          if (sl.length[d] == -1) continue;
          x->set_start(sl.start[d]);
          x->set_length(sl.length[d]);
        }
      }
      table.push_back({e.key, p.SerializeAsString()});
    }
    return write_table(table);
  } catch (const std::bad_alloc&) {
    return out_of_memory("encoding a TF bundle index");
  }
}

std::string encode_trackable_graph(const trackable_graph& g) {
  meshckpt::tfproto::TrackableObjectGraph p;
  for (const auto& n : g.nodes) {
    auto* pn = p.add_nodes();
    for (const auto& [name, id] : n.children) {
      auto* c = pn->add_children();
      c->set_node_id(static_cast<std::int32_t>(id));
      c->set_local_name(name);
    }
    for (const auto& a : n.attributes) {
      auto* pa = pn->add_attributes();
      pa->set_name(a.name);
      pa->set_full_name(a.full_name);
      pa->set_checkpoint_key(a.checkpoint_key);
    }
    for (const auto& sv : n.slot_variables) {
      auto* ps = pn->add_slot_variables();
      ps->set_original_variable_node_id(static_cast<std::int32_t>(sv.original));
      ps->set_slot_name(sv.slot_name);
      ps->set_slot_variable_node_id(static_cast<std::int32_t>(sv.slot));
    }
  }
  return p.SerializeAsString();
}

std::string data_file_name(std::string_view base, int shard, int num_shards) {
  char buf[64];
  std::snprintf(buf, sizeof buf, ".data-%05d-of-%05d", shard, num_shards);
  return std::string(base) + buf;
}

std::string ordered_signed(std::int64_t v) {
  // TensorFlow's OrderedCode::WriteSignedNumIncreasing: a header of L leading one bits (after
  // the sign), then the value in 7L - 1 bits, in L bytes; negative values are complemented.
  static constexpr std::uint8_t header[11][2] = {{0, 0},    {0x80, 0}, {0xc0, 0}, {0xe0, 0},    {0xf0, 0},   {0xf8, 0},
                                                 {0xfc, 0}, {0xfe, 0}, {0xff, 0}, {0xff, 0x80}, {0xff, 0xc0}};
  const std::uint64_t x = v < 0 ? ~static_cast<std::uint64_t>(v) : static_cast<std::uint64_t>(v);
  if (x < 64) return std::string(1, static_cast<char>(static_cast<std::uint8_t>(header[1][0] ^ static_cast<std::uint8_t>(v))));
  const int bits = 63 - std::countl_zero(x);  // floor(log2 x), >= 6
  const int len = (bits + 8) / 7;             // 7 * len - 1 bits hold x
  std::uint8_t buf[10];
  const std::uint8_t sign = v < 0 ? 0xff : 0;
  buf[0] = buf[1] = sign;
  for (int i = 0; i < 8; ++i) buf[2 + i] = static_cast<std::uint8_t>(static_cast<std::uint64_t>(v) >> (8 * (7 - i)));
  std::uint8_t* begin = buf + 10 - len;
  begin[0] ^= header[len][0];
  begin[1] ^= header[len][1];
  return std::string(reinterpret_cast<const char*>(begin), static_cast<std::size_t>(len));
}

std::string slice_key(std::string_view key, const tf_slice& s) {
  std::string out;
  ordered_unsigned(out, 0);
  ordered_string(out, key);
  ordered_unsigned(out, s.start.size());
  for (std::size_t d = 0; d < s.start.size(); ++d) {
    out += ordered_signed(s.start[d]);
    out += ordered_signed(s.length[d]);
  }
  return out;
}

result<trackable_graph> decode_trackable_graph(std::span<const std::byte> bytes, std::size_t max_nodes) {
  auto bad = [](const std::string& what) { return make_error(errc::corrupt_manifest, "TensorFlow object graph: " + what); };
  google::protobuf::Arena arena;  // as in entry_of
  auto& p = *google::protobuf::Arena::CreateMessage<meshckpt::tfproto::TrackableObjectGraph>(&arena);
  if (bytes.size() > static_cast<std::size_t>(std::numeric_limits<int>::max()) ||
      !p.ParseFromArray(bytes.data(), static_cast<int>(bytes.size())))
    return bad("not a TrackableObjectGraph");
  if (p.nodes_size() == 0) return bad("no nodes");
  const auto n = static_cast<std::size_t>(p.nodes_size());
  if (n > max_nodes)
    return make_error(errc::limit_exceeded, "TensorFlow object graph: " + std::to_string(n) + " nodes exceed " + std::to_string(max_nodes));
  auto id = [&](std::int32_t v, std::size_t node, const std::string& what) -> result<std::uint32_t> {
    if (v < 0 || static_cast<std::size_t>(v) >= n)
      return bad("node " + std::to_string(node) + ": " + what + " names node " + std::to_string(v) + " of " + std::to_string(n));
    return static_cast<std::uint32_t>(v);
  };
  trackable_graph g;
  g.nodes.resize(n);
  for (std::size_t i = 0; i < n; ++i) {
    const auto& pn = p.nodes(static_cast<int>(i));
    auto& node = g.nodes[i];
    for (const auto& c : pn.children()) {
      BOOST_OUTCOME_TRY(auto to, id(c.node_id(), i, "child \"" + c.local_name() + "\""));
      node.children.emplace_back(c.local_name(), to);
    }
    for (const auto& a : pn.attributes()) node.attributes.push_back({a.name(), a.full_name(), a.checkpoint_key()});
    for (const auto& sv : pn.slot_variables()) {
      BOOST_OUTCOME_TRY(auto orig, id(sv.original_variable_node_id(), i, "slot \"" + sv.slot_name() + "\" (its variable)"));
      BOOST_OUTCOME_TRY(auto slot, id(sv.slot_variable_node_id(), i, "slot \"" + sv.slot_name() + "\""));
      node.slot_variables.push_back({orig, sv.slot_name(), slot});
    }
  }
  return g;
}

result<std::vector<std::string>> decode_string_tensor(std::span<const std::byte> bytes, std::uint64_t count, std::uint32_t crc) {
  codec::reader r(bytes.data(), bytes.data() + bytes.size(), 0, "TF string tensor");
  // Each length takes a byte at least: a count the bytes cannot hold is refused before anything
  // is allocated.
  if (count > bytes.size())
    return make_error(errc::corrupt_manifest,
                      "TF string tensor: " + std::to_string(count) + " strings in " + std::to_string(bytes.size()) + " bytes");
  std::vector<std::uint64_t> lengths(static_cast<std::size_t>(count));
  std::uint32_t running = 0;
  std::uint64_t total = 0;
  for (auto& n : lengths) {
    n = r.varint("string length");
    if (r.failed()) return r.err();
    if (n <= UINT32_MAX) {
      const auto n32 = static_cast<std::uint32_t>(n);
      std::byte le[4];
      for (int i = 0; i < 4; ++i) le[i] = static_cast<std::byte>(n32 >> (8 * i));
      running = crc32c::extend(running, le);
    } else {
      std::byte le[8];
      for (int i = 0; i < 8; ++i) le[i] = static_cast<std::byte>(n >> (8 * i));
      running = crc32c::extend(running, le);
    }
    if (n > bytes.size() - total) return make_error(errc::corrupt_manifest, "TF string tensor: the strings' lengths exceed its bytes");
    total += n;
  }
  if (r.remaining() < 4) return make_error(errc::corrupt_manifest, "TF string tensor: truncated before its length checksum");
  const auto* stored = r.take(4);
  std::uint32_t masked = 0;
  for (int i = 0; i < 4; ++i) masked |= std::uint32_t{static_cast<std::uint8_t>(stored[i])} << (8 * i);
  if (crc32c::unmask(masked) != running)
    return make_error(errc::checksum_mismatch, "TF string tensor: the checksum of its lengths does not match");
  running = crc32c::extend(running, {stored, 4});
  if (r.remaining() != total)
    return make_error(errc::corrupt_manifest,
                      "TF string tensor: " + std::to_string(r.remaining()) + " bytes of strings, the lengths say " + std::to_string(total));
  std::vector<std::string> out;
  out.reserve(lengths.size());
  for (auto n : lengths) {
    const auto* p = r.take(static_cast<std::size_t>(n));
    running = crc32c::extend(running, {p, static_cast<std::size_t>(n)});
    out.emplace_back(reinterpret_cast<const char*>(p), static_cast<std::size_t>(n));
  }
  if (running != crc)
    return make_error(errc::checksum_mismatch,
                      "TF string tensor: CRC-32C " + std::to_string(running) + ", recorded " + std::to_string(crc));
  return out;
}

std::vector<std::byte> encode_string_tensor(std::span<const std::string> elements, std::uint32_t& crc) {
  codec::writer w;
  crc = 0;
  for (const auto& s : elements) {
    w.varint(s.size());
    std::byte le[8];
    const std::uint64_t n = s.size();
    for (int i = 0; i < 8; ++i) le[i] = static_cast<std::byte>(n >> (8 * i));
    crc = crc32c::extend(crc, std::span<const std::byte>(le, n <= UINT32_MAX ? 4 : 8));
  }
  const std::uint32_t masked = crc32c::mask(crc);
  const auto at = w.bytes().size();
  w.fixed(masked, 4);
  crc = crc32c::extend(crc, std::span<const std::byte>(w.bytes()).subspan(at, 4));
  for (const auto& s : elements) {
    w.raw(s.data(), s.size());
    crc = crc32c::extend(crc, std::as_bytes(std::span(s.data(), s.size())));
  }
  return std::move(w.bytes());
}

}  // namespace meshckpt::format::tf
