// torch.save files as restorables (interchange/torch_io.hpp): the zip's directory, then the pickle,
// then the storages' local headers, in windows. Every read is sized from what was already checked.

#include "meshckpt/interchange/torch_io.hpp"

#include <algorithm>
#include <cstring>
#include <map>
#include <unordered_map>

#include "torch_zip.hpp"
#include "meshckpt/format/describe.hpp"
#include "meshckpt/format/torch_file.hpp"
#include "meshckpt/format/zip.hpp"

namespace meshckpt {

namespace detail {

namespace {

// The largest central directory read.
constexpr std::uint64_t max_directory_bytes = std::uint64_t{1} << 30;

constexpr unsigned char zip_magic[4] = {'P', 'K', 3, 4};
// The legacy format starts with the pickled magic number 0x1950a86a20f9469cfc6c (LONG1).
constexpr unsigned char legacy_magic[4] = {0x80, 0x02, 0x8a, 0x0a};

task<void> read_at(io::backend& b, const torch_source& f, std::uint64_t offset, std::span<std::byte> out) {
  auto ex = co_await asio::this_coro::executor;
  if (offset > f.size || out.size() > f.size - offset)
    co_return make_error(errc::short_read, f.path + ": bytes [" + std::to_string(offset) + ", " + std::to_string(offset + out.size()) +
                                               ") lie past the end of its " + std::to_string(f.size) + " bytes");
  if (out.empty()) co_return success();
  BOOST_OUTCOME_CO_TRY(auto n, co_await io::async_read(b, ex, f.h, f.base + offset, out, use_awaitable));
  if (n != out.size())
    co_return make_error(errc::short_read, f.path + " ended before byte " + std::to_string(f.base + offset + out.size()));
  co_return success();
}

// The data offsets of records `recs`, their local headers read in windows: headers within 1 MiB
// of each other share one read of at most 8 MiB, so a file of many small storages costs a few
// reads rather than one per storage.
task<std::vector<std::uint64_t>> data_offsets(io::backend& b, const torch_source& f, const std::vector<const format::zip::entry*>& recs,
                                              std::uint64_t limit) {
  constexpr std::uint64_t max_window = 8 << 20, max_gap = 1 << 20;
  auto head_end = [&](const format::zip::entry& e) { return std::min<std::uint64_t>(e.header_offset + 30 + e.name.size(), limit); };
  std::vector<std::size_t> order(recs.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](std::size_t x, std::size_t y) { return recs[x]->header_offset < recs[y]->header_offset; });
  std::vector<std::uint64_t> out(recs.size());
  std::vector<std::byte> window;
  for (std::size_t i = 0, j = 0; i < order.size(); i = j) {
    const std::uint64_t from = recs[order[i]]->header_offset;
    std::uint64_t to = head_end(*recs[order[i]]);
    for (j = i + 1; j < order.size(); ++j) {
      const auto& e = *recs[order[j]];
      if (e.header_offset > to + max_gap || head_end(e) - from > max_window) break;
      to = std::max(to, head_end(e));
    }
    window.resize(static_cast<std::size_t>(to - from));
    BOOST_OUTCOME_CO_TRY(co_await read_at(b, f, from, window));
    for (std::size_t k = i; k < j; ++k) {
      const auto& e = *recs[order[k]];
      if (e.method != 0)
        co_return make_error(errc::unsupported, f.path + ": record \"" + e.name + "\" is compressed (method " + std::to_string(e.method) +
                                                    "); torch.save writes stored records");
      auto at = format::zip::local_data_offset(
          e, std::span<const std::byte>(window).subspan(e.header_offset - from, head_end(e) - e.header_offset), limit);
      if (!at) co_return with_context(at.error(), f.path);
      out[order[k]] = *at;
    }
  }
  co_return out;
}

// A stored record's data, after checking its local header.
task<std::uint64_t> data_offset(io::backend& b, const torch_source& f, const format::zip::entry& e, std::uint64_t limit) {
  const std::vector<const format::zip::entry*> one{&e};
  auto locating = data_offsets(b, f, one, limit);
  BOOST_OUTCOME_CO_TRY(auto at, co_await std::move(locating));
  co_return at[0];
}

// Stored entry `e` as a tensor of one slice: `length` bytes at `offset` of the file, `crc` its checksum.
format::saved_tensor whole_slice_tensor(const format::torch::stored_entry& e, std::uint64_t offset, std::uint64_t length,
                                        std::uint32_t crc) {
  format::saved_tensor t;
  t.key = e.key;
  t.type = e.type;
  t.global = e.dims;
  t.axes.assign(e.dims.size(), -1);
  format::saved_slice sl;
  sl.where = box::whole(e.dims);
  sl.offset = offset;
  sl.length = length;
  sl.checksums = {crc};
  t.slices.push_back(std::move(sl));
  return t;
}

}  // namespace

task<torch_part> read_zip(io::backend& b, const torch_source& f, std::string root_key) {
  namespace zip = format::zip;
  std::vector<std::byte> tail(static_cast<std::size_t>(std::min(f.size, zip::max_tail_bytes)));
  BOOST_OUTCOME_CO_TRY(co_await read_at(b, f, f.size - tail.size(), tail));
  auto loc = zip::locate_central_directory(tail, f.size);
  if (!loc) co_return with_context(loc.error(), f.path);
  if (loc->zip64_end_offset) {
    std::vector<std::byte> rec(56);
    BOOST_OUTCOME_CO_TRY(co_await read_at(b, f, *loc->zip64_end_offset, rec));
    if (auto z = zip::apply_zip64_end(*loc, rec, f.size); !z) co_return with_context(z.error(), f.path);
  }
  if (loc->size > max_directory_bytes)
    co_return make_error(errc::limit_exceeded, f.path + ": a central directory of " + std::to_string(loc->size) + " bytes");
  std::vector<std::byte> dir(static_cast<std::size_t>(loc->size));
  BOOST_OUTCOME_CO_TRY(co_await read_at(b, f, loc->offset, dir));
  auto entries = zip::decode_central_directory(dir, *loc, f.size);
  if (!entries) co_return with_context(entries.error(), f.path);
  std::unordered_map<std::string_view, const zip::entry*> by_name;
  std::string root;
  for (const auto& e : *entries) {
    by_name.emplace(e.name, &e);
    const auto slash = e.name.find('/');
    if (slash != std::string::npos && e.name.compare(slash, std::string::npos, "/data.pkl") == 0) {
      if (!root.empty()) co_return make_error(errc::corrupt_manifest, f.path + ": two pickles (" + root + "/data.pkl and " + e.name + ")");
      root = e.name.substr(0, slash);
    }
  }
  if (root.empty())
    co_return make_error(errc::corrupt_manifest, f.path + " is a zip file without a <root>/data.pkl record: not a torch.save file");
  auto record = [&](const std::string& name) -> const zip::entry* {
    auto it = by_name.find(root + "/" + name);
    return it == by_name.end() ? nullptr : it->second;
  };
  if (const auto* order = record("byteorder")) {
    char text[8] = {};
    if (order->size > 7 || order->method != 0) co_return make_error(errc::corrupt_manifest, f.path + ": a malformed byteorder record");
    BOOST_OUTCOME_CO_TRY(auto at, co_await data_offset(b, f, *order, loc->offset));
    BOOST_OUTCOME_CO_TRY(co_await read_at(b, f, at, std::as_writable_bytes(std::span(text, static_cast<std::size_t>(order->size)))));
    if (std::string_view(text) != "little")
      co_return make_error(errc::unsupported, f.path + " holds " + std::string(text) + "-endian data; meshckpt reads little-endian files");
  }
  const zip::entry& pkl = *record("data.pkl");
  if (pkl.size > max_pickle_bytes)
    co_return make_error(errc::limit_exceeded, f.path + ": a pickle of " + std::to_string(pkl.size) + " bytes");
  BOOST_OUTCOME_CO_TRY(auto pkl_at, co_await data_offset(b, f, pkl, loc->offset));
  std::vector<std::byte> bytes(static_cast<std::size_t>(pkl.size));
  BOOST_OUTCOME_CO_TRY(co_await read_at(b, f, pkl_at, bytes));
  if (zip::crc32_extend(0, bytes) != pkl.crc32)
    co_return make_error(errc::checksum_mismatch, f.path + ": CRC-32 mismatch in record " + pkl.name);
  const std::string what = f.path + " (" + pkl.name + ")";
  auto doc = format::pickle::read(bytes, format::torch::state_policy(), what);
  if (!doc) co_return doc.error();
  auto state = format::torch::read_state(*doc, what, root_key);
  if (!state) co_return state.error();
  std::vector<const zip::entry*> recs;
  recs.reserve(state->entries.size());
  for (const auto& e : state->entries) {
    const auto& s = state->storages[e.storage];
    const zip::entry* rec = record("data/" + s.key);
    if (!rec)
      co_return make_error(errc::corrupt_manifest, f.path + ": entry \"" + e.key + "\" names storage " + s.key + ", which has no record " +
                                                       root + "/data/" + s.key);
    const std::uint64_t bytes_needed = s.numel * dtype_size(s.type);
    if (rec->size != bytes_needed)
      co_return make_error(errc::corrupt_manifest, f.path + ": storage " + s.key + " holds " + std::to_string(s.numel) + " elements of " +
                                                       std::string(dtype_name(s.type)) + " (" + std::to_string(bytes_needed) +
                                                       " bytes), its record " + std::to_string(rec->size));
    recs.push_back(rec);
  }
  auto locating = data_offsets(b, f, recs, loc->offset);
  BOOST_OUTCOME_CO_TRY(auto at, co_await std::move(locating));
  torch_part part;
  for (std::size_t i = 0; i < recs.size(); ++i)
    part.tensors.push_back(whole_slice_tensor(state->entries[i], f.base + at[i], recs[i]->size, recs[i]->crc32));
  part.state = std::move(*state);
  co_return part;
}

namespace {

// A torch.save file in the legacy (non-zip) format: five pickles one after the other (the
// magic number, the protocol version, the writer's system, the state, the storage keys), then
// each storage in the keys' order as its element count (int64) and its bytes. Nothing gives the
// pickles' lengths, so they are read from a prefix of the file that grows until each parses.
constexpr unsigned char legacy_head[15] = {0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, '.'};
constexpr std::uint64_t legacy_protocol = 1001;

struct legacy_prefix {
  std::vector<std::byte> bytes;
  std::uint64_t pos = 0;  // where the next pickle starts
};

task<format::pickle::document> next_pickle(io::backend& b, const torch_source& f, legacy_prefix& at, const format::pickle::policy& p,
                                           const std::string& what) {
  while (true) {
    bool ran_out = false;
    std::size_t used = 0;
    auto doc = format::pickle::read(std::span<const std::byte>(at.bytes).subspan(at.pos), p, what, &used, &ran_out);
    if (doc) {
      at.pos += used;
      co_return std::move(*doc);
    }
    if (!ran_out || at.bytes.size() >= f.size) co_return doc.error();
    if (at.bytes.size() >= max_pickle_bytes) co_return make_error(errc::limit_exceeded, what + ": pickles of more than 1 GiB");
    const std::size_t had = at.bytes.size();
    at.bytes.resize(static_cast<std::size_t>(std::min({f.size, std::max<std::uint64_t>(2 * had, 1 << 16), max_pickle_bytes})));
    BOOST_OUTCOME_CO_TRY(co_await read_at(b, f, had, std::span(at.bytes).subspan(had)));
  }
}

const format::pickle::node* dict_value(const format::pickle::document& d, const format::pickle::node& n, std::string_view key) {
  for (const auto& [k, v] : n.entries)
    if (d.at(k).k == format::pickle::node::kind::string && d.at(k).text == key) return &d.at(v);
  return nullptr;
}

task<torch_part> read_legacy(io::backend& b, const torch_source& f) {
  using kind = format::pickle::node::kind;
  legacy_prefix at;
  at.bytes.resize(static_cast<std::size_t>(std::min<std::uint64_t>(f.size, 1 << 16)));
  BOOST_OUTCOME_CO_TRY(co_await read_at(b, f, 0, at.bytes));
  if (at.bytes.size() < sizeof legacy_head || std::memcmp(at.bytes.data(), legacy_head, sizeof legacy_head) != 0)
    co_return make_error(errc::corrupt_manifest, f.path + ": not a torch.save file (the legacy format's magic number is not there)");
  at.pos = sizeof legacy_head;
  format::pickle::policy plain;  // the header pickles name no global
  plain.allow_global = [](std::string_view, std::string_view) { return false; };
  const std::string what = f.path + " (legacy torch.save)";
  auto version = next_pickle(b, f, at, plain, what);
  BOOST_OUTCOME_CO_TRY(auto v, co_await std::move(version));
  if (v.at(v.root).k != kind::integer || static_cast<std::uint64_t>(v.at(v.root).i) != legacy_protocol)
    co_return make_error(errc::unsupported, what + ": protocol version " + format::pickle::describe(v, v.root) + ", meshckpt reads " +
                                                std::to_string(legacy_protocol));
  auto system = next_pickle(b, f, at, plain, what);
  BOOST_OUTCOME_CO_TRY(auto sys, co_await std::move(system));
  const auto* little = sys.at(sys.root).k == kind::dict ? dict_value(sys, sys.at(sys.root), "little_endian") : nullptr;
  if (!little || little->k != kind::boolean) co_return make_error(errc::corrupt_manifest, what + ": no little_endian in its system record");
  if (!little->i) co_return make_error(errc::unsupported, f.path + " holds big-endian data; meshckpt reads little-endian files");
  const auto policy = format::torch::state_policy();
  auto main = next_pickle(b, f, at, policy, what);
  BOOST_OUTCOME_CO_TRY(auto doc, co_await std::move(main));
  auto state = format::torch::read_state(doc, what);
  if (!state) co_return state.error();
  auto listing = next_pickle(b, f, at, plain, what);
  BOOST_OUTCOME_CO_TRY(auto keys, co_await std::move(listing));
  if (keys.at(keys.root).k != kind::list)
    co_return make_error(errc::corrupt_manifest, what + ": the storage keys are " + format::pickle::describe(keys, keys.root));
  std::unordered_map<std::string_view, std::size_t> by_key;
  for (std::size_t i = 0; i < state->storages.size(); ++i) by_key.emplace(state->storages[i].key, i);
  // Each storage's bytes, in the keys' order: its element count, checked against the state's.
  std::vector<std::uint64_t> data_at(state->storages.size(), ~std::uint64_t{0});
  std::uint64_t off = at.pos;
  for (auto k : keys.at(keys.root).items) {
    const auto& key = keys.at(k);
    auto it = key.k == kind::string ? by_key.find(key.text) : by_key.end();
    if (it == by_key.end())
      co_return make_error(errc::corrupt_manifest, what + ": the storage keys name " +
                                                       (key.k == kind::string ? "storage " + key.text : format::pickle::describe(keys, k)) +
                                                       ", which no tensor of the state uses");
    if (data_at[it->second] != ~std::uint64_t{0})
      co_return make_error(errc::corrupt_manifest, what + ": storage " + key.text + " is listed twice");
    const auto& s = state->storages[it->second];
    std::byte count[8];
    if (off + 8 <= at.bytes.size()) {
      std::memcpy(count, at.bytes.data() + off, 8);
    } else {
      BOOST_OUTCOME_CO_TRY(co_await read_at(b, f, off, count));
    }
    std::uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<std::uint8_t>(count[i]);
    if (n != s.numel)
      co_return make_error(errc::corrupt_manifest, what + ": storage " + s.key + " holds " + std::to_string(s.numel) +
                                                       " elements by the state, " + std::to_string(n) + " by its record at byte " +
                                                       std::to_string(off));
    const std::uint64_t bytes = s.numel * static_cast<std::uint64_t>(dtype_size(s.type));
    if (bytes > f.size - std::min(f.size, off + 8))
      co_return make_error(errc::short_read, what + ": storage " + s.key + "'s " + std::to_string(bytes) + " bytes at byte " +
                                                 std::to_string(off + 8) + " lie past the end of its " + std::to_string(f.size) + " bytes");
    data_at[it->second] = off + 8;
    off += 8 + bytes;
  }
  torch_part part;
  for (const auto& e : state->entries) {
    const auto& s = state->storages[e.storage];
    if (data_at[e.storage] == ~std::uint64_t{0})
      co_return make_error(errc::corrupt_manifest,
                           what + ": entry \"" + e.key + "\" names storage " + s.key + ", which the storage keys do not list");
    part.tensors.push_back(whole_slice_tensor(e, f.base + data_at[e.storage], s.numel * static_cast<std::uint64_t>(dtype_size(s.type)), 0));
  }
  part.state = std::move(*state);
  co_return part;
}

}  // namespace

format::manifest foreign_manifest(std::string writer) {
  format::manifest m;
  m.checksum = format::checksum_kind::crc32_whole;
  m.chunk_bytes = std::uint64_t{1} << 62;  // above every slice: each is read and checked whole
  m.writer = std::move(writer);
  m.meshes.push_back({{{"torch", 1}}, {0}});
  return m;
}

result<void> sort_unique(format::manifest& m, const std::string& path) {
  std::sort(m.tensors.begin(), m.tensors.end(), [](const auto& x, const auto& y) { return x.key < y.key; });
  for (std::size_t k = 1; k < m.tensors.size(); ++k)
    if (m.tensors[k].key == m.tensors[k - 1].key)
      return make_error(errc::corrupt_manifest, path + ": two entries named \"" + m.tensors[k].key + "\"");
  return success();
}

namespace {

task<restorable> read_file(io::backend& b, const torch_source& f, bool legacy) {
  auto reading = legacy ? read_legacy(b, f) : read_zip(b, f);
  BOOST_OUTCOME_CO_TRY(auto part, co_await std::move(reading));
  restorable r;
  r.prefix = f.path;
  r.manifest =
      foreign_manifest("torch.save (" + std::string(legacy ? "legacy" : "zip") + ", " + std::to_string(part.state.tensors) + " tensors)");
  if (legacy) r.manifest.checksum = format::checksum_kind::unchecked;
  r.manifest.files.push_back({split_prefix(f.path).second, f.size});
  r.manifest.tensors = std::move(part.tensors);
  BOOST_OUTCOME_CO_TRY(sort_unique(r.manifest, f.path));
  r.torch_skeleton = std::move(part.state.skeleton);
  co_return r;
}

}  // namespace

task<restorable> load_torch(io::backend& b, std::string path) {
  while (path.size() > 1 && path.ends_with('/')) path.pop_back();
  auto probing = has_file(b, path, ".metadata");
  auto dcp = co_await std::move(probing);
  if (!dcp) co_return dcp.error();
  auto reading = *dcp ? load_dcp(b, std::move(path)) : load_torch_file(b, std::move(path));
  co_return co_await std::move(reading);
}

task<restorable> load_dcp(io::backend& b, std::string dir) {
  auto reading = read_dcp(b, std::move(dir));
  co_return co_await std::move(reading);
}

task<restorable> load_torch_file(io::backend& b, std::string path) {
  auto ex = co_await asio::this_coro::executor;
  auto p = co_await open_prefix_dir(b, path);
  if (!p) co_return p.error();
  on_unwind close_dir([&] { io::close_detached(b, p->dir); });
  torch_source f{{}, path, 0};
  auto steps = [&]() -> task<restorable> {
    auto h = co_await io::async_open(b, ex, p->dir, p->base, io::open_mode::read, use_awaitable);
    if (!h) {
      // Nothing there, or a directory (which the backend refuses to open as a file): no file.
      if (h.error().code == std::errc::no_such_file_or_directory || h.error().code == std::errc::is_a_directory ||
          h.error().code == errc::unsafe_path)
        co_return make_error(errc::not_found, std::string(no_torch_file_at) + path);
      co_return with_context(h.error(), path);
    }
    f.h = *h;
    on_unwind close_file([&] { io::close_detached(b, f.h); });
    auto body = [&]() -> task<restorable> {
      BOOST_OUTCOME_CO_TRY(f.size, co_await io::async_size(b, ex, f.h, use_awaitable));
      std::byte head[4] = {};
      if (f.size >= 4) {
        BOOST_OUTCOME_CO_TRY(co_await read_at(b, f, 0, head));
      }
      const bool legacy = std::memcmp(head, legacy_magic, 4) == 0;
      if (!legacy && std::memcmp(head, zip_magic, 4) != 0)
        co_return make_error(errc::not_found, std::string(no_torch_file_at) + path +
                                                  ": it starts with neither a zip header nor the legacy format's magic number");
      auto reading = read_file(b, f, legacy);
      co_return co_await std::move(reading);
    };
    auto r = co_await body();
    co_await close_quietly(b, f.h);
    close_file.disarm();
    co_return r;
  };
  std::optional<result<restorable>> r;
  try {
    r = co_await steps();
  } catch (const std::bad_alloc&) {
    r = out_of_memory("reading " + path);
  }
  co_await close_quietly(b, p->dir);
  close_dir.disarm();
  co_return std::move(*r);
}

namespace {

task<torch_checkpoint> read_checkpoint_coro(io::backend& b, std::string path) {
  auto loading = load_torch(b, std::move(path));
  BOOST_OUTCOME_CO_TRY(auto r, co_await std::move(loading));
  torch_checkpoint out{std::move(r.prefix), std::move(r.manifest), std::move(r.torch_skeleton), 0};
  for (const auto& t : out.manifest.tensors) out.tensors += t.key.starts_with("__meshckpt_storage__/") ? 0 : 1;
  co_return out;
}

task<write_report> import_coro(io::backend& b, std::string path, std::string to, write_options opt) {
  auto loading = load_torch(b, std::move(path));
  BOOST_OUTCOME_CO_TRY(auto r, co_await std::move(loading));
  auto importing = import_restorable(b, std::move(r), std::move(to), std::move(opt));
  co_return co_await std::move(importing);
}

}  // namespace

void start_read_torch_checkpoint(asio::any_io_executor ex, io::backend& b, std::string path, io::completion<torch_checkpoint> done) {
  spawn<torch_checkpoint>(ex, read_checkpoint_coro(b, std::move(path)), std::move(done));
}

void start_import_torch_checkpoint(asio::any_io_executor ex, io::backend& b, std::string path, std::string to, write_options opt,
                                   io::completion<write_report> done) {
  spawn<write_report>(ex, import_coro(b, std::move(path), std::move(to), std::move(opt)), std::move(done));
}

}  // namespace detail

bool no_torch_checkpoint(const error& e) { return e.code == errc::not_found && e.what().starts_with(no_torch_file_at); }

result<torch_checkpoint> read_torch_checkpoint(io::backend& b, std::string_view path) {
  return runtime::run_blocking<torch_checkpoint>(
      "read_torch_checkpoint", [&](auto ex, auto done) { detail::start_read_torch_checkpoint(ex, b, std::string(path), std::move(done)); });
}

result<write_report> import_torch_checkpoint(io::backend& b, std::string_view path, std::string_view to, const write_options& opt) {
  return runtime::run_blocking<write_report>("import_torch_checkpoint", [&](auto ex, auto done) {
    detail::start_import_torch_checkpoint(ex, b, std::string(path), std::string(to), opt, std::move(done));
  });
}

}  // namespace meshckpt
