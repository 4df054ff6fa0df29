#pragma once
// TensorFlow bundles on disk for tests, without Catch (make_tf_fixtures uses it too): writing a
// bundle of given entries with every checksum right, and reading a bundle's object graph back.

#include <algorithm>
#include <cstdint>
#include <fstream>
#include <iterator>
#include <optional>
#include <string>
#include <vector>

#include "meshckpt/format/crc32c.hpp"
#include "meshckpt/format/tf_bundle.hpp"

namespace tf_files {

using namespace meshckpt;

// The whole file at `p`.
inline std::vector<std::byte> read_all(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  std::string s((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  return std::vector<std::byte>(reinterpret_cast<const std::byte*>(s.data()), reinterpret_cast<const std::byte*>(s.data()) + s.size());
}

// One entry of a bundle and its stored bytes. `size` and `crc` default to the bytes' own; a
// string tensor's CRC-32C is the one `encode_string_tensor` gives, and a hostile size may be set.
struct stored_entry {
  std::string key;
  int tf_type;
  shape global;
  std::vector<std::byte> bytes;
  std::optional<std::uint32_t> crc = std::nullopt;
  std::optional<std::uint64_t> size = std::nullopt;
};

// A string scalar's entry.
inline stored_entry string_scalar(std::string key, std::string value) {
  std::uint32_t crc = 0;
  std::vector<std::string> one{std::move(value)};
  auto bytes = format::tf::encode_string_tensor(one, crc);
  return {std::move(key), format::tf::tf_string, {}, std::move(bytes), crc};
}

// Writes `prefix`.index and `prefix`.data-00000-of-00001 holding `entries` (any order).
inline result<void> write_bundle(const std::string& prefix, std::vector<stored_entry> entries) {
  std::sort(entries.begin(), entries.end(), [](const auto& a, const auto& b) { return a.key < b.key; });
  format::tf::bundle_index idx;
  idx.producer = 1;
  std::vector<std::byte> data;
  for (const auto& v : entries) {
    idx.entries.push_back({v.key,
                           v.tf_type,
                           format::tf::from_tf_dtype(v.tf_type),
                           v.global,
                           0,
                           data.size(),
                           v.size.value_or(v.bytes.size()),
                           v.crc.value_or(format::crc32c::value(v.bytes)),
                           {}});
    data.insert(data.end(), v.bytes.begin(), v.bytes.end());
  }
  BOOST_OUTCOME_TRY(auto index, format::tf::encode_bundle_index(idx));
  std::ofstream(prefix + ".index", std::ios::binary)
      .write(reinterpret_cast<const char*>(index.data()), static_cast<std::streamsize>(index.size()));
  std::ofstream(prefix + ".data-00000-of-00001", std::ios::binary)
      .write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size()));
  return success();
}

// The object graph of the one-data-file bundle `prefix` (index `idx`), checked and decoded.
inline result<format::tf::trackable_graph> read_object_graph(const std::string& prefix, const format::tf::bundle_index& idx) {
  const auto* e = idx.find(format::tf::object_graph_key);
  if (!e) return make_error(errc::not_found, prefix + " has no object graph");
  const auto file = read_all(prefix + ".data-00000-of-00001");
  if (e->offset > file.size() || e->size > file.size() - e->offset)
    return make_error(errc::short_read, prefix + ": the object graph lies past its file");
  std::vector<std::byte> bytes(file.begin() + static_cast<std::ptrdiff_t>(e->offset),
                               file.begin() + static_cast<std::ptrdiff_t>(e->offset + e->size));
  BOOST_OUTCOME_TRY(auto s, format::tf::decode_string_tensor(bytes, 1, e->crc32c));
  return format::tf::decode_trackable_graph(std::as_bytes(std::span(s[0].data(), s[0].size())));
}

}  // namespace tf_files
