#pragma once
/// \file
/// TensorFlow's tensor bundles (the checkpoints of `tf.train.Saver` V2, `tf.train.Checkpoint`
/// and a SavedModel's `variables/`), read as hostile input. Pure: the caller reads the files.
///
/// A bundle with prefix P is `P.index`, a LevelDB-format table, and the data files
/// `P.data-0000k-of-0000N`. The table maps the empty key to a header (shard count, endianness,
/// version) and every tensor's key to its entry: dtype, shape, data file (shard), offset, size
/// and the masked CRC-32C of its bytes. A partitioned variable's entry lists its slices instead;
/// each slice is stored under a key of its own (`slice_key`).

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "meshckpt/error.hpp"
#include "meshckpt/tensor/box.hpp"
#include "meshckpt/tensor/dtype.hpp"

namespace meshckpt::format::tf {

/// TensorFlow's DataType numbers of the dtypes that have a meaning here.
enum class tf_dtype : int {
  invalid = 0,
  float32 = 1,
  float64 = 2,
  int32 = 3,
  uint8 = 4,
  int16 = 5,
  int8 = 6,
  string = 7,
  complex64 = 8,
  int64 = 9,
  boolean = 10,
  bfloat16 = 14,
  uint16 = 17,
  complex128 = 18,
  float16 = 19,
  resource = 20,
  variant = 21,
  uint32 = 22,
  uint64 = 23,
  float8_e5m2 = 24,
  float8_e4m3fn = 25,
};

/// TensorFlow's name of DataType number `t` ("DT_FLOAT", "DT_COMPLEX64", "DT_FLOAT_REF", ...;
/// "unknown TensorFlow dtype <n>" for a number TensorFlow does not define).
std::string tf_dtype_name(int t);

/// The meshckpt dtype of TensorFlow's DataType number `t`, or nullopt when meshckpt has none
/// (strings, complex types, resources, variants, unknown numbers). A quantized type
/// (DT_QINT8, DT_QUINT8, DT_QINT16, DT_QUINT16, DT_QINT32) is its integer storage, as
/// TensorFlow stores it (int8, uint8, int16, uint16, int32).
std::optional<dtype> from_tf_dtype(int t) noexcept;

/// TensorFlow's DataType number of a meshckpt dtype, or nullopt (`blob` has none). Never a
/// quantized type: those are restored from `tf_dtypes_extension` (api/tf_bundle_io.hpp).
std::optional<int> to_tf_dtype(dtype t) noexcept;

/// Whether DataType number `t` is a quantized type, stored as the integers `from_tf_dtype` gives.
bool is_quantized(int t) noexcept;

/// DataType number of DT_STRING, whose tensors are stored as lengths and bytes
/// (`decode_string_tensor`), not as fixed-size elements.
inline constexpr int tf_string = 7;

/// One slice of a partitioned variable as TensorFlow describes it: per dimension a start and a
/// length, a length of -1 standing for the whole dimension.
struct tf_slice {
  std::vector<std::int64_t> start;
  std::vector<std::int64_t> length;
  /// The box it covers in a tensor of shape `global`.
  box in(const shape& global) const;
  friend bool operator==(const tf_slice&, const tf_slice&) = default;
};

/// One tensor of a bundle, as its `.index` entry describes it.
struct bundle_entry {
  std::string key;
  int tf_type = 0;            ///< TensorFlow's DataType number
  std::optional<dtype> type;  ///< meshckpt's dtype; nullopt for DT_STRING and what meshckpt lacks
  shape global;
  int shard = 0;             ///< data file index
  std::uint64_t offset = 0;  ///< in the data file
  std::uint64_t size = 0;    ///< bytes
  std::uint32_t crc32c = 0;  ///< CRC-32C of the bytes (unmasked)
  /// A partitioned variable's slices (each stored under `slice_key(key, slice)`, an entry of
  /// its own); empty for a tensor stored whole.
  std::vector<tf_slice> slices;
};

/// A bundle's `.index`, decoded and checked.
struct bundle_index {
  int num_shards = 1;
  int producer = 0;                   ///< bundle format version that wrote it
  int min_consumer = 0;               ///< oldest reader version that can read it
  std::vector<bundle_entry> entries;  ///< key order; the header is not among them

