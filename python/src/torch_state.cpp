// meshckpt.torch's state dicts in C++: one call walks a whole state dict (nested dicts, lists and
// tuples of torch tensors and plain values), writes its JSON skeleton and binds every tensor's
// memory as a variable of one tree (`TorchState`). Per tensor it reads the tensor's attributes
// and creates no Python object; the variables are kept while the structure and the tensors'
// memory stay the same, so a trainer that saves the same state again pays only for the walk.
// Tensors that share a storage are saved once: identical views (tied weights) as one tensor,
// other views of one storage as the storage's bytes, which every view's skeleton entry points
// into.
#include <cmath>
#include <map>
#include <unordered_map>

#include "meshckpt/api/tensor_io.hpp"
#include "meshckpt/format/describe.hpp"
#include "variable.hpp"

namespace meshckpt::python {

namespace {

constexpr const char* meta_key = "__meshckpt_torch__";
constexpr const char* storage_prefix = "__meshckpt_storage__/";

error bad(errc c, std::string what) { return make_error(c, std::move(what)); }
[[noreturn]] void fail(errc c, std::string what) { throw error_exception{bad(c, std::move(what))}; }

// torch's module and Tensor class, and the meshckpt dtype of each torch dtype object seen
// (torch dtypes are singletons). Leaked: they live as long as the interpreter's torch.
struct torch_api {
  py::handle module, tensor;
  // Attribute names, interned once (a lookup by C string makes a new str each time).
  py::handle dtype_attr = PyUnicode_InternFromString("dtype"), is_cuda = PyUnicode_InternFromString("is_cuda"),
             is_cpu = PyUnicode_InternFromString("is_cpu"), device = PyUnicode_InternFromString("device"),
             shape = PyUnicode_InternFromString("shape"), stride = PyUnicode_InternFromString("stride"),
             data_ptr = PyUnicode_InternFromString("data_ptr"), storage_offset = PyUnicode_InternFromString("storage_offset");
  std::unordered_map<PyObject*, std::pair<dtype, std::string>> dtypes;  // dtype object -> ours, torch's name
  static torch_api& get() {
    static torch_api* api = [] {
      auto* a = new torch_api;
      a->module = py::module_::import("torch").release();
      a->tensor = py::object(a->module.attr("Tensor")).release();
      return a;
    }();
    return *api;
  }
  const std::pair<dtype, std::string>& dtype_of(py::handle d) {
    auto it = dtypes.find(d.ptr());
    if (it != dtypes.end()) return it->second;
    std::string name = py::str(d).cast<std::string>();
    if (name.rfind("torch.", 0) == 0) name.erase(0, 6);
    auto ours = dtype_from_name(name == "float8_e4m3fn" ? "float8_e4m3" : name);
    if (!ours || *ours == dtype::blob) fail(errc::invalid_argument, "torch." + name + " has no meshckpt dtype");
    return dtypes.emplace(d.ptr(), std::pair(*ours, name)).first->second;
  }
  bool is_tensor(py::handle o) const { return PyObject_IsInstance(o.ptr(), tensor.ptr()) == 1; }
  // torch's dtype object of that name ("float32"), or null when torch has none.
  py::handle dtype_named(const std::string& name) {
    auto it = by_name.find(name);
    if (it != by_name.end()) return it->second;
    py::handle d;
    if (py::hasattr(module, name.c_str())) {
      py::object o = module.attr(name.c_str());
      if (py::isinstance(o, module.attr("dtype"))) d = o.release();
    }
    return by_name.emplace(name, d).first->second;
  }
  std::unordered_map<std::string, py::handle> by_name;
};

// What the walk reads of one tensor.
struct tensor_facts {
  py::object obj;
  std::string key;  // the '/'-joined path
  dtype type{};
  std::string torch_name;  // "float32"
  shape dims;
  std::vector<std::int64_t> stride;  // in elements
  std::uintptr_t ptr = 0;
  std::int64_t offset = 0;  // storage offset, in elements
  std::int64_t esize = 0;
  int gpu = -1;  // CUDA device index; -1 on the CPU
  bool contiguous = true;

