// The meshckpt.torch state skeleton's JSON (skeleton_json.hpp): no Python object per entry.

#include "skeleton_json.hpp"

#include <cstdlib>

#include "torch_state.hpp"

namespace meshckpt::python {

namespace {

class json_parser {
 public:
  explicit json_parser(std::string_view s) : s_(s) {}
  jvalue document() {
    jvalue v = value(0);
    ws();
    if (p_ != s_.size()) bad("text after the document");
    return v;
  }

 private:
  [[noreturn]] void bad(const std::string& what) const {
    fail(errc::corrupt_manifest, "meshckpt.torch state skeleton: not JSON at byte " + std::to_string(p_) + ": " + what);
  }
  void ws() {
    while (p_ < s_.size() && (s_[p_] == ' ' || s_[p_] == '\n' || s_[p_] == '\t' || s_[p_] == '\r')) ++p_;
  }
  bool eat(std::string_view t) {
    if (s_.substr(p_, t.size()) != t) return false;
    p_ += t.size();
    return true;
  }
  jvalue value(int depth) {
    if (depth > 200) bad("nested too deeply");
    ws();
    if (p_ >= s_.size()) bad("the text ends");
    jvalue v;
    const char c = s_[p_];
    if (c == '{' || c == '[') {
      ++p_;
      v.kind = c == '{' ? jvalue::object : jvalue::array;
      ws();
      if (eat(c == '{' ? "}" : "]")) return v;
      for (;;) {
        if (c == '{') {
          ws();
          if (p_ >= s_.size() || s_[p_] != '"') bad("an object key that is not a string");
          std::string k = str();
          ws();
          if (!eat(":")) bad("no ':' after an object key");
          v.members.emplace_back(std::move(k), value(depth + 1));
        } else {
          v.items.push_back(value(depth + 1));
        }
        ws();
        if (eat(",")) continue;
        if (eat(c == '{' ? "}" : "]")) return v;
        bad("no ',' or end of a container");
      }
    }
    if (c == '"') {
      v.kind = jvalue::string;
      v.text = str();
    } else if (eat("true") || eat("false")) {
      v.kind = jvalue::boolean;
      v.b = c == 't';
    } else if (eat("null")) {
    } else if (eat("NaN") || eat("Infinity") || eat("-Infinity")) {
      v.kind = jvalue::number;
      v.text = c == 'N' ? "nan" : c == '-' ? "-inf" : "inf";
    } else {
      const std::size_t at = p_;
      while (p_ < s_.size() && std::string_view("+-0123456789.eE").find(s_[p_]) != std::string_view::npos) ++p_;
      if (p_ == at) bad("an unexpected character");
      v.kind = jvalue::number;
      v.text = std::string(s_.substr(at, p_ - at));
    }
    return v;
  }
  unsigned hex4() {
    if (p_ + 4 > s_.size()) bad("a short \\u escape");
    unsigned u = 0;
    for (int i = 0; i < 4; ++i) {
      const char h = s_[p_++];
      const int d = h >= '0' && h <= '9' ? h - '0' : h >= 'a' && h <= 'f' ? h - 'a' + 10 : h >= 'A' && h <= 'F' ? h - 'A' + 10 : -1;
      if (d < 0) bad("a bad \\u escape");
      u = u * 16 + static_cast<unsigned>(d);
    }
    return u;
  }
  void utf8(std::string& out, unsigned cp) {
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      out += static_cast<char>(0xc0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3f));
    } else if (cp < 0x10000) {
      out += static_cast<char>(0xe0 | (cp >> 12));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
      out += static_cast<char>(0x80 | (cp & 0x3f));
    } else {
      out += static_cast<char>(0xf0 | (cp >> 18));
      out += static_cast<char>(0x80 | ((cp >> 12) & 0x3f));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
      out += static_cast<char>(0x80 | (cp & 0x3f));
    }
  }
  std::string str() {
    ++p_;  // the opening quote
    std::string out;
    for (;;) {
      if (p_ >= s_.size()) bad("an unterminated string");
      const char c = s_[p_++];
      if (c == '"') return out;
      if (c != '\\') {
        out += c;
        continue;
      }
      if (p_ >= s_.size()) bad("an unterminated escape");
      switch (const char e = s_[p_++]) {
        case '"':
        case '\\':
        case '/': out += e; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          unsigned cp = hex4();
          if (cp >= 0xdc80 && cp <= 0xdcff) {  // surrogateescape: the raw byte
            out += static_cast<char>(cp - 0xdc00);
          } else if (cp >= 0xd800 && cp <= 0xdbff) {
            if (!eat("\\u")) bad("a lone high surrogate");
            const unsigned lo = hex4();
            if (lo < 0xdc00 || lo > 0xdfff) bad("a bad surrogate pair");
            utf8(out, 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00));
          } else if (cp >= 0xdc00 && cp <= 0xdfff) {
            bad("a lone low surrogate");
          } else {
            utf8(out, cp);
          }
          break;
        }
        default: bad("an unknown escape");
      }
    }
  }
  std::string_view s_;
  std::size_t p_ = 0;
};

}  // namespace

