#include "tf_table.hpp"

#include <snappy.h>

#include <string_view>

#include "codec.hpp"
#include "meshckpt/format/crc32c.hpp"

namespace meshckpt::format::tf {

namespace {

std::uint32_t fixed32(const std::byte* p) {
  std::uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v |= std::uint32_t{static_cast<std::uint8_t>(p[i])} << (8 * i);
  return v;
}

std::uint64_t fixed64(const std::byte* p) { return std::uint64_t{fixed32(p)} | std::uint64_t{fixed32(p + 4)} << 32; }

std::string at(std::uint64_t offset) { return " at offset " + std::to_string(offset); }

struct block_handle {
  std::uint64_t offset = 0, size = 0;
};

block_handle get_handle(codec::reader& r) {
  block_handle h;
  h.offset = r.varint("block offset");
  h.size = r.varint("block size");
  return h;
}

class table_reader {
 public:
  table_reader(std::span<const std::byte> file, const table_limits& limits) : file_(file), limits_(limits) {}

  result<std::vector<table_entry>> read() {
    if (file_.size() < table_footer_bytes)
      return make_error(errc::corrupt_manifest, "TF table of " + std::to_string(file_.size()) + " bytes: shorter than its 48-byte footer");
    const std::size_t footer = file_.size() - table_footer_bytes;
    if (fixed64(file_.data() + file_.size() - 8) != table_magic)
      return make_error(errc::corrupt_manifest, "TF table: no table magic number in its last 8 bytes");
    codec::reader r(file_.data() + footer, file_.data() + file_.size() - 8, footer, "TF table footer");
    auto meta = get_handle(r);
    auto index = get_handle(r);
    if (r.failed()) return r.err();
    footer_ = footer;

    BOOST_OUTCOME_TRY(block(meta, "metaindex block"));  // checked, not used: TensorFlow writes it empty
    BOOST_OUTCOME_TRY(auto index_bytes, block(index, "index block"));
    std::vector<table_entry> handles;
    BOOST_OUTCOME_TRY(entries(index_bytes, index.offset, "index block", handles));
    std::vector<table_entry> out;
    for (std::size_t i = 0; i < handles.size(); ++i) {
      const auto& v = handles[i].value;
      codec::reader hr(reinterpret_cast<const std::byte*>(v.data()), reinterpret_cast<const std::byte*>(v.data() + v.size()), 0,
                       "TF table index entry");
      auto h = get_handle(hr);
      if (hr.failed()) return with_context(hr.err(), "index entry " + std::to_string(i));
      const std::string what = "data block " + std::to_string(i);
      BOOST_OUTCOME_TRY(auto data, block(h, what.c_str()));
      const std::size_t before = out.size();
      BOOST_OUTCOME_TRY(entries(data, h.offset, what.c_str(), out));
      // The index key of a block is at least its last key.
      if (out.size() > before && out.back().key > handles[i].key)
        return make_error(errc::corrupt_manifest, "TF table: " + what + at(h.offset) + " holds keys past its index key");
    }
    return out;
  }

 private:
  // The contents of the block `h`, its trailer verified and decompressed.
  result<std::string> block(block_handle h, const char* what) {
    if (h.offset > footer_ || h.size > footer_ - h.offset || footer_ - h.offset - h.size < 5)
      return make_error(errc::corrupt_manifest, "TF table: " + std::string(what) + at(h.offset) + " of " + std::to_string(h.size) +
                                                    " bytes lies past the table's end (" + std::to_string(footer_) + ")");
    const std::byte* p = file_.data() + h.offset;
    const auto n = static_cast<std::size_t>(h.size);
    const auto type = static_cast<std::uint8_t>(p[n]);
    const std::uint32_t stored = crc32c::unmask(fixed32(p + n + 1));
    const std::uint32_t actual = crc32c::value({p, n + 1});
    if (stored != actual)
      return make_error(errc::checksum_mismatch, "TF table: " + std::string(what) + at(h.offset) + ": CRC-32C " + std::to_string(actual) +
                                                     ", recorded " + std::to_string(stored));
    std::string out;
    if (type == 0) {
      if (n > limits_.max_block_bytes) return too_big(what, h, n);
      BOOST_OUTCOME_TRY(charge(what, h, n));
      out.assign(reinterpret_cast<const char*>(p), n);
    } else if (type == 1) {
      std::size_t len = 0;
      if (!snappy::GetUncompressedLength(reinterpret_cast<const char*>(p), n, &len))
        return make_error(errc::corrupt_manifest, "TF table: " + std::string(what) + at(h.offset) + ": not valid snappy data");
      if (len > limits_.max_block_bytes) return too_big(what, h, len);
      BOOST_OUTCOME_TRY(charge(what, h, len));
      out.resize(len);
      if (!snappy::RawUncompress(reinterpret_cast<const char*>(p), n, out.data()))
        return make_error(errc::corrupt_manifest, "TF table: " + std::string(what) + at(h.offset) + ": not valid snappy data");
    } else {
      return make_error(errc::unsupported, "TF table: " + std::string(what) + at(h.offset) + " has compression type " +
                                               std::to_string(type) + " (known: 0 none, 1 snappy)");
    }
    return out;
  }

