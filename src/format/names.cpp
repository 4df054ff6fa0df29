#include "meshckpt/format/names.hpp"

#include <cstdio>

namespace meshckpt::format {

bool is_plain_name(std::string_view name) noexcept {
  if (name.empty() || name.size() > 255 || name == "." || name == "..") return false;
  for (unsigned char c : name)
    if (c == '/' || c < 0x20 || c == 0x7f) return false;
  return true;
}

result<void> check_base_name(std::string_view base) {
  if (base.empty())
    return make_error(errc::invalid_argument,
                      "checkpoint name is empty: a checkpoint prefix is DIR/NAME (the files DIR/NAME.*), not a directory");
  if (!is_plain_name(base))
    return make_error(errc::invalid_argument, "checkpoint name \"" + std::string(base) +
                                                  "\" is not a plain file name (empty, \".\", \"..\", or has '/' or control characters)");
  if (base.size() > 200)
    return make_error(errc::invalid_argument, "checkpoint name \"" + std::string(base) + "\" is longer than 200 bytes");
  if (base.ends_with(manifest_suffix))
    return make_error(errc::invalid_argument,
                      "checkpoint name \"" + std::string(base) + "\" ends in .manifest; pass the prefix without it");
  return success();
}

std::string token_hex(std::uint64_t token) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(token));
  return buf;
}

std::string manifest_name(std::string_view base) { return std::string(base) + std::string(manifest_suffix); }

std::string temp_manifest_name(std::string_view base, std::uint64_t token) {
  return std::string(base) + ".manifest.tmp-" + token_hex(token);
}

std::string data_file_name(std::string_view base, std::uint64_t token, std::uint32_t index) {
  return std::string(base) + ".data-" + token_hex(token) + "-" + std::to_string(index);
}

namespace {

std::optional<std::uint64_t> parse_hex16(std::string_view s) {
  if (s.size() != 16) return std::nullopt;
  std::uint64_t v = 0;
  for (char c : s) {
    int d;
    if (c >= '0' && c <= '9')
      d = c - '0';
    else if (c >= 'a' && c <= 'f')
      d = c - 'a' + 10;
    else
      return std::nullopt;
    v = v << 4 | static_cast<unsigned>(d);
  }
  return v;
}

bool all_digits(std::string_view s) {
  if (s.empty() || s.size() > 9) return false;
  for (char c : s)
    if (c < '0' || c > '9') return false;
  return true;
}

}  // namespace

name_kind classify(std::string_view n) {
  // "<base>.manifest.tmp-<16hex>"
  if (n.size() > 30) {
    std::string_view tail = n.substr(n.size() - 30);
    if (tail.starts_with(".manifest.tmp-"))
      if (auto t = parse_hex16(tail.substr(14))) return {name_kind::temp_manifest, std::string(n.substr(0, n.size() - 30)), *t};
  }
  // "<base>.data-<16hex>-<digits>"
  if (auto dash = n.rfind('-'); dash != std::string_view::npos && dash > 22 && all_digits(n.substr(dash + 1))) {
    std::string_view mid = n.substr(dash - 22, 22);  // ".data-" and 16 hex digits
    if (mid.starts_with(".data-"))
      if (auto t = parse_hex16(mid.substr(6))) return {name_kind::data, std::string(n.substr(0, dash - 22)), *t};
  }
  if (n.size() > manifest_suffix.size() && n.ends_with(manifest_suffix))
    return {name_kind::manifest, std::string(n.substr(0, n.size() - manifest_suffix.size())), 0};
  return {};
}

}  // namespace meshckpt::format