jvalue parse_skeleton(std::string_view text) { return json_parser(text).document(); }

[[noreturn]] void wrong_type(const char* name, const std::string& where) {
  corrupt_skeleton(where, std::string("\"") + name + "\" has the wrong type");
}

std::int64_t int_value(const jvalue& v, const char* name, const std::string& where) {
  if (v.kind != jvalue::number || v.text.empty() || v.text.size() > 19 || v.text.find_first_not_of("-0123456789") != std::string::npos ||
      v.text.find('-', 1) != std::string::npos)
    wrong_type(name, where);
  return std::stoll(v.text);
}

[[noreturn]] void corrupt_skeleton(const std::string& where, const std::string& what) {
  fail(errc::corrupt_manifest, "meshckpt.torch state skeleton, at " + (where.empty() ? std::string("<root>") : where) + ": " + what);
}

const jvalue& member(const jvalue& o, const char* name, const std::string& where) {
  const jvalue* v = o.get(name);
  if (!v) corrupt_skeleton(where, std::string("no \"") + name + "\"");
  return *v;
}

std::string text_of(const jvalue& o, const char* name, const std::string& where) {
  const jvalue& v = member(o, name, where);
  if (v.kind != jvalue::string) wrong_type(name, where);
  return v.text;
}

std::int64_t int_of(const jvalue& o, const char* name, const std::string& where) { return int_value(member(o, name, where), name, where); }

std::vector<std::int64_t> ints_of(const jvalue& o, const char* name, const std::string& where) {
  const jvalue& v = member(o, name, where);
  if (v.kind != jvalue::array) wrong_type(name, where);
  std::vector<std::int64_t> out;
  out.reserve(v.items.size());
  for (const auto& i : v.items) out.push_back(int_value(i, name, where));
  return out;
}

// A plain value as Python has it.
py::object to_python(const jvalue& v, const std::string& where, int depth) {
  switch (v.kind) {
    case jvalue::null: return py::none();
    case jvalue::boolean: return py::bool_(v.b);
    case jvalue::number: {
      if (v.text.find_first_of(".eEnai") == std::string::npos) {
        auto r = py::reinterpret_steal<py::object>(PyLong_FromString(v.text.c_str(), nullptr, 10));
        if (!r) {
          PyErr_Clear();
          corrupt_skeleton(where, "a bad number " + v.text);
        }
        return r;
      }
      char* end = nullptr;
      const double d = std::strtod(v.text.c_str(), &end);
      if (end != v.text.c_str() + v.text.size()) corrupt_skeleton(where, "a bad number " + v.text);
      return py::float_(d);
    }
    case jvalue::string: {
      auto r =
          py::reinterpret_steal<py::object>(PyUnicode_DecodeUTF8(v.text.data(), static_cast<Py_ssize_t>(v.text.size()), "surrogateescape"));
      if (!r) throw py::error_already_set();
      return r;
    }
    case jvalue::array: {
      py::list out;
      for (const auto& i : v.items) out.append(to_python(i, where, depth + 1));
      return out;
    }
    case jvalue::object: {
      py::dict out;
      for (const auto& [k, i] : v.members)
        out[to_python(jvalue{jvalue::string, false, k, {}, {}}, where, depth)] = to_python(i, where, depth + 1);
      return out;
    }
  }
  return py::none();
}

}  // namespace meshckpt::python
