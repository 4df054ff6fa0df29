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
#include "skeleton_json.hpp"
#include "torch_state.hpp"

namespace meshckpt::python {

namespace {

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
  if (!found) fail(errc::invalid_argument, prefix + " was not written by meshckpt.torch (it has no " + std::string(meta_key) + " entry)");
  const jvalue top = parse_skeleton(std::string_view(reinterpret_cast<const char*>(doc.data()), doc.size()));
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
      fail(given.type != type ? errc::dtype_mismatch : errc::shape_mismatch, path + " (a second key of " + key + "): saved " +
                                                                                 describe_tensor(name, dims) + ", the given tensor is " +
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
  if (!empty && offset + (last + 1) * esize > bytes)
    corrupt_skeleton(key, "a view beyond its storage's " + std::to_string(bytes) + " bytes");
  py::object storage;
  if (auto it = by_key_.find(key); it != by_key_.end()) {
    storage = it->second;
    if (py::len(storage) < static_cast<std::size_t>(bytes)) corrupt_skeleton(key, "views disagree on the storage's size");
  } else {
    // The storage's bytes, saved as bytes or as the tensor of a view that covers them.
    const auto& st = saved(key);
    const auto n = num_elements(st.global);
    if (!n || *n * dtype_size(st.type) != bytes)
      corrupt_skeleton(key, "a storage of " + std::to_string(bytes) + " bytes, the checkpoint holds " + std::string(dtype_name(st.type)) +
                                to_string(st.global));
    py::handle saved_dtype = api.dtype_named(st.type == dtype::uint8 ? "uint8" : std::string(format::torch::dtype_name(st.type)));
    if (!saved_dtype) corrupt_skeleton(key, "torch has no dtype for " + std::string(dtype_name(st.type)));
    // Padded to 16 bytes so that any dtype can view it.
    storage = new_host_tensor(api.module, shape{(bytes + 15) / 16 * 16}, api.module.attr("uint8"), 1);
    bind_for_restore(key, storage.attr("narrow")(0, 0, bytes).attr("view")(saved_dtype).attr("view")(py::cast(st.global)), st.type,
                     st.global);
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
    return out;
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
