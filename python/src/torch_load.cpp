// meshckpt.torch's loads: the state a skeleton describes rebuilt into the caller's containers,
// reusing their tensors in place, creating what they lack, and every tensor bound for the
// restore; tied weights and views of one storage share again. The skeleton is checked as the
// hostile input it may be: every field's type, dimensions, and views inside their storage.
#include <sys/mman.h>

#include <cstdlib>
#include <cstring>

#include "meshckpt/pipeline/tensor_io.hpp"
#include "meshckpt/interchange/torch_io.hpp"
#include "meshckpt/format/torch_file.hpp"
#include "torch_state.hpp"

namespace meshckpt::python {

namespace {

[[noreturn]] void corrupt_skeleton(const std::string& where, const std::string& what) {
  fail(errc::corrupt_manifest, "meshckpt.torch state skeleton, at " + (where.empty() ? std::string("<root>") : where) + ": " + what);
}

// A new host tensor of `n` bytes at `ptr`, about to be filled by a read: backed by huge pages
// where the kernel offers them on request (transparent_hugepage = madvise, the usual default),
// so that its first touch costs one page fault per 2 MiB rather than per 4 KiB. On a virtual
// machine a fault is slow enough that a load into fresh memory ran at the fault rate (about
// 350 MiB/s here, against 2.8 GiB/s into tensors given): measured 18 times faster to fill. The
// advice is only advice: any failure leaves ordinary pages.
void advise_huge_pages(std::uintptr_t ptr, std::uint64_t n) {
  constexpr std::uintptr_t huge = std::uintptr_t{1} << 21;
  const std::uintptr_t from = (ptr + huge - 1) & ~(huge - 1), to = (ptr + n) & ~(huge - 1);
  if (to > from) ::madvise(reinterpret_cast<void*>(from), to - from, MADV_HUGEPAGE);
}

py::object new_host_tensor(py::handle module, const shape& dims, py::handle dtype, std::int64_t esize) {
  py::object t = module.attr("empty")(py::cast(dims), py::arg("dtype") = dtype);
  std::uint64_t n = static_cast<std::uint64_t>(esize);
  for (auto d : dims) n *= static_cast<std::uint64_t>(d);
  if (n >= (std::uint64_t{4} << 20)) advise_huge_pages(t.attr("data_ptr")().cast<std::uintptr_t>(), n);
  return t;
}

}  // namespace

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

namespace {

class json_parser {
 public:
  explicit json_parser(std::string_view s) : s_(s) {}
  jvalue document() {
    jvalue v = value(0);
    ws();
    if (p_ != s_.size()) bad("text after the document");
    return v;
  }

