#include "values.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>

#include "meshckpt/tensor/convert.hpp"

namespace meshckpt::cli {

namespace {

template <class T>
T load(std::span<const std::byte> data, std::size_t i) {
  T v;
  std::memcpy(&v, data.data() + i * sizeof(T), sizeof(T));
  return v;
}

// float8 e4m3 ("fn": no infinities; S.1111.111 is NaN) and e5m2 (the top byte of a float16).
double e4m3(std::uint8_t b) {
  const int sign = b >> 7, exp = (b >> 3) & 15, mant = b & 7;
  if (exp == 15 && mant == 7) return std::nan("");
  double v = exp == 0 ? std::ldexp(mant / 8.0, -6) : std::ldexp(1.0 + mant / 8.0, exp - 7);
  return sign ? -v : v;
}

bool is_integer(dtype t) {
  switch (t) {
    case dtype::int8:
    case dtype::int16:
    case dtype::int32:
    case dtype::int64:
    case dtype::uint8:
    case dtype::uint16:
    case dtype::uint32:
    case dtype::uint64: return true;
    default: return false;
  }
}

// Exact text of an integer or boolean element (doubles would round int64 above 2^53).
std::string exact_text(dtype t, std::span<const std::byte> data, std::size_t i) {
  switch (t) {
    case dtype::boolean: return load<std::uint8_t>(data, i) ? "True" : "False";
    case dtype::int8: return std::to_string(load<std::int8_t>(data, i));
    case dtype::int16: return std::to_string(load<std::int16_t>(data, i));
    case dtype::int32: return std::to_string(load<std::int32_t>(data, i));
    case dtype::int64: return std::to_string(load<std::int64_t>(data, i));
    case dtype::uint8: return std::to_string(load<std::uint8_t>(data, i));
    case dtype::uint16: return std::to_string(load<std::uint16_t>(data, i));
    case dtype::uint32: return std::to_string(load<std::uint32_t>(data, i));
    case dtype::uint64: return std::to_string(load<std::uint64_t>(data, i));
    default: return {};
  }
}

// numpy's look: 8 significant digits, "1." for integral values, nan / inf.
std::string float_text(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v < 0 ? "-inf" : "inf";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.8g", v);
  std::string s = buf;
  if (s.find_first_of(".e") == std::string::npos) s += '.';
  return s;
}

std::string element_text(dtype t, std::span<const std::byte> data, std::size_t i) {
  if (t == dtype::boolean || is_integer(t)) return exact_text(t, data, i);
  if (is_complex(t)) {  // numpy's look: 1.+2.j, 0.5-1.j
    auto [re, im] = complex_element(t, data, i);
    std::string imag = float_text(im);
    return float_text(re) + (imag.front() == '-' ? "" : "+") + imag + "j";
  }
  auto v = element(t, data, i);
  return v ? float_text(*v) : "?";
}

std::string json_double(double v) {
  if (std::isnan(v)) return "\"nan\"";
  if (std::isinf(v)) return v < 0 ? "\"-inf\"" : "\"inf\"";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  return buf;
}

std::string json_number(dtype t, std::span<const std::byte> data, std::size_t i) {
  if (t == dtype::boolean) return load<std::uint8_t>(data, i) ? "true" : "false";
  if (is_integer(t)) return exact_text(t, data, i);
  if (is_complex(t)) {  // [real, imaginary]
    auto [re, im] = complex_element(t, data, i);
    return "[" + json_double(re) + ", " + json_double(im) + "]";
  }
  return json_double(element(t, data, i).value_or(std::nan("")));
}

}  // namespace

std::optional<double> element(dtype t, std::span<const std::byte> data, std::size_t i) {
  switch (t) {
    case dtype::boolean: return load<std::uint8_t>(data, i) ? 1.0 : 0.0;
    case dtype::int8: return load<std::int8_t>(data, i);
    case dtype::int16: return load<std::int16_t>(data, i);
    case dtype::int32: return load<std::int32_t>(data, i);
    case dtype::int64: return static_cast<double>(load<std::int64_t>(data, i));
    case dtype::uint8: return load<std::uint8_t>(data, i);
    case dtype::uint16: return load<std::uint16_t>(data, i);
    case dtype::uint32: return load<std::uint32_t>(data, i);
    case dtype::uint64: return static_cast<double>(load<std::uint64_t>(data, i));
    case dtype::float16: return half_to_float(load<std::uint16_t>(data, i));
    case dtype::bfloat16: return bfloat16_to_float(load<std::uint16_t>(data, i));
    case dtype::float32: return load<float>(data, i);
    case dtype::float64: return load<double>(data, i);
    case dtype::float8_e4m3: return e4m3(load<std::uint8_t>(data, i));
    case dtype::float8_e5m2: return half_to_float(static_cast<std::uint16_t>(load<std::uint8_t>(data, i) << 8));
    case dtype::blob:
    case dtype::complex64:
    case dtype::complex128: return std::nullopt;
  }
  return std::nullopt;
}

std::pair<double, double> complex_element(dtype t, std::span<const std::byte> data, std::size_t i) {
  if (t == dtype::complex64) return {load<float>(data, 2 * i), load<float>(data, 2 * i + 1)};
  return {load<double>(data, 2 * i), load<double>(data, 2 * i + 1)};
}

std::optional<double> element_distance(dtype t, std::span<const std::byte> a, std::span<const std::byte> b, std::size_t i) {
  if (is_complex(t)) {
    auto [ar, ai] = complex_element(t, a, i);
    auto [br, bi] = complex_element(t, b, i);
    return std::hypot(ar - br, ai - bi);
  }
  auto u = element(t, a, i), w = element(t, b, i);
  if (!u || !w) return std::nullopt;
  return std::fabs(*u - *w);
}

result<std::vector<dim_selection>> parse_slice(std::string_view text, const shape& global) {
  std::vector<dim_selection> out;
  for (auto n : global) out.push_back({0, n, true});
  if (text.empty()) return out;
  std::size_t d = 0;
  while (true) {
    auto comma = text.find(',');
    std::string_view part = text.substr(0, comma);
    if (d >= global.size())
      return make_error(errc::invalid_argument,
                        "--slice has more parts than the tensor's " + std::to_string(global.size()) + " dimensions");
    const std::int64_t n = global[d];
    auto number = [&](std::string_view s, std::int64_t& v) -> bool {
      if (s.empty()) return false;
      bool neg = s.front() == '-';
      if (neg) s.remove_prefix(1);
      if (s.empty() || s.size() > 18 || s.find_first_not_of("0123456789") != std::string_view::npos) return false;
      v = std::stoll(std::string(s));
      if (neg) v = -v;
      return true;
    };
    auto bad = [&](const std::string& why) {
      return make_error(errc::invalid_argument, "--slice part " + std::to_string(d + 1) + " \"" + std::string(part) + "\": " + why);
    };
    auto colon = part.find(':');
    if (colon == std::string_view::npos) {
      std::int64_t i;
      if (!number(part, i)) return bad("expected an index, start:stop, or :");
      if (i < 0) i += n;
      if (i < 0 || i >= n) return bad("index out of range for dimension of size " + std::to_string(n));
      out[d] = {i, i + 1, false};
    } else {
      std::string_view a = part.substr(0, colon), b = part.substr(colon + 1);
      std::int64_t lo = 0, hi = n;
      if (!a.empty() && !number(a, lo)) return bad("bad start");
      if (!b.empty() && !number(b, hi)) return bad("bad stop");
      if (lo < 0) lo += n;
      if (hi < 0) hi += n;
      lo = std::clamp<std::int64_t>(lo, 0, n);
      hi = std::clamp<std::int64_t>(hi, lo, n);
      out[d] = {lo, hi, true};
    }
    ++d;
    if (comma == std::string_view::npos) break;
    text.remove_prefix(comma + 1);
  }
  return out;
}

selection_values select(dtype, std::span<const std::byte>, const shape& global, const std::vector<dim_selection>& sel) {
  selection_values v;
  for (const auto& s : sel)
    if (s.keep) v.dims.push_back(s.stop - s.start);
  std::vector<std::int64_t> strides(global.size(), 1);
  for (std::size_t d = global.size(); d-- > 1;) strides[d - 1] = strides[d] * global[d];
  std::function<void(std::size_t, std::int64_t)> walk = [&](std::size_t d, std::int64_t base) {
    if (d == global.size()) {
      v.offsets.push_back(static_cast<std::size_t>(base));
      return;
    }
    for (std::int64_t i = sel[d].start; i < sel[d].stop; ++i) walk(d + 1, base + i * strides[d]);
  };
  walk(0, 0);
  return v;
}

std::string format_values(dtype t, std::span<const std::byte> data, const selection_values& v) {
  const std::size_t nd = v.dims.size();
  if (nd == 0) return v.offsets.empty() ? "[]" : element_text(t, data, v.offsets[0]);
  const bool summarize = v.offsets.size() > 1000;
  // Indices printed along a dimension of size n; -1 stands for "...".
  auto shown = [&](std::int64_t n) {
    std::vector<std::int64_t> idx;
    if (summarize && n > 6) {
      for (std::int64_t i = 0; i < 3; ++i) idx.push_back(i);
      idx.push_back(-1);
      for (std::int64_t i = n - 3; i < n; ++i) idx.push_back(i);
    } else {
      for (std::int64_t i = 0; i < n; ++i) idx.push_back(i);
    }
    return idx;
  };
  std::size_t width = 0;
  std::function<std::string(std::size_t, std::int64_t, bool)> rec = [&](std::size_t d, std::int64_t lin, bool measure) -> std::string {
    if (d == nd) {
      std::string s = element_text(t, data, v.offsets[static_cast<std::size_t>(lin)]);
      if (measure) {
        width = std::max(width, s.size());
        return {};
      }
      return std::string(width - std::min(width, s.size()), ' ') + s;
    }
    std::string sep = d + 1 == nd ? ", " : ",\n" + std::string(nd - d - 2, '\n') + std::string(d + 1, ' ');
    std::string out = "[";
    bool first = true;
    for (auto i : shown(v.dims[d])) {
      if (!first) out += sep;
      first = false;
      out += i < 0 ? std::string("...") : rec(d + 1, lin * v.dims[d] + i, measure);
    }
    return out + "]";
  };
  if (std::any_of(v.dims.begin(), v.dims.end(), [](auto n) { return n == 0; })) return "[]";
  rec(0, 0, true);
  return rec(0, 0, false);
}

std::string json_values(dtype t, std::span<const std::byte> data, const selection_values& v) {
  const std::size_t nd = v.dims.size();
  std::function<std::string(std::size_t, std::int64_t)> rec = [&](std::size_t d, std::int64_t lin) -> std::string {
    if (d == nd) return json_number(t, data, v.offsets[static_cast<std::size_t>(lin)]);
    std::string out = "[";
    for (std::int64_t i = 0; i < v.dims[d]; ++i) {
      if (i) out += ',';
      out += rec(d + 1, lin * v.dims[d] + i);
    }
    return out + "]";
  };
  if (nd > 0 && std::any_of(v.dims.begin(), v.dims.end(), [](auto n) { return n == 0; })) return "[]";
  return rec(0, 0);
}

}  // namespace meshckpt::cli
