#include "meshckpt/format/torch_file.hpp"

#include <cmath>
#include <cstdio>
#include <map>
#include <set>
#include <unordered_map>

#include "meshckpt/format/describe.hpp"

namespace meshckpt::format::torch {

namespace {

struct type_names {
  dtype type;
  const char* storage;
  const char* name;
};
constexpr type_names types[] = {
    {dtype::float32, "FloatStorage", "float32"},
    {dtype::float64, "DoubleStorage", "float64"},
    {dtype::float16, "HalfStorage", "float16"},
    {dtype::bfloat16, "BFloat16Storage", "bfloat16"},
    {dtype::int64, "LongStorage", "int64"},
    {dtype::int32, "IntStorage", "int32"},
    {dtype::int16, "ShortStorage", "int16"},
    {dtype::int8, "CharStorage", "int8"},
    {dtype::uint8, "ByteStorage", "uint8"},
    {dtype::boolean, "BoolStorage", "bool"},
    {dtype::complex64, "ComplexFloatStorage", "complex64"},
    {dtype::complex128, "ComplexDoubleStorage", "complex128"},
    {dtype::float8_e4m3, "Float8_e4m3fnStorage", "float8_e4m3fn"},
    {dtype::float8_e5m2, "Float8_e5m2Storage", "float8_e5m2"},
    {dtype::uint16, "UInt16Storage", "uint16"},
    {dtype::uint32, "UInt32Storage", "uint32"},
    {dtype::uint64, "UInt64Storage", "uint64"},
};

constexpr const char* rebuild_tensor = "torch._utils._rebuild_tensor_v2";
constexpr const char* rebuild_parameter = "torch._utils._rebuild_parameter";

// A tensor as the pickle describes it.
struct view {
  std::string key;  // the first key it was found under
  std::size_t storage = 0;
  std::int64_t offset = 0;  // elements
  shape dims;
  std::vector<std::int64_t> stride;
  std::uint64_t span = 0;  // elements from `offset` to its last one, plus one (0 when empty)
  std::size_t hole = 0;    // where its leaf goes in the skeleton
};

class reader {
 public:
  reader(const pickle::document& d, std::string_view what) : d_(d), what_(what) {}

  result<state_file> run(const std::string& root) {
    try {
      BOOST_OUTCOME_TRY(walk(d_.root, root, 0));
    } catch (const std::bad_alloc&) {
      return make_error(errc::limit_exceeded, std::string(what_) + ": out of memory reading its state");
    }
    return finish();
  }

 private:
  const pickle::document& d_;
  std::string_view what_;
  std::string skel_;
  std::vector<view> views_;
  std::unordered_map<std::uint32_t, std::size_t> view_of_node_;
  std::vector<std::pair<std::size_t, std::size_t>> holes_;  // skeleton position, view
  std::map<std::string, std::size_t> storage_of_key_;
  std::set<std::string> keys_;
  state_file out_;
  std::uint64_t visits_ = 0;

  error bad(const std::string& where, const std::string& why) const {
    return make_error(errc::corrupt_manifest, std::string(what_) + ": " + (where.empty() ? "<root>" : where) + ": " + why);
  }
  const pickle::node& at(std::uint32_t i) const { return d_.nodes[i]; }
  static std::string child(const std::string& path, const std::string& name) { return path.empty() ? name : path + "." + name; }

  result<std::int64_t> int_of(std::uint32_t i, const std::string& where, const char* field) const {
    if (at(i).k != pickle::node::kind::integer)
      return bad(where, std::string(field) + " is " + pickle::describe(d_, i) + ", not an integer");
    return at(i).i;
  }
  result<std::vector<std::int64_t>> ints_of(std::uint32_t i, const std::string& where, const char* field) const {
    if (at(i).k != pickle::node::kind::tuple) return bad(where, std::string(field) + " is " + pickle::describe(d_, i) + ", not a tuple");
    if (at(i).items.size() > 32) return bad(where, std::string(field) + " has more than 32 dimensions");
    std::vector<std::int64_t> out;
    for (auto x : at(i).items) {
      BOOST_OUTCOME_TRY(auto v, int_of(x, where, field));
      if (v < 0 || v > (std::int64_t{1} << 48)) return bad(where, std::string(field) + " holds " + std::to_string(v));
      out.push_back(v);
    }
    return out;
  }

