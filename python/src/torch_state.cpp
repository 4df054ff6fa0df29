// meshckpt.torch's state dicts in C++: one call walks a whole state dict (nested dicts, lists and
// tuples of torch tensors and plain values), writes its JSON skeleton and binds every tensor's
// memory as a variable of one tree (`TorchState`). Per tensor it reads the tensor's attributes
// and creates no Python object; the variables are kept while the structure and the tensors'
// memory stay the same, so a trainer that saves the same state again pays only for the walk.
// Tensors that share a storage are saved once: identical views (tied weights) as one tensor,
// other views of one storage as the storage's bytes, which every view's skeleton entry points
// into.
#include <cmath>

#include "torch_state.hpp"

namespace meshckpt::python {

namespace {

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

}  // namespace

namespace {

const char* const chunked_only =
    "meshckpt.torch saves a ShardedTensor whose shards are chunks along one dimension, one per rank in rank order "
    "(ChunkShardingSpec, as FSDP's SHARDED_STATE_DICT gives)";

std::vector<std::int64_t> ints(py::handle seq) {
  std::vector<std::int64_t> v;
  for (auto x : seq) v.push_back(x.cast<std::int64_t>());
  return v;
}

std::string describe(const std::vector<std::pair<std::int64_t, box>>& shards) {
  std::string s;
  for (const auto& [r, b] : shards) s += (s.empty() ? "rank " : ", rank ") + std::to_string(r) + " " + to_string(b);
  return s.empty() ? "no shards" : s;
}

// A ShardedTensor's facts: those of its local shard, with the global shape and every shard's
// box from its metadata.
tensor_facts sharded_facts(py::handle t, std::string key) {
  auto& api = torch_api::get();
  py::object md = t.attr("metadata")();
  const shape global = ints(md.attr("size"));
  py::list local = t.attr("local_shards")();
  if (local.size() > 1)
    fail(errc::invalid_argument, key + ": a ShardedTensor with " + std::to_string(local.size()) + " shards on this rank; " + chunked_only);
  tensor_facts f;
  if (local.size() == 1) {
    f = facts_of(local[0].attr("tensor"), key);
    const shape sizes = ints(local[0].attr("metadata").attr("shard_sizes"));
    if (sizes != f.dims) fail(errc::invalid_argument, key + ": a ShardedTensor whose local shard's metadata and tensor differ in shape");
    f.local = box{ints(local[0].attr("metadata").attr("shard_offsets")), sizes};
  } else {
    f.key = std::move(key);
    f.obj = py::reinterpret_borrow<py::object>(t);
    std::tie(f.type, f.torch_name) = api.dtype_of(md.attr("tensor_properties").attr("dtype"));
    f.esize = dtype_size(f.type);
  }
  const auto& [type, name] = api.dtype_of(md.attr("tensor_properties").attr("dtype"));
  if (type != f.type) fail(errc::invalid_argument, f.key + ": a ShardedTensor of " + name + " whose local shard is " + f.torch_name);
  if (global.empty()) fail(errc::invalid_argument, f.key + ": a 0-d ShardedTensor");
  f.dims = global;
  for (py::handle sm : md.attr("shards_metadata")) {
    box b{ints(sm.attr("shard_offsets")), ints(sm.attr("shard_sizes"))};
    if (b.origin.size() != global.size() || b.extent.size() != global.size())
      fail(errc::invalid_argument, f.key + ": a ShardedTensor shard of another rank than the tensor's");
    if (b.volume().value_or(0) == 0) continue;
    py::object placement = sm.attr("placement");
    if (placement.is_none()) fail(errc::invalid_argument, f.key + ": a ShardedTensor shard with no placement; " + chunked_only);
    f.shards.emplace_back(placement.attr("rank")().cast<std::int64_t>(), std::move(b));
  }
  std::sort(f.shards.begin(), f.shards.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  // The split dimension: the one where some shard does not span the whole tensor.
  f.shard_dim = 0;
  int split = 0;
  for (std::size_t d = 0; d < global.size(); ++d) {
    bool whole = true;
    for (const auto& [r, b] : f.shards) whole = whole && b.origin[d] == 0 && b.extent[d] == global[d];
    if (!whole) f.shard_dim = static_cast<int>(d), ++split;
  }
  if (split > 1)
    fail(errc::invalid_argument,
         f.key + ": a ShardedTensor split along " + std::to_string(split) + " dimensions (" + describe(f.shards) + "); " + chunked_only);
  return f;
}

}  // namespace

void check_sharding(const tensor_facts& f, const layout& l, const mesh& m, std::int64_t rank) {
  std::vector<std::pair<std::int64_t, box>> want;
  for (auto dev : m.device_ids()) {
    box b = unwrap(l.shard_box(f.dims, dev));
    if (!b.empty()) want.emplace_back(dev, std::move(b));
  }
  if (want != f.shards)
    fail(errc::invalid_argument, f.key + ": a ShardedTensor of shape " + to_string(f.dims) + " held as " + describe(f.shards) + "; " +
                                     chunked_only + ": over the " + std::to_string(m.device_ids().size()) +
                                     " ranks of the coordinator it would be " + describe(want));
  const box mine = unwrap(l.shard_box(f.dims, rank));
  const bool have = f.local.rank() > 0;
  if (have ? f.local != mine : !mine.empty())
    fail(errc::invalid_argument, f.key + ": rank " + std::to_string(rank) + " holds the ShardedTensor's shard " +
                                     (have ? to_string(f.local) : std::string("none")) + ", its chunk is " + to_string(mine));
}

tensor_facts facts_of(py::handle t, std::string key) {
  auto& api = torch_api::get();
  if (api.is_sharded(t)) return sharded_facts(t, std::move(key));
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
    fail(errc::invalid_argument,
         f.key + ": a tensor on " + py::str(get(t, api.device)).cast<std::string>() + " (meshckpt.torch takes CPU and CUDA tensors)");
  }
  py::object dims = get(t, api.shape), strides = call(t, api.stride);
  const auto rank = PyTuple_GET_SIZE(dims.ptr());
  if (!PyTuple_Check(strides.ptr()) || PyTuple_GET_SIZE(strides.ptr()) != rank)
    fail(errc::invalid_argument, f.key + ": shape and strides differ");
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

namespace {

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

}  // namespace

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
        w.skel.append("\"s\", ").append(format::json_string(name));
      } else if (PyLong_Check(k.ptr()) && !PyBool_Check(k.ptr())) {
        name = py::str(k).cast<std::string>();
        w.skel.append("\"i\", ").append(name);
      } else {
        fail(errc::invalid_argument,
             "state dict key " + py::repr(k).cast<std::string>() + " at " + (path.empty() ? "<root>" : path) + " is not a str or an int");
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

void bind_torch_state(py::module_& m) {
  py::class_<torch_state, graph::trackable>(m, "TorchState")
      .def(py::init<mesh, std::int64_t, std::int64_t>(), py::arg("mesh"), py::arg("rank"), py::arg("world"))
      .def("update", &torch_state::update, py::arg("state_dict"), py::arg("shard_rows"), py::arg("before_change") = py::none(),
           "Walks a state dict, records its skeleton and binds its tensors for a save: 'same', 'rebound' or 'stale'.")
      .def("bind_load", &torch_state::bind_load, py::arg("path"), py::arg("state_dict"),
           "Rebuilds the state checkpoint (or torch.save file) `path` holds into state_dict and binds its tensors for a restore: "
           "(state, copies to do after, whether to read by name with read_bound).")
      .def("read_bound", &torch_state::read_bound, py::arg("path"), "Reads the tensors the last bind_load bound, by name, from `path`.")
      .def_property_readonly("bound", &torch_state::bound, "How many variables are bound.");
}

}  // namespace meshckpt::python
