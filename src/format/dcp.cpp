#include "meshckpt/format/dcp.hpp"

#include <map>

#include "meshckpt/format/names.hpp"
#include "meshckpt/format/torch_file.hpp"

namespace meshckpt::format::dcp {

namespace {

constexpr const char* modules[] = {"torch.distributed._shard.checkpoint.metadata", "torch.distributed.checkpoint.metadata"};
constexpr const char* fs_modules[] = {"torch.distributed._shard.checkpoint.filesystem", "torch.distributed.checkpoint.filesystem"};
constexpr const char* records[] = {"Metadata",      "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata",
                                   "MetadataIndex", "TensorProperties"};
constexpr const char* enum_modules[] = {"torch.distributed._shard.sharded_tensor.metadata", "torch.distributed.checkpoint.metadata"};
constexpr const char* enum_members[] = {"TORCH_CONTIGUOUS_FORMAT", "TORCH_CHANNELS_LAST", "TORCH_PRESERVE_FORMAT"};

using K = pickle::node::kind;

class reader {
 public:
  reader(const pickle::document& d, std::string_view what) : d_(d), what_(what) {}

  result<metadata> run() {
    BOOST_OUTCOME_TRY(auto root, record(d_.root, "Metadata", "the metadata"));
    BOOST_OUTCOME_TRY(auto sdm, field(root, "state_dict_metadata", "the metadata"));
    BOOST_OUTCOME_TRY(auto storage, field(root, "storage_data", "the metadata"));
    if (at(sdm).k != K::dict || at(storage).k != K::dict) return bad("the metadata", "state_dict_metadata or storage_data is not a dict");
    std::map<std::pair<std::string, std::vector<std::int64_t>>, location> where;
    for (const auto& [k, v] : at(storage).entries) {
      BOOST_OUTCOME_TRY(auto idx, record(k, "MetadataIndex", "a storage entry"));
      BOOST_OUTCOME_TRY(auto info, record(v, "_StorageInfo", "a storage entry"));
      BOOST_OUTCOME_TRY(auto fqn, text(idx, "fqn", "a storage entry"));
      std::vector<std::int64_t> offsets;  // none (or absent) for a bytes item
      if (auto off = field(idx, "offset", fqn); off && at(*off).k != K::none) {
        BOOST_OUTCOME_TRY(offsets, ints(*off, fqn, "its chunk's offset"));
      }
      location loc;
      BOOST_OUTCOME_TRY(loc.file, text(info, "relative_path", fqn));
      if (!is_plain_name(loc.file)) return bad(fqn, "its storage file \"" + loc.file + "\" is not a plain file name");
      BOOST_OUTCOME_TRY(auto o, integer(info, "offset", fqn));
      BOOST_OUTCOME_TRY(auto n, integer(info, "length", fqn));
      loc.offset = static_cast<std::uint64_t>(o);
      loc.length = static_cast<std::uint64_t>(n);
      if (!where.emplace(std::pair(fqn, offsets), loc).second) return bad(fqn, "two storage entries for one chunk");
    }
    metadata out;
    for (const auto& [k, v] : at(sdm).entries) {
      if (at(k).k != K::string) return bad("the metadata", "a key that is " + pickle::describe(d_, k));
      item it;
      it.key = at(k).text;
      if (is(v, "BytesStorageMetadata")) {
        auto loc = where.find(std::pair(it.key, std::vector<std::int64_t>{}));
        if (loc == where.end()) return bad(it.key, "no storage entry holds this item");
        it.bytes = loc->second;
        out.items.push_back(std::move(it));
        continue;
      }
      BOOST_OUTCOME_TRY(auto tm, record(v, "TensorStorageMetadata", it.key));
      it.tensor = true;
      BOOST_OUTCOME_TRY(auto props, field(tm, "properties", it.key));
      BOOST_OUTCOME_TRY(it.type, dtype_of(props, it.key));
      BOOST_OUTCOME_TRY(auto size_node, field(tm, "size", it.key));
      BOOST_OUTCOME_TRY(auto size, ints(size_node, it.key, "its size"));
      it.size = shape(size.begin(), size.end());
      BOOST_OUTCOME_TRY(auto chunks, field(tm, "chunks", it.key));
      if (at(chunks).k != K::list) return bad(it.key, "its chunks are not a list");
      if (at(chunks).items.size() > (std::size_t{1} << 20))
        return make_error(errc::limit_exceeded, std::string(what_) + ": " + it.key + ": more than 2^20 chunks");
      for (auto c : at(chunks).items) {
        BOOST_OUTCOME_TRY(auto cm, record(c, "ChunkStorageMetadata", it.key));
        BOOST_OUTCOME_TRY(auto off_node, field(cm, "offsets", it.key));
        BOOST_OUTCOME_TRY(auto len_node, field(cm, "sizes", it.key));
        BOOST_OUTCOME_TRY(auto offsets, ints(off_node, it.key, "a chunk's offsets"));
        BOOST_OUTCOME_TRY(auto sizes, ints(len_node, it.key, "a chunk's sizes"));
        auto loc = where.find(std::pair(it.key, offsets));
        if (loc == where.end())
          return bad(it.key, "no storage entry holds its chunk at " + to_string(shape(offsets.begin(), offsets.end())));
        it.chunks.push_back({box{shape(offsets.begin(), offsets.end()), shape(sizes.begin(), sizes.end())}, loc->second});
      }
      BOOST_OUTCOME_TRY(tiles(it));
      out.items.push_back(std::move(it));
    }
    return out;
  }

