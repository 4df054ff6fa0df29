#include "meshckpt/format/safetensors.hpp"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <set>

#include "codec.hpp"
#include "meshckpt/format/describe.hpp"
#include "meshckpt/tensor/arith.hpp"

namespace meshckpt::format {

namespace {

std::optional<std::uint64_t> checked_mul_u64(std::uint64_t a, std::uint64_t b) {
  if (a != 0 && b > ~std::uint64_t{0} / a) return std::nullopt;
  return a * b;
}

constexpr std::pair<dtype, const char*> names[] = {
    {dtype::boolean, "BOOL"},        {dtype::int8, "I8"},
    {dtype::int16, "I16"},           {dtype::int32, "I32"},
    {dtype::int64, "I64"},           {dtype::uint8, "U8"},
    {dtype::uint16, "U16"},          {dtype::uint32, "U32"},
    {dtype::uint64, "U64"},          {dtype::float16, "F16"},
    {dtype::bfloat16, "BF16"},       {dtype::float32, "F32"},
    {dtype::float64, "F64"},         {dtype::float8_e4m3, "F8_E4M3"},
    {dtype::float8_e5m2, "F8_E5M2"}, {dtype::complex64, "C64"},
};

// A strict JSON reader for the header's shape: objects, strings, non-negative integers, arrays
// of them. Anything else (floats, booleans, null, nesting deeper than needed) is an error.
class json_reader {
 public:
  explicit json_reader(std::string_view s, std::string context = "safetensors header") : s_(s), context_(std::move(context)) {}
  std::optional<error> err;

