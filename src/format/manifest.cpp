#include "meshckpt/format/manifest.hpp"

#include <algorithm>
#include <array>
#include <cstring>

#include "codec.hpp"
#include "meshckpt/format/checksum.hpp"
#include "meshckpt/format/crc32c.hpp"
#include "meshckpt/format/zip.hpp"
#include "meshckpt/format/names.hpp"
#include "meshckpt/tensor/arith.hpp"

namespace meshckpt::format {

std::uint32_t extend_crc(checksum_kind k, std::uint32_t crc, std::span<const std::byte> data) noexcept {
  if (k == checksum_kind::unchecked) return 0;
  return k == checksum_kind::crc32_whole ? zip::crc32_extend(crc, data) : crc32c::extend(crc, data);
}

namespace {

using codec::reader;
using codec::writer;

constexpr std::size_t header_bytes = 24;
constexpr std::size_t trailer_bytes = 8;
constexpr std::uint64_t max_mesh_dims = 16;
constexpr std::uint64_t max_devices = std::uint64_t{1} << 20;

enum section_tag : std::uint64_t { tag_info = 1, tag_meshes = 2, tag_files = 3, tag_tensors = 4, tag_extension = 5 };

std::uint64_t le(const std::byte* p, int n) {
  std::uint64_t v = 0;
  for (int i = 0; i < n; ++i) v |= std::uint64_t{static_cast<std::uint8_t>(p[i])} << (8 * i);
  return v;
}

error bad(std::string what) { return make_error(errc::corrupt_manifest, std::move(what)); }

std::string tensor_ctx(const saved_tensor& t) { return "tensor \"" + t.key + "\""; }

// Validates the slices of one tensor: each must be one of the non-empty shard boxes that the
// layout implies, each at most once, and all of them present.
result<void> validate_slices(const manifest& m, const saved_tensor& t, const saved_mesh& mesh,
                             const std::vector<std::int64_t>& sorted_devices, const limits& lim) {
  const std::size_t rank = t.global.size();
  std::int64_t elem = dtype_size(t.type);
  // Per dimension: chunk length and number of non-empty shards (rank <= max_rank, checked by
  // the caller; fixed arrays keep this allocation-free for the common one-slice tensor).
  if (rank > 64) return make_error(errc::limit_exceeded, tensor_ctx(t) + " has rank above the cap");
  std::array<std::int64_t, 64> chunk{}, nonempty{};
  std::uint64_t expected = 1;
  for (std::size_t d = 0; d < rank; ++d) {
    std::int64_t n = t.global[d];
    std::int64_t k = t.axes[d] < 0 ? 1 : mesh.dims[static_cast<std::size_t>(t.axes[d])].size;
    chunk[d] = n == 0 ? 0 : n / k + (n % k != 0);
    nonempty[d] = n == 0 ? 0 : n / chunk[d] + (n % chunk[d] != 0);
    expected *= static_cast<std::uint64_t>(nonempty[d]);  // <= devices <= 2^20 overall
    if (expected > max_devices) expected = max_devices + 1;
  }
  if (t.slices.size() > lim.max_slices_per_tensor) return make_error(errc::limit_exceeded, tensor_ctx(t) + " has too many slices");
  if (t.slices.size() != expected)
    return bad(tensor_ctx(t) + " has " + std::to_string(t.slices.size()) + " slices; its shape " + to_string(t.global) +
               " and layout need " + std::to_string(expected));
  std::vector<std::uint64_t> seen;
  if (t.slices.size() > 1) seen.reserve(t.slices.size());
  for (const auto& s : t.slices) {
    // Built only on the error path: this loop runs once per slice of every tensor.
    auto ctx = [&] {
      return tensor_ctx(t) + " slice " +
             (s.where.rank() == rank && s.where.extent.size() == rank ? to_string(s.where) : std::string("(wrong rank)"));
    };
    if (s.where.origin.size() != rank || s.where.extent.size() != rank)
      return bad(ctx() + ": box rank differs from the tensor's rank " + std::to_string(rank));
    std::uint64_t flat = 0;
    for (std::size_t d = 0; d < rank; ++d) {
      std::int64_t o = s.where.origin[d], e = s.where.extent[d];
      if (o < 0 || e <= 0 || chunk[d] == 0 || o % chunk[d] != 0) return bad(ctx() + ": not a shard box of the saved layout");
      std::int64_t i = o / chunk[d];
      if (i >= nonempty[d]) return bad(ctx() + ": outside the global shape " + to_string(t.global));
      auto [lo, hi] = split_range(t.global[d], t.axes[d] < 0 ? 1 : mesh.dims[static_cast<std::size_t>(t.axes[d])].size, i);
      if (lo != o || hi - lo != e) return bad(ctx() + ": not a shard box of the saved layout");
      flat = flat * static_cast<std::uint64_t>(nonempty[d]) + static_cast<std::uint64_t>(i);
    }
    if (t.slices.size() > 1) seen.push_back(flat);
    auto vol = checked_mul(*s.where.volume(), elem);
    if (!vol || static_cast<std::uint64_t>(*vol) != s.length)
      return bad(ctx() + ": length " + std::to_string(s.length) + " differs from the box's byte size");
    if (s.file >= m.files.size()) return bad(ctx() + ": file index " + std::to_string(s.file) + " is out of range");
    const auto& f = m.files[s.file];
    auto end = checked_add_u64(s.offset, s.length);
    if (!end || *end > f.size)
      return bad(ctx() + ": range [" + std::to_string(s.offset) + ", +" + std::to_string(s.length) + ") is outside file \"" + f.name +
                 "\" of " + std::to_string(f.size) + " bytes");
    if (!std::binary_search(sorted_devices.begin(), sorted_devices.end(), s.writer_device))
      return bad(ctx() + ": writer device " + std::to_string(s.writer_device) + " is not in the mesh");
    if (s.checksums.size() != chunk_count(s.length, m.chunk_bytes))
      return bad(ctx() + ": has " + std::to_string(s.checksums.size()) + " checksums, expected " +
                 std::to_string(chunk_count(s.length, m.chunk_bytes)));
  }
  std::sort(seen.begin(), seen.end());
  if (std::adjacent_find(seen.begin(), seen.end()) != seen.end()) return bad(tensor_ctx(t) + " stores the same slice twice");
  return success();
}

}  // namespace

const saved_tensor* manifest::find(std::string_view key) const {
  auto it = std::lower_bound(tensors.begin(), tensors.end(), key, [](const saved_tensor& t, std::string_view k) { return t.key < k; });
  return it != tensors.end() && it->key == key ? &*it : nullptr;
}

std::uint64_t manifest::stored_bytes() const {
  std::uint64_t n = 0;
  for (const auto& t : tensors)
    for (const auto& s : t.slices) n += s.length;
  return n;
}

result<void> validate(const manifest& m, const limits& lim) {
  if (m.checksum != checksum_kind::xxh3_chunks)
    return make_error(errc::unsupported, "a TensorFlow bundle read as a manifest (one CRC-32C per slice) is not a meshckpt manifest");
  if (m.chunk_bytes < 4096 || m.chunk_bytes > (std::uint64_t{1} << 30))
    return bad("chunk size " + std::to_string(m.chunk_bytes) + " is outside [4096, 2^30]");
  if (m.meshes.size() > lim.max_meshes) return make_error(errc::limit_exceeded, "too many meshes");
  if (m.files.size() > lim.max_files) return make_error(errc::limit_exceeded, "too many data files");
  if (m.tensors.size() > lim.max_tensors) return make_error(errc::limit_exceeded, "too many tensors");
  if (m.extensions.size() > lim.max_extensions) return make_error(errc::limit_exceeded, "too many extensions");

  std::vector<std::vector<std::int64_t>> sorted_devices(m.meshes.size());
  for (std::size_t i = 0; i < m.meshes.size(); ++i) {
    const auto& ms = m.meshes[i];
    std::string ctx = "mesh " + std::to_string(i);
    if (ms.dims.size() > max_mesh_dims) return bad(ctx + " has more than 16 dimensions");
    std::uint64_t n = 1;
    for (std::size_t d = 0; d < ms.dims.size(); ++d) {
      if (!valid_mesh_dim_name(ms.dims[d].name)) return bad(ctx + " has an invalid dimension name");
      for (std::size_t e = 0; e < d; ++e)
        if (ms.dims[e].name == ms.dims[d].name) return bad(ctx + " repeats dimension \"" + ms.dims[d].name + "\"");
      if (ms.dims[d].size < 1 || static_cast<std::uint64_t>(ms.dims[d].size) > max_devices)
        return bad(ctx + " dimension \"" + ms.dims[d].name + "\" has an invalid size");
      n *= static_cast<std::uint64_t>(ms.dims[d].size);
      if (n > max_devices) return bad(ctx + " has more than 2^20 devices");
    }
    if (ms.device_ids.size() != n)
      return bad(ctx + " lists " + std::to_string(ms.device_ids.size()) + " devices, its shape needs " + std::to_string(n));
    auto& sd = sorted_devices[i];
    sd = ms.device_ids;
    std::sort(sd.begin(), sd.end());
    if (!sd.empty() && sd.front() < 0) return bad(ctx + " has a negative device id");
    if (std::adjacent_find(sd.begin(), sd.end()) != sd.end()) return bad(ctx + " repeats a device id");
  }
  {
    std::vector<std::string_view> names;
    names.reserve(m.files.size());
    for (const auto& f : m.files) {
      if (!is_plain_name(f.name))
        return make_error(errc::unsafe_path, "data file name \"" + f.name + "\" is not a plain name inside the checkpoint directory");
      if (f.size > (std::uint64_t{1} << 62)) return bad("data file \"" + f.name + "\" claims an impossible size");
      names.push_back(f.name);
    }
    std::sort(names.begin(), names.end());
    if (std::adjacent_find(names.begin(), names.end()) != names.end()) return bad("a data file is listed twice");
  }
  for (std::size_t i = 0; i < m.tensors.size(); ++i) {
    const auto& t = m.tensors[i];
    if (t.key.empty() || t.key.size() > lim.max_key_bytes) return bad("tensor " + std::to_string(i) + " has an empty or over-long key");
    if (i && !(m.tensors[i - 1].key < t.key))
      return bad(tensor_ctx(t) + " is out of order or duplicated (keys must be strictly increasing)");
    if (dtype_size(t.type) == 0) return bad(tensor_ctx(t) + " has an unknown dtype");
    if (t.global.size() > lim.max_rank) return make_error(errc::limit_exceeded, tensor_ctx(t) + " has rank above the cap");
    if (t.mesh >= m.meshes.size()) return bad(tensor_ctx(t) + " refers to mesh " + std::to_string(t.mesh) + ", which does not exist");
    const auto& ms = m.meshes[t.mesh];
    if (t.axes.size() != t.global.size()) return bad(tensor_ctx(t) + " layout rank differs from its shape's rank");
    for (std::size_t d = 0; d < t.axes.size(); ++d) {
      if (t.axes[d] < -1 || t.axes[d] >= static_cast<std::int32_t>(ms.dims.size()))
        return bad(tensor_ctx(t) + " layout names a mesh dimension that does not exist");
      for (std::size_t e = 0; e < d; ++e)
        if (t.axes[d] >= 0 && t.axes[e] == t.axes[d]) return bad(tensor_ctx(t) + " layout uses a mesh dimension twice");
    }
    auto n = num_elements(t.global);
    if (!n || !checked_mul(*n, dtype_size(t.type)) || *checked_mul(*n, dtype_size(t.type)) > (std::int64_t{1} << 62))
      return bad(tensor_ctx(t) + " shape " + to_string(t.global) + " is too large");
    BOOST_OUTCOME_TRY(validate_slices(m, t, ms, sorted_devices[t.mesh], lim));
  }
  for (std::size_t i = 0; i < m.extensions.size(); ++i) {
    const auto& e = m.extensions[i];
    if (e.name.empty() || e.name.size() > 256) return bad("extension " + std::to_string(i) + " has an invalid name");
    for (std::size_t j = 0; j < i; ++j)
      if (m.extensions[j].name == e.name) return bad("extension \"" + e.name + "\" appears twice");
  }
  return success();
}

void put_meshes(codec::writer& w, const std::vector<saved_mesh>& meshes) {
  w.varint(meshes.size());
  for (const auto& ms : meshes) {
    w.varint(ms.dims.size());
    for (const auto& d : ms.dims) {
      w.str(d.name);
      w.varint(static_cast<std::uint64_t>(d.size));
    }
    w.varint(ms.device_ids.size());
    for (auto id : ms.device_ids) w.varint(static_cast<std::uint64_t>(id));
  }
}

void put_tensor_head(codec::writer& w, const saved_tensor& t) {
  w.str(t.key);
  w.varint(static_cast<std::uint64_t>(t.type));
  w.varint(t.global.size());
  for (auto d : t.global) w.varint(static_cast<std::uint64_t>(d));
  w.varint(t.mesh);
  for (auto a : t.axes) w.varint(static_cast<std::uint64_t>(a + 1));
}

void put_box(codec::writer& w, const saved_slice& s) {
  for (auto o : s.where.origin) w.varint(static_cast<std::uint64_t>(o));
  for (auto e : s.where.extent) w.varint(static_cast<std::uint64_t>(e));
}

result<void> encode_into(const manifest& m, std::vector<std::byte>& out) {
  BOOST_OUTCOME_TRY(validate(m));
  out.clear();
  writer w(std::move(out));
  w.raw(magic, sizeof magic);
  w.fixed(major_version, 2);
  w.fixed(minor_version, 2);
  w.fixed(0, 4);
  w.fixed(0, 8);  // the body's length, patched below
  auto sec = w.open_section(tag_info);
  w.varint(m.chunk_bytes);
  w.varint(m.created_unix_ms);
  w.str(m.writer);
  w.close_section(sec);
  sec = w.open_section(tag_meshes);
  put_meshes(w, m.meshes);
  w.close_section(sec);
  sec = w.open_section(tag_files);
  w.varint(m.files.size());
  for (const auto& f : m.files) {
    w.str(f.name);
    w.varint(f.size);
  }
  w.close_section(sec);
  sec = w.open_section(tag_tensors);
  w.varint(m.tensors.size());
  for (const auto& t : m.tensors) {
    put_tensor_head(w, t);
    w.varint(t.slices.size());
    for (const auto& sl : t.slices) {
      put_box(w, sl);
      w.varint(sl.file);
      w.varint(sl.offset);
      w.varint(sl.length);
      w.varint(static_cast<std::uint64_t>(sl.writer_device));
      for (auto c : sl.checksums) w.fixed(c, 8);
    }
  }
  w.close_section(sec);
  for (const auto& e : m.extensions) {
    sec = w.open_section(tag_extension);
    w.str(e.name);
    w.varint(e.bytes.size());
    w.raw(e.bytes.data(), e.bytes.size());
    w.close_section(sec);
  }
  out = std::move(w.bytes());
  const std::uint64_t body = out.size() - header_bytes;
  for (int i = 0; i < 8; ++i) out[16 + static_cast<std::size_t>(i)] = static_cast<std::byte>(body >> (8 * i));
  const std::uint64_t sum = checksum(out);
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<std::byte>(sum >> (8 * i)));
  return success();
}