  error too_big(const char* what, block_handle h, std::size_t n) const {
    return make_error(errc::limit_exceeded, "TF table: " + std::string(what) + at(h.offset) + " holds " + std::to_string(n) +
                                                " bytes, more than the cap of " + std::to_string(limits_.max_block_bytes));
  }

  result<void> charge(const char* what, block_handle h, std::size_t n) {
    if (n > limits_.max_total_bytes - total_)
      return make_error(errc::limit_exceeded, "TF table: " + std::string(what) + at(h.offset) + " takes the table past the cap of " +
                                                  std::to_string(limits_.max_total_bytes) + " bytes");
    total_ += n;
    return success();
  }

  // Appends the entries of a block's contents to `out`, checking that keys keep increasing
  // (across blocks too: `out` holds the earlier blocks' entries).
  result<void> entries(const std::string& contents, std::uint64_t block_offset, const char* what, std::vector<table_entry>& out) {
    const auto* b = reinterpret_cast<const std::byte*>(contents.data());
    const std::string where = "TF table " + std::string(what) + at(block_offset) + ", contents";
    if (contents.size() < 4)
      return make_error(errc::corrupt_manifest, where + ": " + std::to_string(contents.size()) + " bytes, no restart count");
    const std::uint64_t restarts = fixed32(b + contents.size() - 4);
    if (restarts > (contents.size() - 4) / 4)
      return make_error(errc::corrupt_manifest, where + ": " + std::to_string(restarts) + " restart points do not fit in " +
                                                    std::to_string(contents.size()) + " bytes");
    const std::size_t limit = contents.size() - 4 - static_cast<std::size_t>(restarts) * 4;
    for (std::uint64_t k = 0; k < restarts; ++k)
      if (fixed32(b + limit + k * 4) > limit)
        return make_error(errc::corrupt_manifest, where + ": restart point " + std::to_string(k) + " lies past the entries");
    if (limit > 0 && (restarts == 0 || fixed32(b + limit) != 0))
      return make_error(errc::corrupt_manifest, where + ": the first entry is not a restart point");
    codec::reader r(b, b + limit, 0, where);
    std::string key;
    while (r.remaining() > 0) {
      const auto entry_at = r.offset();
      const auto shared = static_cast<std::uint64_t>(r.bounded("shared key length", 0xffffffffu));
      const auto unshared = static_cast<std::uint64_t>(r.bounded("unshared key length", 0xffffffffu));
      const auto value_len = static_cast<std::uint64_t>(r.bounded("value length", 0xffffffffu));
      if (r.failed()) return r.err();
      if (shared > key.size())
        return make_error(errc::corrupt_manifest, where + " byte " + std::to_string(entry_at) + ": shares " + std::to_string(shared) +
                                                      " bytes of a previous key of " + std::to_string(key.size()));
      if (unshared > r.remaining() || value_len > r.remaining() - unshared)
        return make_error(errc::corrupt_manifest, where + " byte " + std::to_string(entry_at) + ": the entry runs past the block's end");
      key.resize(static_cast<std::size_t>(shared));
      key.append(reinterpret_cast<const char*>(r.take(static_cast<std::size_t>(unshared))), static_cast<std::size_t>(unshared));
      const auto* v = r.take(static_cast<std::size_t>(value_len));
      if (!out.empty() && !(out.back().key < key))
        return make_error(errc::corrupt_manifest, where + " byte " + std::to_string(entry_at) + ": key \"" + printable(key) +
                                                      "\" does not follow \"" + printable(out.back().key) + "\" in order");
      out.push_back({key, std::string(reinterpret_cast<const char*>(v), static_cast<std::size_t>(value_len))});
    }
    return success();
  }

  static std::string printable(std::string_view s) {
    std::string out;
    for (char c : s.substr(0, 200)) {
      const auto u = static_cast<unsigned char>(c);
      if (u >= 0x20 && u < 0x7f && c != '"' && c != '\\')
        out += c;
      else {
        static const char hex[] = "0123456789abcdef";
        out += "\\x";
        out += hex[u >> 4];
        out += hex[u & 15];
      }
    }
    if (s.size() > 200) out += "...";
    return out;
  }

