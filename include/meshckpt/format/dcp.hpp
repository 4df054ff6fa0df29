#pragma once
/// \file
/// PyTorch's distributed checkpoint (DCP) metadata: the `.metadata` file of a DCP directory, a
/// pickle (protocol 4) of a `Metadata` record — for each state-dict key, a tensor's dtype, size
/// and chunks, or a bytes item — and where each chunk or item lies (`storage_data`: a
/// `.distcp` file, offset and length). torch 1.13 writes the records under
/// `torch.distributed._shard.checkpoint`, torch 2.x under `torch.distributed.checkpoint`; both
/// are read, as data: the records are never constructed (format/pickle.hpp), and the one enum a
/// record pickles through `builtins.getattr` (`MEM_FORMAT_ENCODING`) is allowed by its members'
/// names only.

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "meshckpt/format/pickle.hpp"
#include "meshckpt/tensor/box.hpp"
#include "meshckpt/tensor/dtype.hpp"

namespace meshckpt::format::dcp {

/// Where a chunk or item's bytes are: a torch.save zip inside a `.distcp` file.
struct location {
  std::string file;  ///< a plain file name in the checkpoint's directory
  std::uint64_t offset = 0, length = 0;
};

/// One chunk of a tensor: its box of the tensor, and where it is.
struct chunk {
  box where;
  location at;
};

/// A state-dict entry: a tensor in chunks, or a bytes item (a pickled object).
struct item {
  std::string key;
  bool tensor = false;
  dtype type = dtype::float32;  ///< tensor
  shape size;                   ///< tensor
  std::vector<chunk> chunks;    ///< tensor: tiling it
  location bytes;               ///< bytes item
};

/// The metadata's entries, in its order.
struct metadata {
  std::vector<item> items;
};

/// The globals a DCP `.metadata` may name: its records under both module paths, `torch.Size`,
/// torch's dtypes and `torch.serialization._get_layout`; and the getattr of `MEM_FORMAT_ENCODING`'s
/// members.
pickle::policy metadata_policy();

/// The metadata the pickle `d` holds. Errors: `corrupt_manifest` naming the key (a record of
/// the wrong shape, a chunk outside its tensor or chunks that do not tile it, a chunk or item
/// without a storage entry, a file name that is not plain), `unsupported` (a dtype meshckpt
/// lacks), `limit_exceeded`.
result<metadata> read_metadata(const pickle::document& d, std::string_view what);

}  // namespace meshckpt::format::dcp
