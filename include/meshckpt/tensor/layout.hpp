#pragma once
/// \file
/// A Layout: for each tensor dimension, "unsharded" or the mesh dimension it is split over.
/// Mesh dimensions not named are replicated.
///
/// Splitting rule (even and uneven): a dimension of size `n` split over a mesh dimension of
/// size `k` is cut into chunks of `c = ceil(n / k)` elements; shard `i` covers
/// `[min(n, i*c), min(n, (i+1)*c))`. When `k` divides `n` all shards are equal (TensorFlow's
/// even sharding). Otherwise the last non-empty shard is shorter and trailing shards may be
/// empty, as with PyTorch DTensor's `Shard` placement (`torch.chunk`).

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "meshckpt/error.hpp"
#include "meshckpt/tensor/box.hpp"
#include "meshckpt/tensor/mesh.hpp"

namespace meshckpt {

/// The sharding-spec string meaning "not split".
inline constexpr std::string_view unsharded = "unsharded";

/// `[begin, end)` of shard `i` of a dimension of size `n` split `k` ways (rule above).
std::pair<std::int64_t, std::int64_t> split_range(std::int64_t n, std::int64_t k, std::int64_t i);

/// A tensor layout on a mesh (TensorFlow DTensor's `Layout`).
class layout {
 public:
  /// Creates a layout. `specs[d]` is "unsharded" or a dimension name of `m`.
  /// \returns `errc::invalid_argument` for an unknown mesh dimension or one used twice.
  static result<layout> create(std::vector<std::string> specs, mesh m);

  /// A layout with every dimension unsharded (fully replicated) of the given rank.
  static layout replicated(std::size_t rank, mesh m);

  std::size_t rank() const { return specs_.size(); }
  const std::vector<std::string>& specs() const { return specs_; }
  const mesh& mesh_ref() const { return mesh_; }

  /// For each tensor dimension, the mesh dimension index it is split over, or -1.
  const std::vector<int>& mesh_axes() const { return axes_; }

  /// Checks that the layout fits a tensor of this shape (rank equal, sizes non-negative).
  result<void> validate_shape(const shape& global) const;

  /// The box of the shard held by `device_id` of a tensor with global shape `global`.
  /// \returns `errc::invalid_argument` for a rank mismatch or a device not in the mesh.
  result<box> shard_box(const shape& global, std::int64_t device_id) const;

  /// "[x, unsharded]" rendering.
  std::string to_string() const;

  friend bool operator==(const layout& a, const layout& b) { return a.specs_ == b.specs_ && a.mesh_ == b.mesh_; }

 private:
  layout(std::vector<std::string> specs, std::vector<int> axes, mesh m)
      : specs_(std::move(specs)), axes_(std::move(axes)), mesh_(std::move(m)) {}
  std::vector<std::string> specs_;
  std::vector<int> axes_;
  mesh mesh_;
};

}  // namespace meshckpt
