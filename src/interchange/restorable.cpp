#include "restorable.hpp"

#include <algorithm>
#include <deque>

#include <limits>
#include <set>

#include "meshckpt/interchange/tf_bundle_io.hpp"
#include "meshckpt/interchange/torch_io.hpp"
#include "meshckpt/format/crc32c.hpp"

namespace meshckpt::detail {

namespace {

// The largest object graph read (TensorFlow's own graphs are kilobytes to a few megabytes).
constexpr std::uint64_t max_tf_graph_bytes = std::uint64_t{256} << 20;

// The bundle's tensors that meshckpt can hold, as a manifest: one slice per tensor stored
// whole, one per partition of a partitioned variable; DT_STRING and dtypes meshckpt lacks are
// left out (the object graph is read apart).
format::manifest manifest_of(const format::tf::bundle_index& idx, const std::string& base) {
  format::manifest m;
  m.checksum = format::checksum_kind::crc32c_whole;
  m.chunk_bytes = std::uint64_t{1} << 62;  // above every slice: each is read and checked whole
  m.writer = "TensorFlow tensor bundle (producer " + std::to_string(idx.producer) + ")";
  m.meshes.push_back({{{"tf", 1}}, {0}});
  for (int k = 0; k < idx.num_shards; ++k) m.files.push_back({format::tf::data_file_name(base, k, idx.num_shards), 0});
  std::set<std::string> slice_keys;
  for (const auto& e : idx.entries)
    for (const auto& s : e.slices) slice_keys.insert(format::tf::slice_key(e.key, s));
  for (const auto& e : idx.entries) {
    if (!e.type || slice_keys.count(e.key)) continue;
    format::saved_tensor t;
    t.key = e.key;
    t.type = *e.type;
    t.global = e.global;
    t.axes.assign(e.global.size(), -1);
    auto slice_of = [](const format::tf::bundle_entry& x, box where) {
      format::saved_slice s;
      s.where = std::move(where);
      s.file = static_cast<std::uint32_t>(x.shard);
      s.offset = x.offset;
      s.length = x.size;
      s.checksums = {x.crc32c};
      return s;
    };
    if (e.slices.empty()) {
      t.slices.push_back(slice_of(e, box::whole(e.global)));
    } else {
      for (const auto& s : e.slices) t.slices.push_back(slice_of(*idx.find(format::tf::slice_key(e.key, s)), s.in(e.global)));
    }
    m.tensors.push_back(std::move(t));
  }
  return m;
}

// Sizes the data files the manifest uses, and checks that every slice lies inside its file.
task<void> size_files(io::backend& b, const opened_prefix& p, format::manifest& m) {
  auto ex = co_await asio::this_coro::executor;
  std::vector<bool> used(m.files.size(), false);
  for (const auto& t : m.tensors)
    for (const auto& s : t.slices) used[s.file] = true;
  for (std::size_t k = 0; k < m.files.size(); ++k) {
    if (!used[k]) continue;
    auto& f = m.files[k];
    auto h = co_await io::async_open(b, ex, p.dir, f.name, io::open_mode::read, use_awaitable);
    if (!h) {
      if (h.error().code == std::errc::no_such_file_or_directory)
        co_return make_error(errc::not_found,
                             "data file " + f.name + " of TensorFlow checkpoint " + p.dir_path + "/" + p.base + " is missing");
      co_return with_context(h.error(), "data file " + f.name);
    }
    auto size = co_await io::async_size(b, ex, *h, use_awaitable);
    co_await close_quietly(b, *h);
    if (!size) co_return with_context(size.error(), "data file " + f.name);
    f.size = *size;
  }
  for (const auto& t : m.tensors)
    for (const auto& s : t.slices)
      if (s.offset > m.files[s.file].size || s.length > m.files[s.file].size - s.offset)
        co_return make_error(errc::short_read, "tensor \"" + t.key + "\": bytes [" + std::to_string(s.offset) + ", " +
                                                   std::to_string(s.offset + s.length) + ") lie beyond the end of " + m.files[s.file].name +
                                                   " (" + std::to_string(m.files[s.file].size) + " bytes; truncated?)");
  co_return success();
}

// The largest opaque value (a DT_STRING scalar) read into memory.
constexpr std::uint64_t max_tf_string_bytes = std::uint64_t{1} << 30;

// The value of the DT_STRING scalar `e`, checked against both its checksums; `what` names it
// in errors.
task<std::string> read_tf_string(io::backend& b, const opened_prefix& p, const format::tf::bundle_index& idx,
                                 const format::tf::bundle_entry& e, std::string what, std::uint64_t cap) {
  auto ex = co_await asio::this_coro::executor;
  const std::string name = format::tf::data_file_name(p.base, e.shard, idx.num_shards);
  const std::string where = what + " in " + name + " at offset " + std::to_string(e.offset);
  if (e.tf_type != format::tf::tf_string || !e.global.empty() || !e.slices.empty())
    co_return make_error(errc::corrupt_manifest, where + " is not a string scalar");
  if (e.size > cap)
    co_return make_error(errc::limit_exceeded, where + ": " + std::to_string(e.size) + " bytes, above the cap of " + std::to_string(cap));
  auto h = co_await io::async_open(b, ex, p.dir, name, io::open_mode::read, use_awaitable);
  if (!h) co_return with_context(h.error(), where);
  // Nothing is allocated for bytes the file does not hold (a hostile size below the cap).
  auto file_size = co_await io::async_size(b, ex, *h, use_awaitable);
  if (!file_size || e.offset > *file_size || e.size > *file_size - e.offset) {
    co_await close_quietly(b, *h);
    if (!file_size) co_return with_context(file_size.error(), where);
    co_return make_error(errc::short_read, where + ": its " + std::to_string(e.size) + " bytes lie beyond the end of the file (" +
                                               std::to_string(*file_size) + " bytes; truncated?)");
  }
  std::vector<std::byte> bytes(e.size);
  auto got = co_await io::async_read(b, ex, *h, e.offset, bytes, use_awaitable);
  co_await close_quietly(b, *h);
  if (!got) co_return with_context(got.error(), where);
  if (*got != e.size) co_return make_error(errc::short_read, where + ": the file ends early");
  auto strings = format::tf::decode_string_tensor(bytes, 1, e.crc32c);
  if (!strings) co_return with_context(strings.error(), where);
  co_return std::move((*strings)[0]);
}

// The object graph stored under `_CHECKPOINTABLE_OBJECT_GRAPH`: a string scalar.
task<format::tf::trackable_graph> read_tf_graph(io::backend& b, const opened_prefix& p, const format::tf::bundle_index& idx,
                                                const format::tf::bundle_entry& e) {
  const std::string where = "the object graph (" + std::string(format::tf::object_graph_key) + ")";
  auto reading = read_tf_string(b, p, idx, e, where, max_tf_graph_bytes);
  BOOST_OUTCOME_CO_TRY(auto s, co_await std::move(reading));
  auto g = format::tf::decode_trackable_graph(std::as_bytes(std::span(s.data(), s.size())));
  if (!g) co_return with_context(g.error(), where);
  co_return std::move(*g);
}

// A TensorFlow bundle `prefix` as a restorable.
task<restorable> load_tf(io::backend& b, std::string prefix, bool read_strings) {
  auto p = co_await open_prefix_dir(b, prefix);
  if (!p) co_return p.error();
  on_unwind last_resort([&] { io::close_detached(b, p->dir); });
  auto body = [&]() -> task<restorable> {
    auto loading = load_tf_index(b, *p, prefix);
    BOOST_OUTCOME_CO_TRY(auto idx, co_await std::move(loading));
    restorable r;
    r.prefix = prefix;
    r.tensorflow = true;
    r.manifest = manifest_of(idx, p->base);
    for (const auto& e : idx.entries)
      if (format::tf::is_quantized(e.tf_type) && r.manifest.find(e.key)) r.tf_dtypes[e.key] = e.tf_type;
    r.tf_producer = idx.producer;
    r.tf_min_consumer = idx.min_consumer;
    auto sizing = size_files(b, *p, r.manifest);
    BOOST_OUTCOME_CO_TRY(co_await std::move(sizing));
    std::optional<format::tf::trackable_graph> g;
    if (const auto* e = idx.find(format::tf::object_graph_key)) {
      auto reading = read_tf_graph(b, *p, idx, *e);
      BOOST_OUTCOME_CO_TRY(auto read, co_await std::move(reading));
      g = std::move(read);
    }
    // Opaque values: the DT_STRING scalars the object graph names as values, or every one of a
    // name-based bundle (a Keras model's other strings describe objects, not values).
    if (read_strings) {
      std::set<std::string> named;
      if (g)
        for (const auto& n : g->nodes)
          for (const auto& a : n.attributes)
            if (a.name == "VARIABLE_VALUE") named.insert(a.checkpoint_key);
      for (const auto& se : idx.entries) {
        if (se.tf_type != format::tf::tf_string || !se.global.empty() || !se.slices.empty() || se.key == format::tf::object_graph_key ||
            (g && !named.count(se.key)))
          continue;
        auto value = read_tf_string(b, *p, idx, se, "opaque value \"" + se.key + "\"", max_tf_string_bytes);
        BOOST_OUTCOME_CO_TRY(auto v, co_await std::move(value));
        r.strings.emplace(se.key, std::move(v));
      }
    }
    if (g) {
      r.graph = from_tf_graph(*g, r.manifest, r.strings);
      r.tf_graph = std::move(g);
    }
    co_return r;
  };
  std::optional<result<restorable>> out;
  try {
    out = co_await body();
  } catch (const std::bad_alloc&) {
    out = out_of_memory("reading TensorFlow checkpoint " + prefix);
  }
  co_await close_quietly(b, p->dir);
  last_resort.disarm();
  co_return std::move(*out);
}

}  // namespace

// Whether `prefix_dir/name` exists: false when it or its directory does not, an error for
// any other failure (an IO error or an allocation failure is not an absent checkpoint).
task<bool> has_file(io::backend& b, std::string prefix_dir, std::string name) {
  auto ex = co_await asio::this_coro::executor;
  auto absent = [](const error& e) {
    return e.code == std::errc::no_such_file_or_directory || e.code == std::errc::not_a_directory || e.code == errc::not_found;
  };
  auto d = co_await io::async_open_dir(b, ex, prefix_dir, false, use_awaitable);
  if (!d) {
    if (absent(d.error())) co_return false;
    co_return d.error();
  }
  on_unwind last_resort([&] { io::close_detached(b, *d); });
  std::optional<result<io::handle>> h;
  try {
    h = co_await io::async_open(b, ex, *d, std::move(name), io::open_mode::read, use_awaitable);
  } catch (const std::bad_alloc&) {
    h = out_of_memory("looking for " + prefix_dir);
  }
  if (*h) co_await close_quietly(b, **h);
  co_await close_quietly(b, *d);
  last_resort.disarm();
  if (!*h && !absent(h->error())) co_return h->error();
  co_return static_cast<bool>(*h);
}

graph::object_graph from_tf_graph(const format::tf::trackable_graph& g, const format::manifest& m,
                                  const std::map<std::string, std::string>& strings) {
  graph::object_graph out;
  out.nodes.resize(g.nodes.size());
  for (std::size_t i = 0; i < g.nodes.size(); ++i) {
    out.nodes[i].children = g.nodes[i].children;
    for (const auto& a : g.nodes[i].attributes)
      if (a.name == "VARIABLE_VALUE" && (m.find(a.checkpoint_key) || strings.count(a.checkpoint_key))) {
        out.nodes[i].has_value = true;
        out.nodes[i].key = a.checkpoint_key;
      }
  }
  // Optimizer slots: TensorFlow lists them on the optimizer beside its children (slot "m" of
  // variable V is node S). meshckpt has no slots, only children, so slot "m" of the variable
  // at path "model/dense/kernel" becomes the child "model/dense/kernel" (one name) of the
  // optimizer's child "m" (added when the optimizer has no child of that name): an optimizer
  // that tracks its slots that way restores them by structure. The paths are the first found
  // from the root, breadth first, as TensorFlow's own slot restoration finds variables.
  std::vector<std::optional<std::string>> path(g.nodes.size());
  if (!g.nodes.empty()) {
    path[0] = "";
    std::deque<std::uint32_t> frontier{0};
    while (!frontier.empty()) {
      const auto n = frontier.front();
      frontier.pop_front();
      for (const auto& [name, child] : g.nodes[n].children)
        if (child < path.size() && !path[child]) {
          path[child] = path[n]->empty() ? name : *path[n] + "/" + name;
          frontier.push_back(child);
        }
    }
  }
  for (std::size_t o = 0; o < g.nodes.size(); ++o)
    for (const auto& sv : g.nodes[o].slot_variables) {
      if (sv.original >= path.size() || !path[sv.original] || path[sv.original]->empty()) continue;
      auto& kids = out.nodes[o].children;
      auto it = std::find_if(kids.begin(), kids.end(), [&](const auto& c) { return c.first == sv.slot_name; });
      std::uint32_t holder = 0;
      if (it != kids.end()) {
        holder = it->second;
      } else {
        holder = static_cast<std::uint32_t>(out.nodes.size());
        out.nodes[o].children.emplace_back(sv.slot_name, holder);
        out.nodes.emplace_back();  // invalidates `kids`: not used after this
      }
      out.nodes[holder].children.emplace_back(*path[sv.original], sv.slot);
    }
  return out;
}

task<restorable> load_restorable(io::backend& b, std::string path, bool tensorflow_only, bool read_strings) {
  const bool named_index = path.ends_with(".index");
  if (!named_index) {
    result<format::manifest> m = make_error(errc::not_found, "no checkpoint at " + path);
    if (!tensorflow_only) {
      auto own = load_manifest_at(b, path);
      m = co_await std::move(own);
    }
    if (m || m.error().code != errc::not_found) {
      if (!m) co_return m.error();
      restorable r;
      r.prefix = path;
      r.manifest = std::move(*m);
      for (const auto& e : r.manifest.extensions)
        if (e.name == graph::object_graph_extension) {
          auto d = graph::decode_object_graph(e.bytes);
          if (!d) co_return with_context(d.error(), "restore " + path);
          r.graph = std::move(*d);
        }
      co_return r;
    }
    auto [dir, base] = split_prefix(path);
    auto tf_there = has_file(b, dir, base + ".index");
    BOOST_OUTCOME_CO_TRY(const bool is_tf, co_await std::move(tf_there));
    if (!is_tf) {
      auto saved_model = has_file(b, path + "/variables", "variables.index");
      BOOST_OUTCOME_CO_TRY(const bool is_saved_model, co_await std::move(saved_model));
      if (is_saved_model) {
        auto variables = load_tf(b, path + "/variables/variables", read_strings);
        co_return co_await std::move(variables);
      }
      if (!tensorflow_only) {  // a torch.save file at that path
        auto torch = load_torch(b, path);
        auto t = co_await std::move(torch);
        if (t || !no_torch_checkpoint(t.error())) co_return t;
      }
      co_return no_checkpoint_at(path, m.error());
    }
  }
  auto bundle = load_tf(b, strip_index(std::move(path)), read_strings);
  co_return co_await std::move(bundle);
}

}  // namespace meshckpt::detail
