#pragma once
/// \file
/// Renderings of a manifest, or of a TensorFlow bundle's index, for people and scripts (what
/// `meshckpt inspect` prints).

#include <string>
#include <string_view>

#include "meshckpt/format/manifest.hpp"
#include "meshckpt/format/tf_bundle.hpp"

namespace meshckpt::format {

/// A table of every tensor (key, dtype, global shape, saved layout, mesh, slices, bytes) and
/// every data file, headed by a summary line.
std::string describe_text(const manifest& m, std::string_view prefix);

/// The same as one JSON object; the schema is documented in docs/CLI.md and kept stable.
std::string describe_json(const manifest& m, std::string_view prefix);

/// A TensorFlow bundle's index for people: its kind (TF1 name-based or TF2 object-based), its
/// data files, and a table of every entry (key, dtype, shape, data file, bytes, slices).
std::string describe_text(const tf::bundle_index& idx, std::string_view prefix);

/// The same as one JSON object ("format": "tensorflow"; schema in docs/CLI.md).
std::string describe_json(const tf::bundle_index& idx, std::string_view prefix);

/// A picture of how tensor `t` was sharded when saved (what `meshckpt show` prints), in plain
/// ASCII: for rank 1 and 2, the global shape as a grid of boxes, one per distinct slice, each
/// labelled with the devices that held it (`*` marks the one that wrote it) and with its index
/// ranges; for a scalar or rank > 2, one line per slice. At most `max_columns` columns of
/// boxes are drawn; wider splits are listed instead.
result<std::string> describe_sharding(const manifest& m, const saved_tensor& t, std::size_t max_columns = 16);

/// `s` as a JSON string literal (with quotes), always valid UTF-8: control characters, quotes
/// and backslashes escaped; bytes that are not part of valid UTF-8 (a key a TensorFlow bundle
/// may legally hold) escaped as the lone surrogates `\udc80`..`\udcff`, Python's
/// "surrogateescape" convention: `json.loads(t).encode("utf-8", "surrogateescape")` gives the
/// original bytes back.
std::string json_string(std::string_view s);

/// Whether `s` is valid UTF-8 (no overlong forms, no surrogates, nothing above U+10FFFF).
bool is_utf8(std::string_view s) noexcept;

/// `s` for a message, as a person reads it: valid UTF-8 as it is, every other byte and every
/// control character as `\xNN`, a backslash as `\\`. `unescape_display` reverses it.
std::string display_bytes(std::string_view s);

/// The bytes that `display_bytes` shows as `s` (`\xNN` and `\\` escapes); other text as it is.
/// `errc::invalid_argument` for a malformed escape.
result<std::string> unescape_display(std::string_view s);

/// A Unix time in milliseconds as "2026-11-28T23:05:02Z" (UTC, whole seconds).
std::string iso_time(std::uint64_t unix_ms);

/// "1.5 MiB" style rendering of a byte count.
std::string human_bytes(std::uint64_t n);

}  // namespace meshckpt::format
