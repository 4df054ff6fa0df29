#pragma once
/// \file
/// TensorFlow tensor bundles on a backend: finding and reading a bundle's index
/// (format/tf_bundle.hpp decodes it). What a prefix names is told by its files: `P.manifest`
/// for a meshckpt checkpoint, `P.index` for a TensorFlow bundle.

#include <set>
#include <string>
#include <string_view>

#include "meshckpt/pipeline/tensor_io.hpp"
#include "meshckpt/format/tf_bundle.hpp"
#include "meshckpt/io/async.hpp"
#include "meshckpt/io/backend.hpp"

namespace meshckpt {

/// The largest `.index` file read (about 4 million tensors' entries).
inline constexpr std::uint64_t max_tf_index_bytes = std::uint64_t{1} << 30;

/// The index of the TensorFlow bundle `prefix` (the file `prefix.index`; a `prefix` that ends
/// in ".index" names it too), decoded and checked. Errors: not_found (naming the file) when
/// it does not exist; those of `format::tf::decode_bundle_index`, naming the file.
result<format::tf::bundle_index> read_tf_bundle_index(io::backend& b, std::string_view prefix);

/// Reads every tensor of the TensorFlow bundle `prefix` and checks it against its CRC-32C (a
/// string tensor against its two checksums), in pieces of at most 8 MiB. Damage is listed in
/// the report (`problems`, each naming the tensor, its data file and offset), not returned as
/// an error; an index that cannot be read is the error. `slices` counts the stored entries.
/// With `only`, just the entries of those keys are read.
result<verify_report> verify_tf_bundle(io::backend& b, std::string_view prefix, verify_progress progress = {},
                                       const std::set<std::string>* only = nullptr);

/// The not_found error of a path that holds no checkpoint of any kind: `manifest_missing` (the
/// error saying that `path`.manifest does not exist) and the two TensorFlow files looked for,
/// `path`.index and the SavedModel's `path`/variables/variables.index.
error no_checkpoint_at(std::string_view path, const error& manifest_missing);

/// A TensorFlow checkpoint seen as a meshckpt manifest, for `read_tensors(b, prefix, manifest,
/// targets)` (any layout, by TensorFlow key) and the tools that take a manifest.
struct tf_checkpoint {
  std::string prefix;         ///< the bundle's prefix (for a SavedModel directory D, D/variables/variables)
  format::manifest manifest;  ///< `checksum_kind::crc32c_whole`: one slice per stored tensor or partition
};

/// The TensorFlow checkpoint at `path` (a bundle prefix, its `.index`, or a SavedModel
/// directory) as a manifest: every tensor of a dtype meshckpt has, partitioned variables as
/// slices of one tensor, data files sized. Errors: not_found (naming what was looked for, or a
/// missing data file), those of `read_tf_bundle_index`, short_read (a tensor past the end of its
/// file).
result<tf_checkpoint> read_tf_checkpoint(io::backend& b, std::string_view path);

/// The manifest extension holding a TensorFlow bundle header's version (producer and
/// min_consumer, int32 little-endian each) in a checkpoint imported from TensorFlow, which
/// `export_tf_bundle` writes back.
inline constexpr std::string_view tf_header_extension = "tf_bundle_header";

/// The manifest extension holding TensorFlow's object graph as it was saved (a
/// TrackableObjectGraph proto, optimizer slot variables included) in a checkpoint imported
/// from TensorFlow; `export_tf_bundle` writes it back verbatim while every value it names is
/// in the checkpoint.
inline constexpr std::string_view tf_object_graph_extension = "tf_object_graph";

/// The manifest extension holding, in a checkpoint imported from TensorFlow, the TensorFlow
/// dtype of each tensor held as its integer storage (the quantized types: DT_QINT8 as int8, ...),
/// as a string map (`format::encode_string_map`) of key to DataType number; `export_tf_bundle`
/// writes those tensors back with their TensorFlow dtype.
inline constexpr std::string_view tf_dtypes_extension = "tf_dtypes";

/// How `export_tf_bundle` lays out a bundle.
struct tf_export_options {
  /// Data files (`OUT.data-0000k-of-0000N`), 1 to 99999: stored tensors are spread over them,
  /// largest first onto the emptiest.
  int num_shards = 1;
};

/// What `export_tf_bundle` wrote.
struct tf_export_report {
  std::size_t tensors = 0;    ///< tensors of the checkpoint
  std::size_t entries = 0;    ///< entries of the index (partitioned slices and the object graph count)
  std::size_t files = 0;      ///< data files
  std::uint64_t bytes = 0;    ///< tensor bytes copied
  bool object_graph = false;  ///< whether `_CHECKPOINTABLE_OBJECT_GRAPH` was written
  std::size_t opaque = 0;     ///< opaque values (`blob`) written as DT_STRING scalars
};

/// Writes the meshckpt checkpoint `prefix` as the TensorFlow bundle `out` (`out.index`,
/// `out.data-0000k-of-0000N`), as TensorFlow's BundleWriter does, keys verbatim: a tensor
/// stored as one slice covering it is an entry of its own; one stored as several slices (saved
/// sharded) is a partitioned variable whose slices are those boxes, which TensorFlow restores
/// into any partitioning. The checkpoint's object graph becomes `_CHECKPOINTABLE_OBJECT_GRAPH`
/// (each value a `VARIABLE_VALUE` attribute under its key), so TensorFlow restores it by
/// structure; the header's version comes from `tf_header_extension`, the graph from
/// `tf_object_graph_extension` (optimizer slots as TensorFlow lists them) and quantized dtypes
/// from `tf_dtypes_extension` when the checkpoint was imported from TensorFlow. An opaque value
/// (a rank-1 `blob`, such as `graph::bytes_state`) is written as TensorFlow holds bytes: a
/// DT_STRING scalar (lossless; `import_tf_checkpoint` brings it back as the same blob). Every
/// key the written object graph names is in the bundle, or the export fails. Streaming: each stored slice is copied in 8 MiB pieces, its
/// checksums verified and its CRC-32C computed on the way, whatever the tensor's size. Files
/// are published durably (temp name, fsync, rename); an older `out.index` is removed first, so
/// a crash leaves no bundle at `out` or the whole new one. Errors: those of reading the
/// checkpoint, invalid_argument (`num_shards`), IO errors naming the file.
result<tf_export_report> export_tf_bundle(io::backend& b, std::string_view prefix, std::string_view out, const tf_export_options& opt = {});

/// Writes the TensorFlow checkpoint at `path` (a bundle prefix, its `.index`, or a SavedModel
/// directory) as the meshckpt checkpoint `to`: every tensor of a dtype meshckpt has, whole on
/// one device, under its TensorFlow key verbatim (partitioned variables joined; a quantized type
/// as its integer storage, its TensorFlow dtype kept in `tf_dtypes_extension`; a DT_STRING
/// scalar that the object graph names as a value, or any of a bundle without a graph, as an
/// opaque `blob` of its bytes); a TF2 object
/// graph as the checkpoint's object graph, so a `checkpoint::restore` of the result matches by
/// structure as it would the original; the bundle header's version as `tf_header_extension`.
/// Every tensor is checked against its CRC-32C. Streamed: a tensor stored whole or
/// partitioned along its first dimension (TensorFlow's usual partitioning) is read from the
/// bundle while the save writes it, so memory stays bounded by the staging pool whatever its
/// size; only a variable partitioned along another dimension is assembled in memory first. A
/// CRC mismatch fails the import and leaves no checkpoint. Errors: not_found (no TensorFlow
/// checkpoint there), those of reading it and of `write_tensors`.
result<write_report> import_tf_checkpoint(io::backend& b, std::string_view path, std::string_view to, const write_options& opt = {});

namespace detail {
void start_export_tf_bundle(boost::asio::any_io_executor ex, io::backend& b, std::string prefix, std::string out, tf_export_options opt,
                            io::completion<tf_export_report> done);
void start_import_tf_checkpoint(boost::asio::any_io_executor ex, io::backend& b, std::string path, std::string to, write_options opt,
                                io::completion<write_report> done);
void start_read_tf_bundle_index(boost::asio::any_io_executor ex, io::backend& b, std::string prefix,
                                io::completion<format::tf::bundle_index> done);
}  // namespace detail

/// Asynchronous `read_tf_bundle_index`.
template <class Token>
auto async_read_tf_bundle_index(boost::asio::any_io_executor ex, io::backend& b, std::string prefix, Token&& token) {
  return io::async_op<format::tf::bundle_index>(
      ex,
      [ex, &b, prefix = std::move(prefix)](io::completion<format::tf::bundle_index> done) mutable {
        detail::start_read_tf_bundle_index(ex, b, std::move(prefix), std::move(done));
      },
      std::forward<Token>(token));
}

/// Asynchronous `export_tf_bundle`.
template <class Token>
auto async_export_tf_bundle(boost::asio::any_io_executor ex, io::backend& b, std::string prefix, std::string out, tf_export_options opt,
                            Token&& token) {
  return io::async_op<tf_export_report>(
      ex,
      [ex, &b, prefix = std::move(prefix), out = std::move(out), opt](io::completion<tf_export_report> done) mutable {
        detail::start_export_tf_bundle(ex, b, std::move(prefix), std::move(out), opt, std::move(done));
      },
      std::forward<Token>(token));
}

/// Asynchronous `import_tf_checkpoint`.
template <class Token>
auto async_import_tf_checkpoint(boost::asio::any_io_executor ex, io::backend& b, std::string path, std::string to, write_options opt,
                                Token&& token) {
  return io::async_op<write_report>(
      ex,
      [ex, &b, path = std::move(path), to = std::move(to), opt = std::move(opt)](io::completion<write_report> done) mutable {
        detail::start_import_tf_checkpoint(ex, b, std::move(path), std::move(to), std::move(opt), std::move(done));
      },
      std::forward<Token>(token));
}

}  // namespace meshckpt
