// meshckpt.torch's loads: the state a skeleton describes rebuilt into the caller's containers,
// reusing their tensors in place, creating what they lack, and every tensor bound for the
// restore; tied weights and views of one storage share again. The skeleton is checked as the
// hostile input it may be: every field's type, dimensions, and views inside their storage.
#include "meshckpt/api/tensor_io.hpp"
#include "torch_state.hpp"

namespace meshckpt::python {

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


}  // namespace meshckpt::python