 private:
  [[noreturn]] void bad(const std::string& what) const {
    fail(errc::corrupt_manifest, "meshckpt.torch state skeleton: not JSON at byte " + std::to_string(p_) + ": " + what);
  }
  void ws() {
    while (p_ < s_.size() && (s_[p_] == ' ' || s_[p_] == '\n' || s_[p_] == '\t' || s_[p_] == '\r')) ++p_;
  }
  bool eat(std::string_view t) {
    if (s_.substr(p_, t.size()) != t) return false;
    p_ += t.size();
    return true;
  }
  jvalue value(int depth) {
    if (depth > 200) bad("nested too deeply");
    ws();
    if (p_ >= s_.size()) bad("the text ends");
    jvalue v;
    const char c = s_[p_];
    if (c == '{' || c == '[') {
      ++p_;
      v.kind = c == '{' ? jvalue::object : jvalue::array;
      ws();
      if (eat(c == '{' ? "}" : "]")) return v;
      for (;;) {
        if (c == '{') {
          ws();
          if (p_ >= s_.size() || s_[p_] != '"') bad("an object key that is not a string");
          std::string k = str();
          ws();
          if (!eat(":")) bad("no ':' after an object key");
          v.members.emplace_back(std::move(k), value(depth + 1));
        } else {
          v.items.push_back(value(depth + 1));
        }
        ws();
        if (eat(",")) continue;
        if (eat(c == '{' ? "}" : "]")) return v;
        bad("no ',' or end of a container");
      }
    }
    if (c == '"') {
      v.kind = jvalue::string;
      v.text = str();
    } else if (eat("true") || eat("false")) {
      v.kind = jvalue::boolean;
      v.b = c == 't';
    } else if (eat("null")) {
    } else if (eat("NaN") || eat("Infinity") || eat("-Infinity")) {
      v.kind = jvalue::number;
      v.text = c == 'N' ? "nan" : c == '-' ? "-inf" : "inf";
    } else {
      const std::size_t at = p_;
      while (p_ < s_.size() && std::string_view("+-0123456789.eE").find(s_[p_]) != std::string_view::npos) ++p_;
      if (p_ == at) bad("an unexpected character");
      v.kind = jvalue::number;
      v.text = std::string(s_.substr(at, p_ - at));
    }
    return v;
  }
  unsigned hex4() {
    if (p_ + 4 > s_.size()) bad("a short \\u escape");
    unsigned u = 0;
    for (int i = 0; i < 4; ++i) {
      const char h = s_[p_++];
      const int d = h >= '0' && h <= '9' ? h - '0' : h >= 'a' && h <= 'f' ? h - 'a' + 10 : h >= 'A' && h <= 'F' ? h - 'A' + 10 : -1;
      if (d < 0) bad("a bad \\u escape");
      u = u * 16 + static_cast<unsigned>(d);
    }
    return u;
  }
  void utf8(std::string& out, unsigned cp) {
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      out += static_cast<char>(0xc0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3f));
    } else if (cp < 0x10000) {
      out += static_cast<char>(0xe0 | (cp >> 12));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
      out += static_cast<char>(0x80 | (cp & 0x3f));
    } else {
      out += static_cast<char>(0xf0 | (cp >> 18));
      out += static_cast<char>(0x80 | ((cp >> 12) & 0x3f));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
      out += static_cast<char>(0x80 | (cp & 0x3f));
    }
  }
  std::string str() {
    ++p_;  // the opening quote
    std::string out;
    for (;;) {
      if (p_ >= s_.size()) bad("an unterminated string");
      const char c = s_[p_++];
      if (c == '"') return out;
      if (c != '\\') {
        out += c;
        continue;
      }
      if (p_ >= s_.size()) bad("an unterminated escape");
      switch (const char e = s_[p_++]) {
        case '"': case '\\': case '/': out += e; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          unsigned cp = hex4();
          if (cp >= 0xdc80 && cp <= 0xdcff) {  // surrogateescape: the raw byte
            out += static_cast<char>(cp - 0xdc00);
          } else if (cp >= 0xd800 && cp <= 0xdbff) {
            if (!eat("\\u")) bad("a lone high surrogate");
            const unsigned lo = hex4();
            if (lo < 0xdc00 || lo > 0xdfff) bad("a bad surrogate pair");
            utf8(out, 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00));
          } else if (cp >= 0xdc00 && cp <= 0xdfff) {
            bad("a lone low surrogate");
          } else {
            utf8(out, cp);
          }
          break;
        }
        default: bad("an unknown escape");
      }
    }
  }
  std::string_view s_;
  std::size_t p_ = 0;
};

const jvalue& member(const jvalue& o, const char* name, const std::string& where) {
  const jvalue* v = o.get(name);
  if (!v) corrupt_skeleton(where, std::string("no \"") + name + "\"");
  return *v;
}

[[noreturn]] void wrong_type(const char* name, const std::string& where) {
  corrupt_skeleton(where, std::string("\"") + name + "\" has the wrong type");
}

std::string text_of(const jvalue& o, const char* name, const std::string& where) {
  const jvalue& v = member(o, name, where);
  if (v.kind != jvalue::string) wrong_type(name, where);
  return v.text;
}

std::int64_t int_value(const jvalue& v, const char* name, const std::string& where) {
  if (v.kind != jvalue::number || v.text.empty() || v.text.size() > 19 ||
      v.text.find_first_not_of("-0123456789") != std::string::npos || v.text.find('-', 1) != std::string::npos)
    wrong_type(name, where);
  return std::stoll(v.text);
}

