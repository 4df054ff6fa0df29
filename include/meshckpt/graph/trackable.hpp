#pragma once
/// \file
/// The object graph: trackable objects with named children, some of which hold a value (a
/// tensor). Checkpoints save the graph and match it structurally on restore: node 0 is the
/// root, then children by edge name, breadth-first — never by variable names.
///
/// Children are non-owning references (the usual case: children are members of their parent).
/// The graph keeps itself right when objects move or die: a trackable can be moved (returned
/// from a function, put in a container), and its edges move with it — every parent that tracked
/// it now tracks the new object, and the new object has its children; members moved along with
/// it are tracked at their new addresses. A trackable that is destroyed leaves the graph: its
/// parents lose that edge, its children lose that parent.

#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "meshckpt/error.hpp"
#include "meshckpt/tensor/dtensor.hpp"

namespace meshckpt::graph {

class trackable;

namespace detail {
struct pending_restore;
void set_pending(trackable& parent, const std::string& name, std::shared_ptr<pending_restore> p);
std::shared_ptr<pending_restore> take_pending(trackable& parent, const std::string& name);
}  // namespace detail

/// Escapes one object name for use in a key: "." becomes "..", "/" becomes ".S" (as TensorFlow
/// does), so names containing '/' and '.' round-trip through `unescape_name`.
std::string escape_name(std::string_view name);
/// Inverse of `escape_name`; `errc::invalid_argument` for a malformed escape.
result<std::string> unescape_name(std::string_view escaped);
/// Joins escaped names with '/' into a key ("model/dense/kernel").
std::string join_key(const std::vector<std::string>& names);
/// Splits a key into unescaped names.
result<std::vector<std::string>> split_key(std::string_view key);

/// A value captured for a save: the view to write and, for values copied out of the object
/// (host scalars and bytes), the owner of that copy, which the save keeps alive until it
/// completes — so the object may change, or be saved again, meanwhile.
struct value_snapshot {
  dtensor_view view;
  std::shared_ptr<const void> owner;
};

/// A node of the object graph. Derive from it (or from `module`) and call `track` for each child.
class trackable {
 public:
  trackable() = default;
  trackable(const trackable&) = delete;
  trackable& operator=(const trackable&) = delete;
  /// Takes `other`'s place in the graph: its parents now track this object, and this object
  /// tracks its children and any restore still pending for them. `other` is left with no edges.
  trackable(trackable&& other) noexcept;
  /// Not assignable: an object that is already in a graph cannot take another's place.
  trackable& operator=(trackable&&) = delete;
  virtual ~trackable();

  /// Named children, in the order they were first tracked.
  const std::vector<std::pair<std::string, trackable*>>& children() const { return children_; }
  /// The child called `name`, or nullptr.
  trackable* child(std::string_view name) const;

  /// Adds `child` under `name` (replacing a different object of that name). If a restore is
  /// pending for `name` (the checkpoint had such a child when this object was restored), the
  /// value is restored into `child` and its subtree now; an error there (dtype or shape
  /// mismatch, IO) is recorded in that restore's load status.
  void add_child(std::string name, trackable& child);

  /// True when this object holds a value (a tensor) of its own.
  virtual bool has_value() const { return false; }
  /// The value to save; `m` is the checkpoint's mesh (for values that are not DTensors).
  virtual result<value_snapshot> value_for_save(const mesh& m);
  /// A view to read a saved value of this dtype and global shape into; errors on mismatch.
  virtual result<dtensor_view> value_for_restore(dtype t, const shape& s, const mesh& m);
  /// Called after a value was read into the view from `value_for_restore`.
  virtual void value_restored() {}
  /// A short description for messages ("variable float32[4, 8]", "scalar int64").
  virtual std::string describe() const { return "object"; }

 protected:
  /// `add_child(name, child)`, returning `child` so members can be tracked inline.
  template <class T>
  T& track(std::string name, T& child) {
    add_child(std::move(name), child);
    return child;
  }

 private:
  friend void detail::set_pending(trackable&, const std::string&, std::shared_ptr<detail::pending_restore>);
  friend std::shared_ptr<detail::pending_restore> detail::take_pending(trackable&, const std::string&);
  void drop_edges_to(const trackable* c) noexcept;
  std::vector<std::pair<std::string, trackable*>> children_;
  std::map<std::string, trackable*, std::less<>> index_;  // children_ by name (lookups in large modules)
  std::vector<trackable*> parents_;                       // one entry per edge into this object
  std::map<std::string, std::shared_ptr<detail::pending_restore>, std::less<>> pending_;
};

/// A trackable with no value of its own: a container of children (a model, a layer).
class module : public trackable {
 public:
  std::string describe() const override { return "module"; }
};

/// A DTensor-valued variable: owns its storage, or views caller memory. A save reads the
/// variable's memory directly: do not modify it until the save completes.
class variable : public trackable {
 public:
  /// Takes ownership of a DTensor.
  explicit variable(dtensor t);
  /// Views caller memory (which must outlive the variable).
  explicit variable(dtensor_view v);
  /// Allocates zero-initialised storage for this dtype, shape and layout.
  static result<std::unique_ptr<variable>> create(dtype t, shape s, layout l);