  std::int64_t numel() const {
    std::int64_t n = 1;
    for (auto d : dims) n *= d;
    return n;
  }
  std::uintptr_t base() const { return ptr - static_cast<std::uintptr_t>(offset * esize); }
  // One past the last byte an element touches (numel() > 0).
  std::uintptr_t end() const {
    std::int64_t last = 0;
    for (std::size_t d = 0; d < dims.size(); ++d) last += (dims[d] - 1) * stride[d];
    return ptr + static_cast<std::uintptr_t>((last + 1) * esize);
  }
  bool same_view(const tensor_facts& o) const {
    return ptr == o.ptr && type == o.type && dims == o.dims && stride == o.stride && gpu == o.gpu;
  }
};

py::object get(py::handle o, py::handle name) {
  auto r = py::reinterpret_steal<py::object>(PyObject_GetAttr(o.ptr(), name.ptr()));
  if (!r) throw py::error_already_set();
  return r;
}
py::object call(py::handle o, py::handle name) {
  auto r = py::reinterpret_steal<py::object>(PyObject_CallMethodNoArgs(o.ptr(), name.ptr()));
  if (!r) throw py::error_already_set();
  return r;
}

tensor_facts facts_of(py::handle t, std::string key) {
  auto& api = torch_api::get();
  tensor_facts f;
  f.obj = py::reinterpret_borrow<py::object>(t);
  f.key = std::move(key);
  const auto& [type, name] = api.dtype_of(get(t, api.dtype_attr));
  f.type = type;
  f.torch_name = name;
  if (get(t, api.is_cuda).ptr() == Py_True) {
    py::object index = get(t, api.device).attr("index");
    f.gpu = index.is_none() ? 0 : index.cast<int>();
  } else if (get(t, api.is_cpu).ptr() != Py_True) {
    fail(errc::invalid_argument, f.key + ": a tensor on " + py::str(get(t, api.device)).cast<std::string>() +
                                     " (meshckpt.torch takes CPU and CUDA tensors)");
  }
  py::object dims = get(t, api.shape), strides = call(t, api.stride);
  const auto rank = PyTuple_GET_SIZE(dims.ptr());
  if (!PyTuple_Check(strides.ptr()) || PyTuple_GET_SIZE(strides.ptr()) != rank) fail(errc::invalid_argument, f.key + ": shape and strides differ");
  for (Py_ssize_t d = 0; d < rank; ++d) {
    f.dims.push_back(PyLong_AsLongLong(PyTuple_GET_ITEM(dims.ptr(), d)));
    f.stride.push_back(PyLong_AsLongLong(PyTuple_GET_ITEM(strides.ptr(), d)));
  }
  f.ptr = static_cast<std::uintptr_t>(PyLong_AsUnsignedLongLong(call(t, api.data_ptr).ptr()));
  f.offset = PyLong_AsLongLong(call(t, api.storage_offset).ptr());
  if (PyErr_Occurred()) throw py::error_already_set();
  f.esize = dtype_size(f.type);
  std::int64_t expect = 1;  // row-major strides, ignoring dimensions of size 1
  for (std::size_t d = f.dims.size(); d-- > 0;) {
    if (f.dims[d] != 1 && f.stride[d] != expect) f.contiguous = false;
    expect *= f.dims[d];
  }
  return f;
}

std::string json_shape(const std::vector<std::int64_t>& v) {
  std::string s = "[";
  for (std::size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  return s + "]";
}

// The skeleton of a state dict and its tensors. The skeleton is JSON ({"dict": [[kind, key,
// value], ...]}, {"list": [...]}, {"tuple": [...]}, {"value": v}, and a tensor leaf); a tensor
// leaf's text is known only once storages are grouped, so the walk leaves a hole for each.
struct walk_result {
  std::string skel;
  std::vector<std::size_t> holes;  // position in `skel` of tensor i's leaf
  std::vector<tensor_facts> tensors;
};

std::string plain_leaf(py::handle o, const std::string& path) {
  if (o.is_none()) return "null";
  if (PyBool_Check(o.ptr())) return o.ptr() == Py_True ? "true" : "false";
  if (PyLong_Check(o.ptr())) return py::str(o).cast<std::string>();
  if (PyFloat_Check(o.ptr())) {
    const double v = PyFloat_AS_DOUBLE(o.ptr());
    if (std::isnan(v)) return "NaN";  // as Python's json writes them
    if (std::isinf(v)) return v < 0 ? "-Infinity" : "Infinity";
    return py::repr(o).cast<std::string>();
  }
  if (PyUnicode_Check(o.ptr())) return format::json_string(o.cast<std::string>());
  if (py::hasattr(o, "item") && py::hasattr(o, "shape") && py::len(o.attr("shape")) == 0) return plain_leaf(o.attr("item")(), path);
  fail(errc::invalid_argument, "state dict entry " + (path.empty() ? "<root>" : path) + " is a " +
                                   py::str(py::type::of(o).attr("__name__")).cast<std::string>() +
                                   ", which meshckpt.torch cannot store (tensors and int, float, bool, str, None)");
}

void walk(py::handle o, const std::string& path, walk_result& w, int depth) {
  if (depth > 100) fail(errc::invalid_argument, "state dict entry " + path + " is nested more than 100 levels deep");
  auto& api = torch_api::get();
  auto child = [&](const std::string& name) { return path.empty() ? name : path + "/" + name; };
  if (api.is_tensor(o)) {
    w.holes.push_back(w.skel.size());
    w.tensors.push_back(facts_of(o, path));
  } else if (PyDict_Check(o.ptr())) {
    w.skel += "{\"dict\": [";
    bool first = true;
    for (auto [k, v] : py::reinterpret_borrow<py::dict>(o)) {
      w.skel += first ? "[" : ", [";
      first = false;
      std::string name;
      if (PyUnicode_Check(k.ptr())) {
        name = k.cast<std::string>();
        w.skel += "\"s\", " + format::json_string(name);
      } else if (PyLong_Check(k.ptr()) && !PyBool_Check(k.ptr())) {
        name = py::str(k).cast<std::string>();
        w.skel += "\"i\", " + name;
      } else {
        fail(errc::invalid_argument, "state dict key " + py::repr(k).cast<std::string>() + " at " + (path.empty() ? "<root>" : path) +
                                         " is not a str or an int");
      }
      w.skel += ", ";
      walk(v, child(name), w, depth + 1);
      w.skel += "]";
    }
    w.skel += "]}";
  } else if (PyList_Check(o.ptr()) || PyTuple_Check(o.ptr())) {
    w.skel += PyList_Check(o.ptr()) ? "{\"list\": [" : "{\"tuple\": [";
    std::size_t i = 0;
    for (auto v : o) {
      if (i) w.skel += ", ";
      walk(v, child(std::to_string(i++)), w, depth + 1);
    }
    w.skel += "]}";
  } else {
    w.skel += "{\"value\": " + plain_leaf(o, path) + "}";
  }
}

}  // namespace

// A state dict as a trackable tree: its tensors' memory bound as variables (children named by
// their '/'-joined paths) and its skeleton as the bytes child "__meshckpt_torch__".
class torch_state : public graph::module {
 public:
  torch_state(mesh m, std::int64_t rank, std::int64_t world) : mesh_(std::move(m)), rank_(rank), world_(world) {
    add_child(meta_key, meta_);
  }
  ~torch_state() override { release(); }

