#pragma once
// Private: a reader of the LevelDB-format tables that TensorFlow writes (tensorflow/core/lib/io/
// table_builder): the `.index` file of a tensor bundle is one. Pure: it reads a whole table held
// in memory (index files are small: a few hundred bytes per tensor) and trusts none of it.
//
// Layout, from the end: a 48-byte footer (the metaindex and index block handles as varint64
// offset and size, zero padding, the magic 0xdb4775248b80fb57 little-endian); the index block,
// whose entries map a separator key to a data block's handle; the data blocks, whose entries
// are key-value pairs with prefix-compressed keys (shared length, unshared length, value
// length as varint32, then the key's unshared bytes and the value) and, at their end, an array
// of restart offsets and its count (fixed32 each). Every block is followed by a 5-byte trailer:
// a compression type (0 none, 1 snappy) and the masked CRC-32C of the block and that type byte.

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "meshckpt/error.hpp"

namespace meshckpt::format::tf {

struct table_entry {
  std::string key;
  std::string value;
};

// Caps against hostile tables: a block's size once decompressed, and the bytes of all blocks
// together (a small file of snappy blocks could otherwise ask for terabytes).
struct table_limits {
  std::size_t max_block_bytes = std::size_t{64} << 20;
  std::size_t max_total_bytes = std::size_t{1} << 30;
};

// Every entry of the table `file`, in key order, each block's checksum verified. Errors:
// corrupt_manifest for a malformed table (with the byte offset), checksum_mismatch for a block
// whose CRC-32C does not match, limit_exceeded past a cap, unsupported for a compression other
// than none and snappy.
result<std::vector<table_entry>> read_table(std::span<const std::byte> file, const table_limits& limits = {});

// The footer's magic number: a file without it at its end is not a table.
inline constexpr std::uint64_t table_magic = 0xdb4775248b80fb57ull;
inline constexpr std::size_t table_footer_bytes = 48;

// A table of `entries` (keys strictly increasing) as TensorFlow's table builder writes it:
// data blocks of about `block_bytes`, a restart point every 16 keys, no compression.
result<std::vector<std::byte>> write_table(std::span<const table_entry> entries, std::size_t block_bytes = 4096);

// A table whose one data block has exactly `contents` and compression `type`, under an index
// key of 64 0xff bytes, every checksum right: tests and the fuzzer reach the block parser
// with it, past the checksum.
std::vector<std::byte> table_around_block(std::span<const std::byte> contents, std::uint8_t type);

// Whether `file` ends with a table footer (format detection; read_table checks the rest).
bool looks_like_table(std::span<const std::byte> file) noexcept;

}  // namespace meshckpt::format::tf
