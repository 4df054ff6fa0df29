#include "meshckpt/format/describe.hpp"

#include <algorithm>
#include <optional>
#include <array>
#include <cstdio>
#include <ctime>

namespace meshckpt::format {

namespace {

// The length of the valid UTF-8 sequence at the start of `s`, or 0 when it does not start with
// one (RFC 3629: shortest form, no surrogates, at most U+10FFFF).
std::size_t utf8_sequence(std::string_view s) noexcept {
  const auto b = [&](std::size_t i) { return static_cast<unsigned char>(s[i]); };
  const unsigned char c = b(0);
  if (c < 0x80) return 1;
  std::size_t n;
  unsigned char lo = 0x80, hi = 0xbf;  // the range of the second byte
  if (c >= 0xc2 && c <= 0xdf)
    n = 2;
  else if (c >= 0xe0 && c <= 0xef) {
    n = 3;
    if (c == 0xe0) lo = 0xa0;
    if (c == 0xed) hi = 0x9f;
  } else if (c >= 0xf0 && c <= 0xf4) {
    n = 4;
    if (c == 0xf0) lo = 0x90;
    if (c == 0xf4) hi = 0x8f;
  } else {
    return 0;
  }
  if (s.size() < n || b(1) < lo || b(1) > hi) return 0;
  for (std::size_t i = 2; i < n; ++i)
    if (b(i) < 0x80 || b(i) > 0xbf) return 0;
  return n;
}

}  // namespace

bool is_utf8(std::string_view s) noexcept {
  while (!s.empty()) {
    const auto n = utf8_sequence(s);
    if (!n) return false;
    s.remove_prefix(n);
  }
  return true;
}

std::string json_string(std::string_view s) {
  std::string out = "\"";
  char buf[8];
  while (!s.empty()) {
    const auto n = utf8_sequence(s);
    const auto c = static_cast<unsigned char>(s[0]);
    if (n == 0) {
      std::snprintf(buf, sizeof buf, "\\udc%02x", c);  // surrogateescape
      out += buf;
      s.remove_prefix(1);
      continue;
    }
    if (n > 1) {
      out.append(s.substr(0, n));
      s.remove_prefix(n);
      continue;
    }
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\t': out += "\\t"; break;
      case '\r': out += "\\r"; break;
      default:
        if (c < 0x20 || c == 0x7f) {
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out += static_cast<char>(c);
        }
    }
    s.remove_prefix(1);
  }
  return out + "\"";
}

std::string display_bytes(std::string_view s) {
  std::string out;
  char buf[8];
  while (!s.empty()) {
    const auto n = utf8_sequence(s);
    const auto c = static_cast<unsigned char>(s[0]);
    if (n > 1) {
      out.append(s.substr(0, n));
      s.remove_prefix(n);
      continue;
    }
    if (c == '\\') {
      out += "\\\\";
    } else if (n == 0 || c < 0x20 || c == 0x7f) {
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
    s.remove_prefix(1);
  }
  return out;
}

result<std::string> unescape_display(std::string_view s) {
  std::string out;
  auto hex = [](char h) -> int {
    if (h >= '0' && h <= '9') return h - '0';
    if (h >= 'a' && h <= 'f') return h - 'a' + 10;
    if (h >= 'A' && h <= 'F') return h - 'A' + 10;
    return -1;
  };
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '\\') {
      out += s[i];
      continue;
    }
    if (i + 1 < s.size() && s[i + 1] == '\\') {
      out += '\\';
      ++i;
      continue;
    }
    if (i + 3 < s.size() && s[i + 1] == 'x' && hex(s[i + 2]) >= 0 && hex(s[i + 3]) >= 0) {
      out += static_cast<char>(hex(s[i + 2]) * 16 + hex(s[i + 3]));
      i += 3;
      continue;
    }
    return make_error(errc::invalid_argument, "\"" + std::string(s) + "\": a backslash at byte " + std::to_string(i) +
                                                  " starts neither \\xNN (a byte in hex) nor \\\\ (a backslash)");
  }
  return out;
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
  if (u == 0)
    std::snprintf(buf, sizeof buf, "%llu B", static_cast<unsigned long long>(n));
  else
    std::snprintf(buf, sizeof buf, "%.1f %s", v, units[u]);
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