  // Walks `sd`, records its skeleton and binds its tensors for a save. Returns "same" (every
  // tensor already bound where it is), "rebound" (bindings changed; `before_change`, unless
  // None, ran first) or "stale" (tensors bound before are gone from the state: nothing was
  // changed, and a new tree is needed).
  std::string update(py::handle sd, bool shard_rows, py::object before_change) {
    walk_result w;
    walk(sd, "", w, 0);
    std::vector<entry> next;
    std::vector<std::string> leaves(w.tensors.size());
    group(w.tensors, next, leaves);
    std::string skel;
    std::size_t at = 0;
    for (std::size_t i = 0; i < w.holes.size(); ++i) {
      skel.append(w.skel, at, w.holes[i] - at);
      skel += leaves[i];
      at = w.holes[i];
    }
    skel.append(w.skel, at);
    std::string doc = "{\"format\": 2, \"state\": " + skel + "}";
    auto* p = reinterpret_cast<const std::byte*>(doc.data());

    std::string status = "same";
    if (!same_bindings(next)) {
      std::map<std::string, bool> keys;
      for (const auto& e : next) keys[e.key] = true;
      for (const auto& e : bound_)
        if (!keys.count(e.key)) return "stale";
      if (!before_change.is_none()) before_change();
      auto keep = std::make_shared<py_refs>();  // one for the tensors of this binding: one release
      for (auto& e : next) bind(e, shard_rows, keep);
      release();
      bound_ = std::move(next);
      status = "rebound";
    } else {
      for (std::size_t i = 0; i < next.size(); ++i)  // refresh the contiguous copies of strided tensors
        if (bound_[i].copy) bound_[i].copy.attr("copy_")(next[i].source);
    }
    meta_.set(std::vector<std::byte>(p, p + doc.size()));
    return status;
  }

