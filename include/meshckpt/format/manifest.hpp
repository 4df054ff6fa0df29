#pragma once
/// \file
/// The manifest: the one file whose presence makes a checkpoint exist. It lists every tensor
/// (key, dtype, global shape, the layout and mesh it was saved with) and every saved slice
/// (box, data file, offset, length, an XXH3 checksum per chunk). Encoding and decoding are
/// pure functions over bytes; docs/FORMAT.md specifies the bytes.
///
/// `decode` treats its input as hostile: every count is capped and checked against the bytes
/// that remain before anything is allocated, all arithmetic on shapes and offsets is
/// overflow-checked, every slice must be one of the shard boxes its layout implies (so the
/// slices of a tensor tile it exactly, once each), every range must lie inside its data file's
/// recorded size, and file names must be plain names.

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "meshckpt/error.hpp"
#include "meshckpt/tensor/box.hpp"
#include "meshckpt/tensor/dtype.hpp"
#include "meshckpt/tensor/layout.hpp"
#include "meshckpt/tensor/mesh.hpp"

namespace meshckpt::format {

/// The 8 bytes every manifest starts with.
inline constexpr char magic[8] = {'M', 'E', 'S', 'H', 'C', 'K', 'P', 'T'};
/// Format major version written; a reader rejects any other major version.
inline constexpr std::uint16_t major_version = 1;
/// Format minor version written; readers accept any minor (unknown sections are skipped).
inline constexpr std::uint16_t minor_version = 0;
/// Default checksum chunk size (1 MiB).
inline constexpr std::uint64_t default_chunk_bytes = 1 << 20;

/// Caps applied while decoding; a manifest exceeding one is rejected with
/// `errc::limit_exceeded`.
struct limits {
  std::uint64_t max_manifest_bytes = std::uint64_t{1} << 31;     ///< whole manifest file (2 GiB)
  std::uint64_t max_tensors = std::uint64_t{1} << 26;            ///< tensors per checkpoint
  std::uint64_t max_files = std::uint64_t{1} << 20;              ///< data files
  std::uint64_t max_meshes = std::uint64_t{1} << 16;             ///< distinct meshes
  std::uint64_t max_rank = 32;                                   ///< dimensions of a tensor or mesh
  std::uint64_t max_key_bytes = 16384;                           ///< bytes of a tensor key
  std::uint64_t max_extensions = 1024;                           ///< extension sections
  std::uint64_t max_slices_per_tensor = std::uint64_t{1} << 20;  ///< stored slices of one tensor
};

/// A mesh as recorded in a manifest.
struct saved_mesh {
  std::vector<mesh_dim> dims;            ///< named dimensions and sizes, outermost first
  std::vector<std::int64_t> device_ids;  ///< row-major mesh order
  /// Field-wise equality.
  friend bool operator==(const saved_mesh&, const saved_mesh&) = default;
};

/// One stored slice of a tensor: the bytes of `where` in row-major order, at
/// `[offset, offset + length)` of data file `file`.
struct saved_slice {
  box where;                             ///< the slice's box of the global tensor
  std::uint32_t file = 0;                ///< index into `manifest::files`
  std::uint64_t offset = 0;              ///< first byte in that file
  std::uint64_t length = 0;              ///< bytes (the box's volume times the dtype size)
  std::int64_t writer_device = 0;        ///< the replica that wrote it (deterministic owner)
  std::vector<std::uint64_t> checksums;  ///< XXH3-64 of each chunk_bytes piece, in order
  /// Field-wise equality.
  friend bool operator==(const saved_slice&, const saved_slice&) = default;
};

/// One tensor: key, dtype, global shape, saved layout (per dimension: mesh dimension index or
/// -1 for unsharded) on mesh `mesh`, and its slices.
struct saved_tensor {
  std::string key;                  ///< the object path, e.g. "model/dense/kernel"
  dtype type = dtype::float32;      ///< element type
  shape global;                     ///< global shape
  std::uint32_t mesh = 0;           ///< index into `manifest::meshes`
  std::vector<std::int32_t> axes;   ///< per dimension: the mesh dimension sharding it, or -1
  std::vector<saved_slice> slices;  ///< the distinct shard boxes, each stored once
  /// Field-wise equality.
  friend bool operator==(const saved_tensor&, const saved_tensor&) = default;
};

/// A data file of the checkpoint, by plain name and exact size.
struct data_file {
  std::string name;        ///< plain file name in the checkpoint's directory
  std::uint64_t size = 0;  ///< exact size in bytes
  /// Field-wise equality.
  friend bool operator==(const data_file&, const data_file&) = default;
};

/// A named opaque section (used by higher layers, e.g. for the object graph).
struct extension {
  std::string name;              ///< e.g. "object_graph"
  std::vector<std::byte> bytes;  ///< opaque to the format
  /// Field-wise equality.
  friend bool operator==(const extension&, const extension&) = default;
};

/// How a manifest's slices are checksummed.
enum class checksum_kind : std::uint8_t {
  xxh3_chunks,   ///< meshckpt's format: XXH3-64 of each `chunk_bytes` piece
  crc32c_whole,  ///< a TensorFlow bundle read as a manifest: one CRC-32C (unmasked) of the whole slice
  crc32_whole,   ///< a torch.save zip file read as a manifest: its record's CRC-32 (zlib's) of the whole slice
  /// A torch.save file in the legacy (non-zip) format read as a manifest: the format stores no
  /// checksum, so each slice's one "checksum" is 0 and only sizes and structure can be checked.
  unchecked,
};

/// Whether each slice carries one CRC of all its bytes (a foreign file read as a manifest),
/// which a read therefore checks whole.
constexpr bool whole_slice_crc(checksum_kind k) noexcept { return k != checksum_kind::xxh3_chunks; }

/// The whole-slice CRC of kind `k` of `data` appended to bytes whose CRC is `crc` (0 for none;
/// always 0 for `unchecked`).
std::uint32_t extend_crc(checksum_kind k, std::uint32_t crc, std::span<const std::byte> data) noexcept;

/// The name of a whole-slice CRC in messages: "CRC-32C" or "CRC-32" ("no checksum" for `unchecked`).
constexpr const char* crc_name(checksum_kind k) noexcept {
  return k == checksum_kind::crc32_whole ? "CRC-32" : k == checksum_kind::unchecked ? "no checksum" : "CRC-32C";
}

/// A decoded manifest. Tensors are sorted by key (strictly increasing).
struct manifest {
  std::uint16_t minor = minor_version;              ///< format minor version it was written with
  std::uint64_t chunk_bytes = default_chunk_bytes;  ///< checksum chunk size (a power of two)
  std::uint64_t created_unix_ms = 0;                ///< when the save started (milliseconds since the epoch)
  std::string writer;                               ///< free text, e.g. "meshckpt 0.1.0"
  std::vector<saved_mesh> meshes;                   ///< the meshes tensors were saved on
  std::vector<data_file> files;                     ///< the data files
  std::vector<saved_tensor> tensors;                ///< sorted by key
  std::vector<extension> extensions;                ///< named opaque sections
  /// `crc32c_whole` or `crc32_whole` only for a TensorFlow bundle or a torch file presented as a
  /// manifest in memory (then
  /// `chunk_bytes` exceeds every slice, each slice's `checksums` holds its CRC, and the
  /// manifest cannot be encoded); never in a manifest file.
  checksum_kind checksum = checksum_kind::xxh3_chunks;

