#pragma once
/// \file
/// The safetensors header (https://github.com/huggingface/safetensors): an 8-byte little-endian
/// header length N, N bytes of JSON — `{"NAME": {"dtype": "F32", "shape": [..],
/// "data_offsets": [begin, end]}, ..., "__metadata__": {"k": "v", ...}}` — then the tensor data,
/// offsets relative to its start. Pure functions; `decode_safetensors_header` treats its input
/// as hostile and applies the format's safety rules: header size capped (100 MB), valid JSON
/// with the expected types only, known dtypes, every tensor's byte count equal to its dtype
/// size times its shape's volume (overflow-checked), the data ranges contiguous from 0 without
/// gaps or overlaps, and the last ending exactly at the end of the file.

#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "meshckpt/error.hpp"
#include "meshckpt/tensor/box.hpp"
#include "meshckpt/tensor/dtype.hpp"

namespace meshckpt::format {

/// One tensor of a safetensors file.
struct safetensor_entry {
  std::string name;
  dtype type = dtype::float32;
  shape dims;
  std::uint64_t begin = 0, end = 0;  ///< byte range relative to the start of the data
};

/// A decoded header: tensors in data order, and the string metadata.
struct safetensors_header {
  std::vector<safetensor_entry> tensors;
  std::map<std::string, std::string> metadata;
  std::uint64_t data_start = 0;  ///< 8 + header length
};

/// The safetensors name of a dtype ("F32", "BF16", "I64", "BOOL", "F8_E4M3", "C64", ...);
/// nullopt for `blob` and `complex128`, which have no safetensors equivalent.
std::optional<std::string> safetensors_dtype(dtype t);

/// Encodes the 8-byte length and the JSON header for `tensors` (their offsets are assigned here,
/// contiguous in the given order, and written back). The header is padded with spaces to a
/// multiple of 8 bytes, as the reference implementation does.
result<std::vector<std::byte>> encode_safetensors_header(std::vector<safetensor_entry>& tensors,
                                                         const std::map<std::string, std::string>& metadata);

/// Decodes the header at the start of a file of `file_size` bytes, given its first bytes
/// (`prefix` must hold at least the 8-byte length and the header; fewer is `short_read`).
/// Errors: `corrupt_manifest` naming the problem and the tensor, `limit_exceeded` for an
/// oversized header.
result<safetensors_header> decode_safetensors_header(std::span<const std::byte> prefix, std::uint64_t file_size);

/// The index of a sharded safetensors model (`model.safetensors.index.json`): which file holds
/// each tensor, and the total bytes of tensor data (`metadata.total_size`).
struct safetensors_index {
  std::map<std::string, std::string> weight_map;
  std::uint64_t total_size = 0;
};

/// Decodes an index file, strictly: a JSON object whose `weight_map` maps names to plain file
/// names (no '/', not "." or ".."), each name once; other members (`metadata`) are skipped.
/// Errors: `corrupt_manifest` naming the problem and its byte, `limit_exceeded` above 100 MB.
result<safetensors_index> decode_safetensors_index(std::string_view text);

/// The index file's JSON, as Hugging Face tools write it (names sorted).
std::string encode_safetensors_index(const safetensors_index& idx);

/// A string map as bytes (a count, then each key and value, length-prefixed varints): how a
/// checkpoint keeps a safetensors file's `__metadata__` in a manifest extension.
std::vector<std::byte> encode_string_map(const std::map<std::string, std::string>& m);

/// Decodes `encode_string_map`'s bytes, strictly (hostile input: lengths checked against the
/// bytes left, trailing bytes refused). Errors: `corrupt_manifest` naming the byte.
result<std::map<std::string, std::string>> decode_string_map(std::span<const std::byte> bytes);

/// Header size cap applied by the decoder (the reference implementation's).
inline constexpr std::uint64_t safetensors_max_header = 100'000'000;

}  // namespace meshckpt::format