  std::span<const std::byte> file_;
  const table_limits& limits_;
  std::size_t footer_ = 0;
  std::size_t total_ = 0;
};

// Builds one block: prefix-compressed entries, restart points every 16 keys.
class block_builder {
 public:
  void add(std::string_view key, std::string_view value) {
    std::size_t shared = 0;
    if (count_ % 16 == 0) {
      restarts_.push_back(static_cast<std::uint32_t>(w_.bytes().size()));
    } else {
      while (shared < key.size() && shared < last_.size() && key[shared] == last_[shared]) ++shared;
    }
    w_.varint(shared);
    w_.varint(key.size() - shared);
    w_.varint(value.size());
    w_.raw(key.data() + shared, key.size() - shared);
    w_.raw(value.data(), value.size());
    last_.assign(key);
    ++count_;
  }
  std::size_t size() { return w_.bytes().size() + 4 * restarts_.size() + 4; }
  bool empty() const { return count_ == 0; }
  // The block's contents; the builder starts over.
  std::vector<std::byte> finish() {
    if (restarts_.empty()) restarts_.push_back(0);
    for (auto r : restarts_) w_.fixed(r, 4);
    w_.fixed(restarts_.size(), 4);
    auto out = std::move(w_.bytes());
    w_ = codec::writer();
    restarts_.clear();
    last_.clear();
    count_ = 0;
    return out;
  }

 private:
  codec::writer w_;
  std::vector<std::uint32_t> restarts_;
  std::string last_;
  std::size_t count_ = 0;
};

// Appends a block and its trailer (the type, and the masked CRC-32C of the block and the type);
// returns its handle.
block_handle put_block(codec::writer& file, std::vector<std::byte> contents, std::uint8_t type) {
  block_handle h{file.bytes().size(), contents.size()};
  contents.push_back(static_cast<std::byte>(type));
  const std::uint32_t crc = crc32c::mask(crc32c::value(contents));
  file.raw(contents.data(), contents.size());
  file.fixed(crc, 4);
  return h;
}

std::string handle_bytes(block_handle h) {
  codec::writer w;
  w.varint(h.offset);
  w.varint(h.size);
  auto& b = w.bytes();
  return std::string(reinterpret_cast<const char*>(b.data()), b.size());
}

// The empty metaindex block, the index block, the footer.
void finish_table(codec::writer& file, block_builder& index) {
  auto meta = put_block(file, block_builder().finish(), 0);
  auto idx = put_block(file, index.finish(), 0);
  const std::size_t footer = file.bytes().size();
  file.varint(meta.offset);
  file.varint(meta.size);
  file.varint(idx.offset);
  file.varint(idx.size);
  while (file.bytes().size() < footer + table_footer_bytes - 8) file.u8(0);
  file.fixed(table_magic, 8);
}

}  // namespace

result<std::vector<std::byte>> write_table(std::span<const table_entry> entries, std::size_t block_bytes) {
  for (std::size_t i = 1; i < entries.size(); ++i)
    if (!(entries[i - 1].key < entries[i].key))
      return make_error(errc::invalid_argument, "TF table keys must be strictly increasing: entry " + std::to_string(i));
  codec::writer file;
  block_builder data, index;
  for (std::size_t i = 0; i < entries.size(); ++i) {
    data.add(entries[i].key, entries[i].value);
    if (data.size() >= block_bytes || i + 1 == entries.size()) {
      // TensorFlow shortens the separator key; the block's last key is a valid one too.
      index.add(entries[i].key, handle_bytes(put_block(file, data.finish(), 0)));
    }
  }
  finish_table(file, index);
  return std::move(file.bytes());
}

std::vector<std::byte> table_around_block(std::span<const std::byte> contents, std::uint8_t type) {
  codec::writer file;
  block_builder index;
  index.add(std::string(64, '\xff'), handle_bytes(put_block(file, {contents.begin(), contents.end()}, type)));
  finish_table(file, index);
  return std::move(file.bytes());
}

bool looks_like_table(std::span<const std::byte> file) noexcept {
  return file.size() >= table_footer_bytes && fixed64(file.data() + file.size() - 8) == table_magic;
}

result<std::vector<table_entry>> read_table(std::span<const std::byte> file, const table_limits& limits) {
  try {
    return table_reader(file, limits).read();
  } catch (const std::bad_alloc&) {
    return out_of_memory("reading a TF table");
  }
}

}  // namespace meshckpt::format::tf