  const dtensor_view& view() const { return view_; }
  /// Bytes of the shard of local device `device` (empty when not local).
  std::span<std::byte> shard_bytes(std::int64_t device) const;
  /// Fills every local shard from `global`, the whole tensor row-major (`meshckpt::assign_global`).
  result<void> assign_global(std::span<const std::byte> global) const;
  /// Copies every local shard into its box of `global`, the whole tensor row-major
  /// (`meshckpt::copy_to_global`); parts held by other processes are left as they are.
  result<void> copy_to_global(std::span<std::byte> global) const;

  bool has_value() const override { return true; }
  result<value_snapshot> value_for_save(const mesh& m) override;
  result<dtensor_view> value_for_restore(dtype t, const shape& s, const mesh& m) override;
  std::string describe() const override;

 private:
  std::unique_ptr<dtensor> owned_;
  dtensor_view view_;
};

/// A host value replicated on the checkpoint's mesh: a byte string saved as a rank-1 tensor of
/// dtype `type` (or a scalar). Base of `scalar<T>` and `bytes_state`.
class replicated_value : public trackable {
 public:
  bool has_value() const override { return true; }
  result<value_snapshot> value_for_save(const mesh& m) override;
  result<dtensor_view> value_for_restore(dtype t, const shape& s, const mesh& m) override;
  void value_restored() override;

 protected:
  replicated_value(dtype t, bool resizable, shape s) : type_(t), resizable_(resizable), shape_(std::move(s)) {}
  std::vector<std::byte> bytes_;
  dtype type_;
  bool resizable_;
  shape shape_;

 private:
  std::unique_ptr<dtensor> staging_;
};

/// Maps a C++ arithmetic type to its dtype.
template <class T>
constexpr dtype dtype_of() = delete;
template <>
constexpr dtype dtype_of<bool>() {
  return dtype::boolean;
}
template <>
constexpr dtype dtype_of<std::int8_t>() {
  return dtype::int8;
}
template <>
constexpr dtype dtype_of<std::int16_t>() {
  return dtype::int16;
}
template <>
constexpr dtype dtype_of<std::int32_t>() {
  return dtype::int32;
}
template <>
constexpr dtype dtype_of<std::int64_t>() {
  return dtype::int64;
}
template <>
constexpr dtype dtype_of<std::uint8_t>() {
  return dtype::uint8;
}
template <>
constexpr dtype dtype_of<std::uint16_t>() {
  return dtype::uint16;
}
template <>
constexpr dtype dtype_of<std::uint32_t>() {
  return dtype::uint32;
}
template <>
constexpr dtype dtype_of<std::uint64_t>() {
  return dtype::uint64;
}
template <>
constexpr dtype dtype_of<float>() {
  return dtype::float32;
}
template <>
constexpr dtype dtype_of<double>() {
  return dtype::float64;
}

/// A scalar (step counter, learning rate, epoch) saved as a 0-d tensor.
template <class T>
class scalar : public replicated_value {
 public:
  explicit scalar(T v = T{}) : replicated_value(dtype_of<T>(), false, {}) { set(v); }
  T get() const {
    T v;
    std::memcpy(&v, bytes_.data(), sizeof v);
    return v;
  }
  void set(T v) {
    bytes_.resize(sizeof v);
    std::memcpy(bytes_.data(), &v, sizeof v);
  }
  std::string describe() const override { return "scalar " + std::string(dtype_name(dtype_of<T>())); }
};

/// Opaque state of any length (RNG state, data-loader position), saved as a `blob` tensor;
/// restoring resizes it to the saved length.
class bytes_state : public replicated_value {
 public:
  bytes_state() : replicated_value(dtype::blob, true, {0}) {}
  explicit bytes_state(std::vector<std::byte> b) : bytes_state() { set(std::move(b)); }
  const std::vector<std::byte>& get() const { return bytes_; }
  void set(std::vector<std::byte> b) {
    bytes_ = std::move(b);
    shape_ = {static_cast<std::int64_t>(bytes_.size())};
  }
  std::string describe() const override { return "bytes"; }
};

/// A map-like container of named values for trainers that just hold named tensors: each entry
/// is a child (its name may contain '/' and '.'). Owns what `emplace` creates.
class state_dict : public trackable {
 public:
  state_dict() = default;
  state_dict(state_dict&&) = default;
  /// Destroys the owned children last-first (each leaves the graph in O(1)).
  ~state_dict() override {
    while (!owned_.empty()) owned_.pop_back();
  }
  /// Creates an owned variable under `name`.
  result<variable*> emplace(std::string name, dtype t, shape s, layout l);
  /// Adds an existing trackable (not owned) under `name`.
  void insert(std::string name, trackable& t) { add_child(std::move(name), t); }
  /// The child called `name`, as a variable, or nullptr.
  variable* find_variable(std::string_view name) const;
  std::size_t size() const { return children().size(); }
  std::string describe() const override { return "state_dict"; }

 private:
  std::vector<std::unique_ptr<trackable>> owned_;
};

}  // namespace meshckpt::graph
