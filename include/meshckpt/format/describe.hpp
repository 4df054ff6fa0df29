#pragma once
/// \file
/// Renderings of a manifest for people and scripts (what `meshckpt inspect` prints).

#include <string>
#include <string_view>

#include "meshckpt/format/manifest.hpp"

namespace meshckpt::format {

/// A table of every tensor (key, dtype, global shape, saved layout, mesh, slices, bytes) and
/// every data file, headed by a summary line.
std::string describe_text(const manifest& m, std::string_view prefix);

/// The same as one JSON object; the schema is documented in docs/CLI.md and kept stable.
std::string describe_json(const manifest& m, std::string_view prefix);

/// `s` as a JSON string literal (with quotes).
std::string json_string(std::string_view s);

/// "1.5 MiB" style rendering of a byte count.
std::string human_bytes(std::uint64_t n);

}  // namespace meshckpt::format