std::int64_t int_of(const jvalue& o, const char* name, const std::string& where) { return int_value(member(o, name, where), name, where); }

std::vector<std::int64_t> ints_of(const jvalue& o, const char* name, const std::string& where) {
  const jvalue& v = member(o, name, where);
  if (v.kind != jvalue::array) wrong_type(name, where);
  std::vector<std::int64_t> out;
  out.reserve(v.items.size());
  for (const auto& i : v.items) out.push_back(int_value(i, name, where));
  return out;
}

// A plain value as Python has it.
py::object to_python(const jvalue& v, const std::string& where, int depth) {
  switch (v.kind) {
    case jvalue::null: return py::none();
    case jvalue::boolean: return py::bool_(v.b);
    case jvalue::number: {
      if (v.text.find_first_of(".eEnai") == std::string::npos) {
        auto r = py::reinterpret_steal<py::object>(PyLong_FromString(v.text.c_str(), nullptr, 10));
        if (!r) {
          PyErr_Clear();
          corrupt_skeleton(where, "a bad number " + v.text);
        }
        return r;
      }
      char* end = nullptr;
      const double d = std::strtod(v.text.c_str(), &end);
      if (end != v.text.c_str() + v.text.size()) corrupt_skeleton(where, "a bad number " + v.text);
      return py::float_(d);
    }
    case jvalue::string: {
      auto r = py::reinterpret_steal<py::object>(PyUnicode_DecodeUTF8(v.text.data(), static_cast<Py_ssize_t>(v.text.size()), "surrogateescape"));
      if (!r) throw py::error_already_set();
      return r;
    }
    case jvalue::array: {
      py::list out;
      for (const auto& i : v.items) out.append(to_python(i, where, depth + 1));
      return std::move(out);
    }
    case jvalue::object: {
      py::dict out;
      for (const auto& [k, i] : v.members) out[to_python(jvalue{jvalue::string, false, k, {}, {}}, where, depth)] = to_python(i, where, depth + 1);
      return std::move(out);
    }
  }
  return py::none();
}

std::string describe_tensor(const std::string& dtype_name, const shape& s) { return dtype_name + to_string(s); }

}  // namespace

py::tuple torch_state::bind_load(const std::string& prefix, py::handle target) {
  // The manifest, read once here, gives the skeleton's bytes and the dtype and shape of every
  // tensor it may name: a leaf is checked against it before anything is allocated for it. A
  // torch.save file is read as one (api/torch_io.hpp), its skeleton from its pickle.
  std::shared_ptr<format::manifest> m;
  std::vector<std::byte> doc;
  bool found = false;
  std::string files_at = prefix;
  {
    py::gil_scoped_release nogil;
    auto own = read_manifest(process_backend(), prefix);
    if (!own && own.error().code == errc::not_found) {
      // No meshckpt checkpoint there: a torch.save file or a DCP directory, else the first error.
      auto t = read_torch_checkpoint(process_backend(), prefix);
      if (!t) throw error_exception{no_torch_checkpoint(t.error()) ? own.error() : t.error()};
      m = std::make_shared<format::manifest>(std::move(t->manifest));
      files_at = std::move(t->prefix);  // a DCP directory's files are in it
      doc.resize(t->skeleton.size());
      std::memcpy(doc.data(), t->skeleton.data(), t->skeleton.size());
      found = true;
    } else {
      m = std::make_shared<format::manifest>(unwrap(std::move(own)));
      const auto* t = m->find(meta_key);
      if (t && t->type == dtype::blob && t->global.size() == 1) {
        found = true;
        doc.resize(static_cast<std::size_t>(t->global[0]));
        unwrap(read_tensor_box(process_backend(), prefix, *m, meta_key, box{{0}, t->global}, doc));
      }
    }
  }
  if (!found)
    fail(errc::invalid_argument, prefix + " was not written by meshckpt.torch (it has no " + std::string(meta_key) + " entry)");
  const jvalue top = json_parser(std::string_view(reinterpret_cast<const char*>(doc.data()), doc.size())).document();
  const jvalue* format = top.kind == jvalue::object ? top.get("format") : nullptr;
  const jvalue* state = top.kind == jvalue::object ? top.get("state") : nullptr;
  if (!format || !state || format->kind != jvalue::number || (format->text != "1" && format->text != "2"))
    fail(errc::invalid_argument, "meshckpt.torch format " + (format ? format->text : std::string("(none)")) + " is not supported");
  // Leaves name manifest keys verbatim (a torch file, or its import): read by name, directly.
  const jvalue* keys = top.get("keys");
  verbatim_ = keys && keys->kind == jvalue::string && keys->text == "verbatim";
  post_.clear();
  by_key_.clear();
  manifest_ = &*m;
  struct reset {
    const format::manifest*& p;
    ~reset() { p = nullptr; }
  } unset{manifest_};
  py::object root = rebuild(*state, target, "", 0);
  py::list post;
  for (auto& [dst, src] : post_) post.append(py::make_tuple(dst, src));
  loaded_ = std::move(m);  // read_bound reads with it: the manifest is read once per load
  loaded_at_ = std::move(files_at);
  return py::make_tuple(root, post, verbatim_);
}