  /// The entry of `key`, or nullptr.
  const bundle_entry* find(std::string_view key) const;
};

/// The key of a TF2 checkpoint's object graph (a DT_STRING scalar holding a serialized
/// TrackableObjectGraph); a TF1 name-based checkpoint has none.
inline constexpr std::string_view object_graph_key = "_CHECKPOINTABLE_OBJECT_GRAPH";

/// A TF2 checkpoint's object graph (TensorFlow's TrackableObjectGraph), as far as a restore
/// uses it. Node 0 is the root.
struct trackable_graph {
  /// A value an object saved: `name` is the attribute ("VARIABLE_VALUE" for a variable),
  /// `checkpoint_key` the bundle key it is stored under.
  struct attribute {
    std::string name, full_name, checkpoint_key;
    friend bool operator==(const attribute&, const attribute&) = default;
  };
  /// An optimizer's slot: slot `slot_name` of the variable at node `original` is node `slot`.
  struct slot_variable {
    std::uint32_t original = 0;
    std::string slot_name;
    std::uint32_t slot = 0;
    friend bool operator==(const slot_variable&, const slot_variable&) = default;
  };
  struct node {
    std::vector<std::pair<std::string, std::uint32_t>> children;  ///< local name, node id
    std::vector<attribute> attributes;
    std::vector<slot_variable> slot_variables;
    friend bool operator==(const node&, const node&) = default;
  };
  std::vector<node> nodes;
  friend bool operator==(const trackable_graph&, const trackable_graph&) = default;
};

/// Decodes the serialized TrackableObjectGraph stored under `object_graph_key`. Errors:
/// corrupt_manifest (not a TrackableObjectGraph, no nodes, a node id out of range, saying
/// which node and edge); limit_exceeded beyond `max_nodes`.
result<trackable_graph> decode_trackable_graph(std::span<const std::byte> bytes, std::size_t max_nodes = std::size_t{1} << 24);

/// The newest bundle format version this reader reads (TensorFlow's kTensorBundleVersion).
inline constexpr int bundle_version = 1;

/// Decodes a `.index` file. Errors: corrupt_manifest (a malformed table, header or entry, with
/// the key), checksum_mismatch (a table block), unsupported (a big-endian bundle, a newer
/// bundle version, or a file that is a TF1 "V1" checkpoint, which is a table without bundle
/// header), limit_exceeded.
result<bundle_index> decode_bundle_index(std::span<const std::byte> index_file);

/// Encodes `idx` as a `.index` file as TensorFlow's BundleWriter writes it: a table (no
/// compression, blocks of about 4 KiB) whose empty key holds the header (`num_shards`,
/// little-endian, version {producer, min_consumer}) and every other key an entry. Entries must
/// be in strictly increasing key order; a partitioned tensor's entry carries dtype, shape and
/// slices only, each slice an entry of its own under `slice_key`. `crc32c` is given unmasked.
/// Errors: invalid_argument (keys out of order or empty, a dtype TensorFlow lacks).
/// `decode_bundle_index` reads back what this writes.
result<std::vector<std::byte>> encode_bundle_index(const bundle_index& idx);

/// A TensorFlow object graph's serialized TrackableObjectGraph (the inverse of
/// `decode_trackable_graph`).
std::string encode_trackable_graph(const trackable_graph& g);

/// "P.data-00000-of-00001": the base name of data file `shard` of `num_shards` of prefix base
/// name `base`.
std::string data_file_name(std::string_view base, int shard, int num_shards);

/// The key under which TensorFlow stores slice `s` of the partitioned tensor `key`
/// (TensorFlow's EncodeTensorNameSlice: an OrderedCode encoding).
std::string slice_key(std::string_view key, const tf_slice& s);

/// OrderedCode's encoding of a signed number, whose byte order is the numbers' order (exposed
/// for tests).
std::string ordered_signed(std::int64_t v);

/// The elements of a DT_STRING tensor of `count` elements from its stored bytes: varint64
/// lengths, a masked CRC-32C of the lengths, the strings. `crc32c` is the entry's (unmasked)
/// checksum, verified over all of it.
result<std::vector<std::string>> decode_string_tensor(std::span<const std::byte> bytes, std::uint64_t count, std::uint32_t crc32c);

/// Stored bytes of a DT_STRING tensor, and their CRC-32C (unmasked) for the entry.
std::vector<std::byte> encode_string_tensor(std::span<const std::string> elements, std::uint32_t& crc32c);

}  // namespace meshckpt::format::tf