  /// The tensor with this key, or nullptr (binary search).
  const saved_tensor* find(std::string_view key) const;

  /// Total bytes of tensor data stored (sum of slice lengths).
  std::uint64_t stored_bytes() const;

  /// Field-wise equality.
  friend bool operator==(const manifest&, const manifest&) = default;
};

/// Checks everything `decode` checks, on an in-memory manifest (the writer calls it before
/// encoding, so a bug never produces a manifest that the reader would reject).
result<void> validate(const manifest& m, const limits& lim = {});

/// Encodes a manifest. \returns the error of `validate` when it is invalid.
result<std::vector<std::byte>> encode(const manifest& m);

/// `encode` into `out`, replacing its contents and reusing its capacity.
result<void> encode_into(const manifest& m, std::vector<std::byte>& out);

/// Decodes and validates a manifest. Errors: `errc::corrupt_manifest` (bad magic, checksum,
/// truncation, inconsistent field; the message gives the byte offset and the field),
/// `errc::unsupported_version`, `errc::limit_exceeded`.
result<manifest> decode(std::span<const std::byte> bytes, const limits& lim = {});

/// `decode` into `m`, reusing the memory of what it held (its vectors keep their capacity:
/// a process that reads many manifests does not allocate them anew each time). On error `m`
/// holds an unspecified part of the input.
result<void> decode_into(std::span<const std::byte> bytes, manifest& m, const limits& lim = {});

/// The mesh a tensor was saved on, rebuilt as a `mesh` (all devices local).
result<mesh> saved_mesh_of(const manifest& m, const saved_tensor& t);

/// The layout a tensor was saved with, rebuilt on `saved_mesh_of`.
result<layout> saved_layout_of(const manifest& m, const saved_tensor& t);

}  // namespace meshckpt::format
