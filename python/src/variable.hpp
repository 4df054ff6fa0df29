// The Python extension's tensors: array memory (numpy buffers, torch tensors) and the variable
// whose shards are that memory, shared by tensors.cpp (meshckpt.Variable) and torch_state.cpp
// (meshckpt.torch's state dicts).
#pragma once

#include <algorithm>
#include <cstring>
#include <optional>

#include "bindings.hpp"
#include "meshckpt/device/accelerator.hpp"
#include "meshckpt/graph/trackable.hpp"

namespace meshckpt::python {

// The memory of one array: where its bytes are, what they are, and who keeps them alive.
struct array_memory {
  std::byte* data = nullptr;
  std::size_t bytes = 0;
  dtype type{};
  shape dims;
  device::accelerator* memory = nullptr;  // device memory (a torch CUDA tensor)
  int gpu = 0;
};

// The accelerator of torch CUDA tensors (UnsupportedError without a CUDA build).
device::accelerator* cuda_accelerator();
// A dtype from its name, a numpy dtype or a torch dtype ("torch.bfloat16").
dtype parse_dtype(py::handle d);
// A contiguous torch tensor's memory (host, or device memory of a CUDA tensor); `keep` holds it.
array_memory torch_memory(py::handle t, py_refs& keep);
// A torch tensor's memory, or any object with the buffer protocol's.
array_memory memory_of(py::handle o, bool writable, py_refs& keep);

// A variable whose shards are caller memory (kept alive by `keep_`) or its own storage. A save
// holds `keep_` until it is done with the bytes, so a Python array dropped meanwhile stays.
class py_variable : public graph::variable {
 public:
  py_variable(dtensor_view v, std::shared_ptr<py_refs> keep, py::object shards)
      : graph::variable(std::move(v)), keep_(std::move(keep)), shards_(std::move(shards)) {}
  explicit py_variable(dtensor d) : graph::variable(std::move(d)) {}
  result<graph::value_snapshot> value_for_save(const mesh& m) override {
    BOOST_OUTCOME_TRY(auto s, graph::variable::value_for_save(m));
    s.owner = keep_;
    return s;
  }
  // Makes a restore fill `target` too: this variable's one shard is a contiguous copy of the
  // caller's non-contiguous tensor (a transposed view, a slice, channels_last), and a restore
  // that filled only the copy would leave the caller's tensor as it was. Host memory is copied
  // back element by element after each restore (no GIL needed); a CUDA tensor, or one whose
  // elements share memory (an expanded view), makes every restore fail instead.
  void copy_back_to(py::handle target) {
    if (view().shards().size() != 1)
      throw error_exception{make_error(errc::invalid_argument, "copy-back needs a variable with one local shard")};
    back_ = strided_target{};
    const std::string where = py::str(target.attr("device").attr("type")).cast<std::string>();
    const auto size = target.attr("shape").cast<std::vector<std::int64_t>>();
    const auto stride = target.attr("stride")().cast<std::vector<std::int64_t>>();
    back_->elem = target.attr("element_size")().cast<std::size_t>();
    if (where != "cpu") back_->refuse = "the " + where + " tensor it restores into is not contiguous (pass a .contiguous() tensor)";
    // Elements overlap when, in the order of their strides, a dimension's stride does not pass
    // the farthest element of the dimensions before it.
    std::vector<std::pair<std::int64_t, std::int64_t>> dims;  // stride, size
    for (std::size_t d = 0; d < size.size(); ++d)
      if (size[d] > 1) dims.emplace_back(stride[d], size[d]);
    std::sort(dims.begin(), dims.end());
    std::int64_t reach = 0;
    for (const auto& [st, n] : dims) {
      if (st <= reach) back_->refuse = "the tensor it restores into has elements that share memory (an expanded view)";
      reach += st * (n - 1);
    }
    std::size_t count = 1;
    for (auto n : size) count *= static_cast<std::size_t>(n);
    if (back_->elem != static_cast<std::size_t>(dtype_size(view().type())) || count * back_->elem != view().shards().front().data.size())
      throw error_exception{make_error(errc::invalid_argument, "copy-back target differs from the variable in dtype or shape")};
    back_->data = reinterpret_cast<std::byte*>(target.attr("data_ptr")().cast<std::uintptr_t>());
    back_->size = size;
    back_->stride = stride;
    if (keep_) keep_->add(py::reinterpret_borrow<py::object>(target));
  }
  result<dtensor_view> value_for_restore(dtype t, const shape& s, const mesh& m) override {
    if (back_ && !back_->refuse.empty()) return make_error(errc::invalid_argument, back_->refuse);
    return graph::variable::value_for_restore(t, s, m);
  }
  void value_restored() override {
    if (!back_) return;
    const std::span<const std::byte> src = view().shards().front().data;
    const std::size_t rank = back_->size.size();
    std::vector<std::int64_t> idx(rank, 0);
    const std::size_t n = src.size() / back_->elem;
    for (std::size_t i = 0; i < n; ++i) {
      std::int64_t off = 0;
      for (std::size_t d = 0; d < rank; ++d) off += idx[d] * back_->stride[d];
      std::memcpy(back_->data + off * static_cast<std::int64_t>(back_->elem), src.data() + i * back_->elem, back_->elem);
      for (std::size_t d = rank; d-- > 0;) {
        if (++idx[d] < back_->size[d]) break;
        idx[d] = 0;
      }
    }
  }
  // The shard of local device `device`: the caller's object, or a numpy view of own storage.
  py::object shard(std::int64_t device, py::object self);

 private:
  struct strided_target {
    std::byte* data = nullptr;
    std::vector<std::int64_t> size, stride;  // stride in elements
    std::size_t elem = 0;
    std::string refuse;  // why a restore cannot fill it, if it cannot
  };
  std::shared_ptr<py_refs> keep_;
  py::object shards_;  // dict or None  // device -> the caller's object, when the shards are caller memory
  std::optional<strided_target> back_;
};

}  // namespace meshckpt::python