void torch_state::read_bound(const std::string& prefix) {
  if (loaded_ && loaded_at_ != prefix && loaded_at_ != prefix + "/.metadata")
    fail(errc::invalid_argument, "read_bound: " + prefix + " is not what bind_load read (" + loaded_at_ + ")");
  if (!loaded_) fail(errc::invalid_argument, "read_bound: nothing bound (bind_load first)");
  std::vector<named_tensor> targets;
  targets.reserve(bound_.size());
  for (const auto& e : bound_) {
    // A strided tensor given by the caller is read into its contiguous copy, then scattered
    // back (refused first when it cannot be: an expanded view, a strided GPU tensor).
    if (e.copy) unwrap(e.var->value_for_restore(e.type, e.dims, mesh_));
    targets.push_back({verbatim_ ? e.key : graph::escape_name(e.key), e.var->view()});
  }
  {
    py::gil_scoped_release nogil;
    unwrap(read_tensors(process_backend(), loaded_at_, *loaded_, targets));
    for (auto& e : bound_)
      if (e.copy) e.var->value_restored();
  }
  loaded_.reset();
}

const format::saved_tensor& torch_state::saved(const std::string& key) const {
  const auto* t = manifest_ ? manifest_->find(verbatim_ ? key : graph::escape_name(key)) : nullptr;
  if (!t) corrupt_skeleton(key, "the checkpoint holds no tensor of that name");
  return *t;
}

void torch_state::check_saved(const std::string& key, dtype type, const shape& dims) const {
  const auto* t = &saved(key);
  if (!t) corrupt_skeleton(key, "the checkpoint holds no tensor of that name");
  if (t->type != type || t->global != dims)
    corrupt_skeleton(key, "the skeleton says " + std::string(dtype_name(type)) + to_string(dims) + ", the checkpoint holds " +
                              std::string(dtype_name(t->type)) + to_string(t->global));
}

void torch_state::bind_for_restore(const std::string& key, const py::object& t, dtype type, const shape& dims) {
  entry e;
  e.key = key;
  e.type = type;
  e.dims = dims;
  tensor_facts f = facts_of(t, key);
  e.ptr = f.ptr;
  e.gpu = f.gpu;
  e.source = t;
  if (!f.contiguous) e.stride = f.stride;
  if (f.shard_dim >= 0) {  // a ShardedTensor given: this rank reads its chunk into its local shard
    check_sharding(f, layout_for(dims.size(), f.shard_dim), mesh_, rank_);
    e.shard_dim = f.shard_dim;
    e.source = f.obj;
  }
  if (!restore_refs_) restore_refs_ = std::make_shared<py_refs>();
  bind(e, false, restore_refs_);
  bound_.push_back(std::move(e));
}

