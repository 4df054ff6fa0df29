#pragma once
/// \file
/// What a `torch.save` pickle holds, read from its nodes (format/pickle.hpp) without running
/// it: the state's structure, its tensors (each a view of a storage: offset, shape, stride) and
/// the storages (dtype, element count, the record holding their bytes). Only the globals that
/// tensors, storages, dtypes and containers use are allowed (`state_policy`).
///
/// The state is presented the way meshckpt.torch stores one, so that every tool reads it
/// alike: each storage's bytes are one stored entry — under the tensor's key when every tensor
/// of the storage views all of it the same way (the usual case; tied weights are one tensor);
/// when tensors view it differently, under the key of a view that covers all of it
/// contiguously, else as `__meshckpt_storage__/N` bytes, the views described by the skeleton —
/// and the skeleton is meshckpt.torch's document (format 2) with `"keys": "verbatim"`: its
/// leaves name stored entries as they are, the state dict's keys joined by '.'.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "meshckpt/format/pickle.hpp"
#include "meshckpt/tensor/box.hpp"
#include "meshckpt/tensor/dtype.hpp"

namespace meshckpt::format::torch {

/// A storage the pickle names (persistent id `('storage', torch.XStorage, key, location, n)`).
struct storage_ref {
  std::string key;  ///< the record's name under `data/`
  dtype type = dtype::uint8;
  std::uint64_t numel = 0;
  std::string location;  ///< "cpu", "cuda:0", ...: where it was; it is read onto the host
};

/// One stored entry: all the bytes of storage `storage`, as a tensor of `dims`.
struct stored_entry {
  std::string key;
  dtype type = dtype::uint8;
  shape dims;
  std::size_t storage = 0;
};

/// A state read from a pickle.
struct state_file {
  std::vector<storage_ref> storages;  ///< in order of first use
  std::vector<stored_entry> entries;  ///< one per storage, in order of first use
  std::string skeleton;               ///< meshckpt.torch's document
  std::string state;                  ///< the document's "state": the skeleton of the state alone
  std::size_t tensors = 0;            ///< distinct tensors (tied keys count once)
};

/// The globals a torch.save pickle may name: `collections.OrderedDict`, torch's tensor and
/// parameter rebuild functions, its storage types, `torch.Size` and its dtypes.
pickle::policy state_policy();

/// The state held by the pickle `d` (read with `state_policy`), its keys under `root` (joined
/// with '.'; empty: the state dict's own keys). `what` names the file in
/// errors. Errors: `corrupt_manifest` naming the entry (a malformed tensor or storage id, a
/// view outside its storage, a storage whose dtype differs between uses, a value meshckpt.torch
/// cannot hold such as bytes, two entries under one joined key), `unsupported` (a dtype meshckpt
/// lacks: quantized storages).
result<state_file> read_state(const pickle::document& d, std::string_view what, std::string_view root = {});

/// A tensor for `encode_flat_state`: a contiguous tensor that views all of its storage.
struct flat_entry {
  std::string key;  ///< its state-dict key (UTF-8)
  dtype type = dtype::float32;
  shape dims;
  std::string storage;  ///< its storage's record name under `<root>/data/`
};

/// The pickle (protocol 2) of an OrderedDict of `entries` in their order, as torch.save
/// writes a state dict: each value `torch._utils._rebuild_tensor_v2` of a storage persistent
/// id, so that `torch.load(f, weights_only=True)` loads it. Errors: unsupported (`blob`),
/// invalid_argument (a key that is not valid UTF-8).
result<std::vector<std::byte>> encode_flat_state(const std::vector<flat_entry>& entries);

/// The dtype of torch's storage type `name` ("FloatStorage"), or nullopt.
std::optional<dtype> storage_dtype(std::string_view name);
/// The storage type of `t` ("FloatStorage"); empty for `blob`.
std::string_view storage_type(dtype t);
/// torch's name of `t` ("float32", "bool", "complex64"); empty for `blob`.
std::string_view dtype_name(dtype t);
/// The dtype of torch's name `name` ("float32"), or nullopt.
std::optional<dtype> dtype_named(std::string_view name);

}  // namespace meshckpt::format::torch