  // Rebuilds the state a skeleton describes (parsed JSON) into `target`, in place, and binds
  // every tensor for a restore. Returns the containers' new root and the (destination, source)
  // pairs to copy after the restore (views of a shared storage onto tensors the caller gave).
  py::tuple bind_load(py::handle skeleton, py::handle target) {
    post_.clear();
    by_key_.clear();
    py::object root = rebuild(skeleton, target, "", 0);
    py::list post;
    for (auto& [dst, src] : post_) post.append(py::make_tuple(dst, src));
    return py::make_tuple(root, post);
  }

  std::size_t bound() const { return bound_.size(); }

  // Drops the bound variables last-first, so that each leaves the tree in O(1) (a variable
  // rebound under the same key has already replaced it there).
  void release() {
    while (!bound_.empty()) bound_.pop_back();
  }

 private:
  // One variable of the tree: a tensor (or a contiguous copy of it) or a shared storage's bytes.
  struct entry {
    std::string key;
    dtype type{};
    shape dims;
    std::uintptr_t ptr = 0;
    int gpu = -1;
    py::object source;  // the tensor (kept alive while bound)
    py::object copy;    // a contiguous copy of a strided `source`, refreshed at each save
    std::vector<std::int64_t> stride;
    std::unique_ptr<py_variable> var;
  };

  // Groups tensors by storage: identical views are one entry (the first key; the others' leaves
  // name it), other views of one storage one entry of its bytes.
  void group(std::vector<tensor_facts>& ts, std::vector<entry>& out, std::vector<std::string>& leaves) {
    std::map<std::pair<int, std::uintptr_t>, std::vector<std::size_t>> by_storage;
    std::map<std::string, bool> seen;
    for (std::size_t i = 0; i < ts.size(); ++i) {
      if (!seen.emplace(ts[i].key, true).second)
        fail(errc::invalid_argument, "two entries of the state dict have the path " + ts[i].key + " (a key containing '/'?)");
      if (ts[i].numel() > 0) by_storage[{ts[i].gpu, ts[i].base()}].push_back(i);
    }
    std::vector<bool> done(ts.size(), false);
    std::size_t storages = 0;
    for (auto& [where, members] : by_storage) {
      if (members.size() < 2) continue;
      const tensor_facts& first = ts[members.front()];
      bool identical = true;
      for (auto i : members) identical = identical && ts[i].same_view(first);
      if (identical) {
        for (auto i : members) {
          leaves[i] = leaf(first);
          done[i] = true;
        }
        out.push_back(tensor_entry(first));
        continue;
      }
      std::uintptr_t lo = first.ptr, hi = first.end();
      for (auto i : members) lo = std::min(lo, ts[i].ptr), hi = std::max(hi, ts[i].end());
      entry e;
      e.key = storage_prefix + std::to_string(storages++);
      e.type = dtype::uint8;
      e.dims = {static_cast<std::int64_t>(hi - lo)};
      e.ptr = lo;
      e.gpu = first.gpu;
      e.source = first.obj;
      for (auto i : members) {
        const auto& t = ts[i];
        leaves[i] = "{\"view\": " + format::json_string(e.key) + ", \"storage_bytes\": " + std::to_string(hi - lo) +
                    ", \"offset\": " + std::to_string(t.ptr - lo) + ", \"dtype\": \"" + t.torch_name + "\", \"shape\": " +
                    json_shape(t.dims) + ", \"stride\": " + json_shape(t.stride) + "}";
        done[i] = true;
      }
      out.push_back(std::move(e));
    }
    for (std::size_t i = 0; i < ts.size(); ++i) {
      if (done[i]) continue;
      leaves[i] = leaf(ts[i]);
      out.push_back(tensor_entry(ts[i]));
    }
  }