py::object torch_state::tensor_leaf(const jvalue& s, py::handle target, const std::string& path) {
  auto& api = torch_api::get();
  const auto key = text_of(s, "tensor", "a tensor");
  const auto name = text_of(s, "dtype", key);
  const auto dims = ints_of(s, "shape", key);
  for (auto d : dims)
    if (d < 0) corrupt_skeleton(key, "a negative dimension");
  py::handle tdtype = api.dtype_named(name);
  if (!tdtype) corrupt_skeleton(key, "torch has no dtype " + name);
  const dtype type = api.dtype_of(tdtype).first;
  if (auto it = by_key_.find(key); it != by_key_.end()) {  // a tied weight: the same tensor
    if (!target || !api.is_tensor(target)) return it->second;
    auto given = facts_of(target, key);
    if (given.dims != dims || given.type != type)
      fail(given.type != type ? errc::dtype_mismatch : errc::shape_mismatch,
           path + " (a second key of " + key + "): saved " + describe_tensor(name, dims) + ", the given tensor is " +
               describe_tensor(given.torch_name, given.dims));
    if (given.ptr != facts_of(it->second, key).ptr) post_.emplace_back(py::reinterpret_borrow<py::object>(target), it->second);
    return py::reinterpret_borrow<py::object>(target);
  }
  check_saved(key, type, dims);
  py::object t;
  if (target && api.is_tensor(target)) {
    auto given = facts_of(target, key);
    if (given.dims != dims || given.type != type)
      fail(given.type != type ? errc::dtype_mismatch : errc::shape_mismatch,
           key + ": saved " + describe_tensor(name, dims) + ", the given tensor is " + describe_tensor(given.torch_name, given.dims));
    t = py::reinterpret_borrow<py::object>(target);
  } else {
    t = new_host_tensor(api.module, dims, tdtype, dtype_size(type));
  }
  bind_for_restore(key, t, type, dims);
  by_key_[key] = t;
  return t;
}

py::object torch_state::view_leaf(const jvalue& s, py::handle target, const std::string& path) {
  auto& api = torch_api::get();
  const auto key = text_of(s, "view", "a view");
  const auto bytes = int_of(s, "storage_bytes", key);
  const auto offset = int_of(s, "offset", key);
  const auto name = text_of(s, "dtype", key);
  const auto dims = ints_of(s, "shape", key);
  const auto stride = ints_of(s, "stride", key);
  py::handle tdtype = api.dtype_named(name);
  if (!tdtype) corrupt_skeleton(key, "torch has no dtype " + name);
  const dtype type = api.dtype_of(tdtype).first;
  const std::int64_t esize = dtype_size(type);
  // The view must lie inside the storage: its last element's end at most `bytes`.
  if (bytes < 0 || offset < 0 || offset % esize != 0 || dims.size() != stride.size()) corrupt_skeleton(key, "a malformed view");
  std::int64_t last = 0;
  bool empty = false;
  for (std::size_t d = 0; d < dims.size(); ++d) {
    if (dims[d] < 0 || stride[d] < 0 || (dims[d] > 0 && stride[d] > (std::int64_t{1} << 48) / std::max<std::int64_t>(dims[d], 1)))
      corrupt_skeleton(key, "a malformed view");
    empty = empty || dims[d] == 0;
    if (dims[d] > 0) last += (dims[d] - 1) * stride[d];
  }
  if (!empty && offset + (last + 1) * esize > bytes) corrupt_skeleton(key, "a view beyond its storage's " + std::to_string(bytes) + " bytes");
  py::object storage;
  if (auto it = by_key_.find(key); it != by_key_.end()) {
    storage = it->second;
    if (py::len(storage) < bytes) corrupt_skeleton(key, "views disagree on the storage's size");
  } else {
    // The storage's bytes, saved as bytes or as the tensor of a view that covers them.
    const auto& st = saved(key);
    const auto n = num_elements(st.global);
    if (!n || *n * dtype_size(st.type) != bytes)
      corrupt_skeleton(key, "a storage of " + std::to_string(bytes) + " bytes, the checkpoint holds " + std::string(dtype_name(st.type)) + to_string(st.global));
    py::handle saved_dtype = api.dtype_named(st.type == dtype::uint8 ? "uint8" : std::string(format::torch::dtype_name(st.type)));
    if (!saved_dtype) corrupt_skeleton(key, "torch has no dtype for " + std::string(dtype_name(st.type)));
    // Padded to 16 bytes so that any dtype can view it.
    storage = new_host_tensor(api.module, shape{(bytes + 15) / 16 * 16}, api.module.attr("uint8"), 1);
    bind_for_restore(key, storage.attr("narrow")(0, 0, bytes).attr("view")(saved_dtype).attr("view")(py::cast(st.global)), st.type, st.global);
    by_key_[key] = storage;
  }
  py::object v = storage.attr("view")(tdtype).attr("as_strided")(py::cast(dims), py::cast(stride), offset / esize);
  if (target && api.is_tensor(target)) {
    auto given = facts_of(target, path);
    if (given.dims != dims || given.type != type)
      fail(given.type != type ? errc::dtype_mismatch : errc::shape_mismatch,
           path + ": saved " + describe_tensor(name, dims) + ", the given tensor is " + describe_tensor(given.torch_name, given.dims));
    post_.emplace_back(py::reinterpret_borrow<py::object>(target), v);
    return py::reinterpret_borrow<py::object>(target);
  }
  return v;
}

