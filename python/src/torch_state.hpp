// meshckpt.torch's state dicts in C++ (see torch_state.cpp): the tree that binds a state dict's
// tensors, shared by the save side (torch_state.cpp: the walk, the grouping by storage) and the
// load side (torch_load.cpp: the rebuild from a skeleton).
#pragma once

#include <algorithm>
#include <map>
#include <span>
#include <string_view>
#include <unordered_map>
#include <unordered_set>

#include "meshckpt/format/describe.hpp"
#include "meshckpt/format/manifest.hpp"
#include "variable.hpp"

namespace meshckpt::python {

struct jvalue;  // a parsed skeleton (skeleton_json.hpp)

constexpr const char* meta_key = "__meshckpt_torch__";
constexpr const char* storage_prefix = "__meshckpt_storage__/";

inline error bad(errc c, std::string what) { return make_error(c, std::move(what)); }
[[noreturn]] inline void fail(errc c, std::string what) { throw error_exception{bad(c, std::move(what))}; }

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
  // Whether tensor `o` is a torch.distributed ShardedTensor. Its module is looked up, not
  // imported: without it imported no ShardedTensor exists (and importing it is slow, and fails
  // on some Python versions). Plain tensor types are remembered, so the check costs a lookup.
  bool is_sharded(py::handle o) {
    PyTypeObject* type = Py_TYPE(o.ptr());
    if (auto it = sharded_types.find(type); it != sharded_types.end()) return it->second;
    if (!sharded_base) {
      PyObject* mod = PyImport_GetModule(py::str("torch.distributed._shard.sharded_tensor").ptr());
      // Not imported: no ShardedTensor class exists, so no type seen now derives from one.
      if (!mod) {
        if (PyErr_Occurred()) throw py::error_already_set();
        return sharded_types.emplace(type, false).first->second;
      }
      auto m = py::reinterpret_steal<py::object>(mod);
      if (!py::hasattr(m, "ShardedTensorBase")) return sharded_types.emplace(type, false).first->second;
      sharded_base = py::object(m.attr("ShardedTensorBase")).release();
    }
    const int r = PyObject_IsSubclass(reinterpret_cast<PyObject*>(type), sharded_base.ptr());
    if (r < 0) throw py::error_already_set();
    return sharded_types.emplace(type, r == 1).first->second;
  }
  py::handle sharded_base;
  std::unordered_map<PyTypeObject*, bool> sharded_types;
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
  // A ShardedTensor: `dims` is its global shape, the other facts are of its local shard (none:
  // ptr 0), `local` is that shard's box, `shard_dim` the one dimension its shards split and
  // `shards` every rank's (rank, box), from its metadata.
  int shard_dim = -1;
  box local;
  std::vector<std::pair<std::int64_t, box>> shards;

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

// What the walk reads of one tensor, from its attributes; errors name `key`.
tensor_facts facts_of(py::handle t, std::string key);

// Unless a ShardedTensor's shards are the chunks that `l` gives each device of its mesh (torch's
// ChunkShardingSpec over the ranks in order, as FSDP's SHARDED_STATE_DICT makes them), with this
// process's `rank` holding its own, fails naming both.
void check_sharding(const tensor_facts& f, const layout& l, const mesh& m, std::int64_t rank);

// The skeleton of a state dict and its tensors. The skeleton is JSON ({"dict": [[kind, key,
// value], ...]}, {"list": [...]}, {"tuple": [...]}, {"value": v}, and a tensor leaf); a tensor
// leaf's text is known only once storages are grouped, so the walk leaves a hole for each.
struct walk_result {
  std::string skel;
  std::vector<std::size_t> holes;  // position in `skel` of tensor i's leaf
  std::vector<tensor_facts> tensors;
};
void walk(py::handle o, const std::string& path, walk_result& w, int depth);

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
    check_shardings(w.tensors);
    std::vector<entry> next;
    next.reserve(w.tensors.size());
    std::vector<std::string> leaves(w.tensors.size());
    group(w.tensors, next, leaves);
    // The document, written once into the bytes the meta child keeps.
    constexpr std::string_view head = "{\"format\": 2, \"state\": ";
    std::size_t size = head.size() + w.skel.size() + 1;
    for (const auto& l : leaves) size += l.size();
    std::vector<std::byte> doc;
    doc.reserve(size);
    auto put = [&](std::string_view v) {
      auto* b = reinterpret_cast<const std::byte*>(v.data());
      doc.insert(doc.end(), b, b + v.size());
    };
    put(head);
    std::size_t at = 0;
    for (std::size_t i = 0; i < w.holes.size(); ++i) {
      put(std::string_view(w.skel).substr(at, w.holes[i] - at));
      put(leaves[i]);
      at = w.holes[i];
    }
    put(std::string_view(w.skel).substr(at));
    put("}");