result<std::vector<std::byte>> encode(const manifest& m) {
  std::vector<std::byte> out;
  BOOST_OUTCOME_TRY(encode_into(m, out));
  return out;
}

result<manifest> decode(std::span<const std::byte> bytes, const limits& lim) {
  manifest m;
  BOOST_OUTCOME_TRY(decode_into(bytes, m, lim));
  return m;
}

namespace {

// The header and trailer: size, magic, length, checksum, version, flags. The checksum is
// checked before the version so that a bit flip in the version field is reported as
// corruption, not as a future format. Returns the minor version.
result<std::uint16_t> check_envelope(std::span<const std::byte> bytes, const limits& lim) {
  if (bytes.size() > lim.max_manifest_bytes)
    return make_error(errc::limit_exceeded, "manifest of " + std::to_string(bytes.size()) + " bytes exceeds the cap of " +
                                                std::to_string(lim.max_manifest_bytes));
  if (bytes.size() < header_bytes + trailer_bytes) {
    if (bytes.size() >= sizeof magic && std::memcmp(bytes.data(), magic, sizeof magic) != 0)
      return bad("not a meshckpt manifest (bad magic)");
    return bad("manifest is truncated: " + std::to_string(bytes.size()) + " bytes, at least " +
               std::to_string(header_bytes + trailer_bytes) + " needed");
  }
  if (std::memcmp(bytes.data(), magic, sizeof magic) != 0) return bad("not a meshckpt manifest (bad magic)");
  auto major = le(bytes.data() + 8, 2), minor = le(bytes.data() + 10, 2);
  std::uint64_t body_len = le(bytes.data() + 16, 8);
  if (body_len != bytes.size() - header_bytes - trailer_bytes)
    return bad("manifest length field says " + std::to_string(body_len) + " body bytes but the file has " +
               std::to_string(bytes.size() - header_bytes - trailer_bytes) + " (truncated or padded)");
  std::uint64_t want = le(bytes.data() + bytes.size() - trailer_bytes, 8);
  std::uint64_t got = checksum(bytes.first(bytes.size() - trailer_bytes));
  if (want != got)
    return make_error(errc::corrupt_manifest,
                      "manifest checksum mismatch (stored " + token_hex(want) + ", computed " + token_hex(got) + ")");
  if (major != major_version)
    return make_error(errc::unsupported_version, "manifest format version " + std::to_string(major) + "." + std::to_string(minor) +
                                                     " is not supported (this build reads major version " + std::to_string(major_version) +
                                                     ")");
  if (le(bytes.data() + 12, 4) != 0) return bad("manifest header flags are not zero");
  return static_cast<std::uint16_t>(minor);
}

void decode_meshes(reader& s, manifest& m, const limits& lim) {
  std::size_t n = s.count("mesh count", lim.max_meshes, 2);
  m.meshes.resize(n);
  for (auto& ms : m.meshes) {
    std::size_t nd = s.count("mesh rank", max_mesh_dims, 2);
    ms.dims.resize(nd);
    for (auto& d : ms.dims) {
      s.str("mesh dimension name", 64, d.name);
      d.size = s.bounded("mesh dimension size", max_devices);
    }
    std::size_t nid = s.count("device count", max_devices, 1);
    ms.device_ids.resize(nid);
    for (auto& id : ms.device_ids) id = s.bounded("device id", std::uint64_t{1} << 62);
    if (s.failed()) break;
  }
}

void decode_files(reader& s, manifest& m, const limits& lim) {
  std::size_t n = s.count("file count", lim.max_files, 2);
  m.files.resize(n);
  for (auto& f : m.files) {
    s.str("file name", 255, f.name);
    f.size = s.varint("file size");
    if (s.failed()) break;
  }
}

void decode_slice(reader& s, const saved_tensor& t, saved_slice& sl, std::uint64_t chunk_bytes, const limits& lim) {
  const std::size_t rank = t.global.size();
  sl.where.origin.resize(rank);
  sl.where.extent.resize(rank);
  for (auto& o : sl.where.origin) o = s.bounded("slice origin", std::uint64_t{1} << 62);
  for (auto& e : sl.where.extent) e = s.bounded("slice extent", std::uint64_t{1} << 62);
  sl.file = static_cast<std::uint32_t>(s.bounded("file index", lim.max_files));
  sl.offset = s.varint("slice offset");
  sl.length = s.varint("slice length");
  sl.writer_device = s.bounded("writer device", std::uint64_t{1} << 62);
  if (s.failed()) return;
  std::uint64_t nc = chunk_bytes ? chunk_count(sl.length, chunk_bytes) : 0;
  if (nc > s.remaining() / 8) {
    s.fail(errc::corrupt_manifest, "tensor \"" + t.key + "\" slice checksums are truncated");
    return;
  }
  sl.checksums.resize(nc);
  for (auto& c : sl.checksums) c = s.fixed64("checksum");
}

void decode_tensors(reader& s, manifest& m, const limits& lim) {
  // Smallest tensor: key(2) dtype rank mesh nslices = 6 bytes.
  std::size_t n = s.count("tensor count", lim.max_tensors, 6);
  m.tensors.resize(n);
  for (auto& t : m.tensors) {
    s.str("tensor key", lim.max_key_bytes, t.key);
    auto code = s.varint("dtype");
    auto dt = dtype_from_code(code);
    if (!s.failed() && !dt) s.fail(errc::corrupt_manifest, "tensor \"" + t.key + "\" has unknown dtype code " + std::to_string(code));
    t.type = dt.value_or(dtype::float32);
    std::size_t rank = s.count("rank", lim.max_rank, 2);
    t.global.resize(rank);
    for (auto& d : t.global) d = s.bounded("dimension", std::uint64_t{1} << 62);
    t.mesh = static_cast<std::uint32_t>(s.bounded("mesh index", lim.max_meshes));
    t.axes.resize(rank);
    for (auto& a : t.axes) a = static_cast<std::int32_t>(s.bounded("layout axis", max_mesh_dims)) - 1;
    std::size_t ns = s.count("slice count", lim.max_slices_per_tensor, 4 + 2 * rank);
    t.slices.resize(ns);
    for (auto& sl : t.slices) {
      decode_slice(s, t, sl, m.chunk_bytes, lim);
      if (s.failed()) break;
    }
    if (s.failed()) break;
  }
}

result<void> decode_extension(reader& s, manifest& m, const limits& lim) {
  if (m.extensions.size() >= lim.max_extensions) return make_error(errc::limit_exceeded, "too many extensions");
  extension e;
  e.name = s.str("extension name", 256);
  std::size_t n = s.count("extension length", ~std::uint64_t{0}, 1);
  if (!s.failed()) {
    const std::byte* p = s.take(n);
    e.bytes.assign(p, p + n);
  }
  m.extensions.push_back(std::move(e));
  return success();
}

// One section's payload, all of it.
result<void> decode_section(std::uint64_t tag, reader& s, manifest& m, const limits& lim) {
  switch (tag) {
    case tag_info:
      m.chunk_bytes = s.varint("chunk size");
      m.created_unix_ms = s.varint("creation time");
      s.str("writer", 1024, m.writer);
      break;
    case tag_meshes: decode_meshes(s, m, lim); break;
    case tag_files: decode_files(s, m, lim); break;
    case tag_tensors: decode_tensors(s, m, lim); break;
    case tag_extension: {
      BOOST_OUTCOME_TRY(decode_extension(s, m, lim));
      break;
    }
    default: s.take(s.remaining()); break;  // an optional section from a newer minor version
  }
  if (s.failed()) return s.err();
  if (s.remaining() != 0)
    return bad("manifest byte " + std::to_string(s.offset()) + ": section " + std::to_string(tag) + " has " +
               std::to_string(s.remaining()) + " unparsed bytes");
  return success();
}

}  // namespace