  static std::string leaf(const tensor_facts& t) {
    return "{\"tensor\": " + format::json_string(t.key) + ", \"dtype\": \"" + t.torch_name + "\", \"shape\": " + json_shape(t.dims) + "}";
  }

  static entry tensor_entry(const tensor_facts& t) {
    entry e;
    e.key = t.key;
    e.type = t.type;
    e.dims = t.dims;
    e.ptr = t.ptr;
    e.gpu = t.gpu;
    e.source = t.obj;
    if (!t.contiguous) e.stride = t.stride;  // bound through a contiguous copy
    return e;
  }

  bool same_bindings(const std::vector<entry>& next) const {
    if (next.size() != bound_.size()) return false;
    for (std::size_t i = 0; i < next.size(); ++i) {
      const entry &a = bound_[i], &b = next[i];
      if (a.key != b.key || a.type != b.type || a.dims != b.dims || a.ptr != b.ptr || a.gpu != b.gpu || a.stride != b.stride) return false;
      if (!a.stride.empty() && a.source.ptr() != b.source.ptr()) return false;
    }
    return true;
  }

  const layout& layout_for(std::size_t rank, bool rows) {
    auto& cache = rows ? rows_ : replicated_;
    if (cache.size() <= rank) cache.resize(rank + 1);
    if (!cache[rank]) {
      if (rows) {
        std::vector<std::string> specs{"ranks"};
        specs.resize(rank, "unsharded");
        cache[rank] = unwrap(layout::create(std::move(specs), mesh_));
      } else {
        cache[rank] = layout::replicated(rank, mesh_);
      }
    }
    return *cache[rank];
  }

  // Makes `e.var`, a variable over this process's part of the entry's memory. A strided tensor
  // is bound through a contiguous copy, refreshed at each save; a restore into the tree (a
  // StateModule under Checkpoint.read) copies the values back into the tensor after it when
  // this process holds it whole.
  void bind(entry& e, bool shard_rows, const std::shared_ptr<py_refs>& keep) {
    keep->add(e.source);
    std::uintptr_t ptr = e.ptr;
    if (!e.stride.empty()) {
      e.copy = e.source.attr("contiguous")();
      ptr = e.copy.attr("data_ptr")().cast<std::uintptr_t>();
      keep->add(e.copy);
    }
    const bool rows = shard_rows && world_ > 1 && !e.dims.empty();
    const layout& l = layout_for(e.dims.size(), rows);
    const box b = unwrap(l.shard_box(e.dims, rank_));
    const auto esize = static_cast<std::uint64_t>(dtype_size(e.type));
    std::uint64_t row = esize;
    for (std::size_t d = 1; d < e.dims.size(); ++d) row *= static_cast<std::uint64_t>(e.dims[d]);
    const std::uint64_t skip = rows ? static_cast<std::uint64_t>(b.origin[0]) * row : 0;
    const auto bytes = static_cast<std::uint64_t>(b.volume().value_or(0)) * esize;
    local_shard s{rank_, std::span(reinterpret_cast<std::byte*>(ptr + skip), bytes), nullptr, 0};
    if (e.gpu >= 0) {
      s.memory = cuda_accelerator();
      s.gpu = e.gpu;
    }
    auto view = unwrap(dtensor_view::create(e.type, e.dims, l, {s}));
    e.var = std::make_unique<py_variable>(std::move(view), keep, py::none());
    if (e.copy && !rows) e.var->copy_back_to(e.source);
    add_child(e.key, *e.var);
  }

  py::object rebuild(py::handle skel, py::handle target, const std::string& where, int depth);
  py::object tensor_leaf(const py::dict& s, py::handle target);
  py::object view_leaf(const py::dict& s, py::handle target, const std::string& path);
  void bind_for_restore(const std::string& key, const py::object& t, dtype type, const shape& dims);

