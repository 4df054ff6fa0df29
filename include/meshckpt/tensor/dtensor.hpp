#pragma once
/// \file
/// DTensor: a tensor sharded over a mesh, as this process sees it: dtype, global shape,
/// layout, and one local shard (row-major bytes of the shard's box) per local device.

#include <cstddef>
#include <cstdint>
#include <span>
#include <memory>
#include <vector>

#include "meshckpt/error.hpp"
#include "meshckpt/tensor/box.hpp"
#include "meshckpt/tensor/dtype.hpp"
#include "meshckpt/tensor/layout.hpp"

namespace meshckpt {

namespace device {
class accelerator;
}

/// The local shard of one device: row-major bytes of `layout.shard_box(global, device)`.
struct local_shard {
  std::int64_t device = 0;  ///< the mesh device
  /// The bytes: host memory, or device memory of `memory` (see device/accelerator.hpp).
  std::span<std::byte> data;
  /// Null for host memory; else the accelerator whose device `gpu` holds `data`.
  device::accelerator* memory = nullptr;
  int gpu = 0;
  bool on_device() const { return memory != nullptr; }
};

/// Whether any shard of `shards` is device memory.
bool any_on_device(std::span<const local_shard> shards);

/// A non-owning view of a DTensor over caller memory. The memory must stay valid, and (while a
/// save is reading it or a restore is writing it) must not be touched by the caller.
class dtensor_view {
 public:
  /// Validates and creates a view: every local device of the layout's mesh has exactly one
  /// shard, and each shard's size is its box volume times the dtype size.
  /// \returns `errc::invalid_argument` naming the device and the expected and given sizes.
  static result<dtensor_view> create(dtype t, shape global, layout l, std::vector<local_shard> shards);

  dtype type() const { return type_; }
  const shape& global_shape() const { return global_; }
  const meshckpt::layout& layout() const { return layout_; }
  const std::vector<local_shard>& shards() const { return shards_; }

  /// The shard of `device`, or nullptr when the device is not local.
  const local_shard* shard_of(std::int64_t device) const;

  /// Total bytes of the global tensor (volume times dtype size).
  std::int64_t global_bytes() const;

 private:
  dtensor_view(dtype t, shape g, meshckpt::layout l, std::vector<local_shard> s)
      : type_(t), global_(std::move(g)), layout_(std::move(l)), shards_(std::move(s)) {}
  dtype type_;
  shape global_;
  meshckpt::layout layout_;
  std::vector<local_shard> shards_;
};

namespace detail {
/// Frees a shard allocated 4096-byte aligned.
struct aligned_free {
  void operator()(std::byte* p) const noexcept;
};
}  // namespace detail

/// A DTensor that owns zero-initialised storage for each local shard, aligned to 4096 bytes (so
/// restores can read into it with O_DIRECT, without a bounce buffer). Move-only: its view
/// points into its own storage, so a copy would alias the original's memory.
class dtensor {
 public:
  dtensor(const dtensor&) = delete;
  dtensor& operator=(const dtensor&) = delete;
  dtensor(dtensor&&) noexcept = default;
  dtensor& operator=(dtensor&&) noexcept = default;

  /// Allocates the local shards of a tensor with this dtype, shape and layout.
  static result<dtensor> create(dtype t, shape global, layout l);

  /// A view over the owned storage (valid while this object lives and is not moved).
  const dtensor_view& view() const { return view_; }
  /// The bytes of the shard of `device` (empty span when not local).
  std::span<std::byte> shard_bytes(std::int64_t device);

 private:
  using buffer = std::unique_ptr<std::byte[], detail::aligned_free>;
  dtensor(std::vector<buffer> storage, dtensor_view v) : storage_(std::move(storage)), view_(std::move(v)) {}
  std::vector<buffer> storage_;
  dtensor_view view_;
};

}  // namespace meshckpt
