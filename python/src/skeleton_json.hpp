#pragma once
// Private: the meshckpt.torch state skeleton's JSON, parsed in C++ (skeleton_json.cpp), and
// the checked reads of its fields. Every error is a CorruptCheckpointError that says where.

#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace meshckpt::python {

namespace py = pybind11;

// The skeleton's JSON, parsed in C++ (no Python object per entry): objects, arrays, strings,
// numbers (kept as text: Python ints have no size limit), true, false, null, and NaN,
// Infinity and -Infinity as Python's json writes them. Strings are UTF-8, with \udcNN escapes
// as the raw byte NN (surrogateescape, as format::json_string writes them).
struct jvalue {
  enum kind_t { null, boolean, number, string, array, object } kind = null;
  bool b = false;
  std::string text;  // a number's text or a string's bytes
  std::vector<jvalue> items;
  std::vector<std::pair<std::string, jvalue>> members;
  const jvalue* get(std::string_view k) const {
    for (const auto& [n, v] : members)
      if (n == k) return &v;
    return nullptr;
  }
};

// Parses a whole skeleton document.
jvalue parse_skeleton(std::string_view text);

// "meshckpt.torch state skeleton, at WHERE: WHAT", as a CorruptCheckpointError.
[[noreturn]] void corrupt_skeleton(const std::string& where, const std::string& what);

// "NAME has the wrong type" at `where`.
[[noreturn]] void wrong_type(const char* name, const std::string& where);
// `v` as an int64 (field `name`, for errors).
std::int64_t int_value(const jvalue& v, const char* name, const std::string& where);
// Member `name` of object `o`, which must be there (`where` names `o` in errors).
const jvalue& member(const jvalue& o, const char* name, const std::string& where);
// Member `name` as a string, an int64, a list of int64.
std::string text_of(const jvalue& o, const char* name, const std::string& where);
std::int64_t int_of(const jvalue& o, const char* name, const std::string& where);
std::vector<std::int64_t> ints_of(const jvalue& o, const char* name, const std::string& where);
// A plain value as Python has it (numbers exact: an int of any size, or a float).
py::object to_python(const jvalue& v, const std::string& where, int depth);

}  // namespace meshckpt::python
