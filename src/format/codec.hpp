#pragma once
// Private: the byte-level codec shared by the manifest and the object-graph extension.
// LEB128 varints, length-prefixed strings, little-endian fixed integers; the reader is
// bounds-checked, records the first failure with its byte offset, and rejects counts that the
// remaining bytes cannot hold before anything is allocated.

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "meshckpt/error.hpp"

namespace meshckpt::format::codec {

class writer {
 public:
  writer() = default;
  // Appends to `out`, reusing its capacity; hand it back with bytes().
  explicit writer(std::vector<std::byte>&& out) : out_(std::move(out)) {}
  void u8(std::uint8_t v) { out_.push_back(static_cast<std::byte>(v)); }
  void fixed(std::uint64_t v, int bytes) {
    for (int i = 0; i < bytes; ++i) u8(static_cast<std::uint8_t>(v >> (8 * i)));
  }
  void varint(std::uint64_t v) {
    while (v >= 0x80) {
      u8(static_cast<std::uint8_t>(v | 0x80));
      v >>= 7;
    }
    u8(static_cast<std::uint8_t>(v));
  }
  void str(std::string_view s) {
    varint(s.size());
    raw(s.data(), s.size());
  }
  void raw(const void* p, std::size_t n) {
    auto b = static_cast<const std::byte*>(p);
    out_.insert(out_.end(), b, b + n);
  }
  // A section is tag, length, payload: open_section() writes the tag, the caller appends the
  // payload, and close_section() inserts the length before it (one move of bytes still in
  // cache, instead of a scratch buffer and a copy).
  std::size_t open_section(std::uint64_t tag) {
    varint(tag);
    return out_.size();
  }
  void close_section(std::size_t payload_start) {
    std::uint64_t n = out_.size() - payload_start;
    std::byte len[10];
    std::size_t k = 0;
    while (n >= 0x80) {
      len[k++] = static_cast<std::byte>(static_cast<std::uint8_t>(n | 0x80));
      n >>= 7;
    }
    len[k++] = static_cast<std::byte>(static_cast<std::uint8_t>(n));
    out_.insert(out_.begin() + static_cast<std::ptrdiff_t>(payload_start), len, len + k);
  }
  std::vector<std::byte>& bytes() { return out_; }

 private:
  std::vector<std::byte> out_;
};

class reader {
 public:
  reader(const std::byte* begin, const std::byte* end, std::size_t base, std::string_view what = "manifest")
      : begin_(begin), p_(begin), end_(end), base_(base), what_(what) {}

  bool failed() const { return failed_; }
  std::size_t remaining() const { return static_cast<std::size_t>(end_ - p_); }
  std::size_t offset() const { return base_ + static_cast<std::size_t>(p_ - begin_); }
  const error& err() const { return err_; }

  void fail(errc code, std::string what) {
    if (failed_) return;
    failed_ = true;
    err_ = make_error(code, std::string(what_) + " byte " + std::to_string(offset()) + ": " + what);
    p_ = end_;
  }

  std::uint64_t varint(const char* field) {
    std::uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (p_ == end_) {
        fail(errc::corrupt_manifest, std::string("truncated ") + field);
        return 0;
      }
      auto b = static_cast<std::uint8_t>(*p_++);
      if (shift == 63 && b > 1) {
        fail(errc::corrupt_manifest, std::string(field) + " overflows 64 bits");
        return 0;
      }
      v |= std::uint64_t{b & 0x7fu} << shift;
      if (!(b & 0x80)) return v;
    }
    fail(errc::corrupt_manifest, std::string(field) + " is an over-long varint");
    return 0;
  }

  // A varint that must fit int64 and be <= cap.
  std::int64_t bounded(const char* field, std::uint64_t cap) {
    std::uint64_t v = varint(field);
    if (!failed_ && v > cap) fail(errc::corrupt_manifest, std::string(field) + " " + std::to_string(v) + " is out of range");
    return failed_ ? 0 : static_cast<std::int64_t>(v);
  }

  // A count of items each at least `min_item_bytes` long: rejected before any allocation when
  // the remaining bytes cannot hold that many, or when it exceeds the cap.
  std::size_t count(const char* field, std::uint64_t cap, std::size_t min_item_bytes) {
    std::uint64_t n = varint(field);
    if (failed_) return 0;
    if (n > cap) {
      fail(errc::limit_exceeded, std::string(field) + " " + std::to_string(n) + " exceeds the cap of " + std::to_string(cap));
      return 0;
    }
    if (min_item_bytes && n > remaining() / min_item_bytes) {
      fail(errc::corrupt_manifest,
           std::string(field) + " " + std::to_string(n) + " does not fit in the remaining " + std::to_string(remaining()) + " bytes");
      return 0;
    }
    return static_cast<std::size_t>(n);
  }

  std::string str(const char* field, std::uint64_t cap) {
    std::string s;
    str(field, cap, s);
    return s;
  }
  // Into an existing string, reusing its capacity.
  void str(const char* field, std::uint64_t cap, std::string& into) {
    std::size_t n = count(field, cap, 1);
    if (failed_) {
      into.clear();
      return;
    }
    into.assign(reinterpret_cast<const char*>(p_), n);
    p_ += n;
  }

  std::uint64_t fixed64(const char* field) {
    if (remaining() < 8) {
      fail(errc::corrupt_manifest, std::string("truncated ") + field);
      return 0;
    }
    std::uint64_t v = 0;
    for (int i = 0; i < 8; ++i) v |= std::uint64_t{static_cast<std::uint8_t>(p_[i])} << (8 * i);
    p_ += 8;
    return v;
  }

  const std::byte* take(std::size_t n) {
    const std::byte* p = p_;
    p_ += n;
    return p;
  }

 private:
  const std::byte* begin_;
  const std::byte* p_;
  const std::byte* end_;
  std::size_t base_;
  std::string_view what_;
  bool failed_ = false;
  error err_;
};

}  // namespace meshckpt::format::codec

namespace meshckpt::format {

// Parts of the manifest's encoding (manifest.cpp), shared with the fingerprint by which a
// multi-process save checks that every process planned the same skeleton.
struct saved_mesh;
struct saved_tensor;
struct saved_slice;
void put_meshes(codec::writer& w, const std::vector<saved_mesh>& meshes);
// Key, dtype, global shape, mesh and axes.
void put_tensor_head(codec::writer& w, const saved_tensor& t);
// The slice's origin and extent.
void put_box(codec::writer& w, const saved_slice& s);

}  // namespace meshckpt::format
