#pragma once
/// \file
/// Restoring by name from safetensors files (https://github.com/huggingface/safetensors): a
/// single `.safetensors` file, or a sharded model through its `model.safetensors.index.json`
/// (`{"metadata": {...}, "weight_map": {"NAME": "model-00001-of-00002.safetensors", ...}}`, as
/// Hugging Face tools write). Each target is filled in any mesh and layout: the tensor is read
/// whole from its file once and every local shard's box copied out of it. Files are hostile
/// input: the header is decoded with the format's safety rules (format/safetensors.hpp) and the
/// index may only name plain files next to it.

#include <map>
#include <span>
#include <string>
#include <vector>
#include <string_view>

#include "meshckpt/pipeline/tensor_io.hpp"
#include "meshckpt/format/manifest.hpp"
#include "meshckpt/io/async.hpp"
#include "meshckpt/io/backend.hpp"

namespace meshckpt {

/// A tensor of a safetensors file or sharded model: name, dtype, shape, and the file holding it.
struct safetensors_tensor {
  std::string name;
  dtype type = dtype::float32;
  shape dims;
  std::string file;
};

/// The tensors of the safetensors file `path`, or of the shards its index `*.index.json` maps
/// (every mapped name must be found in its file), sorted by name.
result<std::vector<safetensors_tensor>> list_safetensors(io::backend& b, std::string_view path);

/// Reads `targets[i].key` from the safetensors file `path` (or from the shards an index file
/// `*.index.json` maps it to) into `targets[i].tensor`'s shards. The saved dtype and shape must
/// equal the target's. Memory: one tensor at a time. Errors: not_found (file or tensor name,
/// with the file), dtype_mismatch, shape_mismatch, corrupt_manifest (a bad header or index),
/// limit_exceeded, IO errors; the target shards may be partly written on error.
result<read_report> read_safetensors(io::backend& b, std::string_view path, std::span<const named_tensor> targets);

/// The manifest extension that keeps a safetensors file's `__metadata__` through an import
/// (`format::encode_string_map`); an export to safetensors writes it back.
inline constexpr std::string_view safetensors_metadata_extension = "safetensors_metadata";

/// Writes the safetensors file `path` (or the sharded model its index `*.index.json` maps) as
/// the meshckpt checkpoint `to`: every tensor whole on one device, under its name verbatim, its
/// bytes streamed from the file into the save's staging buffers, so memory stays bounded by the
/// staging pool (`write_tensors`) whatever the tensors' size. The first file's `__metadata__`
/// is kept as `safetensors_metadata_extension`. Errors: those of `list_safetensors`, of the
/// reads (short_read naming the file and offset) and of `write_tensors`; on any error the
/// checkpoint is not written and the save's files are removed.
result<write_report> import_safetensors(io::backend& b, std::string_view path, std::string_view to, const write_options& opt = {});

namespace detail {
void start_import_safetensors(boost::asio::any_io_executor ex, io::backend& b, std::string path, std::string to, write_options opt,
                              io::completion<write_report> done);
}  // namespace detail

/// Asynchronous `import_safetensors`.
template <class Token>
auto async_import_safetensors(boost::asio::any_io_executor ex, io::backend& b, std::string path, std::string to, write_options opt,
                              Token&& token) {
  return io::async_op<write_report>(
      ex,
      [ex, &b, path = std::move(path), to = std::move(to), opt = std::move(opt)](io::completion<write_report> done) mutable {
        detail::start_import_safetensors(ex, b, std::move(path), std::move(to), std::move(opt), std::move(done));
      },
      std::forward<Token>(token));
}

/// Writes the tensors `keys` of checkpoint `prefix` (whose manifest is `m`) into the safetensors
/// file `out`, in that order, with `metadata` as its `__metadata__`. A tensor stored as one
/// slice is copied in 8 MiB pieces (its checksums verified on the way); one stored as several
/// slices is assembled in blocks of rows of about 8 MiB (`read_tensor_box`, verified); `m` may
/// be a TensorFlow checkpoint's (`read_tf_checkpoint`), each tensor then checked against its
/// CRC-32C first. Memory stays bounded whatever the tensors' size. The
/// file is written through `b`; the file is published durably like a manifest: a temp
/// name in `out`'s directory, fsync, rename, directory fsync. On failure nothing is left at
/// `out` (an older file there stays) and the temp file is removed. Errors: not_found (a key),
/// the format's limits (`format::encode_safetensors_header`), read and IO errors.
result<void> export_safetensors(io::backend& b, std::string_view prefix, const format::manifest& m, const std::vector<std::string>& keys,
                                const std::map<std::string, std::string>& metadata, std::string_view out);

/// Publishes `bytes` as the file `path` durably through `b` (temp name, fsync, rename, directory
/// fsync): readers see the old file or the whole new one, never part of it.
result<void> write_file_durably(io::backend& b, std::string_view path, std::span<const std::byte> bytes);

}  // namespace meshckpt
