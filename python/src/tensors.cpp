// Mesh, Layout and the trackable objects: Module, Variable (shards that are the caller's numpy
// arrays or torch CPU tensors, without a copy, or storage of its own) and Bytes.
#include <pybind11/numpy.h>

#include <algorithm>
#include <cstring>
#include <optional>

#include "variable.hpp"
#include "meshckpt/pipeline/tensor_io.hpp"
#include "meshckpt/device/accelerator.hpp"
#ifdef MESHCKPT_PYTHON_CUDA
#include "meshckpt/device/cuda.hpp"
#endif
#include "meshckpt/graph/trackable.hpp"
#include "meshckpt/io/make_backend.hpp"
#include "meshckpt/plan/global_copy.hpp"

namespace meshckpt::python {

// The accelerator of torch CUDA tensors: the process's CUDA accelerator, when this build has
// meshckpt_cuda and a GPU is visible.
device::accelerator* cuda_accelerator() {
#ifdef MESHCKPT_PYTHON_CUDA
  return unwrap(device::make_cuda()).get();  // kept for the life of the process
#else
  throw error_exception{make_error(errc::unsupported,
                                   "a torch CUDA tensor, but this meshckpt was built without CUDA "
                                   "(meshckpt_cuda needs the CUDA toolkit at build time)")};
#endif
}

static std::optional<dtype> dtype_of_format(std::string_view f, py::ssize_t itemsize) {
  if (!f.empty() && (f[0] == '<' || f[0] == '=' || f[0] == '@' || f[0] == '|')) f.remove_prefix(1);
  if (f == "Zf") return dtype::complex64;
  if (f == "Zd") return dtype::complex128;
  if (f.size() != 1) return std::nullopt;
  switch (f[0]) {
    case '?': return dtype::boolean;
    case 'b': return dtype::int8;
    case 'B': return dtype::uint8;
    case 'h': return dtype::int16;
    case 'H': return dtype::uint16;
    case 'e': return dtype::float16;
    case 'f': return dtype::float32;
    case 'd': return dtype::float64;
    case 'i':
    case 'l':
    case 'q': return itemsize == 4 ? std::optional(dtype::int32) : itemsize == 8 ? std::optional(dtype::int64) : std::nullopt;
    case 'I':
    case 'L':
    case 'Q': return itemsize == 4 ? std::optional(dtype::uint32) : itemsize == 8 ? std::optional(dtype::uint64) : std::nullopt;
    default: return std::nullopt;
  }
}

// A dtype from its name, a numpy dtype or a torch dtype ("torch.bfloat16").
dtype parse_dtype(py::handle d) {
  std::string name = py::str(d).cast<std::string>();
  if (name.rfind("torch.", 0) == 0) name.erase(0, 6);
  auto t = dtype_from_name(name);
  if (!t) throw error_exception{make_error(errc::invalid_argument, "dtype '" + name + "' has no meshckpt dtype")};
  return *t;
}

static bool is_torch_tensor(py::handle o) {
  py::object mod = py::type::of(o).attr("__module__");
  return py::isinstance<py::str>(mod) && mod.cast<std::string>().rfind("torch", 0) == 0 && py::hasattr(o, "data_ptr");
}

// A torch tensor's memory, through its own attributes (every torch dtype meshckpt has,
// bfloat16 and bool included): host memory for a CPU tensor, device memory of the CUDA
// accelerator for a CUDA tensor. The tensor object is kept alive by `keep`.
array_memory torch_memory(py::handle t, py_refs& keep) {
  const std::string where = py::str(t.attr("device").attr("type")).cast<std::string>();
  if (where != "cpu" && where != "cuda")
    throw error_exception{make_error(errc::unsupported, "a torch tensor on " + py::str(t.attr("device")).cast<std::string>() +
                                                            " (meshckpt takes CPU and CUDA tensors)")};
  if (!t.attr("is_contiguous")().cast<bool>())
    throw error_exception{make_error(errc::invalid_argument, "a torch tensor that is not contiguous (call .contiguous())")};
  const dtype dt = parse_dtype(t.attr("dtype"));  // "torch.float32"
  if (dt == dtype::blob) throw error_exception{make_error(errc::invalid_argument, "torch tensors have no blob dtype")};
  array_memory m;
  m.type = dt;
  m.data = reinterpret_cast<std::byte*>(t.attr("data_ptr")().cast<std::uintptr_t>());
  m.bytes = t.attr("numel")().cast<std::size_t>() * static_cast<std::size_t>(dtype_size(dt));
  for (auto d : t.attr("shape")) m.dims.push_back(d.cast<std::int64_t>());
  if (where == "cuda") {
    m.memory = cuda_accelerator();
    py::object index = t.attr("device").attr("index");
    m.gpu = index.is_none() ? 0 : index.cast<int>();
  }
  keep.add(py::reinterpret_borrow<py::object>(t));
  return m;
}

// Any object with the buffer protocol (numpy arrays, memoryviews): C-contiguous, native byte
// order; writable when the memory is to be restored into. The buffer export is held by `keep`.
static array_memory buffer_memory(py::handle o, bool writable, py_refs& keep) {
  auto view = std::make_unique<Py_buffer>();
  int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
  if (PyObject_GetBuffer(o.ptr(), view.get(), flags) != 0) {
    PyErr_Clear();
    throw error_exception{
        make_error(errc::invalid_argument, std::string("a ") + py::str(py::type::of(o).attr("__name__")).cast<std::string>() +
                                               " that is not a C-contiguous" + (writable ? ", writable" : "") +
                                               " buffer (numpy: np.ascontiguousarray; a read-only array cannot be restored into)")};
  }
  array_memory m;
  auto dt = dtype_of_format(view->format ? view->format : "B", view->itemsize);
  if (!dt || dtype_size(*dt) != view->itemsize) {
    std::string f = view->format ? view->format : "?";
    PyBuffer_Release(view.get());
    throw error_exception{make_error(errc::invalid_argument, "buffer format '" + f + "' has no meshckpt dtype")};
  }
  m.type = *dt;
  m.data = static_cast<std::byte*>(view->buf);
  m.bytes = static_cast<std::size_t>(view->len);
  for (int i = 0; i < view->ndim; ++i) m.dims.push_back(view->shape[i]);
  keep.add_buffer(std::move(view));
  return m;
}

array_memory memory_of(py::handle o, bool writable, py_refs& keep) {
  return is_torch_tensor(o) ? torch_memory(o, keep) : buffer_memory(o, writable, keep);
}

namespace {

std::string numpy_name(dtype t) {
  switch (t) {
    case dtype::boolean: return "bool";
    case dtype::bfloat16: return "uint16";  // numpy has no bfloat16: its bits
    case dtype::float8_e4m3:
    case dtype::float8_e5m2:
    case dtype::blob: return "uint8";
    default: return std::string(dtype_name(t));
  }
}

// A module: a trackable with named children, the base of Python `meshckpt.Module`.
class py_module : public graph::module {
 public:
  void track(const std::string& name, graph::trackable& child) { add_child(name, child); }
};

}  // namespace

io::backend& process_backend() {
  static io::backend* b = unwrap(backends::make_backend()).release();
  return *b;
}

py::object py_variable::shard(std::int64_t device, py::object self) {
  if (!shards_.is_none() && shards_.contains(py::int_(device))) return shards_[py::int_(device)];
  auto bytes = shard_bytes(device);
  if (bytes.data() == nullptr && !view().shard_of(device))
    throw error_exception{make_error(errc::invalid_argument, "device " + std::to_string(device) + " is not local")};
  const box b = view().layout().shard_box(view().global_shape(), device).value();
  py::dtype dt(numpy_name(view().type()));
  return py::array(dt, b.extent, {}, bytes.data(), self);  // a view, keeping the variable alive
}

namespace {

std::unique_ptr<py_variable> from_shards(py::dict shards, layout l, std::optional<shape> global, std::optional<py::object> dt) {
  auto keep = std::make_shared<py_refs>();
  std::vector<local_shard> views;
  std::optional<dtype> type = dt ? std::optional(parse_dtype(*dt)) : std::nullopt;
  std::optional<shape> only_shape;
  for (auto [k, v] : shards) {
    auto dev = k.cast<std::int64_t>();
    array_memory mem = memory_of(v, true, *keep);
    if (type && *type != mem.type)
      throw error_exception{make_error(errc::invalid_argument, "shard of device " + std::to_string(dev) + " is " +
                                                                   std::string(dtype_name(mem.type)) + ", expected " +
                                                                   std::string(dtype_name(*type)))};
    type = mem.type;
    only_shape = mem.dims;
    views.push_back({dev, std::span(mem.data, mem.bytes), mem.memory, mem.gpu});
  }
  if (!type) throw error_exception{make_error(errc::invalid_argument, "no shards given and no dtype")};
  if (!global) {
    // Without a global shape, the one shard must be the whole tensor (replicated layout).
    if (views.size() != 1) throw error_exception{make_error(errc::invalid_argument, "global_shape is needed for several shards")};
    global = only_shape;
  }
  auto v = unwrap(dtensor_view::create(*type, *global, std::move(l), std::move(views)));
  return std::make_unique<py_variable>(std::move(v), std::move(keep), shards);
}

// Calls `f(span)` on the bytes of `arr`, checked against the variable's dtype and size, with
// the GIL released.
template <class Span, class F>
void with_global(const py_variable& v, py::handle arr, bool writable, F&& f) {
  py_refs keep;
  array_memory mem = memory_of(arr, writable, keep);
  if (mem.type != v.view().type())
    throw error_exception{make_error(errc::dtype_mismatch, "array is " + std::string(dtype_name(mem.type)) + ", variable is " +
                                                               std::string(dtype_name(v.view().type())))};
  if (mem.dims != v.view().global_shape())
    throw error_exception{
        make_error(errc::shape_mismatch, "array has shape " + to_string(mem.dims) + ", variable " + to_string(v.view().global_shape()))};
  py::gil_scoped_release nogil;
  unwrap(f(Span(mem.data, mem.bytes)));
}

void bind_mesh_and_layout(py::module_& m) {
  py::class_<mesh>(m, "Mesh")
      .def(py::init(
               [](std::vector<std::pair<std::string, std::int64_t>> dims, std::vector<std::int64_t> ids, std::vector<std::int64_t> local) {
                 std::vector<mesh_dim> md;
                 for (auto& [n, s] : dims) md.push_back({n, s});
                 return unwrap(mesh::create(std::move(md), std::move(ids), std::move(local)));
               }),
           py::arg("dims"), py::arg("device_ids") = std::vector<std::int64_t>{}, py::arg("local_device_ids") = std::vector<std::int64_t>{})
      .def_property_readonly("dims",
                             [](const mesh& me) {
                               std::vector<std::pair<std::string, std::int64_t>> r;
                               for (auto& d : me.dims()) r.emplace_back(d.name, d.size);
                               return r;
                             })
      .def_property_readonly("num_devices", &mesh::num_devices)
      .def_property_readonly("device_ids", &mesh::device_ids)
      .def_property_readonly("local_device_ids", &mesh::local_device_ids)
      .def("__eq__", [](const mesh& a, const mesh& b) { return a == b; })
      .def("__repr__", [](const mesh& me) { return "Mesh(" + me.to_string() + ")"; });

  py::class_<layout>(m, "Layout")
      .def(py::init([](std::vector<std::string> specs, mesh me) { return unwrap(layout::create(std::move(specs), std::move(me))); }),
           py::arg("sharding_specs"), py::arg("mesh"))
      .def_static("replicated", &layout::replicated, py::arg("rank"), py::arg("mesh"))
      .def_property_readonly("sharding_specs", &layout::specs)
      .def_property_readonly("mesh", &layout::mesh_ref)
      .def_property_readonly("rank", &layout::rank)
      .def(
          "shard_box",
          [](const layout& l, shape g, std::int64_t device) {
            auto b = unwrap(l.shard_box(g, device));
            return std::make_pair(b.origin, b.extent);
          },
          py::arg("global_shape"), py::arg("device"), "(origin, extent) of a device's shard")
      .def("__eq__", [](const layout& a, const layout& b) { return a == b; })
      .def("__repr__", [](const layout& l) { return "Layout(" + l.to_string() + ")"; });
}

// Trackable, and the trackables that are not variables: Module and Bytes.
void bind_trackables(py::module_& m) {
  py::class_<graph::trackable>(m, "Trackable")
      .def_property_readonly("children",
                             [](const graph::trackable& t) {
                               std::vector<std::string> r;
                               for (auto& c : t.children()) r.push_back(c.first);
                               return r;
                             })
      .def("describe", &graph::trackable::describe);

  py::class_<py_module, graph::trackable>(m, "Module", py::dynamic_attr())
      .def(py::init<>())
      .def("_track", &py_module::track, py::arg("name"), py::arg("child"), py::call_guard<py::gil_scoped_release>(),
           "Adds a named child (a restore pending for that name runs now).");

  py::class_<graph::bytes_state, graph::trackable>(m, "Bytes")
      .def(py::init([](py::bytes b) {
             std::string s = b;
             auto p = reinterpret_cast<const std::byte*>(s.data());
             return std::make_unique<graph::bytes_state>(std::vector<std::byte>(p, p + s.size()));
           }),
           py::arg("value") = py::bytes())
      .def_property(
          "value", [](const graph::bytes_state& b) { return py::bytes(reinterpret_cast<const char*>(b.get().data()), b.get().size()); },
          [](graph::bytes_state& b, py::bytes v) {
            std::string s = v;
            auto p = reinterpret_cast<const std::byte*>(s.data());
            b.set(std::vector<std::byte>(p, p + s.size()));
          });
}

void bind_variable(py::module_& m) {
  // One type: what meshckpt.Variable(...) builds is a meshckpt.Variable (isinstance holds). The
  // one-array constructor's checks are the package's (meshckpt._variable_args), in Python.
  py::class_<py_variable, graph::trackable> variable(m, "Variable");
  variable.attr("__module__") = "meshckpt";
  variable
      .def(py::init([](py::object value, py::object layout, py::object mesh) {
             py::tuple a = py::module_::import("meshckpt").attr("_variable_args")(value, layout, mesh);
             return from_shards(a[0].cast<py::dict>(), a[1].cast<struct layout>(), a[2].cast<shape>(), std::nullopt);
           }),
           py::arg("value"), py::arg("layout") = py::none(), py::kw_only(), py::arg("mesh") = py::none(),
           "A variable over `value` (numpy array or torch CPU tensor, used in place): the whole tensor, held by this "
           "process's one local device. `layout` defaults to replicated on `mesh`.")
      .def_static(
          "from_shards",
          [](py::object shards, layout l, shape global, std::optional<py::object> dt) {
            return from_shards(py::dict(shards), std::move(l), std::move(global), std::move(dt));
          },
          py::arg("shards"), py::arg("layout"), py::arg("global_shape"), py::arg("dtype") = std::nullopt,
          "A variable whose shards are the caller's arrays: {device id: array} for every local device.")
      .def_static(
          "zeros",
          [](shape s, py::object dt, layout l) {
            return std::make_unique<py_variable>(unwrap(dtensor::create(parse_dtype(dt), std::move(s), std::move(l))));
          },
          py::arg("shape"), py::arg("dtype"), py::arg("layout"), "A variable with zeroed storage of its own.")
      .def_property_readonly("dtype", [](const py_variable& v) { return std::string(dtype_name(v.view().type())); })
      .def_property_readonly("shape", [](const py_variable& v) { return v.view().global_shape(); })
      .def_property_readonly("layout", [](const py_variable& v) { return v.view().layout(); })
      .def_property_readonly("nbytes", [](const py_variable& v) { return v.view().global_bytes(); })
      .def(
          "shard", [](py::object self, std::int64_t device) { return self.cast<py_variable&>().shard(device, self); }, py::arg("device"),
          "The shard of a local device: the caller's array, or a numpy view of own storage.")
      .def("_shard_address",
           [](const py_variable& v, std::int64_t device) { return reinterpret_cast<std::uintptr_t>(v.shard_bytes(device).data()); })
      .def(
          "assign",
          [](const py_variable& v, py::handle arr) {
            with_global<std::span<const std::byte>>(v, arr, false, [&](std::span<const std::byte> s) { return v.assign_global(s); });
          },
          py::arg("value"), "Copies a whole global array into the local shards.")
      .def(
          "_copy_back_to", [](py_variable& v, py::handle target) { v.copy_back_to(target); }, py::arg("target"),
          "After each restore, copy the values into `target`, the non-contiguous torch tensor this variable's shard copies.")
      .def(
          "read_into",
          [](const py_variable& v, py::handle arr) {
            with_global<std::span<std::byte>>(v, arr, true, [&](std::span<std::byte> s) { return v.copy_to_global(s); });
          },
          py::arg("out"), "Copies the local shards into their parts of a whole global array.")
      .def(
          "numpy",
          [](const py_variable& v) {
            py::array out(py::dtype(numpy_name(v.view().type())), v.view().global_shape());
            std::span<std::byte> s(static_cast<std::byte*>(out.mutable_data()), static_cast<std::size_t>(out.nbytes()));
            {
              py::gil_scoped_release nogil;
              unwrap(v.copy_to_global(s));
            }
            return out;
          },
          "The whole tensor as a new numpy array (bfloat16 as its uint16 bits).")
      .def("__repr__",
           [](const py_variable& v) { return "<meshckpt.Variable " + v.describe() + " " + v.view().layout().to_string() + ">"; });
}

// The benchmark's baseline: the very C++ calls `meshckpt bench` times (write_tensors and
// read_tensors, on the process's backend), on the same variables and in the same process as
// the Python API's, so a ratio of the two is the binding's cost and not the machine's drift.
void bind_cpp_baseline(py::module_& m) {
  auto named = [](const std::vector<std::pair<std::string, py_variable*>>& vars) {
    std::vector<named_tensor> out;
    for (const auto& [key, v] : vars) out.push_back({key, v->view()});
    return out;
  };
  m.def(
      "_cpp_write_tensors",
      [named](std::string prefix, const std::vector<std::pair<std::string, py_variable*>>& vars) {
        auto tensors = named(vars);
        py::gil_scoped_release nogil;
        unwrap(write_tensors(process_backend(), prefix, tensors));
      },
      py::arg("prefix"), py::arg("variables"), "The C++ baseline of the benchmark: write_tensors of (key, Variable) pairs.");
  m.def(
      "_cpp_read_tensors",
      [named](std::string prefix, const std::vector<std::pair<std::string, py_variable*>>& vars) {
        auto tensors = named(vars);
        py::gil_scoped_release nogil;
        unwrap(read_tensors(process_backend(), prefix, tensors));
      },
      py::arg("prefix"), py::arg("variables"), "The C++ baseline of the benchmark: read_tensors into (key, Variable) pairs.");
}

}  // namespace

void bind_tensors(py::module_& m) {
  bind_mesh_and_layout(m);
  bind_trackables(m);
  bind_variable(m);
  bind_cpp_baseline(m);
}

}  // namespace meshckpt::python