  result<std::size_t> storage_of(std::uint32_t i, const std::string& where) {
    const auto& p = at(i);
    if (p.k != pickle::node::kind::persistent)
      return bad(where, "the tensor's storage is " + pickle::describe(d_, i) + ", not a storage id");
    if (at(p.items[0]).k != pickle::node::kind::tuple)
      return bad(where, "an unknown persistent id (not ('storage', type, key, location, size))");
    const auto& id = at(p.items[0]).items;
    // The legacy format adds a sixth member, the view of a storage it was in old versions,
    // None since torch 1.0 (storage views are gone from torch).
    if (id.size() == 6 && at(id[5]).k != pickle::node::kind::none)
      return make_error(errc::unsupported, std::string(what_) + ": " + where + ": a view of a storage (torch.save before torch 1.0)");
    if ((id.size() != 5 && id.size() != 6) || at(id[0]).k != pickle::node::kind::string || at(id[0]).text != "storage" ||
        at(id[1]).k != pickle::node::kind::global || at(id[2]).k != pickle::node::kind::string || at(id[3]).k != pickle::node::kind::string)
      return bad(where, "an unknown persistent id (not ('storage', type, key, location, size))");
    const std::string& type_name = at(id[1]).text;
    const auto type = storage_dtype(type_name.substr(type_name.rfind('.') + 1));
    if (!type)
      return make_error(errc::unsupported, std::string(what_) + ": " + where + ": storage type " + type_name + " has no meshckpt dtype");
    BOOST_OUTCOME_TRY(auto numel, int_of(id[4], where, "the storage's size"));
    if (numel < 0 || static_cast<std::uint64_t>(numel) > (std::uint64_t{1} << 60) / dtype_size(*type))
      return bad(where, "a storage of " + std::to_string(numel) + " elements");
    const std::string& key = at(id[2]).text;
    auto [it, fresh] = storage_of_key_.emplace(key, out_.storages.size());
    if (fresh) {
      out_.storages.push_back({key, *type, static_cast<std::uint64_t>(numel), at(id[3]).text});
    } else if (out_.storages[it->second].type != *type || out_.storages[it->second].numel != static_cast<std::uint64_t>(numel)) {
      return bad(where, "storage " + key + " is named with two dtypes or sizes");
    }
    return it->second;
  }

  // `_rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata])`,
  // possibly inside `_rebuild_parameter(tensor, requires_grad, hooks)`.
  result<void> tensor(std::uint32_t i, const std::string& where) {
    std::uint32_t t = i;
    if (at(t).text == rebuild_parameter) {
      if (at(t).items.empty() || at(at(t).items[0]).k != pickle::node::kind::call || at(at(t).items[0]).text != rebuild_tensor)
        return bad(where, "a parameter that does not hold a tensor");
      t = at(t).items[0];
    }
    if (auto it = view_of_node_.find(t); it != view_of_node_.end()) {  // the same tensor again: tied
      holes_.emplace_back(skel_.size(), it->second);
      return success();
    }
    const auto& args = at(t).items;
    if (args.size() < 4 || args.size() > 7) return bad(where, "a tensor rebuilt with " + std::to_string(args.size()) + " arguments");
    view v;
    v.key = where;
    BOOST_OUTCOME_TRY(v.storage, storage_of(args[0], where));
    BOOST_OUTCOME_TRY(v.offset, int_of(args[1], where, "the storage offset"));
    BOOST_OUTCOME_TRY(auto dims, ints_of(args[2], where, "the size"));
    BOOST_OUTCOME_TRY(v.stride, ints_of(args[3], where, "the stride"));
    if (dims.size() != v.stride.size()) return bad(where, "a size and a stride of different lengths");
    v.dims = shape(dims.begin(), dims.end());
    const auto& s = out_.storages[v.storage];
    // Every element must lie in the storage: the offset plus each dimension's last step.
    bool empty = false;
    unsigned __int128 last = 0;  // up to 32 terms below 2^96 each (ints_of caps sizes and strides at 2^48)
    for (std::size_t k = 0; k < dims.size(); ++k) {
      empty = empty || dims[k] == 0;
      if (dims[k] > 0) last += static_cast<unsigned __int128>(dims[k] - 1) * static_cast<std::uint64_t>(v.stride[k]);
    }
    if (v.offset < 0 || static_cast<std::uint64_t>(v.offset) > s.numel) return bad(where, "a storage offset outside its storage");
    if (!empty) {
      if (last >= s.numel - static_cast<std::uint64_t>(v.offset))
        return bad(where, "a view past the end of its storage of " + std::to_string(s.numel) + " elements");
      v.span = static_cast<std::uint64_t>(last) + 1;
    }
    if (!keys_.insert(where).second) return bad(where, "two entries have this key once joined with '.'");
    view_of_node_.emplace(t, views_.size());
    holes_.emplace_back(skel_.size(), views_.size());
    views_.push_back(std::move(v));
    ++out_.tensors;
    return success();
  }

