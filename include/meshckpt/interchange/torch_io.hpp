#pragma once
/// \file
/// PyTorch's `torch.save` files, read without running pickle: the zip format (a root folder
/// named after the file, `<root>/data.pkl`, storages under `<root>/data/`, `byteorder` and
/// `version` records) presented as a meshckpt manifest, so that every tool reads one in place
/// and a restore fills targets from it by name. The pickle is read by a reader that executes
/// nothing and allows only the globals of tensors, storages, dtypes and containers
/// (format/pickle.hpp, format/torch_file.hpp); sizes and offsets are checked against the file
/// before anything is allocated; each storage is checked against its record's CRC-32. A PyTorch
/// distributed checkpoint (DCP) directory is read the same way: its `.metadata` as data
/// (format/dcp.hpp), each chunk and bytes item a torch.save zip inside a `.distcp` file.

#include <string>
#include <string_view>

#include "meshckpt/pipeline/tensor_io.hpp"
#include "meshckpt/format/manifest.hpp"
#include "meshckpt/io/async.hpp"
#include "meshckpt/io/backend.hpp"

namespace meshckpt {

/// The entry under which meshckpt.torch keeps a state's skeleton (a blob of JSON).
inline constexpr std::string_view torch_skeleton_key = "__meshckpt_torch__";

/// A torch.save file seen as a meshckpt manifest.
struct torch_checkpoint {
  std::string prefix;  ///< the file's path: the manifest's one data file is the file itself
  /// One slice per storage, whole: `checksum_kind::crc32_whole` (the zip format), or
  /// `unchecked` (the legacy format, which stores no checksum).
  format::manifest manifest;
  std::string skeleton;     ///< meshckpt.torch's document of the state (format/torch_file.hpp)
  std::size_t tensors = 0;  ///< distinct tensors of the state (tied keys count once)
};

/// The torch.save file at `path`, or the DCP directory `path` (then `prefix` is
/// `path/.metadata`, and the manifest's files are its .distcp files: a tensor's chunks are its
/// slices). Keys are the state dict's keys, nested keys joined by '.';
/// a storage that tensors view in different ways (slices of one buffer, a transposed view) is
/// one entry `__meshckpt_storage__/N` of its bytes, whose views the skeleton describes; tied
/// weights are one entry. Both torch.save formats are read: the zip format and the legacy one
/// (pickles, then raw storages). Errors: not_found (no file), unsupported (a compressed record,
/// big-endian data, a dtype meshckpt lacks, a legacy storage view), corrupt_manifest (a
/// malformed zip, a pickle opcode or global that is refused — named —, a missing storage
/// record, a storage larger than its record, a legacy storage whose element count differs
/// from its id's or that lies past the end of the file), limit_exceeded.
result<torch_checkpoint> read_torch_checkpoint(io::backend& b, std::string_view path);

/// The start of the not_found error `read_torch_checkpoint` gives when `path` holds nothing it
/// reads (no file, a file of another format, a directory without `.metadata`).
inline constexpr std::string_view no_torch_file_at = "no torch.save file at ";

/// Whether `e`, from `read_torch_checkpoint`, says there is no torch checkpoint at its path at
/// all — rather than one that is missing a file, which is not_found too.
bool no_torch_checkpoint(const error& e);

/// Writes the torch.save file `path` as the meshckpt checkpoint `to`: each entry of
/// `read_torch_checkpoint` whole on one device, streamed from the file (memory bounded by the
/// staging pool) and checked against its CRC-32 on the way, and the skeleton as
/// `torch_skeleton_key`, so that `meshckpt.torch.load` rebuilds the state with its sharing.
/// Errors: those of `read_torch_checkpoint` and of the save; on error nothing is committed.
result<write_report> import_torch_checkpoint(io::backend& b, std::string_view path, std::string_view to, const write_options& opt = {});

namespace detail {
void start_read_torch_checkpoint(boost::asio::any_io_executor ex, io::backend& b, std::string path, io::completion<torch_checkpoint> done);
void start_import_torch_checkpoint(boost::asio::any_io_executor ex, io::backend& b, std::string path, std::string to, write_options opt,
                                   io::completion<write_report> done);
}  // namespace detail

/// Asynchronous `read_torch_checkpoint`.
template <class Token>
auto async_read_torch_checkpoint(boost::asio::any_io_executor ex, io::backend& b, std::string path, Token&& token) {
  return io::async_op<torch_checkpoint>(
      ex,
      [ex, &b, path = std::move(path)](io::completion<torch_checkpoint> done) mutable {
        detail::start_read_torch_checkpoint(ex, b, std::move(path), std::move(done));
      },
      std::forward<Token>(token));
}

/// Asynchronous `import_torch_checkpoint`.
template <class Token>
auto async_import_torch_checkpoint(boost::asio::any_io_executor ex, io::backend& b, std::string path, std::string to, write_options opt,
                                   Token&& token) {
  return io::async_op<write_report>(
      ex,
      [ex, &b, path = std::move(path), to = std::move(to), opt = std::move(opt)](io::completion<write_report> done) mutable {
        detail::start_import_torch_checkpoint(ex, b, std::move(path), std::move(to), std::move(opt), std::move(done));
      },
      std::forward<Token>(token));
}

/// Writes the tensors `keys` of checkpoint `prefix` (whose manifest is `m`: meshckpt's, or a
/// TensorFlow or torch file's read as one) into the torch.save zip file `out`, an OrderedDict of
/// them under their keys in that order, which `torch.load(out, weights_only=True)` loads. Each
/// tensor is streamed from its slices into its record (verified on the way, its CRC-32 computed
/// as it goes), so memory stays bounded whatever the tensors' size; records are aligned to 64
/// bytes as torch writes them. The file is published durably (temp name, fsync, rename): nothing
/// is left at `out` on failure. Errors: not_found (a key), unsupported (a blob), invalid_argument
/// (a key that is not UTF-8), read and IO errors.
result<void> export_torch(io::backend& b, std::string_view prefix, const format::manifest& m, const std::vector<std::string>& keys,
                          std::string_view out);

}  // namespace meshckpt