py::object torch_state::rebuild(const jvalue& s, py::handle target, const std::string& where, int depth) {
  if (depth > 100) corrupt_skeleton(where, "nested more than 100 levels deep");
  if (s.kind != jvalue::object) corrupt_skeleton(where, "not an object");
  if (s.get("tensor")) return tensor_leaf(s, target, where.empty() ? "<root>" : where);
  if (s.get("view")) return view_leaf(s, target, where.empty() ? "<root>" : where);
  auto path = [&](const std::string& name) { return where.empty() ? name : where + "/" + name; };
  if (const jvalue* items = s.get("dict")) {
    if (items->kind != jvalue::array) wrong_type("dict", where);
    py::dict out = target && PyDict_Check(target.ptr()) ? py::reinterpret_borrow<py::dict>(target) : py::dict();
    for (const auto& kv : items->items) {
      if (kv.kind != jvalue::array || kv.items.size() != 3 || kv.items[0].kind != jvalue::string)
        corrupt_skeleton(where, "a dict item that is not [kind, key, value]");
      const jvalue& key = kv.items[1];
      const bool int_key = kv.items[0].text == "i";
      if (int_key ? key.kind != jvalue::number : key.kind != jvalue::string) corrupt_skeleton(where, "a dict key of the wrong type");
      py::object k = int_key ? py::object(py::int_(int_value(key, "dict", where))) : to_python(key, where, depth);
      PyObject* old = PyDict_GetItemWithError(out.ptr(), k.ptr());
      if (!old && PyErr_Occurred()) throw py::error_already_set();
      out[k] = rebuild(kv.items[2], old, path(int_key ? key.text : key.text), depth + 1);
    }
    return std::move(out);
  }
  for (const char* kind : {"list", "tuple"}) {
    const jvalue* items = s.get(kind);
    if (!items) continue;
    if (items->kind != jvalue::array) wrong_type(kind, where);
    const bool list = kind[0] == 'l';
    py::list out;
    const bool reuse = target && (PyList_Check(target.ptr()) || PyTuple_Check(target.ptr()));
    const std::size_t have = reuse ? py::len(target) : 0;
    for (std::size_t i = 0; i < items->items.size(); ++i) {
      py::object old = i < have ? py::object(target[py::int_(i)]) : py::object();
      out.append(rebuild(items->items[i], old, path(std::to_string(i)), depth + 1));
    }
    if (list && target && PyList_Check(target.ptr())) {
      target.attr("__setitem__")(py::slice(py::none(), py::none(), py::none()), out);
      return py::reinterpret_borrow<py::object>(target);
    }
    return list ? py::object(out) : py::object(py::tuple(out));
  }
  if (const jvalue* v = s.get("value")) return to_python(*v, where, depth);
  corrupt_skeleton(where, "an object of no known kind");
}





}  // namespace meshckpt::python