  result<void> plain(std::uint32_t i, const std::string& where) {
    const auto& n = at(i);
    switch (n.k) {
      case pickle::node::kind::none: skel_ += "{\"value\": null}"; return success();
      case pickle::node::kind::boolean: skel_ += n.i ? "{\"value\": true}" : "{\"value\": false}"; return success();
      case pickle::node::kind::integer: skel_ += "{\"value\": " + std::to_string(n.i) + "}"; return success();
      case pickle::node::kind::floating: {
        std::string v;
        if (std::isnan(n.f))
          v = "NaN";
        else if (std::isinf(n.f))
          v = n.f < 0 ? "-Infinity" : "Infinity";
        else {
          char buf[32];
          std::snprintf(buf, sizeof buf, "%.17g", n.f);
          v = buf;
          if (v.find_first_of(".e") == std::string::npos) v += ".0";  // stays a float
        }
        skel_ += "{\"value\": " + v + "}";
        return success();
      }
      case pickle::node::kind::string: skel_ += "{\"value\": " + json_string(n.text) + "}"; return success();
      default:
        return bad(where, "holds " + pickle::describe(d_, i) +
                              ", which meshckpt.torch cannot hold (tensors, containers, int, float, bool, str, None)");
    }
  }

  result<void> walk(std::uint32_t i, const std::string& where, int depth) {
    // A pickle can share a container many times over (or make a cycle): the walk is bounded.
    if (depth > 100) return bad(where, "nested more than 100 levels deep");
    if (++visits_ > (std::uint64_t{1} << 22) + 4 * d_.nodes.size()) return bad(where, "shares its containers too many times over");
    const auto& n = at(i);
    using K = pickle::node::kind;
    if (n.k == K::call && (n.text == rebuild_tensor || n.text == rebuild_parameter)) return tensor(i, where);
    if (n.k == K::dict) {
      skel_ += "{\"dict\": [";
      bool first = true;
      for (const auto& [k, v] : n.entries) {
        skel_ += first ? "[" : ", [";
        first = false;
        std::string name;
        if (at(k).k == K::string) {
          name = at(k).text;
          skel_ += "\"s\", " + json_string(name);
        } else if (at(k).k == K::integer) {
          name = std::to_string(at(k).i);
          skel_ += "\"i\", " + name;
        } else {
          return bad(where, "a dict key that is " + pickle::describe(d_, k) + " (str and int keys are read)");
        }
        skel_ += ", ";
        BOOST_OUTCOME_TRY(walk(v, child(where, name), depth + 1));
        skel_ += "]";
      }
      skel_ += "]}";
      return success();
    }
    if (n.k == K::list || n.k == K::tuple) {
      skel_ += n.k == K::list ? "{\"list\": [" : "{\"tuple\": [";
      for (std::size_t k = 0; k < n.items.size(); ++k) {
        if (k) skel_ += ", ";
        BOOST_OUTCOME_TRY(walk(n.items[k], child(where, std::to_string(k)), depth + 1));
      }
      skel_ += "]}";
      return success();
    }
    return plain(i, where);
  }