  void ws() {
    while (p_ < s_.size() && (s_[p_] == ' ' || s_[p_] == '\t' || s_[p_] == '\n' || s_[p_] == '\r')) ++p_;
  }
  bool eat(char c) {
    ws();
    if (p_ < s_.size() && s_[p_] == c) {
      ++p_;
      return true;
    }
    return false;
  }
  bool peek(char c) {
    ws();
    return p_ < s_.size() && s_[p_] == c;
  }
  bool at_end() {
    ws();
    return p_ == s_.size();
  }
  void fail(const std::string& what) {
    if (!err) err = make_error(errc::corrupt_manifest, context_ + " byte " + std::to_string(p_) + ": " + what);
    p_ = s_.size();
  }
  // The one object loop: '{', then for each member its key, ':', and `member(key)`, which reads
  // the value; members separated by ','; then '}'. With `unique`, a key seen twice fails. `what`
  // names the object in errors. Stops at the first error.
  template <class F>
  void object(const std::string& what, F&& member, bool unique = true) {
    if (!eat('{')) return fail(what + " is not a JSON object");
    if (eat('}')) return;
    std::set<std::string> seen;
    do {
      std::string key = string();
      if (err) return;
      if (unique && !seen.insert(key).second) return fail("\"" + key + "\" appears twice");
      if (!eat(':')) return fail("expected ':'");
      member(key);
    } while (!err && eat(','));
    if (!err && !eat('}')) fail("expected '}' or ',' in " + what);
  }
  std::string string() {
    std::string out;
    if (!eat('"')) {
      fail("expected a string");
      return out;
    }
    while (p_ < s_.size()) {
      char c = s_[p_++];
      if (c == '"') return out;
      if (static_cast<unsigned char>(c) < 0x20) return fail("control character in a string"), out;
      if (c != '\\') {
        out.push_back(c);
        continue;
      }
      if (p_ >= s_.size()) break;
      char e = s_[p_++];
      switch (e) {
        case '"': out.push_back('"'); break;
        case '\\': out.push_back('\\'); break;
        case '/': out.push_back('/'); break;
        case 'b': out.push_back('\b'); break;
        case 'f': out.push_back('\f'); break;
        case 'n': out.push_back('\n'); break;
        case 'r': out.push_back('\r'); break;
        case 't': out.push_back('\t'); break;
        case 'u': {
          auto hex4 = [&]() -> std::optional<std::uint32_t> {
            if (p_ + 4 > s_.size()) return std::nullopt;
            std::uint32_t v = 0;
            for (int i = 0; i < 4; ++i) {
              char h = s_[p_++];
              v <<= 4;
              if (h >= '0' && h <= '9')
                v |= static_cast<std::uint32_t>(h - '0');
              else if (h >= 'a' && h <= 'f')
                v |= static_cast<std::uint32_t>(h - 'a' + 10);
              else if (h >= 'A' && h <= 'F')
                v |= static_cast<std::uint32_t>(h - 'A' + 10);
              else
                return std::nullopt;
            }
            return v;
          };
          auto cp = hex4();
          if (!cp) return fail("bad \\u escape"), out;
          std::uint32_t code = *cp;
          if (code >= 0xD800 && code < 0xDC00) {  // a surrogate pair
            if (p_ + 2 > s_.size() || s_[p_] != '\\' || s_[p_ + 1] != 'u') return fail("unpaired surrogate"), out;
            p_ += 2;
            auto lo = hex4();
            if (!lo || *lo < 0xDC00 || *lo > 0xDFFF) return fail("unpaired surrogate"), out;
            code = 0x10000 + ((code - 0xD800) << 10) + (*lo - 0xDC00);
          } else if (code >= 0xDC00 && code < 0xE000) {
            return fail("unpaired surrogate"), out;
          }
          if (code < 0x80) {
            out.push_back(static_cast<char>(code));
          } else if (code < 0x800) {
            out.push_back(static_cast<char>(0xC0 | (code >> 6)));
            out.push_back(static_cast<char>(0x80 | (code & 0x3F)));
          } else if (code < 0x10000) {
            out.push_back(static_cast<char>(0xE0 | (code >> 12)));
            out.push_back(static_cast<char>(0x80 | ((code >> 6) & 0x3F)));
            out.push_back(static_cast<char>(0x80 | (code & 0x3F)));
          } else {
            out.push_back(static_cast<char>(0xF0 | (code >> 18)));
            out.push_back(static_cast<char>(0x80 | ((code >> 12) & 0x3F)));
            out.push_back(static_cast<char>(0x80 | ((code >> 6) & 0x3F)));
            out.push_back(static_cast<char>(0x80 | (code & 0x3F)));
          }
          break;
        }
        default: return fail("bad escape"), out;
      }
    }
    fail("unterminated string");
    return out;
  }
  std::uint64_t integer() {
    ws();
    const std::size_t start = p_;
    std::uint64_t v = 0;
    while (p_ < s_.size() && s_[p_] >= '0' && s_[p_] <= '9') {
      const std::uint64_t d = static_cast<std::uint64_t>(s_[p_] - '0');
      if (v > (~std::uint64_t{0} - d) / 10) return fail("integer overflows 64 bits"), 0;
      v = v * 10 + d;
      ++p_;
    }
    if (p_ == start)
      fail("expected a non-negative integer");
    else if (p_ - start > 1 && s_[start] == '0')
      fail("leading zero");
    return v;
  }
  // Any JSON value, skipped (metadata we do not interpret); nesting is capped.
  void skip(int depth = 0) {
    ws();
    if (depth > 64) return fail("nested too deeply");
    if (p_ >= s_.size()) return fail("expected a value");
    const char c = s_[p_];
    if (c == '"') {
      (void)string();
    } else if (c == '{' || c == '[') {
      const char close = c == '{' ? '}' : ']';
      ++p_;
      if (eat(close)) return;
      do {
        if (c == '{') {
          (void)string();
          if (!eat(':')) return fail("expected ':'");
        }
        skip(depth + 1);
      } while (!err && eat(','));
      if (!err && !eat(close)) fail(std::string("expected '") + close + "'");
    } else if (s_.substr(p_, 4) == "true" || s_.substr(p_, 4) == "null") {
      p_ += 4;
    } else if (s_.substr(p_, 5) == "false") {
      p_ += 5;
    } else {
      const std::size_t start = p_;
      bool digit = false;
      while (p_ < s_.size() && std::string_view("+-.eE0123456789").find(s_[p_]) != std::string_view::npos) digit |= s_[p_++] >= '0';
      if (p_ == start || !digit) fail("expected a value");
    }
  }
  std::vector<std::uint64_t> integers() {
    std::vector<std::uint64_t> out;
    if (!eat('[')) return fail("expected an array"), out;
    if (eat(']')) return out;
    do {
      out.push_back(integer());
      if (out.size() > 64) return fail("array too long"), out;
    } while (!err && eat(','));
    if (!eat(']')) fail("expected ']'");
    return out;
  }