 private:
  const pickle::document& d_;
  std::string_view what_;

  const pickle::node& at(std::uint32_t i) const { return d_.nodes[i]; }
  error bad(const std::string& where, const std::string& why) const {
    return make_error(errc::corrupt_manifest, std::string(what_) + ": " + where + ": " + why);
  }
  bool is(std::uint32_t i, std::string_view cls) const {
    const auto& n = at(i);
    if (n.k != K::call) return false;
    const auto dot = n.text.rfind('.');
    return dot != std::string::npos && std::string_view(n.text).substr(dot + 1) == cls;
  }
  result<std::uint32_t> record(std::uint32_t i, std::string_view cls, const std::string& where) const {
    if (!is(i, cls)) return bad(where, "expected a " + std::string(cls) + " record, found " + pickle::describe(d_, i));
    return i;
  }
  // A field of a record whose state is a dict (its attributes).
  result<std::uint32_t> field(std::uint32_t rec, std::string_view name, const std::string& where) const {
    const auto s = at(rec).state;
    if (s >= d_.nodes.size() || at(s).k != K::dict) return bad(where, "a " + at(rec).text + " record without attributes");
    for (const auto& [k, v] : at(s).entries)
      if (at(k).k == K::string && at(k).text == name) return v;
    return bad(where, "a " + at(rec).text + " record without " + std::string(name));
  }
  result<std::string> text(std::uint32_t rec, std::string_view name, const std::string& where) const {
    BOOST_OUTCOME_TRY(auto v, field(rec, name, where));
    if (at(v).k != K::string) return bad(where, std::string(name) + " is " + pickle::describe(d_, v) + ", not a string");
    return at(v).text;
  }
  result<std::int64_t> integer(std::uint32_t rec, std::string_view name, const std::string& where) const {
    BOOST_OUTCOME_TRY(auto v, field(rec, name, where));
    if (at(v).k != K::integer || at(v).i < 0) return bad(where, std::string(name) + " is " + pickle::describe(d_, v) + ", not a size");
    return at(v).i;
  }
  result<std::vector<std::int64_t>> ints(std::uint32_t i, const std::string& where, const char* what) const {
    if (at(i).k != K::tuple) return bad(where, std::string(what) + " is " + pickle::describe(d_, i) + ", not a tuple");
    if (at(i).items.size() > 32) return bad(where, std::string(what) + " has more than 32 dimensions");
    std::vector<std::int64_t> out;
    for (auto x : at(i).items) {
      if (at(x).k != K::integer || at(x).i < 0 || at(x).i > (std::int64_t{1} << 48))
        return bad(where, std::string(what) + " holds " + pickle::describe(d_, x));
      out.push_back(at(x).i);
    }
    return out;
  }
  // TensorProperties: a tuple (dtype, layout, requires_grad, memory_format, pin_memory) as
  // torch 1.13's __getstate__ gives it, or a dict of those fields.
  result<dtype> dtype_of(std::uint32_t props, const std::string& where) const {
    BOOST_OUTCOME_TRY(record(props, "TensorProperties", where));
    const auto s = at(props).state;
    std::uint32_t g = ~std::uint32_t{0};
    if (s < d_.nodes.size() && at(s).k == K::tuple && !at(s).items.empty())
      g = at(s).items[0];
    else if (s < d_.nodes.size() && at(s).k == K::dict) {
      BOOST_OUTCOME_TRY(g, field(props, "dtype", where));
    }
    if (g >= d_.nodes.size() || at(g).k != K::global || !at(g).text.starts_with("torch.")) return bad(where, "a tensor without a dtype");
    auto t = torch::dtype_named(std::string_view(at(g).text).substr(6));
    if (!t) return make_error(errc::unsupported, std::string(what_) + ": " + where + ": " + at(g).text + " has no meshckpt dtype");
    return *t;
  }
  // The chunks lie in the tensor and tile it: their volumes add up to its own, and none overlap.
  result<void> tiles(const item& it) const {
    const auto total = box::whole(it.size).volume();
    if (!total) return bad(it.key, "a size too large");
    std::int64_t sum = 0;
    for (const auto& c : it.chunks) {
      if (c.where.rank() != it.size.size()) return bad(it.key, "a chunk of another rank");
      for (std::size_t k = 0; k < it.size.size(); ++k)
        if (c.where.origin[k] + c.where.extent[k] > it.size[k])
          return bad(it.key, "a chunk " + to_string(c.where) + " outside the tensor " + to_string(it.size));
      sum += c.where.volume().value_or(0);
    }
    if (sum != *total)
      return bad(it.key, "chunks of " + std::to_string(sum) + " elements in all, for a tensor of " + std::to_string(*total));
    if (it.chunks.size() <= 4096)
      for (std::size_t a = 0; a < it.chunks.size(); ++a)
        for (std::size_t b = a + 1; b < it.chunks.size(); ++b)
          if (intersect(it.chunks[a].where, it.chunks[b].where).volume().value_or(0) > 0)
            return bad(it.key, "chunks " + to_string(it.chunks[a].where) + " and " + to_string(it.chunks[b].where) + " overlap");
    return success();
  }
};

}  // namespace

pickle::policy metadata_policy() {
  pickle::policy p;
  p.allow_global = [](std::string_view module, std::string_view name) {
    for (const char* m : modules)
      if (module == m)
        for (const char* r : records)
          if (name == r) return true;
    for (const char* m : fs_modules)
      if (module == m && name == "_StorageInfo") return true;
    for (const char* m : enum_modules)
      if (module == m && (name == "MEM_FORMAT_ENCODING" || name == "TensorProperties")) return true;
    if (module == "torch.serialization") return name == "_get_layout";
    if (module == "torch") return name == "Size" || torch::dtype_named(name).has_value();
    return false;
  };
  for (const char* m : enum_modules)
    for (const char* e : enum_members) p.getattr_members.emplace_back(std::string(m) + ".MEM_FORMAT_ENCODING", e);
  return p;
}

result<metadata> read_metadata(const pickle::document& d, std::string_view what) {
  try {
    return reader(d, what).run();
  } catch (const std::bad_alloc&) {
    return make_error(errc::limit_exceeded, std::string(what) + ": out of memory reading the metadata");
  }
}

}  // namespace meshckpt::format::dcp
