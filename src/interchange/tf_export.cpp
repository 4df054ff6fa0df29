// TensorFlow bundles from meshckpt checkpoints and back (interchange/tf_bundle_io.hpp).
//
// Export streams: a stored slice is already the row-major bytes of its box, which is what a
// bundle stores for a tensor or a partitioned variable's slice, so each one is copied from its
// data file to the bundle's in pieces, its XXH3 chunks verified and its CRC-32C computed on the
// way; memory is a few staging pieces whatever the tensor's size.

#include <algorithm>
#include <cstring>
#include <cstdlib>
#include <deque>
#include <map>
#include <set>

#include "../pipeline/common.hpp"
#include "../pipeline/data_files.hpp"
#include "restorable.hpp"
#include "meshckpt/pipeline/tensor_io_async.hpp"
#include "meshckpt/interchange/tf_bundle_io.hpp"
#include "meshckpt/format/crc32c.hpp"
#include "meshckpt/format/safetensors.hpp"
#include "meshckpt/graph/object_graph.hpp"

namespace meshckpt {

namespace detail {

namespace {

// The largest opaque value exported as a TensorFlow string (it is held in memory).
constexpr std::uint64_t max_opaque_export_bytes = std::uint64_t{1} << 30;

// One stored piece of the bundle: a whole tensor or one slice, its bytes from the source.
struct piece {
  std::string key;  // its bundle key (a slice's under slice_key)
  const format::saved_tensor* t = nullptr;
  const format::saved_slice* s = nullptr;  // null for an empty tensor (no slices)
  std::size_t entry = 0;                   // the entry of its tensor in the index
  std::uint32_t crc = 0;                   // CRC-32C of its bytes, once copied
  int shard = 0;
  std::uint64_t offset = 0;  // in its bundle data file
};

std::vector<std::int64_t> header_of(const format::manifest& m) {
  for (const auto& e : m.extensions)
    if (e.name == tf_header_extension && e.bytes.size() == 8) {
      std::int32_t p, c;
      std::memcpy(&p, e.bytes.data(), 4);
      std::memcpy(&c, e.bytes.data() + 4, 4);
      return {p, c};
    }
  return {1, 0};
}

// The bundle's entries and where each stored piece goes; pieces spread over the data files,
// largest first onto the emptiest, so that the files come out about even.
result<void> plan_export(const format::manifest& m, int num_shards, std::vector<piece>& pieces, format::tf::bundle_index& idx,
                         std::vector<const format::saved_tensor*>& opaque) {
  idx.num_shards = num_shards;
  auto hdr = header_of(m);
  idx.producer = static_cast<int>(hdr[0]);
  idx.min_consumer = static_cast<int>(hdr[1]);
  // Tensors imported from TensorFlow as their storage go back with their TensorFlow dtype.
  std::map<std::string, std::string> tf_dtypes;
  for (const auto& e : m.extensions)
    if (e.name == tf_dtypes_extension) {
      auto d = format::decode_string_map(e.bytes);
      if (!d) return with_context(d.error(), "extension " + e.name);
      tf_dtypes = std::move(*d);
    }
  for (const auto& t : m.tensors) {
    auto tf = format::tf::to_tf_dtype(t.type);
    if (auto it = tf_dtypes.find(t.key); it != tf_dtypes.end()) {
      const int n = std::atoi(it->second.c_str());
      if (format::tf::is_quantized(n) && format::tf::from_tf_dtype(n) == t.type) tf = n;
    }
    if (!tf) {
      // An opaque value (a blob: bytes) is what TensorFlow holds as a DT_STRING scalar.
      if (t.type != dtype::blob || t.global.size() != 1)
        return make_error(errc::unsupported, "tensor \"" + t.key + "\" is " + std::string(dtype_name(t.type)) + " " + to_string(t.global) +
                                                 ", which TensorFlow has no dtype for");
      opaque.push_back(&t);
      continue;
    }
    const bool whole = t.slices.empty() || (t.slices.size() == 1 && t.slices[0].where == box::whole(t.global));
    format::tf::bundle_entry e{t.key, *tf, t.type, t.global, 0, 0, 0, 0, {}};
    if (whole) {
      pieces.push_back({t.key, &t, t.slices.empty() ? nullptr : &t.slices[0], idx.entries.size()});
    } else {
      for (const auto& s : t.slices) {
        format::tf::tf_slice ts{s.where.origin, s.where.extent};
        e.slices.push_back(ts);
        pieces.push_back({format::tf::slice_key(t.key, ts), &t, &s, idx.entries.size()});
      }
    }
    idx.entries.push_back(std::move(e));
  }
  std::vector<std::size_t> order(pieces.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
  auto len = [&](std::size_t i) { return pieces[i].s ? pieces[i].s->length : 0; };
  std::stable_sort(order.begin(), order.end(), [&](auto a, auto b) { return len(a) > len(b); });
  std::vector<std::uint64_t> fill(static_cast<std::size_t>(num_shards), 0);
  for (auto i : order) {
    auto k = static_cast<std::size_t>(std::min_element(fill.begin(), fill.end()) - fill.begin());
    pieces[i].shard = static_cast<int>(k);
    pieces[i].offset = fill[k];
    fill[k] += len(i);
  }
  return success();
}

// The object graph of a meshckpt checkpoint as TensorFlow's: same nodes and edges, a value as
// its VARIABLE_VALUE attribute under its key.
format::tf::trackable_graph tf_graph_of(const graph::object_graph& g) {
  format::tf::trackable_graph out;
  out.nodes.resize(g.nodes.size());
  for (std::size_t i = 0; i < g.nodes.size(); ++i) {
    out.nodes[i].children = g.nodes[i].children;
    if (g.nodes[i].has_value) out.nodes[i].attributes.push_back({"VARIABLE_VALUE", g.nodes[i].key, g.nodes[i].key});
  }
  return out;
}

// After a failed export: the data files of bundle `base` in `dir`, published or not, are
// removed (with `unless_indexed`, only when its index does not exist): data files without an
// index are no bundle, and a failed export leaves nothing. Best effort: an error here leaves
// the export's own error to report.
task<void> remove_data_files(io::backend& b, const std::string& dir, const std::string& base, int num_shards, bool unless_indexed) {
  auto ex = co_await asio::this_coro::executor;
  auto d = co_await io::async_open_dir(b, ex, dir, false, use_awaitable);
  if (!d) co_return success();
  if (unless_indexed) {
    auto h = co_await io::async_open(b, ex, *d, base + ".index", io::open_mode::read, use_awaitable);
    if (h || h.error().code != std::errc::no_such_file_or_directory) {
      if (h) co_await close_quietly(b, *h);
      co_await close_quietly(b, *d);
      co_return success();
    }
  }
  for (int k = 0; k < num_shards; ++k)
    (void)co_await io::async_unlink(b, ex, *d, format::tf::data_file_name(base, k, num_shards), use_awaitable);
  co_await close_quietly(b, *d);
  co_return success();
}

// The object graph TensorFlow's own import kept (its optimizer slots included), while every
// value it names is still here: verbatim when nothing was dropped (fields meshckpt does not
// model survive), else re-encoded without the attributes whose values the import left out (a
// Keras layer's config strings), so that it names no key the bundle lacks. Nullopt otherwise.
result<std::optional<std::string>> imported_tf_graph(const format::manifest& m, const std::string& prefix) {
  std::optional<std::string> tf_graph;
  for (const auto& e : m.extensions)
    if (e.name == tf_object_graph_extension) {
      auto g = format::tf::decode_trackable_graph(e.bytes);
      if (!g) return with_context(g.error(), "export " + prefix + ": extension " + e.name);
      bool complete = true;
      std::size_t dropped = 0;
      for (auto& n : g->nodes) {
        for (const auto& a : n.attributes) complete = complete && (a.name != "VARIABLE_VALUE" || m.find(a.checkpoint_key));
        dropped += std::erase_if(n.attributes, [&](const auto& a) { return !m.find(a.checkpoint_key); });
      }
      if (complete)
        tf_graph =
            dropped ? format::tf::encode_trackable_graph(*g) : std::string(reinterpret_cast<const char*>(e.bytes.data()), e.bytes.size());
    }
  return tf_graph;
}

// A bundle entry held in memory, written at the end of data file 0.
using held_entry = std::pair<format::tf::bundle_entry, std::vector<std::byte>>;

// The opaque values as DT_STRING scalars (lossless), read back and verified first.
task<void> read_opaque(io::backend& b, const std::string& prefix, const format::manifest& m,
                       const std::vector<const format::saved_tensor*>& opaque, std::vector<held_entry>& tail) {
  if (opaque.empty()) co_return success();
  auto shared = std::make_shared<const format::manifest>(m);
  auto one = mesh::create({{"x", 1}}).value();
  std::deque<dtensor> held;
  std::vector<named_tensor> views;
  for (const auto* t : opaque) {
    if (t->global[0] > static_cast<std::int64_t>(max_opaque_export_bytes))
      co_return make_error(errc::limit_exceeded, "export " + prefix + ": opaque value \"" + t->key + "\" of " +
                                                     std::to_string(t->global[0]) + " bytes exceeds the cap of " +
                                                     std::to_string(max_opaque_export_bytes) + " for a TensorFlow string");
    BOOST_OUTCOME_CO_TRY(auto l, layout::create({"unsharded"}, one));
    BOOST_OUTCOME_CO_TRY(auto d, dtensor::create(dtype::blob, t->global, l));
    held.push_back(std::move(d));
    views.push_back({t->key, held.back().view()});
  }
  auto reading = read_into(b, prefix, views, {}, shared);
  BOOST_OUTCOME_CO_TRY(co_await std::move(reading));
  for (const auto& v : views) {
    auto bytes = v.tensor.shards().front().data;
    std::vector<std::string> one_value{std::string(reinterpret_cast<const char*>(bytes.data()), bytes.size())};
    std::uint32_t crc = 0;
    auto stored = format::tf::encode_string_tensor(one_value, crc);
    tail.push_back({{v.key, format::tf::tf_string, std::nullopt, {}, 0, 0, stored.size(), crc, {}}, std::move(stored)});
  }
  co_return success();
}

// The object graph as TensorFlow's `_CHECKPOINTABLE_OBJECT_GRAPH` entry: the imported one, else
// meshckpt's translated. Every value it names must be in the bundle, so that a TensorFlow
// restore of it finds them all. False when the checkpoint has no object graph.
result<bool> add_object_graph(const format::manifest& m, const std::string& prefix, const std::optional<std::string>& tf_graph,
                              const format::tf::bundle_index& idx, std::vector<held_entry>& tail) {
  bool added = false;
  for (const auto& e : m.extensions)
    if (e.name == graph::object_graph_extension) {
      auto g = graph::decode_object_graph(e.bytes);
      if (!g) return with_context(g.error(), "export " + prefix);
      std::uint32_t crc = 0;
      std::vector<std::string> one{tf_graph ? *tf_graph : format::tf::encode_trackable_graph(tf_graph_of(*g))};
      auto named = format::tf::decode_trackable_graph(std::as_bytes(std::span(one[0].data(), one[0].size())));
      if (!named) return with_context(named.error(), "export " + prefix + ": the object graph");
      std::set<std::string_view> held;
      for (const auto& x : idx.entries) held.insert(x.key);
      for (const auto& x : tail) held.insert(x.first.key);
      for (const auto& n : named->nodes)
        for (const auto& a : n.attributes)
          if (!held.count(a.checkpoint_key))
            return make_error(errc::corrupt_manifest, "export " + prefix + ": the object graph names value \"" + a.checkpoint_key +
                                                          "\", which the bundle would not hold");
      auto stored = format::tf::encode_string_tensor(one, crc);
      tail.push_back({{std::string(format::tf::object_graph_key), format::tf::tf_string, std::nullopt, {}, 0, 0, stored.size(), crc, {}},
                      std::move(stored)});
      added = true;
    }
  return added;
}

// The entries held in memory go at the end of data file 0, in their order.
void place_tail(const std::vector<piece>& pieces, std::vector<held_entry>& tail) {
  std::uint64_t end0 = 0;
  for (const auto& p : pieces)
    if (p.shard == 0 && p.s) end0 = std::max(end0, p.offset + p.s->length);
  for (auto& [e, bytes] : tail) {
    e.offset = end0;
    end0 += bytes.size();
  }
}

// Publishes data file `k` of the bundle, front to back: its pieces in the order of their
// offsets, copied and checked from the checkpoint (their CRC-32C kept in the piece), then, in
// file 0, the entries held in memory.
task<void> write_data_file(io::backend& b, const format::manifest& m, data_file_pair& src, std::vector<piece>& pieces,
                           const std::vector<held_entry>& tail, int k, std::string path, tf_export_report& rep) {
  std::vector<piece*> here;
  std::uint64_t size = 0;
  for (auto& p : pieces)
    if (p.shard == k && p.s) {
      here.push_back(&p);
      size = std::max(size, p.offset + p.s->length);
    }
  std::sort(here.begin(), here.end(), [](const piece* x, const piece* y) { return x->offset < y->offset; });
  if (k == 0 && !tail.empty()) size = tail.back().first.offset + tail.back().second.size();
  auto produce = [&](runtime::staged_writer& w) -> task<void> {
    for (auto* p : here) {
      auto copied = copy_slice(b, m, src, *p->t, *p->s, w, p->offset, crc_of::crc32c);
      BOOST_OUTCOME_CO_TRY(auto crc, co_await std::move(copied));
      p->crc = crc;
      rep.bytes += p->s->length;
    }
    if (k == 0) {
      for (const auto& [e, bytes] : tail) {
        auto written = w.write(e.offset, bytes);
        BOOST_OUTCOME_CO_TRY(co_await std::move(written));
      }
    }
    co_return success();
  };
  auto published = publish_streamed(b, path, size, produce);
  co_return co_await std::move(published);
}

// Publishes every data file of bundle `out`, reading the checkpoint's files through one
// data_file_pair. A stale index at `out` goes first: a crash from
// here on leaves no bundle there or the whole new one. On failure the data files are removed.
task<void> write_data_files(io::backend& b, const std::string& prefix, const format::manifest& m, std::vector<piece>& pieces,
                            const std::vector<held_entry>& tail, const std::string& out, int num_shards, tf_export_report& rep) {
  auto ex = co_await asio::this_coro::executor;
  auto sp = co_await open_prefix_dir(b, prefix);
  if (!sp) co_return sp.error();
  data_file_pair src(b, *sp, m);
  auto [out_dir, out_base] = split_prefix(out);
  result<void> r = success();
  if (auto d = co_await io::async_open_dir(b, ex, out_dir, false, use_awaitable); !d) {
    r = with_context(d.error(), "export to " + out);
  } else {
    (void)co_await io::async_unlink(b, ex, *d, out_base + ".index", use_awaitable);
    co_await close_quietly(b, *d);
  }
  for (int k = 0; k < num_shards && r; ++k) {
    const std::string name = format::tf::data_file_name(out_base, k, num_shards);
    auto writing = write_data_file(b, m, src, pieces, tail, k, out_dir + "/" + name, rep);
    r = co_await std::move(writing);
    if (!r) r = with_context(r.error(), "export to " + out + ": " + name);
  }
  co_await src.close_all();
  co_await close_quietly(b, sp->dir);
  if (!r) {
    co_await remove_data_files(b, out_dir, out_base, num_shards, false);
    co_return r.error();
  }
  co_return success();
}

// The index's entries in key order with their places and checksums; slices as entries of
// their own.
void finish_index(std::vector<piece>& pieces, format::tf::bundle_index& idx, std::vector<held_entry>& tail) {
  std::vector<format::tf::bundle_entry> all;
  for (const auto& p : pieces) {
    auto& e = idx.entries[p.entry];
    if (e.slices.empty()) {
      e.shard = p.shard;
      e.offset = p.offset;
      e.size = p.s ? p.s->length : 0;
      e.crc32c = p.crc;
    } else {
      all.push_back({p.key, e.tf_type, e.type, p.s->where.extent, p.shard, p.offset, p.s->length, p.crc, {}});
    }
  }
  for (auto& e : idx.entries) all.push_back(std::move(e));
  for (auto& t : tail) all.push_back(std::move(t.first));
  std::sort(all.begin(), all.end(), [](const auto& x, const auto& y) { return x.key < y.key; });
  idx.entries = std::move(all);
}

task<tf_export_report> export_coro(io::backend& b, std::string prefix, std::string out, tf_export_options opt) {
  auto loading = load_manifest_at(b, prefix);
  BOOST_OUTCOME_CO_TRY(auto m, co_await std::move(loading));
  if (opt.num_shards < 1 || opt.num_shards > 99999)
    co_return make_error(errc::invalid_argument, "a TensorFlow bundle has 1 to 99999 data files, not " + std::to_string(opt.num_shards));
  std::vector<piece> pieces;
  format::tf::bundle_index idx;
  tf_export_report rep;
  std::vector<const format::saved_tensor*> opaque;
  BOOST_OUTCOME_CO_TRY(plan_export(m, opt.num_shards, pieces, idx, opaque));
  BOOST_OUTCOME_CO_TRY(auto tf_graph, imported_tf_graph(m, prefix));
  std::vector<held_entry> tail;  // the opaque values, then the object graph
  auto reading = read_opaque(b, prefix, m, opaque, tail);
  BOOST_OUTCOME_CO_TRY(co_await std::move(reading));
  BOOST_OUTCOME_CO_TRY(rep.object_graph, add_object_graph(m, prefix, tf_graph, idx, tail));
  place_tail(pieces, tail);
  auto writing = write_data_files(b, prefix, m, pieces, tail, out, opt.num_shards, rep);
  BOOST_OUTCOME_CO_TRY(co_await std::move(writing));
  finish_index(pieces, idx, tail);
  BOOST_OUTCOME_CO_TRY(auto index_bytes, format::tf::encode_bundle_index(idx));
  auto write_index = [&](io::handle h) -> task<void> {
    auto e2 = co_await asio::this_coro::executor;
    co_return co_await io::async_write(b, e2, h, 0, index_bytes, use_awaitable);
  };
  auto indexed = publish_file(b, out + ".index", write_index);
  if (auto ir = co_await std::move(indexed); !ir) {
    // A failure after the index's rename (its directory fsync) leaves the whole bundle.
    auto [out_dir, out_base] = split_prefix(out);
    co_await remove_data_files(b, out_dir, out_base, opt.num_shards, true);
    co_return ir.error();
  }
  rep.tensors = m.tensors.size();
  rep.opaque = opaque.size();
  rep.entries = idx.entries.size();
  rep.files = static_cast<std::size_t>(opt.num_shards);
  co_return rep;
}

// Import: the bundle read as a restorable (its object graph and opaque values too), then
// streamed into a checkpoint (import.cpp).
task<write_report> import_coro(io::backend& b, std::string path, std::string to, write_options wopt) {
  auto loading = load_restorable(b, path, true, true);
  BOOST_OUTCOME_CO_TRY(auto found, co_await std::move(loading));
  auto importing = import_restorable(b, std::move(found), std::move(to), std::move(wopt));
  co_return co_await std::move(importing);
}

}  // namespace

void start_import_tf_checkpoint(asio::any_io_executor ex, io::backend& b, std::string path, std::string to, write_options opt,
                                io::completion<write_report> done) {
  spawn<write_report>(ex, import_coro(b, std::move(path), std::move(to), std::move(opt)), std::move(done));
}

void start_export_tf_bundle(asio::any_io_executor ex, io::backend& b, std::string prefix, std::string out, tf_export_options opt,
                            io::completion<tf_export_report> done) {
  spawn<tf_export_report>(ex, export_coro(b, std::move(prefix), std::move(out), std::move(opt)), std::move(done));
}

}  // namespace detail

result<tf_export_report> export_tf_bundle(io::backend& b, std::string_view prefix, std::string_view out, const tf_export_options& opt) {
  return runtime::run_blocking<tf_export_report>("export_tf_bundle", [&](auto ex, auto done) {
    detail::start_export_tf_bundle(ex, b, std::string(prefix), std::string(out), opt, std::move(done));
  });
}

result<tf_checkpoint> read_tf_checkpoint(io::backend& b, std::string_view path) {
  return runtime::run_blocking<tf_checkpoint>("read_tf_checkpoint", [&](auto ex, auto done) {
    auto coro = [](io::backend& be, std::string p) -> runtime::task<tf_checkpoint> {
      auto loading = detail::load_restorable(be, std::move(p), true);
      BOOST_OUTCOME_CO_TRY(auto r, co_await std::move(loading));
      co_return tf_checkpoint{std::move(r.prefix), std::move(r.manifest)};
    };
    detail::spawn<tf_checkpoint>(ex, coro(b, std::string(path)), std::move(done));
  });
}

result<write_report> import_tf_checkpoint(io::backend& b, std::string_view path, std::string_view to, const write_options& opt) {
  return runtime::run_blocking<write_report>("import_tf_checkpoint", [&](auto ex, auto done) {
    detail::start_import_tf_checkpoint(ex, b, std::string(path), std::string(to), opt, std::move(done));
  });
}

}  // namespace meshckpt