  mesh mesh_;
  std::int64_t rank_, world_;
  graph::bytes_state meta_;
  std::vector<entry> bound_;
  std::vector<std::optional<layout>> rows_, replicated_;
  // Restore: tensors by key (identical views share one), storages by key, copies to do after.
  std::map<std::string, py::object> by_key_;
  std::vector<std::pair<py::object, py::object>> post_;
  std::shared_ptr<py_refs> restore_refs_;
};

namespace {

[[noreturn]] void corrupt_skeleton(const std::string& where, const std::string& what) {
  fail(errc::corrupt_manifest, "meshckpt.torch state skeleton, at " + (where.empty() ? std::string("<root>") : where) + ": " + what);
}

template <class T>
T field(const py::dict& d, const char* name, const std::string& where) {
  if (!d.contains(name)) corrupt_skeleton(where, std::string("no \"") + name + "\"");
  try {
    return d[name].cast<T>();
  } catch (const py::cast_error&) {
    corrupt_skeleton(where, std::string("\"") + name + "\" has the wrong type");
  }
}

std::string describe_tensor(const std::string& dtype_name, const shape& s) { return dtype_name + to_string(s); }

}  // namespace

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
  if (!restore_refs_) restore_refs_ = std::make_shared<py_refs>();
  bind(e, false, restore_refs_);
  bound_.push_back(std::move(e));
}

py::object torch_state::tensor_leaf(const py::dict& s, py::handle target) {
  auto& api = torch_api::get();
  const auto key = field<std::string>(s, "tensor", "a tensor");
  const auto name = field<std::string>(s, "dtype", key);
  const auto dims = field<shape>(s, "shape", key);
  for (auto d : dims)
    if (d < 0) corrupt_skeleton(key, "a negative dimension");
  py::handle tdtype = api.dtype_named(name);
  if (!tdtype) corrupt_skeleton(key, "torch has no dtype " + name);
  const dtype type = api.dtype_of(tdtype).first;
  if (auto it = by_key_.find(key); it != by_key_.end()) {  // a tied weight: the same tensor
    if (!target || !api.is_tensor(target)) return it->second;
    if (facts_of(target, key).ptr != facts_of(it->second, key).ptr) post_.emplace_back(py::reinterpret_borrow<py::object>(target), it->second);
    return py::reinterpret_borrow<py::object>(target);
  }
  py::object t;
  if (target && api.is_tensor(target)) {
    auto given = facts_of(target, key);
    if (given.dims != dims || given.type != type)
      fail(given.type != type ? errc::dtype_mismatch : errc::shape_mismatch,
           key + ": saved " + describe_tensor(name, dims) + ", the given tensor is " + describe_tensor(given.torch_name, given.dims));
    t = py::reinterpret_borrow<py::object>(target);
  } else {
    t = api.module.attr("empty")(py::cast(dims), py::arg("dtype") = tdtype);
  }
  bind_for_restore(key, t, type, dims);
  by_key_[key] = t;
  return t;
}

py::object torch_state::view_leaf(const py::dict& s, py::handle target, const std::string& path) {
  auto& api = torch_api::get();
  const auto key = field<std::string>(s, "view", "a view");
  const auto bytes = field<std::int64_t>(s, "storage_bytes", key);
  const auto offset = field<std::int64_t>(s, "offset", key);
  const auto name = field<std::string>(s, "dtype", key);
  const auto dims = field<shape>(s, "shape", key);
  const auto stride = field<std::vector<std::int64_t>>(s, "stride", key);
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
    // Padded to 16 bytes so that any dtype can view it.
    storage = api.module.attr("empty")(py::make_tuple((bytes + 15) / 16 * 16), py::arg("dtype") = api.module.attr("uint8"));
    bind_for_restore(key, storage.attr("narrow")(0, 0, bytes), dtype::uint8, {bytes});
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

py::object torch_state::rebuild(py::handle skel, py::handle target, const std::string& where, int depth) {
  if (depth > 100) corrupt_skeleton(where, "nested more than 100 levels deep");
  if (!PyDict_Check(skel.ptr())) corrupt_skeleton(where, "not an object");
  auto s = py::reinterpret_borrow<py::dict>(skel);
  if (s.contains("tensor")) return tensor_leaf(s, target);
  if (s.contains("view")) return view_leaf(s, target, where.empty() ? "<root>" : where);
  if (s.contains("dict")) {
    py::dict out = target && PyDict_Check(target.ptr()) ? py::reinterpret_borrow<py::dict>(target) : py::dict();
    auto items = field<py::list>(s, "dict", where);
    for (auto item : items) {
      if (!PyList_Check(item.ptr()) || py::len(item) != 3) corrupt_skeleton(where, "a dict item that is not [kind, key, value]");
      auto kv = py::reinterpret_borrow<py::list>(item);
      const auto kind = kv[0].cast<std::string>();
      py::object k = kind == "i" ? py::object(py::int_(kv[1])) : py::object(py::str(kv[1]));
      py::object old = out.contains(k) ? py::object(out[k]) : py::object();
      const std::string name = py::str(k).cast<std::string>();
      out[k] = rebuild(kv[2], old, where.empty() ? name : where + "/" + name, depth + 1);
    }
    return std::move(out);
  }
  for (const char* kind : {"list", "tuple"}) {
    if (!s.contains(kind)) continue;
    auto items = field<py::list>(s, kind, where);
    const bool list = std::string(kind) == "list";
    py::list out;
    const bool reuse = target && (PyList_Check(target.ptr()) || PyTuple_Check(target.ptr()));
    const std::size_t have = reuse ? py::len(target) : 0;
    for (std::size_t i = 0; i < items.size(); ++i) {
      py::object old = i < have ? py::object(target[py::int_(i)]) : py::object();
      out.append(rebuild(items[i], old, where.empty() ? std::to_string(i) : where + "/" + std::to_string(i), depth + 1));
    }
    if (list && target && PyList_Check(target.ptr())) {
      target.attr("__setitem__")(py::slice(py::none(), py::none(), py::none()), out);
      return py::reinterpret_borrow<py::object>(target);
    }
    return list ? py::object(out) : py::object(py::tuple(out));
  }
  if (s.contains("value")) return s["value"];
  corrupt_skeleton(where, "an object of no known kind");
}

namespace {

// The bytes of blob `key` of checkpoint `prefix`, or None when it has no such blob. Reads the
// manifest and that one entry (checksums verified), not the object graph: a load learns the
// state's skeleton for the price of its manifest.
py::object read_blob(const std::string& prefix, const std::string& key) {
  std::optional<std::vector<std::byte>> out;
  {
    py::gil_scoped_release nogil;
    auto m = unwrap(read_manifest(process_backend(), prefix));
    const auto* t = m.find(key);
    if (t && t->type == dtype::blob && t->global.size() == 1) {
      out.emplace(static_cast<std::size_t>(t->global[0]));
      unwrap(read_tensor_box(process_backend(), prefix, m, key, box{{0}, t->global}, *out));
    }
  }
  if (!out) return py::none();
  return py::bytes(reinterpret_cast<const char*>(out->data()), out->size());
}

}  // namespace

void bind_torch_state(py::module_& m) {
  m.def("_read_blob", &read_blob, py::arg("prefix"), py::arg("key"),
        "The bytes of blob `key` of checkpoint `prefix` (checksums verified), or None.");
  py::class_<torch_state, graph::trackable>(m, "TorchState")
      .def(py::init<mesh, std::int64_t, std::int64_t>(), py::arg("mesh"), py::arg("rank"), py::arg("world"))
      .def("update", &torch_state::update, py::arg("state_dict"), py::arg("shard_rows"), py::arg("before_change") = py::none(),
           "Walks a state dict, records its skeleton and binds its tensors for a save: 'same', 'rebound' or 'stale'.")
      .def("bind_load", &torch_state::bind_load, py::arg("skeleton"), py::arg("state_dict"),
           "Rebuilds the skeleton's state into state_dict and binds its tensors for a restore: (state, copies to do after).")
      .def_property_readonly("bound", &torch_state::bound, "How many variables are bound.");
}

}  // namespace meshckpt::python
