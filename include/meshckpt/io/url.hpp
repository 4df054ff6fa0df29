#pragma once
/// \file
/// Paths that are URLs. A directory path may be an `s3://BUCKET/PREFIX` URL (the S3 backend,
/// docs/OBJECT_STORES.md); any other scheme is refused, so that a URL never becomes a local
/// directory named after it ("gs:").

#include <string>
#include <string_view>

#include "meshckpt/error.hpp"

namespace meshckpt::io {

/// The scheme of `path` when it is a URL ("s3" for "s3://b/p"), else empty. A scheme is a
/// letter followed by letters, digits, '+', '-' or '.', then "://".
inline std::string_view url_scheme(std::string_view path) {
  auto colon = path.find("://");
  if (colon == std::string_view::npos || colon == 0) return {};
  auto is_alpha = [](char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); };
  if (!is_alpha(path[0])) return {};
  for (std::size_t i = 1; i < colon; ++i) {
    char c = path[i];
    if (!is_alpha(c) && !(c >= '0' && c <= '9') && c != '+' && c != '-' && c != '.') return {};
  }
  return path.substr(0, colon);
}

/// Whether `path` is a URL of any scheme.
inline bool is_url(std::string_view path) { return !url_scheme(path).empty(); }

/// The error for a URL whose scheme no backend serves: errc::unsupported, naming the path.
inline error url_refused(std::string_view path) {
  return make_error(errc::unsupported, std::string(path) + ": a URL with scheme \"" + std::string(url_scheme(path)) +
                                           "\"; meshckpt reads and writes local or mounted paths and s3:// URLs only");
}

}  // namespace meshckpt::io