// Fills `m` in place: every field of every element that stays is overwritten, so a recycled
// manifest's vectors keep their capacity. The required sections come in order, then the
// extensions.
result<void> decode_into(std::span<const std::byte> bytes, manifest& m, const limits& lim) {
  BOOST_OUTCOME_TRY(m.minor, check_envelope(bytes, lim));
  m.extensions.clear();
  reader r(bytes.data() + header_bytes, bytes.data() + bytes.size() - trailer_bytes, header_bytes);
  std::uint64_t next_required = tag_info;
  while (!r.failed() && r.remaining() > 0) {
    std::size_t section_start = r.offset();
    std::uint64_t tag = r.varint("section tag");
    std::size_t len = r.count("section length", ~std::uint64_t{0}, 1);
    if (r.failed()) break;
    std::size_t payload_offset = r.offset();
    const std::byte* payload = r.take(len);
    reader s(payload, payload + len, payload_offset);
    if (tag < tag_extension) {
      if (tag != next_required)
        return bad("manifest byte " + std::to_string(section_start) + ": section " + std::to_string(tag) + " is out of order or repeated");
      ++next_required;
    } else if (tag == tag_extension && next_required != tag_extension) {
      return bad("manifest byte " + std::to_string(section_start) + ": extension before the tensor section");
    }
    BOOST_OUTCOME_TRY(decode_section(tag, s, m, lim));
  }
  if (r.failed()) return r.err();
  if (next_required != tag_extension) return bad("manifest is missing required section " + std::to_string(next_required));
  BOOST_OUTCOME_TRY(validate(m, lim));
  return success();
}

result<mesh> saved_mesh_of(const manifest& m, const saved_tensor& t) {
  if (t.mesh >= m.meshes.size()) return bad("tensor \"" + t.key + "\" refers to a missing mesh");
  const auto& ms = m.meshes[t.mesh];
  return mesh::create(ms.dims, ms.device_ids);
}

result<layout> saved_layout_of(const manifest& m, const saved_tensor& t) {
  BOOST_OUTCOME_TRY(auto ms, saved_mesh_of(m, t));
  std::vector<std::string> specs;
  for (auto a : t.axes) specs.push_back(a < 0 ? std::string(unsharded) : ms.dims()[static_cast<std::size_t>(a)].name);
  return layout::create(std::move(specs), std::move(ms));
}

}  // namespace meshckpt::format
