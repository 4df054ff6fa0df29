#pragma once
/// \file
/// File names inside a checkpoint directory. A checkpoint with prefix `DIR/BASE` consists of
/// `DIR/BASE.manifest` (its presence is what makes the checkpoint exist) and data files
/// `DIR/BASE.data-<token>-<index>`; a save in progress writes `DIR/BASE.manifest.tmp-<token>`
/// first. `<token>` is 16 lower-case hex digits, unique per save attempt.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "meshckpt/error.hpp"

namespace meshckpt::format {

/// Suffix of a committed manifest.
inline constexpr std::string_view manifest_suffix = ".manifest";

/// True when `name` is a plain file name: 1..255 bytes, no '/', no NUL or other control
/// character, not "." or "..". Names read from a manifest must pass this before use.
bool is_plain_name(std::string_view name) noexcept;

/// Checks a checkpoint base name (the last component of a prefix): a plain name that does not
/// itself end in ".manifest". \returns `errc::invalid_argument` explaining why not.
result<void> check_base_name(std::string_view base);

std::string manifest_name(std::string_view base);
std::string temp_manifest_name(std::string_view base, std::uint64_t token);
std::string data_file_name(std::string_view base, std::uint64_t token, std::uint32_t index);

/// What a file in a checkpoint directory is, judged from its name only.
struct name_kind {
  enum kind { other, manifest, temp_manifest, data } k = other;
  std::string base;         ///< the checkpoint base name it belongs to
  std::uint64_t token = 0;  ///< for temp manifests and data files
};

/// Classifies a directory entry. Never mistakes a temp manifest or data file for a manifest.
name_kind classify(std::string_view file_name);

/// 16 lower-case hex digits.
std::string token_hex(std::uint64_t token);

}  // namespace meshckpt::format
