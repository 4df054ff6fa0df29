#include "save_messages.hpp"

#include "../format/codec.hpp"
#include "meshckpt/format/checksum.hpp"
#include "meshckpt/format/names.hpp"
#include "meshckpt/plan/write_plan.hpp"

namespace meshckpt::detail {

namespace {

using format::codec::reader;
using format::codec::writer;

// Caps on what a report may claim; the real limits are the manifest's, checked again by
// `format::validate` before the commit.
constexpr std::uint64_t max_report_files = files_per_process;
constexpr std::uint64_t max_report_slices = std::uint64_t{1} << 32;
constexpr std::uint64_t max_message_text = 1 << 16;

void put_error(writer& w, const error& e) {
  w.u8(e.code.category() == meshckpt_category() ? 0 : 1);
  w.varint(static_cast<std::uint64_t>(static_cast<std::uint32_t>(e.code.value())));
  w.str(e.what().substr(0, max_message_text));
}

error get_error(reader& r) {
  auto cat = r.bounded("error category", 1);
  auto value = static_cast<int>(r.bounded("error code", 0xffffffffu));
  auto text = r.str("error message", max_message_text);
  std::error_code code = cat == 0 ? std::error_code(value, meshckpt_category()) : std::error_code(value, std::system_category());
  return error{code, std::move(text)};
}

}  // namespace

std::uint64_t skeleton_fingerprint(const format::manifest& m) {
  writer w;
  format::put_meshes(w, m.meshes);
  w.varint(m.tensors.size());
  for (const auto& t : m.tensors) {
    format::put_tensor_head(w, t);
    w.varint(t.slices.size());
    for (const auto& s : t.slices) {
      format::put_box(w, s);
      w.varint(static_cast<std::uint64_t>(s.writer_device));
    }
  }
  return format::checksum(w.bytes());
}

process_report report_of(const format::manifest& m, std::vector<format::data_file> files, std::uint64_t fingerprint) {
  process_report r;
  r.ok = true;
  r.fingerprint = fingerprint;
  r.files = std::move(files);
  for (std::size_t ti = 0; ti < m.tensors.size(); ++ti)
    for (std::size_t si = 0; si < m.tensors[ti].slices.size(); ++si) {
      const auto& s = m.tensors[ti].slices[si];
      if (s.file == plan::remote_file) continue;
      r.slices.push_back({ti, si, s.file, s.offset, s.length, s.writer_device, s.checksums});
    }
  return r;
}

std::vector<std::byte> encode(const process_report& r) {
  writer w;
  w.u8(r.ok ? 0 : 1);
  if (!r.ok) {
    put_error(w, r.failure);
    return std::move(w.bytes());
  }
  w.fixed(r.fingerprint, 8);
  w.varint(r.files.size());
  for (const auto& f : r.files) {
    w.str(f.name);
    w.varint(f.size);
  }
  w.varint(r.slices.size());
  for (const auto& s : r.slices) {
    w.varint(s.tensor);
    w.varint(s.slice);
    w.varint(s.file);
    w.varint(s.offset);
    w.varint(s.length);
    w.varint(static_cast<std::uint64_t>(s.writer_device));
    w.varint(s.checksums.size());
    for (auto c : s.checksums) w.fixed(c, 8);
  }
  return std::move(w.bytes());
}

result<process_report> decode_report(std::span<const std::byte> bytes) {
  reader rd(bytes.data(), bytes.data() + bytes.size(), 0, "process report");
  process_report r;
  auto status = rd.bounded("status", 1);
  if (status == 1) {
    r.failure = get_error(rd);
  } else {
    r.ok = true;
    r.fingerprint = rd.fixed64("fingerprint");
    r.files.resize(rd.count("file count", max_report_files, 2));
    for (auto& f : r.files) {
      f.name = rd.str("file name", 255);
      f.size = rd.varint("file size");
      if (!rd.failed() && !format::is_plain_name(f.name)) rd.fail(errc::unsafe_path, "file name is not a plain name");
    }
    r.slices.resize(rd.count("slice count", max_report_slices, 7));
    for (auto& s : r.slices) {
      s.tensor = rd.varint("tensor index");
      s.slice = rd.varint("slice index");
      s.file = static_cast<std::uint32_t>(rd.bounded("file index", r.files.empty() ? 0 : r.files.size() - 1));
      s.offset = rd.varint("offset");
      s.length = rd.varint("length");
      s.writer_device = rd.bounded("writer device", std::uint64_t{1} << 62);
      s.checksums.resize(rd.count("checksum count", std::uint64_t{1} << 40, 8));
      for (auto& c : s.checksums) c = rd.fixed64("checksum");
    }
  }
  if (!rd.failed() && rd.remaining()) rd.fail(errc::corrupt_manifest, "trailing bytes");
  if (rd.failed()) return rd.err();
  return r;
}

std::vector<std::byte> encode(const save_outcome& o) {
  writer w;
  w.u8(o.s);
  if (o.s != save_outcome::committed) {
    put_error(w, o.failure);
  } else {
    w.varint(o.bytes);
    w.varint(o.tensors);
    w.varint(o.slices);
    w.varint(o.files);
  }
  return std::move(w.bytes());
}

result<save_outcome> decode_outcome(std::span<const std::byte> bytes) {
  reader rd(bytes.data(), bytes.data() + bytes.size(), 0, "save outcome");
  save_outcome o;
  o.s = static_cast<save_outcome::state>(rd.bounded("outcome", 2));
  if (o.s != save_outcome::committed) {
    o.failure = get_error(rd);
  } else {
    o.bytes = rd.varint("bytes");
    o.tensors = rd.varint("tensors");
    o.slices = rd.varint("slices");
    o.files = rd.varint("files");
  }
  if (!rd.failed() && rd.remaining()) rd.fail(errc::corrupt_manifest, "trailing bytes");
  if (rd.failed()) return rd.err();
  return o;
}

result<void> merge_reports(format::manifest& m, std::span<const process_report> reports) {
  const std::uint64_t expected = skeleton_fingerprint(m);
  std::vector<std::vector<int>> by(m.tensors.size());  // reporting process per slice, -1: none
  for (std::size_t ti = 0; ti < m.tensors.size(); ++ti) {
    by[ti].assign(m.tensors[ti].slices.size(), -1);
    for (auto& s : m.tensors[ti].slices) {
      s.file = plan::remote_file;
      s.offset = s.length = 0;
      s.checksums.clear();
    }
  }
  m.files.clear();
  for (std::size_t r = 0; r < reports.size(); ++r) {
    const auto& rep = reports[r];
    const std::string who = "process " + std::to_string(r);
    if (!rep.ok) return with_context(rep.failure, who);
    if (rep.fingerprint != expected)
      return make_error(errc::invalid_argument, who +
                                                    " saves a different set of tensors than process 0 (keys, dtypes, shapes, "
                                                    "layouts or meshes differ): every process must pass the same tensors, "
                                                    "each with its own local shards");
    const auto base = static_cast<std::uint32_t>(m.files.size());
    for (const auto& f : rep.files) m.files.push_back(f);
    for (const auto& s : rep.slices) {
      if (s.tensor >= m.tensors.size() || s.slice >= m.tensors[s.tensor].slices.size())
        return make_error(errc::invalid_argument, who + " reported slice " + std::to_string(s.slice) + " of tensor " +
                                                      std::to_string(s.tensor) + ", which the plan does not have");
      auto& t = m.tensors[s.tensor];
      auto& dst = t.slices[s.slice];
      int& owner = by[s.tensor][s.slice];
      if (owner >= 0)
        return make_error(errc::invalid_argument, "tensor \"" + t.key + "\" slice " + to_string(dst.where) + " was written by process " +
                                                      std::to_string(owner) + " and by " + who + ": device " +
                                                      std::to_string(dst.writer_device) + " is local to both");
      if (s.writer_device != dst.writer_device)
        return make_error(errc::invalid_argument, who + " wrote tensor \"" + t.key + "\" slice " + to_string(dst.where) + " from device " +
                                                      std::to_string(s.writer_device) + ", not its owner " +
                                                      std::to_string(dst.writer_device));
      owner = static_cast<int>(r);
      dst.file = base + s.file;
      dst.offset = s.offset;
      dst.length = s.length;
      dst.checksums = s.checksums;
    }
  }
  for (std::size_t ti = 0; ti < m.tensors.size(); ++ti)
    for (std::size_t si = 0; si < m.tensors[ti].slices.size(); ++si)
      if (by[ti][si] < 0) {
        const auto& s = m.tensors[ti].slices[si];
        return make_error(errc::layout_mismatch, "tensor \"" + m.tensors[ti].key + "\" slice " + to_string(s.where) +
                                                     " was written by no process: its owner, device " + std::to_string(s.writer_device) +
                                                     ", is local to none of the " + std::to_string(reports.size()) + " processes");
      }
  return success();
}

}  // namespace meshckpt::detail