 private:
  std::string_view s_;
  std::size_t p_ = 0;
  std::string context_;
};

}  // namespace

std::optional<std::string> safetensors_dtype(dtype t) {
  for (const auto& [d, n] : names)
    if (d == t) return std::string(n);
  return std::nullopt;
}

result<std::vector<std::byte>> encode_safetensors_header(std::vector<safetensor_entry>& tensors,
                                                         const std::map<std::string, std::string>& metadata) {
  std::string j = "{";
  bool first = true;
  if (!metadata.empty()) {
    j += "\"__metadata__\":{";
    bool f2 = true;
    for (const auto& [k, v] : metadata) {
      if (!is_utf8(k) || !is_utf8(v))
        return make_error(errc::invalid_argument,
                          "metadata entry \"" + display_bytes(k) + "\" is not valid UTF-8, which a safetensors header must be");
      j += (f2 ? "" : ",") + json_string(k) + ":" + json_string(v);
      f2 = false;
    }
    j += "}";
    first = false;
  }
  std::uint64_t at = 0;
  std::set<std::string> seen;
  for (auto& t : tensors) {
    auto dt = safetensors_dtype(t.type);
    if (!dt) return make_error(errc::unsupported, "tensor \"" + t.name + "\" is an opaque blob, which safetensors cannot hold");
    if (!is_utf8(t.name))
      return make_error(errc::invalid_argument,
                        "tensor name \"" + display_bytes(t.name) + "\" is not valid UTF-8, which a safetensors header must be");
    if (t.name == "__metadata__" || !seen.insert(t.name).second)
      return make_error(errc::invalid_argument, "tensor name \"" + t.name + "\" is reserved or given twice");
    std::uint64_t bytes = static_cast<std::uint64_t>(dtype_size(t.type));
    for (auto d : t.dims) {
      auto m = checked_mul_u64(bytes, static_cast<std::uint64_t>(d));
      if (!m || d < 0) return make_error(errc::limit_exceeded, "tensor \"" + t.name + "\" is too large");
      bytes = *m;
    }
    t.begin = at;
    t.end = at + bytes;
    at = t.end;
    j += std::string(first ? "" : ",") + json_string(t.name) + ":{\"dtype\":\"" + *dt + "\",\"shape\":[";
    for (std::size_t i = 0; i < t.dims.size(); ++i) j += (i ? "," : "") + std::to_string(t.dims[i]);
    j += "],\"data_offsets\":[" + std::to_string(t.begin) + "," + std::to_string(t.end) + "]}";
    first = false;
  }
  j += "}";
  while (j.size() % 8) j += ' ';
  std::vector<std::byte> out(8 + j.size());
  for (int i = 0; i < 8; ++i) out[static_cast<std::size_t>(i)] = static_cast<std::byte>(static_cast<std::uint64_t>(j.size()) >> (8 * i));
  std::memcpy(out.data() + 8, j.data(), j.size());
  return out;
}

namespace {

// One tensor's entry of a header: dtype, shape and data_offsets, each once.
void read_tensor_entry(json_reader& r, const std::string& key, std::vector<safetensor_entry>& out) {
  safetensor_entry e;
  e.name = key;
  bool have_dtype = false, have_shape = false, have_offsets = false;
  r.object(
      "tensor \"" + key + "\"",
      [&](const std::string& field) {
        if (field == "dtype" && !have_dtype) {
          std::string d = r.string();
          auto it = std::find_if(std::begin(names), std::end(names), [&](const auto& p) { return d == p.second; });
          if (it == std::end(names))
            r.fail("tensor \"" + key + "\" has unknown dtype \"" + d + "\"");
          else
            e.type = it->first;
          have_dtype = true;
        } else if (field == "shape" && !have_shape) {
          for (auto v : r.integers()) {
            if (v > (std::uint64_t{1} << 62)) r.fail("tensor \"" + key + "\" has an absurd dimension");
            e.dims.push_back(static_cast<std::int64_t>(v));
          }
          have_shape = true;
        } else if (field == "data_offsets" && !have_offsets) {
          auto o = r.integers();
          if (!r.err && o.size() != 2)
            r.fail("tensor \"" + key + "\" data_offsets is not [begin, end]");
          else if (!r.err) {
            e.begin = o[0];
            e.end = o[1];
          }
          have_offsets = true;
        } else {
          r.fail("tensor \"" + key + "\" has an unexpected or repeated field \"" + field + "\"");
        }
      },
      false);
  if (!r.err && !(have_dtype && have_shape && have_offsets)) r.fail("tensor \"" + key + "\" lacks dtype, shape or data_offsets");
  if (!r.err) out.push_back(std::move(e));
}

// Sizes and placement: contiguous from 0, in offset order, up to the end of the file exactly.
result<void> check_placement(safetensors_header& h, std::uint64_t file_size) {
  std::sort(h.tensors.begin(), h.tensors.end(), [](const auto& a, const auto& b) { return a.begin < b.begin; });
  std::uint64_t at = 0;
  const std::uint64_t data_size = file_size - h.data_start;
  for (const auto& e : h.tensors) {
    std::uint64_t bytes = static_cast<std::uint64_t>(dtype_size(e.type));
    for (auto d : e.dims) {
      auto m = checked_mul_u64(bytes, static_cast<std::uint64_t>(d));
      if (!m) return make_error(errc::corrupt_manifest, "safetensors tensor \"" + e.name + "\" size overflows");
      bytes = *m;
    }
    if (e.end < e.begin || e.end - e.begin != bytes)
      return make_error(errc::corrupt_manifest, "safetensors tensor \"" + e.name + "\" data_offsets [" + std::to_string(e.begin) + ", " +
                                                    std::to_string(e.end) + "] do not hold its " + std::to_string(bytes) + " bytes");
    if (e.begin != at)
      return make_error(errc::corrupt_manifest, "safetensors tensor \"" + e.name + "\" starts at " + std::to_string(e.begin) + ", not at " +
                                                    std::to_string(at) + ": the data is not contiguous");
    at = e.end;
  }
  if (at != data_size)
    return make_error(errc::corrupt_manifest,
                      "safetensors data is " + std::to_string(data_size) + " bytes but the tensors cover " + std::to_string(at));
  return success();
}

}  // namespace

result<safetensors_header> decode_safetensors_header(std::span<const std::byte> prefix, std::uint64_t file_size) {
  if (prefix.size() < 8 || file_size < 8) return make_error(errc::short_read, "safetensors file shorter than its 8-byte header length");
  std::uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= std::uint64_t{static_cast<std::uint8_t>(prefix[static_cast<std::size_t>(i)])} << (8 * i);
  if (n > safetensors_max_header)
    return make_error(errc::limit_exceeded, "safetensors header of " + std::to_string(n) + " bytes exceeds the cap of 100 MB");
  if (n > file_size - 8)
    return make_error(errc::corrupt_manifest, "safetensors header length " + std::to_string(n) + " runs past the end of the file");
  if (prefix.size() < 8 + n) return make_error(errc::short_read, "safetensors header not fully read");
  std::string_view text(reinterpret_cast<const char*>(prefix.data() + 8), static_cast<std::size_t>(n));
  safetensors_header h;
  h.data_start = 8 + n;
  json_reader r(text);
  r.object("the header", [&](const std::string& key) {
    if (key != "__metadata__") return read_tensor_entry(r, key, h.tensors);
    r.object(
        "__metadata__",
        [&](const std::string& k) {
          std::string v = r.string();
          if (!r.err) h.metadata[k] = v;
        },
        false);
  });
  if (!r.err && !r.at_end()) r.fail("trailing characters after the header object");
  if (r.err) return *r.err;
  BOOST_OUTCOME_TRY(check_placement(h, file_size));
  return h;
}

result<safetensors_index> decode_safetensors_index(std::string_view text) {
  if (text.size() > safetensors_max_header) return make_error(errc::limit_exceeded, "safetensors index larger than 100 MB");
  json_reader r(text, "safetensors index");
  safetensors_index idx;
  bool have_map = false;
  r.object("the index", [&](const std::string& key) {
    if (key != "weight_map") return r.skip();
    have_map = true;
    r.object(
        "weight_map",
        [&](const std::string& name) {
          std::string file = r.string();
          if (r.err) return;
          // Only plain file names next to the index: no directories, no way out of it.
          if (file.empty() || file == "." || file == ".." || file.find('/') != std::string::npos || file.find('\0') != std::string::npos)
            return r.fail("weight_map sends \"" + name + "\" to \"" + file + "\", which is not a plain file name");
          if (!idx.weight_map.emplace(name, file).second) r.fail("weight_map names \"" + name + "\" twice");
          if (idx.weight_map.size() > 10'000'000) r.fail("weight_map too large");
        },
        false);
  });
  if (!r.err && !r.at_end()) r.fail("trailing bytes after the index");
  if (r.err) return *r.err;
  if (!have_map) return make_error(errc::corrupt_manifest, "safetensors index has no weight_map");
  return idx;
}

std::string encode_safetensors_index(const safetensors_index& idx) {
  auto quote = [](const std::string& v) { return json_string(v); };
  std::string out = "{\n  \"metadata\": {\n    \"total_size\": " + std::to_string(idx.total_size) + "\n  },\n  \"weight_map\": {";
  bool first = true;
  for (const auto& [name, file] : idx.weight_map) {
    out += std::string(first ? "\n" : ",\n") + "    " + quote(name) + ": " + quote(file);
    first = false;
  }
  return out + "\n  }\n}\n";
}

std::vector<std::byte> encode_string_map(const std::map<std::string, std::string>& m) {
  codec::writer w;
  w.varint(m.size());
  for (const auto& [k, v] : m) {
    w.str(k);
    w.str(v);
  }
  return std::move(w.bytes());
}

result<std::map<std::string, std::string>> decode_string_map(std::span<const std::byte> bytes) {
  codec::reader r(bytes.data(), bytes.data() + bytes.size(), 0, "safetensors metadata");
  std::map<std::string, std::string> m;
  const std::size_t n = r.count("entry count", safetensors_max_header, 2);
  for (std::size_t i = 0; i < n && !r.failed(); ++i) {
    auto k = r.str("key", safetensors_max_header);
    auto v = r.str("value", safetensors_max_header);
    if (!r.failed() && !m.emplace(std::move(k), std::move(v)).second) r.fail(errc::corrupt_manifest, "a key appears twice");
  }
  if (!r.failed() && r.remaining()) r.fail(errc::corrupt_manifest, std::to_string(r.remaining()) + " trailing bytes");
  if (r.failed()) return r.err();
  return m;
}

}  // namespace meshckpt::format