    std::string status = "same";
    if (!same_bindings(next)) {
      std::unordered_set<std::string_view> keys;
      for (const auto& e : next) keys.insert(e.key);
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
    meta_.set(std::move(doc));
    return status;
  }

  // Rebuilds the state that checkpoint `prefix`'s skeleton (its "__meshckpt_torch__" bytes)
  // describes into `target`, in place, and binds every tensor for a restore. Returns the
  // containers' new root and the (destination, source) pairs to copy after the restore (views
  // of a shared storage onto tensors the caller gave). The document is parsed here, in C++, and
  // every tensor it names is checked against the manifest before anything is allocated for it.
  // Also returns whether the leaves name the manifest's keys verbatim (a torch.save file or its
  // import) rather than as object paths.
  py::tuple bind_load(const std::string& prefix, py::handle target);

  // Reads every tensor bound by the last `bind_load` from `prefix` by its manifest key (verified),
  // with the manifest bind_load read: no object-graph restore, no second read of the manifest.
  void read_bound(const std::string& prefix);

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
    int shard_dim = -1;  // a ShardedTensor's: `ptr` and `source` are its local shard's
    std::unique_ptr<py_variable> var;
  };

  // Groups tensors by storage: identical views are one entry (the first key; the others' leaves
  // name it), other views of one storage one entry of its bytes.
  void group(std::vector<tensor_facts>& ts, std::vector<entry>& out, std::vector<std::string>& leaves) {
    std::unordered_set<std::string_view> seen;
    std::vector<std::size_t> order;  // tensors with elements, by storage (device, base address)
    for (std::size_t i = 0; i < ts.size(); ++i) {
      if (!seen.insert(ts[i].key).second)
        fail(errc::invalid_argument, "two entries of the state dict have the path " + ts[i].key + " (a key containing '/'?)");
      if (ts[i].numel() > 0 && ts[i].shard_dim < 0) order.push_back(i);  // a ShardedTensor shares no storage
    }
    auto storage = [&](std::size_t i) { return std::pair(ts[i].gpu, ts[i].base()); };
    std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return storage(a) < storage(b); });
    std::vector<bool> done(ts.size(), false);
    std::size_t storages = 0;
    for (std::size_t at = 0, end = 0; at < order.size(); at = end) {
      for (end = at + 1; end < order.size() && storage(order[end]) == storage(order[at]);) ++end;
      if (end - at < 2) continue;
      const std::span<const std::size_t> members(order.data() + at, end - at);
      tensor_facts& first = ts[members.front()];
      bool identical = true;
      for (auto i : members) identical = identical && ts[i].same_view(first);
      if (identical) {
        for (auto i : members) {
          leaves[i] = leaf(first);
          done[i] = true;
        }
        out.push_back(tensor_entry(first));  // after every member's leaf: it takes first's key
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
                    ", \"offset\": " + std::to_string(t.ptr - lo) + ", \"dtype\": \"" + t.torch_name +
                    "\", \"shape\": " + to_string(t.dims) + ", \"stride\": " + to_string(t.stride) + "}";
        done[i] = true;
      }
      out.push_back(std::move(e));
    }
    for (std::size_t i = 0; i < ts.size(); ++i) {
      if (done[i]) continue;
      leaves[i] = leaf(ts[i]);
      out.push_back(tensor_entry(ts[i]));  // last use of ts[i]
    }
  }

  static std::string leaf(const tensor_facts& t) {
    std::string s = "{\"tensor\": ";
    s.reserve(64 + t.key.size());
    s.append(format::json_string(t.key)).append(", \"dtype\": \"").append(t.torch_name).append("\", \"shape\": ");
    return s.append(to_string(t.dims)).append("}");
  }

  // The entry of tensor `t`, which it takes the key, shape and object of.
  static entry tensor_entry(tensor_facts& t) {
    entry e;
    e.key = std::move(t.key);
    e.type = t.type;
    e.dims = std::move(t.dims);
    e.ptr = t.ptr;
    e.gpu = t.gpu;
    e.source = std::move(t.obj);
    e.shard_dim = t.shard_dim;
    if (!t.contiguous) e.stride = std::move(t.stride);  // bound through a contiguous copy
    return e;
  }

  bool same_bindings(const std::vector<entry>& next) const {
    if (next.size() != bound_.size()) return false;
    for (std::size_t i = 0; i < next.size(); ++i) {
      const entry &a = bound_[i], &b = next[i];
      if (a.key != b.key || a.type != b.type || a.dims != b.dims || a.ptr != b.ptr || a.gpu != b.gpu || a.stride != b.stride ||
          a.shard_dim != b.shard_dim)
        return false;
      if (!a.stride.empty() && a.source.ptr() != b.source.ptr()) return false;
    }
    return true;
  }

  // Split along dimension `dim` over the ranks (-1: replicated), for tensors of rank `rank`.
  const layout& layout_for(std::size_t rank, int dim) {
    auto it = layouts_.find({rank, dim});
    if (it != layouts_.end()) return it->second;
    std::vector<std::string> specs(rank, "unsharded");
    if (dim >= 0) specs[static_cast<std::size_t>(dim)] = "ranks";
    return layouts_.emplace(std::pair(rank, dim), unwrap(layout::create(std::move(specs), mesh_))).first->second;
  }

  // Fails unless every ShardedTensor among `ts` is chunked as this tree saves it.
  void check_shardings(const std::vector<tensor_facts>& ts) {
    for (const auto& t : ts)
      if (t.shard_dim >= 0) check_sharding(t, layout_for(t.dims.size(), t.shard_dim), mesh_, rank_);
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
    // A ShardedTensor is split as its shards are (its local shard is this rank's box); a
    // plain tensor every rank holds is written once, rows spread over the ranks.
    const bool rows = e.shard_dim < 0 && shard_rows && world_ > 1 && !e.dims.empty();
    const layout& l = layout_for(e.dims.size(), e.shard_dim >= 0 ? e.shard_dim : rows ? 0 : -1);
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

  py::object rebuild(const jvalue& s, py::handle target, const std::string& where, int depth);
  py::object tensor_leaf(const jvalue& s, py::handle target, const std::string& path);
  py::object view_leaf(const jvalue& s, py::handle target, const std::string& path);
  void bind_for_restore(const std::string& key, const py::object& t, dtype type, const shape& dims);
  // Fails unless the manifest of the load holds tensor `key` with this dtype and shape.
  void check_saved(const std::string& key, dtype type, const shape& dims) const;
  const format::saved_tensor& saved(const std::string& key) const;  // the manifest's entry a leaf names

  mesh mesh_;
  std::int64_t rank_, world_;
  graph::bytes_state meta_;
  std::vector<entry> bound_;
  std::map<std::pair<std::size_t, int>, layout> layouts_;  // by (rank, split dimension)
  // Restore: tensors by key (identical views share one), storages by key, copies to do after.
  std::unordered_map<std::string, py::object> by_key_;
  std::vector<std::pair<py::object, py::object>> post_;
  std::shared_ptr<py_refs> restore_refs_;
  const format::manifest* manifest_ = nullptr;      // during bind_load
  bool verbatim_ = false;                           // the skeleton's leaves name manifest keys as they are
  std::shared_ptr<const format::manifest> loaded_;  // after a bind_load by name, until read_bound
  std::string loaded_at_;                           // the prefix its files are read from
};

}  // namespace meshckpt::python