void pad(std::string& out, const std::string& s, std::size_t w) {
  out += s;
  out.append(w > s.size() ? w - s.size() : 0, ' ');
  out += "  ";
}

// Rows as aligned columns (each at most 60 characters wide, the last unpadded), indented.
void table(std::string& out, const std::vector<std::vector<std::string>>& rows) {
  std::vector<std::size_t> w(rows.empty() ? 0 : rows.front().size());
  for (const auto& r : rows)
    for (std::size_t i = 0; i < r.size(); ++i) w[i] = std::max(w[i], std::min<std::size_t>(r[i].size(), 60));
  for (const auto& r : rows) {
    std::string line = "  ";
    for (std::size_t i = 0; i < r.size(); ++i) pad(line, r[i], i + 1 == r.size() ? 0 : w[i]);
    while (!line.empty() && line.back() == ' ') line.pop_back();
    out += line + "\n";
  }
}

}  // namespace

std::string describe_text(const manifest& m, std::string_view prefix) {
  std::size_t slices = 0;
  for (const auto& t : m.tensors) slices += t.slices.size();
  std::string out = "checkpoint " + std::string(prefix) + "\n";
  // A foreign checkpoint read in place has no format version, time or chunks of its own.
  const bool foreign = whole_slice_crc(m.checksum);
  if (foreign) {
    out += "  " + (m.writer.empty() ? std::string("a foreign checkpoint") : m.writer) + ", read in place\n";
  } else {
    out += "  format " + std::to_string(major_version) + "." + std::to_string(m.minor) + ", written by " +
           (m.writer.empty() ? std::string("?") : m.writer) + " at " + iso_time(m.created_unix_ms) + "\n";
  }
  out += "  " + std::to_string(m.tensors.size()) + " tensors, " + std::to_string(slices) + " slices, " + std::to_string(m.files.size()) +
         " data file" + (m.files.size() == 1 ? "" : "s") + ", " + human_bytes(m.stored_bytes()) + " stored, " +
         (!foreign                                 ? "checksum chunk " + human_bytes(m.chunk_bytes)
          : m.checksum == checksum_kind::unchecked ? std::string("no checksums (the format stores none)")
                                                   : "one " + std::string(crc_name(m.checksum)) + " per slice") +
         "\n\n";
  std::vector<std::vector<std::string>> rows;
  rows.push_back({"KEY", "DTYPE", "SHAPE", "LAYOUT", "MESH", "SLICES", "BYTES"});
  for (const auto& t : m.tensors)
    rows.push_back({t.key, std::string(dtype_name(t.type)), to_string(t.global), layout_string(m, t), mesh_string(m.meshes[t.mesh]),
                    std::to_string(t.slices.size()), human_bytes(tensor_bytes(t))});
  table(out, rows);
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

namespace {

// "d0,d4*" style list of devices, the writer marked.
std::string device_label(const std::vector<std::int64_t>& devs, std::int64_t writer) {
  std::string out;
  for (auto d : devs) out += (out.empty() ? "d" : ",d") + std::to_string(d) + (d == writer ? "*" : "");
  return out;
}

std::string range(std::int64_t a, std::int64_t b) { return std::to_string(a) + ":" + std::to_string(b); }

}  // namespace

result<std::string> describe_sharding(const manifest& m, const saved_tensor& t, std::size_t max_columns) {
  BOOST_OUTCOME_TRY(auto l, saved_layout_of(m, t));
  BOOST_OUTCOME_TRY(auto ms, saved_mesh_of(m, t));
  // Devices per distinct box, in slice order.
  std::vector<std::vector<std::int64_t>> holders(t.slices.size());
  for (auto dev : ms.device_ids()) {
    BOOST_OUTCOME_TRY(auto b, l.shard_box(t.global, dev));
    for (std::size_t i = 0; i < t.slices.size(); ++i)
      if (t.slices[i].where == b) holders[i].push_back(dev);
  }
  std::string axes;
  for (std::size_t d = 0; d < t.axes.size(); ++d)
    axes += (d ? ", " : "") + (t.axes[d] < 0 ? std::string("unsharded") : ms.dims()[static_cast<std::size_t>(t.axes[d])].name);
  std::string out = t.key + "  " + std::string(dtype_name(t.type)) + " " + to_string(t.global) + "  layout [" + axes + "] on mesh " +
                    ms.to_string() + "\n";
  std::size_t replicas = holders.empty() ? 0 : holders[0].size();
  for (const auto& h : holders) replicas = std::min(replicas, h.size());
  out += std::to_string(t.slices.size()) + " distinct slice" + (t.slices.size() == 1 ? "" : "s") + ", each held by " +
         (replicas == 1 ? std::string("1 device") : std::to_string(replicas) + " devices") + " (* wrote it)\n";

  // Index boundaries per drawn dimension.
  auto cuts = [&](std::size_t dim) {
    std::vector<std::int64_t> c;
    for (const auto& s : t.slices) {
      c.push_back(s.where.origin[dim]);
      c.push_back(s.where.origin[dim] + s.where.extent[dim]);
    }
    std::sort(c.begin(), c.end());
    c.erase(std::unique(c.begin(), c.end()), c.end());
    return c;
  };
  const std::size_t rank = t.global.size();
  std::vector<std::int64_t> rows = rank == 2 ? cuts(0) : std::vector<std::int64_t>{0, 1};
  std::vector<std::int64_t> cols = rank == 2 ? cuts(1) : rank == 1 ? cuts(0) : std::vector<std::int64_t>{};
  const bool grid = (rank == 1 || rank == 2) && cols.size() >= 2 && cols.size() - 1 <= max_columns && rows.size() >= 2;
  if (!grid) {
    for (std::size_t i = 0; i < t.slices.size(); ++i)
      out += "  " + to_string(t.slices[i].where) + "  " + device_label(holders[i], t.slices[i].writer_device) + "\n";
    return out;
  }
  // The slice covering cell (r, c) of the grid.
  auto slice_at = [&](std::size_t r, std::size_t c) -> std::optional<std::size_t> {
    for (std::size_t i = 0; i < t.slices.size(); ++i) {
      const auto& w = t.slices[i].where;
      const bool in_col = w.origin[rank - 1] <= cols[c] && cols[c] < w.origin[rank - 1] + w.extent[rank - 1];
      const bool in_row = rank == 1 || (w.origin[0] <= rows[r] && rows[r] < w.origin[0] + w.extent[0]);
      if (in_col && in_row) return i;
    }
    return std::nullopt;
  };
  std::size_t width = 6;
  for (std::size_t i = 0; i < t.slices.size(); ++i) width = std::max(width, device_label(holders[i], t.slices[i].writer_device).size() + 2);
  for (std::size_t c = 0; c + 1 < cols.size(); ++c) width = std::max(width, range(cols[c], cols[c + 1]).size() + 2);
  auto centered = [&](const std::string& s) {
    std::size_t pad = width - std::min(width, s.size());
    return std::string(pad / 2, ' ') + s + std::string(pad - pad / 2, ' ');
  };
  std::string rule = "+";
  for (std::size_t c = 0; c + 1 < cols.size(); ++c) rule += std::string(width, '-') + "+";
  out += "\n" + rule + "\n";
  for (std::size_t r = 0; r + 1 < rows.size(); ++r) {
    std::string line = "|";
    for (std::size_t c = 0; c + 1 < cols.size(); ++c) {
      auto i = slice_at(r, c);
      line += centered(i ? device_label(holders[*i], t.slices[*i].writer_device) : "?") + "|";
    }
    out += line + (rank == 2 ? "  rows " + range(rows[r], rows[r + 1]) : std::string()) + "\n" + rule + "\n";
  }
  std::string labels = " ";
  for (std::size_t c = 0; c + 1 < cols.size(); ++c) labels += centered(range(cols[c], cols[c + 1])) + " ";
  while (!labels.empty() && labels.back() == ' ') labels.pop_back();
  out += labels + (rank == 2 ? "  (columns)" : "") + "\n";
  return out;
}

std::string iso_time(std::uint64_t unix_ms) {
  std::time_t secs = static_cast<std::time_t>(unix_ms / 1000);
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

namespace {

std::string tf_type_string(const tf::bundle_entry& e) { return e.type ? std::string(dtype_name(*e.type)) : tf::tf_dtype_name(e.tf_type); }

std::string slice_list(const tf::bundle_entry& e) {
  std::string s;
  for (const auto& sl : e.slices) s += (s.empty() ? "" : " ") + to_string(sl.in(e.global));
  return s;
}

}  // namespace

std::string describe_text(const tf::bundle_index& idx, std::string_view prefix) {
  std::uint64_t bytes = 0;
  std::size_t partitioned = 0;
  bool graph = false;
  for (const auto& e : idx.entries) {
    bytes += e.size;
    partitioned += !e.slices.empty();
    graph = graph || e.key == tf::object_graph_key;
  }
  std::string out = "TensorFlow checkpoint " + std::string(prefix) + "\n";
  out += "  tensor bundle, format version " + std::to_string(idx.producer) + ", " + std::to_string(idx.num_shards) + " data file" +
         (idx.num_shards == 1 ? "" : "s") + "; " +
         (graph ? "TF2 object-based (it holds an object graph)" : "TF1 name-based (no object graph)") + "\n";
  out += "  " + std::to_string(idx.entries.size()) + " entries, " + std::to_string(partitioned) + " partitioned, " + human_bytes(bytes) +
         " stored\n\n";
  std::vector<std::vector<std::string>> rows;
  rows.push_back({"KEY", "DTYPE", "SHAPE", "FILE", "BYTES", "SLICES"});
  for (const auto& e : idx.entries)
    rows.push_back({e.key, tf::is_quantized(e.tf_type) ? tf_type_string(e) + " (" + tf::tf_dtype_name(e.tf_type) + ")" : tf_type_string(e),
                    to_string(e.global), e.slices.empty() ? std::to_string(e.shard) : "-", e.slices.empty() ? human_bytes(e.size) : "-",
                    slice_list(e)});
  table(out, rows);
  return out;
}

std::string describe_json(const tf::bundle_index& idx, std::string_view prefix) {
  std::string o = "{\"prefix\":" + json_string(prefix) + ",\"format\":\"tensorflow\"";
  o += ",\"num_shards\":" + std::to_string(idx.num_shards) + ",\"producer\":" + std::to_string(idx.producer);
  o += ",\"min_consumer\":" + std::to_string(idx.min_consumer) + ",\"tensors\":[";
  for (std::size_t i = 0; i < idx.entries.size(); ++i) {
    const auto& e = idx.entries[i];
    o += std::string(i ? "," : "") + "{\"key\":" + json_string(e.key) + ",\"dtype\":" + json_string(tf_type_string(e)) +
         ",\"tf_dtype\":" + json_string(tf::tf_dtype_name(e.tf_type)) + ",\"shape\":[";
    for (std::size_t d = 0; d < e.global.size(); ++d) o += std::string(d ? "," : "") + std::to_string(e.global[d]);
    o += "],\"file\":" + std::to_string(e.shard) + ",\"offset\":" + std::to_string(e.offset) + ",\"bytes\":" + std::to_string(e.size) +
         ",\"crc32c\":" + std::to_string(e.crc32c) + ",\"slices\":[";
    for (std::size_t k = 0; k < e.slices.size(); ++k) {
      auto b = e.slices[k].in(e.global);
      o += std::string(k ? "," : "") + "{\"origin\":[";
      for (std::size_t d = 0; d < b.origin.size(); ++d) o += std::string(d ? "," : "") + std::to_string(b.origin[d]);
      o += "],\"extent\":[";
      for (std::size_t d = 0; d < b.extent.size(); ++d) o += std::string(d ? "," : "") + std::to_string(b.extent[d]);
      o += "]}";
    }
    o += "]}";
  }
  return o + "]}";
}

}  // namespace meshckpt::format
