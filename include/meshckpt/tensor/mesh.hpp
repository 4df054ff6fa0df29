#pragma once
/// \file
/// A device mesh: named dimensions with sizes over global device ids, some of which are local
/// to this process (TensorFlow DTensor's `Mesh`).

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "meshckpt/error.hpp"

namespace meshckpt {

/// One named mesh dimension, e.g. {"x", 2}.
struct mesh_dim {
  std::string name;
  std::int64_t size = 0;
  friend bool operator==(const mesh_dim&, const mesh_dim&) = default;
};

/// An immutable device mesh; cheap to copy (shared state).
///
/// Device `device_ids()[i]` sits at the row-major coordinates of flat index `i` (the first
/// dimension varies slowest), as in TensorFlow DTensor.
class mesh {
 public:
  /// Creates a mesh.
  /// \param dims  named dimensions; names are non-empty `[A-Za-z0-9_]` strings, unique, and not
  ///              "unsharded"; sizes >= 1; at most 16 dimensions and 2^20 devices.
  /// \param device_ids  global device ids in row-major mesh order; empty means 0..n-1. Unique,
  ///              non-negative.
  /// \param local_device_ids  the devices this process holds shards for; empty means all of
  ///              them (a single-process job). Each must be in `device_ids`.
  /// \returns the mesh, or `errc::invalid_argument` naming the offending value.
  static result<mesh> create(std::vector<mesh_dim> dims, std::vector<std::int64_t> device_ids = {},
                             std::vector<std::int64_t> local_device_ids = {});

  const std::vector<mesh_dim>& dims() const;
  std::size_t rank() const { return dims().size(); }
  /// Total number of devices (product of the sizes).
  std::int64_t num_devices() const;
  const std::vector<std::int64_t>& device_ids() const;
  /// Local device ids, in ascending order.
  const std::vector<std::int64_t>& local_device_ids() const;
  bool is_local(std::int64_t device_id) const;

  /// Index of the dimension called `name`, or nullopt.
  std::optional<std::size_t> dim_index(std::string_view name) const;

  /// Mesh coordinates of a device, or nullopt when the id is not in the mesh.
  std::optional<std::vector<std::int64_t>> coords(std::int64_t device_id) const;

  /// "x=2,y=4" rendering.
  std::string to_string() const;

  /// Same dims and same device ids (local devices are not compared).
  friend bool operator==(const mesh& a, const mesh& b);

 private:
  struct state;
  explicit mesh(std::shared_ptr<const state> s) : s_(std::move(s)) {}
  std::shared_ptr<const state> s_;
};

/// True when `name` is a valid mesh dimension name.
bool valid_mesh_dim_name(std::string_view name);

}  // namespace meshckpt