  static std::string ints(const std::vector<std::int64_t>& v) {
    std::string s = "[";
    for (std::size_t k = 0; k < v.size(); ++k) s += (k ? ", " : "") + std::to_string(v[k]);
    return s + "]";
  }

  result<state_file> finish() {
    // Each storage is one stored entry: its tensor's, when every view of it is the same
    // contiguous view of all of it; else its bytes, which the views' leaves describe.
    std::vector<std::vector<std::size_t>> users(out_.storages.size());
    for (std::size_t v = 0; v < views_.size(); ++v) users[views_[v].storage].push_back(v);
    std::vector<std::string> leaf(views_.size());
    std::size_t raw = 0;
    for (std::size_t s = 0; s < out_.storages.size(); ++s) {
      const auto& st = out_.storages[s];
      const auto& us = users[s];
      const view& first = views_[us.front()];
      // A contiguous view of all of the storage, from its first element.
      auto covers = [&](const view& v) {
        if (v.offset != 0) return false;
        std::int64_t expect = 1;
        std::uint64_t n = 1;
        for (std::size_t k = v.dims.size(); k-- > 0;) {
          if (v.dims[k] != 1 && v.stride[k] != expect) return false;
          expect *= v.dims[k];
          n *= static_cast<std::uint64_t>(v.dims[k]);
        }
        return n == st.numel;
      };
      bool direct = true;
      const view* cover = nullptr;
      for (auto v : us) {
        direct = direct && covers(views_[v]) && views_[v].dims == first.dims;
        if (!cover && covers(views_[v])) cover = &views_[v];
      }
      const std::string_view tname = torch::dtype_name(st.type);
      if (direct) {
        for (auto v : us)
          leaf[v] = "{\"tensor\": " + json_string(first.key) + ", \"dtype\": \"" + std::string(tname) +
                    "\", \"shape\": " + ints(std::vector<std::int64_t>(first.dims.begin(), first.dims.end())) + "}";
        out_.entries.push_back({first.key, st.type, first.dims, s});
        continue;
      }
      // Views of one storage in different ways: its bytes are stored once, under the key of a
      // view that covers it (so the entry reads as that tensor), else as a storage of bytes.
      const std::uint64_t bytes = st.numel * dtype_size(st.type);
      const std::string key = cover ? cover->key : "__meshckpt_storage__/" + std::to_string(raw++);
      for (auto v : us) {
        const auto& x = views_[v];
        leaf[v] = "{\"view\": " + json_string(key) + ", \"storage_bytes\": " + std::to_string(bytes) +
                  ", \"offset\": " + std::to_string(static_cast<std::uint64_t>(x.offset) * dtype_size(st.type)) + ", \"dtype\": \"" +
                  std::string(tname) + "\", \"shape\": " + ints(std::vector<std::int64_t>(x.dims.begin(), x.dims.end())) +
                  ", \"stride\": " + ints(x.stride) + "}";
      }
      if (cover)
        out_.entries.push_back({key, st.type, cover->dims, s});
      else
        out_.entries.push_back({key, dtype::uint8, {static_cast<std::int64_t>(bytes)}, s});
    }
    std::string state;
    std::size_t from = 0;
    for (const auto& [at, v] : holes_) {
      state.append(skel_, from, at - from).append(leaf[v]);
      from = at;
    }
    state.append(skel_, from, std::string::npos);
    out_.skeleton = "{\"format\": 2, \"keys\": \"verbatim\", \"state\": " + state + "}";
    out_.state = std::move(state);
    return std::move(out_);
  }
};

}  // namespace

pickle::policy state_policy() {
  pickle::policy p;
  p.allow_global = [](std::string_view module, std::string_view name) {
    if (module == "collections") return name == "OrderedDict";
    if (module == "torch._utils") return name == "_rebuild_tensor_v2" || name == "_rebuild_parameter";
    if (module != "torch") return false;
    if (name == "Size") return true;
    for (const auto& t : types)
      if (name == t.storage || name == t.name) return true;
    return false;
  };
  return p;
}

result<state_file> read_state(const pickle::document& d, std::string_view what, std::string_view root) {
  return reader(d, what).run(std::string(root));
}

result<std::vector<std::byte>> encode_flat_state(const std::vector<flat_entry>& entries) {
  using namespace std::string_view_literals;  // the opcodes hold NUL bytes
  std::string p = "\x80\x02";
  auto raw = [&](std::string_view s) { p.append(s); };
  auto text = [&](std::string_view s) {  // BINUNICODE
    p += 'X';
    for (int i = 0; i < 4; ++i) p += static_cast<char>((s.size() >> (8 * i)) & 0xff);
    p.append(s);
  };
  auto integer = [&](std::uint64_t v) {
    if (v < 256) {
      p += 'K';
      p += static_cast<char>(v);
    } else if (v < (std::uint64_t{1} << 31)) {
      p += 'J';
      for (int i = 0; i < 4; ++i) p += static_cast<char>((v >> (8 * i)) & 0xff);
    } else {  // LONG1 of 8 bytes: below 2^63, its top bit is clear
      p += "\x8a\x08";
      for (int i = 0; i < 8; ++i) p += static_cast<char>((v >> (8 * i)) & 0xff);
    }
  };
  auto ints = [&](const std::vector<std::int64_t>& v) {
    p += '(';
    for (auto x : v) integer(static_cast<std::uint64_t>(x));
    p += 't';
  };
  raw("ccollections\nOrderedDict\nq\x00)R("sv);  // OrderedDict(), memoized as 0
  for (const auto& e : entries) {
    const auto type = storage_type(e.type);
    if (type.empty())
      return make_error(errc::unsupported, "tensor \"" + e.key + "\" is an opaque blob, which a torch.save file cannot hold");
    if (!is_utf8(e.key))
      return make_error(errc::invalid_argument, "tensor \"" + display_bytes(e.key) + "\" has a name that is not valid UTF-8");
    text(e.key);
    raw("ctorch._utils\n_rebuild_tensor_v2\n((");
    text("storage");
    raw("ctorch\n");
    raw(type);
    raw("\n");
    text(e.storage);
    text("cpu");
    std::uint64_t numel = 1;
    std::vector<std::int64_t> stride(e.dims.size());
    for (std::size_t k = e.dims.size(); k-- > 0;) {
      stride[k] = static_cast<std::int64_t>(numel);
      numel *= static_cast<std::uint64_t>(e.dims[k]);
    }
    integer(numel);
    raw("tQ");  // the persistent id
    integer(0);
    ints(std::vector<std::int64_t>(e.dims.begin(), e.dims.end()));
    ints(stride);
    raw("\x89h\x00)Rt"sv);  // requires_grad False, backward hooks OrderedDict()
    raw("R");
  }
  raw("u.");
  const auto* b = reinterpret_cast<const std::byte*>(p.data());
  return std::vector<std::byte>(b, b + p.size());
}

std::optional<dtype> storage_dtype(std::string_view name) {
  for (const auto& t : types)
    if (name == t.storage) return t.type;
  return std::nullopt;
}

std::string_view storage_type(dtype t) {
  for (const auto& x : types)
    if (x.type == t) return x.storage;
  return {};
}

std::string_view dtype_name(dtype t) {
  for (const auto& x : types)
    if (x.type == t) return x.name;
  return {};
}

std::optional<dtype> dtype_named(std::string_view name) {
  for (const auto& x : types)
    if (name == x.name) return x.type;
  return std::nullopt;
}

}  // namespace meshckpt::format::torch
