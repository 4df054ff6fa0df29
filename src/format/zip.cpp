#include "meshckpt/format/zip.hpp"

#include <zlib.h>

#include <algorithm>
#include <unordered_set>

namespace meshckpt::format::zip {

namespace {

constexpr std::uint32_t end_sig = 0x06054b50, zip64_locator_sig = 0x07064b50, zip64_end_sig = 0x06064b50, central_sig = 0x02014b50,
                        local_sig = 0x04034b50;
constexpr std::uint32_t max32 = 0xffffffffu;

std::uint64_t le(std::span<const std::byte> b, std::size_t at, int n) {
  std::uint64_t v = 0;
  for (int i = 0; i < n; ++i) v |= std::uint64_t{static_cast<std::uint8_t>(b[at + static_cast<std::size_t>(i)])} << (8 * i);
  return v;
}

void put(std::vector<std::byte>& out, std::uint64_t v, int n) {
  for (int i = 0; i < n; ++i) out.push_back(static_cast<std::byte>(static_cast<std::uint8_t>(v >> (8 * i))));
}

error bad(const std::string& what) { return make_error(errc::corrupt_manifest, "zip file: " + what); }

}  // namespace

result<directory_location> locate_central_directory(std::span<const std::byte> tail, std::uint64_t file_size) {
  if (tail.size() > file_size) return make_error(errc::invalid_argument, "zip: the tail is longer than the file");
  const std::uint64_t tail_start = file_size - tail.size();
  // The end record is the last one whose comment length reaches exactly the end of the file.
  for (std::size_t at = tail.size() >= 22 ? tail.size() - 22 + 1 : 0; at-- > 0;) {
    if (le(tail, at, 4) != end_sig || at + 22 + le(tail, at + 20, 2) != tail.size()) continue;
    directory_location loc;
    loc.entries = le(tail, at + 10, 2);
    loc.size = le(tail, at + 12, 4);
    loc.offset = le(tail, at + 16, 4);
    if (le(tail, at + 4, 2) != 0 || le(tail, at + 6, 2) != 0 || le(tail, at + 8, 2) != loc.entries)
      return bad("it spans several disks, which is not supported");
    const std::uint64_t end_at = tail_start + at;
    if (at >= 20 && le(tail, at - 20, 4) == zip64_locator_sig) {
      const std::uint64_t z = le(tail, at - 12, 8);
      if (z > end_at - 20 || end_at - 20 - z < 56) return bad("the zip64 end record's offset " + std::to_string(z) + " is out of range");
      loc.zip64_end_offset = z;
      return loc;
    }
    if (loc.offset > end_at || loc.size > end_at - loc.offset) return bad("the central directory lies past its end record");
    return loc;
  }
  return bad("no end-of-central-directory record in the last " + std::to_string(tail.size()) + " bytes (not a zip file)");
}

result<void> apply_zip64_end(directory_location& loc, std::span<const std::byte> r, std::uint64_t file_size) {
  if (r.size() < 56 || le(r, 0, 4) != zip64_end_sig)
    return bad("no zip64 end record at byte " + std::to_string(loc.zip64_end_offset.value_or(0)));
  if (le(r, 16, 4) != 0 || le(r, 20, 4) != 0 || le(r, 24, 8) != le(r, 32, 8)) return bad("it spans several disks, which is not supported");
  loc.entries = le(r, 32, 8);
  loc.size = le(r, 40, 8);
  loc.offset = le(r, 48, 8);
  const std::uint64_t end = loc.zip64_end_offset.value_or(file_size);
  if (loc.offset > end || loc.size > end - loc.offset) return bad("the central directory lies past the zip64 end record");
  loc.zip64_end_offset.reset();
  return success();
}

result<std::vector<entry>> decode_central_directory(std::span<const std::byte> b, const directory_location& loc, std::uint64_t file_size) {
  if (loc.entries > max_entries)
    return make_error(errc::limit_exceeded,
                      "zip file: " + std::to_string(loc.entries) + " records (at most " + std::to_string(max_entries) + ")");
  if (b.size() != loc.size || loc.entries > loc.size / 46)
    return bad("a central directory of " + std::to_string(loc.size) + " bytes cannot list " + std::to_string(loc.entries) + " records");
  std::vector<entry> out;
  out.reserve(static_cast<std::size_t>(loc.entries));
  std::unordered_set<std::string_view> names;
  std::size_t at = 0;
  for (std::uint64_t k = 0; k < loc.entries; ++k) {
    const std::string where = "central directory record " + std::to_string(k) + " (byte " + std::to_string(loc.offset + at) + ")";
    if (b.size() - at < 46 || le(b, at, 4) != central_sig) return bad(where + ": not a central directory record");
    entry e;
    e.flags = static_cast<std::uint16_t>(le(b, at + 8, 2));
    e.method = static_cast<std::uint16_t>(le(b, at + 10, 2));
    e.crc32 = static_cast<std::uint32_t>(le(b, at + 16, 4));
    e.compressed_size = le(b, at + 20, 4);
    e.size = le(b, at + 24, 4);
    const std::size_t name_len = le(b, at + 28, 2), extra_len = le(b, at + 30, 2), comment_len = le(b, at + 32, 2);
    e.header_offset = le(b, at + 42, 4);
    if (b.size() - at - 46 < name_len + extra_len + comment_len) return bad(where + ": its name and fields run past the directory");
    e.name.assign(reinterpret_cast<const char*>(b.data() + at + 46), name_len);
    // Values too large for 32 bits are in the zip64 extra field, in this order.
    std::span<const std::byte> extra = b.subspan(at + 46 + name_len, extra_len);
    for (std::size_t x = 0; x + 4 <= extra.size();) {
      const std::size_t id = le(extra, x, 2), n = le(extra, x + 2, 2);
      if (extra.size() - x - 4 < n) return bad(where + ": an extra field runs past its record");
      if (id == 1) {
        std::size_t f = x + 4;
        for (std::uint64_t* v : {&e.size, &e.compressed_size, &e.header_offset}) {
          if (*v != max32) continue;
          if (f + 8 > x + 4 + n) return bad(where + ": a short zip64 extra field");
          *v = le(extra, f, 8);
          f += 8;
        }
      }
      x += 4 + n;
    }
    if (e.flags & 1) return bad(where + " (\"" + e.name + "\") is encrypted");
    if (e.header_offset > loc.offset || loc.offset - e.header_offset < 30)
      return bad(where + " (\"" + e.name + "\"): its local header lies past the central directory");
    if (e.method == 0 && e.size != e.compressed_size) return bad(where + " (\"" + e.name + "\"): a stored record whose sizes differ");
    if (e.compressed_size > file_size) return bad(where + " (\"" + e.name + "\"): larger than the file");
    out.push_back(std::move(e));
    at += 46 + name_len + extra_len + comment_len;
  }
  for (const auto& e : out)
    if (!names.insert(e.name).second) return bad("the record \"" + e.name + "\" is listed twice");
  return out;
}

result<std::uint64_t> local_data_offset(const entry& e, std::span<const std::byte> h, std::uint64_t data_limit) {
  const std::string where = "record \"" + e.name + "\" at byte " + std::to_string(e.header_offset);
  if (h.size() < 30 || le(h, 0, 4) != local_sig) return bad(where + ": no local header");
  const std::size_t name_len = le(h, 26, 2), extra_len = le(h, 28, 2);
  if (h.size() < 30 + name_len) return bad(where + ": its local header runs past the data");
  if (std::string_view(reinterpret_cast<const char*>(h.data() + 30), name_len) != e.name)
    return bad(where + ": the local header names another record");
  const std::uint64_t data = e.header_offset + 30 + name_len + extra_len;
  if (data > data_limit || e.compressed_size > data_limit - data)
    return bad(where + ": its " + std::to_string(e.compressed_size) + " bytes run into the central directory");
  return data;
}

std::vector<std::byte> zip_writer::begin_record(std::string_view name, std::uint64_t size, std::uint32_t crc, std::uint64_t align,
                                                bool crc_after) {
  entry e;
  e.name = std::string(name);
  e.crc32 = crc_after ? 0 : crc;
  crc = e.crc32;
  e.size = e.compressed_size = size;
  e.header_offset = at_;
  e.flags = crc_after ? 0x0808 : 0x0800;  // UTF-8 names; bit 3: a data descriptor follows
  const bool big = size >= max32;
  std::vector<std::byte> h;
  put(h, local_sig, 4);
  put(h, big ? 45 : 20, 2);
  put(h, e.flags, 2);
  put(h, 0, 2);  // stored
  put(h, 0, 4);  // time and date
  put(h, crc, 4);
  put(h, big ? max32 : size, 4);
  put(h, big ? max32 : size, 4);
  put(h, name.size(), 2);
  std::uint64_t extra = big ? 20 : 0;
  std::uint64_t data = at_ + 30 + name.size() + extra;
  std::uint64_t pad = 0;
  if (align > 1 && data % align) {
    pad = align - data % align;
    while (pad < 4) pad += align;  // room for the padding field's own header
  }
  put(h, extra + pad, 2);
  h.insert(h.end(), reinterpret_cast<const std::byte*>(name.data()), reinterpret_cast<const std::byte*>(name.data()) + name.size());
  if (big) {
    put(h, 1, 2);
    put(h, 16, 2);
    put(h, size, 8);
    put(h, size, 8);
  }
  if (pad) {
    put(h, 0x4246, 2);  // "FB", the padding field torch writes
    put(h, pad - 4, 2);
    h.insert(h.end(), static_cast<std::size_t>(pad - 4), std::byte{'Z'});
  }
  at_ += h.size();
  entries_.push_back(std::move(e));
  open_ = true;
  return h;
}

std::vector<std::byte> zip_writer::end_record(std::uint32_t crc) {
  std::vector<std::byte> d;
  if (!open_) return d;
  auto& e = entries_.back();
  at_ += e.size;
  open_ = false;
  if (!(e.flags & 8)) return d;
  e.crc32 = crc;
  const int width = e.size >= max32 ? 8 : 4;  // zip64 sizes when the local header has them
  put(d, 0x08074b50, 4);
  put(d, crc, 4);
  put(d, e.size, width);
  put(d, e.size, width);
  at_ += d.size();
  return d;
}

std::vector<std::byte> zip_writer::finish() {
  std::vector<std::byte> out;
  const std::uint64_t cd_offset = at_;
  for (const auto& e : entries_) {
    const bool big = e.size >= max32 || e.header_offset >= max32;
    put(out, central_sig, 4);
    put(out, 45, 2);
    put(out, big ? 45 : 20, 2);
    put(out, e.flags, 2);
    put(out, 0, 2);
    put(out, 0, 4);
    put(out, e.crc32, 4);
    put(out, big ? max32 : e.size, 4);
    put(out, big ? max32 : e.size, 4);
    put(out, e.name.size(), 2);
    put(out, big ? 28 : 0, 2);
    put(out, 0, 2);  // comment
    put(out, 0, 2);  // disk
    put(out, 0, 2);  // internal attributes
    put(out, 0, 4);  // external attributes
    put(out, big ? max32 : e.header_offset, 4);
    out.insert(out.end(), reinterpret_cast<const std::byte*>(e.name.data()),
               reinterpret_cast<const std::byte*>(e.name.data()) + e.name.size());
    if (big) {
      put(out, 1, 2);
      put(out, 24, 2);
      put(out, e.size, 8);
      put(out, e.size, 8);
      put(out, e.header_offset, 8);
    }
  }
  const std::uint64_t cd_size = out.size(), zip64_at = cd_offset + cd_size;
  put(out, zip64_end_sig, 4);
  put(out, 44, 8);
  put(out, 45, 2);
  put(out, 45, 2);
  put(out, 0, 4);
  put(out, 0, 4);
  put(out, entries_.size(), 8);
  put(out, entries_.size(), 8);
  put(out, cd_size, 8);
  put(out, cd_offset, 8);
  put(out, zip64_locator_sig, 4);
  put(out, 0, 4);
  put(out, zip64_at, 8);
  put(out, 1, 4);
  put(out, end_sig, 4);
  put(out, 0, 4);
  const std::uint64_t n = std::min<std::uint64_t>(entries_.size(), 0xffff);
  put(out, n, 2);
  put(out, n, 2);
  put(out, std::min<std::uint64_t>(cd_size, max32), 4);
  put(out, std::min<std::uint64_t>(cd_offset, max32), 4);
  put(out, 0, 2);
  at_ += out.size();
  return out;
}

std::uint32_t crc32_extend(std::uint32_t crc, std::span<const std::byte> data) noexcept {
  uLong c = crc;
  while (!data.empty()) {
    const std::size_t n = std::min<std::size_t>(data.size(), std::size_t{1} << 30);
    c = ::crc32(c, reinterpret_cast<const Bytef*>(data.data()), static_cast<uInt>(n));
    data = data.subspan(n);
  }
  return static_cast<std::uint32_t>(c);
}

}  // namespace meshckpt::format::zip
