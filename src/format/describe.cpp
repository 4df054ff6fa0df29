#include "meshckpt/format/describe.hpp"

#include <algorithm>
#include <array>
#include <cstdio>
#include <ctime>

namespace meshckpt::format {

std::string json_string(std::string_view s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\t': out += "\\t"; break;
      case '\r': out += "\\r"; break;
      default:
        if (c < 0x20 || c == 0x7f) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  return out + "\"";
}

std::string human_bytes(std::uint64_t n) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  double v = static_cast<double>(n);
  int u = 0;
  while (v >= 1024 && u < 5) {
    v /= 1024;
    ++u;
  }
  char buf[32];
  if (u == 0) std::snprintf(buf, sizeof buf, "%llu B", static_cast<unsigned long long>(n));
  else std::snprintf(buf, sizeof buf, "%.1f %s", v, units[u]);
  return buf;
}

namespace {

std::string layout_string(const manifest& m, const saved_tensor& t) {
  std::string out = "[";
  for (std::size_t d = 0; d < t.axes.size(); ++d) {
    if (d) out += ", ";
    out += t.axes[d] < 0 ? std::string("unsharded") : m.meshes[t.mesh].dims[static_cast<std::size_t>(t.axes[d])].name;
  }
  return out + "]";
}

std::string mesh_string(const saved_mesh& ms) {
  std::string out;
  for (std::size_t i = 0; i < ms.dims.size(); ++i) {
    if (i) out += ',';
    out += ms.dims[i].name + "=" + std::to_string(ms.dims[i].size);
  }
  return out.empty() ? "(single device)" : out;
}

std::uint64_t tensor_bytes(const saved_tensor& t) {
  std::uint64_t n = 0;
  for (const auto& s : t.slices) n += s.length;
  return n;
}

std::string iso_time(std::uint64_t unix_ms) {
  std::time_t secs = static_cast<std::time_t>(unix_ms / 1000);
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

void pad(std::string& out, const std::string& s, std::size_t w) {
  out += s;
  out.append(w > s.size() ? w - s.size() : 0, ' ');
  out += "  ";
}

}  // namespace

std::string describe_text(const manifest& m, std::string_view prefix) {
  std::size_t slices = 0;
  for (const auto& t : m.tensors) slices += t.slices.size();
  std::string out = "checkpoint " + std::string(prefix) + "\n";
  out += "  format " + std::to_string(major_version) + "." + std::to_string(m.minor) + ", written by " +
         (m.writer.empty() ? std::string("?") : m.writer) + " at " + iso_time(m.created_unix_ms) + "\n";
  out += "  " + std::to_string(m.tensors.size()) + " tensors, " + std::to_string(slices) + " slices, " +
         std::to_string(m.files.size()) + " data file" + (m.files.size() == 1 ? "" : "s") + ", " +
         human_bytes(m.stored_bytes()) + " stored, checksum chunk " + human_bytes(m.chunk_bytes) + "\n\n";
  std::vector<std::array<std::string, 7>> rows;
  rows.push_back({"KEY", "DTYPE", "SHAPE", "LAYOUT", "MESH", "SLICES", "BYTES"});
  for (const auto& t : m.tensors)
    rows.push_back({t.key, std::string(dtype_name(t.type)), to_string(t.global), layout_string(m, t),
                    mesh_string(m.meshes[t.mesh]), std::to_string(t.slices.size()), human_bytes(tensor_bytes(t))});
  std::array<std::size_t, 7> w{};
  for (const auto& r : rows)
    for (std::size_t i = 0; i < r.size(); ++i) w[i] = std::max(w[i], std::min<std::size_t>(r[i].size(), 60));
  for (const auto& r : rows) {
    std::string line = "  ";
    for (std::size_t i = 0; i < r.size(); ++i) pad(line, r[i], i + 1 == r.size() ? 0 : w[i]);
    while (!line.empty() && line.back() == ' ') line.pop_back();
    out += line + "\n";
  }
  out += "\n  data files:\n";
  for (const auto& f : m.files) out += "    " + f.name + "  " + human_bytes(f.size) + "\n";
  return out;
}

std::string describe_json(const manifest& m, std::string_view prefix) {
  std::string o = "{\"prefix\":" + json_string(prefix);
  o += ",\"format\":{\"major\":" + std::to_string(major_version) + ",\"minor\":" + std::to_string(m.minor) + "}";
  o += ",\"writer\":" + json_string(m.writer);
  o += ",\"created_unix_ms\":" + std::to_string(m.created_unix_ms);
  o += ",\"chunk_bytes\":" + std::to_string(m.chunk_bytes);
  o += ",\"stored_bytes\":" + std::to_string(m.stored_bytes());
  o += ",\"files\":[";
  for (std::size_t i = 0; i < m.files.size(); ++i) {
    if (i) o += ',';
    o += "{\"name\":" + json_string(m.files[i].name) + ",\"size\":" + std::to_string(m.files[i].size) + "}";
  }
  o += "],\"tensors\":[";
  for (std::size_t i = 0; i < m.tensors.size(); ++i) {
    const auto& t = m.tensors[i];
    const auto& ms = m.meshes[t.mesh];
    if (i) o += ',';
    o += "{\"key\":" + json_string(t.key) + ",\"dtype\":" + json_string(dtype_name(t.type)) + ",\"shape\":[";
    for (std::size_t d = 0; d < t.global.size(); ++d) o += (d ? "," : "") + std::to_string(t.global[d]);
    o += "],\"layout\":[";
    for (std::size_t d = 0; d < t.axes.size(); ++d)
      o += (d ? "," : "") + json_string(t.axes[d] < 0 ? std::string("unsharded") : ms.dims[static_cast<std::size_t>(t.axes[d])].name);
    o += "],\"mesh\":{\"dims\":[";
    for (std::size_t d = 0; d < ms.dims.size(); ++d)
      o += (d ? "," : "") + std::string("{\"name\":") + json_string(ms.dims[d].name) + ",\"size\":" + std::to_string(ms.dims[d].size) + "}";
    o += "],\"device_ids\":[";
    for (std::size_t d = 0; d < ms.device_ids.size(); ++d) o += (d ? "," : "") + std::to_string(ms.device_ids[d]);
    o += "]},\"slices\":" + std::to_string(t.slices.size()) + ",\"bytes\":" + std::to_string(tensor_bytes(t)) + "}";
  }
  return o + "]}";
}

}  // namespace meshckpt::format
