#pragma once
// Test support: deterministic tensor contents regenerated from (seed, key, global element
// index), so every restore is checked bit-exact without keeping a copy; temp directories.

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <deque>
#include <functional>
#include <mutex>
#include <new>
#include <optional>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "meshckpt/backends/posix.hpp"
#include "meshckpt/device/accelerator.hpp"
#include "meshckpt/graph/trackable.hpp"
#include "meshckpt/backends/uring.hpp"
#include "meshckpt/format/checksum.hpp"
#include "meshckpt/format/safetensors.hpp"
#include "meshckpt/io/forwarding.hpp"
#include "meshckpt/tensor/dtensor.hpp"

namespace meshckpt::testing {

// Byte `b` of element `flat` of tensor `key` under `seed`.
inline std::uint64_t element_bits(std::uint64_t seed, const std::string& key, std::int64_t flat) {
  std::uint64_t x = seed ^ format::checksum(std::as_bytes(std::span(key.data(), key.size()))) ^
                    (static_cast<std::uint64_t>(flat) * 0x9E3779B97F4A7C15ull);
  x ^= x >> 31;
  x *= 0xBF58476D1CE4E5B9ull;
  x ^= x >> 29;
  return x;
}

// Calls f(global_flat_index, local_flat_index) for every element of box `b` in a tensor of
// shape `global`, in row-major order.
template <class F>
void for_each_element(const shape& global, const box& b, F f) {
  if (b.empty()) return;
  std::size_t r = global.size();
  std::vector<std::int64_t> idx(r, 0);
  std::int64_t local = 0;
  while (true) {
    std::int64_t flat = 0;
    for (std::size_t d = 0; d < r; ++d) flat = flat * global[d] + b.origin[d] + idx[d];
    f(flat, local++);
    std::size_t d = r;
    while (d > 0) {
      --d;
      if (++idx[d] < b.extent[d]) break;
      idx[d] = 0;
      if (d == 0) return;
    }
    if (r == 0) return;
  }
}

// The shard memory of the suites' models: host memory, or with MESHCKPT_TEST_SHARDS=simulated
// (ctest's *_device runs) device memory of one simulated device for the whole process, so the
// same suites run through the device paths (docs/DEVICES.md).
inline device::accelerator* shard_device() {
  static device::accelerator* const acc = []() -> device::accelerator* {
    const char* v = std::getenv("MESHCKPT_TEST_SHARDS");
    if (!v || std::string_view(v) != "simulated") return nullptr;
    device::simulated_options o;
    o.devices = 2;
    return device::make_simulated(o).value().release();  // lives as long as the process
  }();
  return acc;
}

// A test tensor with zeroed shards of its own: an owning dtensor, or device memory of `on`
// (one buffer per shard, spread over its devices; by default the MESHCKPT_TEST_SHARDS device,
// none without it), freed with the tensor. Move-only.
class test_tensor {
 public:
  test_tensor(dtype t, shape s, layout l, device::accelerator* on = shard_device())
      : host_(dtensor::create(t, s, l).value()), view_(host_->view()) {
    if (!on) return;
    std::vector<local_shard> shards;
    int k = 0;
    for (const auto& sh : host_->view().shards()) {
      const int gpu = k++ % on->device_count();
      device_.push_back(device::device_buffer::allocate(*on, gpu, sh.data.size()).value());
      device::copy_to_device_blocking(*on, gpu, device_.back().data(), sh.data).value();
      shards.push_back({sh.device, device_.back().span(), on, gpu});
    }
    view_ = dtensor_view::create(t, std::move(s), std::move(l), std::move(shards)).value();
    host_.reset();
  }
  test_tensor(test_tensor&&) noexcept = default;
  test_tensor& operator=(test_tensor&&) noexcept = default;
  const dtensor_view& view() const { return view_; }

 private:
  std::optional<dtensor> host_;
  std::deque<device::device_buffer> device_;
  dtensor_view view_;
};

// A variable with zeroed shards of its own: host storage, or device memory under
// MESHCKPT_TEST_SHARDS=simulated (kept until the process ends: test models are small).
inline graph::variable make_variable(dtype t, shape s, layout l) {
  if (!shard_device()) return graph::variable(dtensor::create(t, std::move(s), std::move(l)).value());
  static std::mutex mu;
  static std::deque<test_tensor> kept;
  std::lock_guard lk(mu);
  kept.emplace_back(t, std::move(s), std::move(l));
  return graph::variable(kept.back().view());
}

// `v` as host memory: itself, or (device shards) a host copy that `store` writes back.
struct host_image {
  std::optional<dtensor> twin;
  dtensor_view view;
  explicit host_image(const dtensor_view& v) : view(v) {
    if (!any_on_device(v.shards())) return;
    twin.emplace(dtensor::create(v.type(), v.global_shape(), v.layout()).value());
    for (const auto& sh : v.shards())
      if (sh.on_device())
        device::copy_to_host_blocking(*sh.memory, sh.gpu, twin->view().shard_of(sh.device)->data, sh.data.data()).value();
      else
        std::memcpy(twin->view().shard_of(sh.device)->data.data(), sh.data.data(), sh.data.size());
    view = twin->view();
  }
  void store(const dtensor_view& v) const {
    if (!twin) return;
    for (const auto& sh : v.shards()) {
      auto from = twin->view().shard_of(sh.device)->data;
      if (sh.on_device())
        device::copy_to_device_blocking(*sh.memory, sh.gpu, sh.data.data(), from).value();
      else
        std::memcpy(sh.data.data(), from.data(), from.size());
    }
  }
};

// Fills every local shard of `v` with the deterministic contents of tensor `key`.
inline void fill(const dtensor_view& dv, const std::string& key, std::uint64_t seed) {
  host_image img(dv);
  const dtensor_view& v = img.view;
  auto es = static_cast<std::size_t>(dtype_size(v.type()));
  for (const auto& sh : v.shards()) {
    auto b = v.layout().shard_box(v.global_shape(), sh.device).value();
    for_each_element(v.global_shape(), b, [&](std::int64_t flat, std::int64_t local) {
      std::uint64_t bits = element_bits(seed, key, flat);
      std::memcpy(sh.data.data() + static_cast<std::size_t>(local) * es, &bits, es);
    });
  }
  img.store(dv);
}

// A tensor whole on a one-device mesh, filled as `fill` does (a safetensors file's or an
// import's tensors).
inline dtensor whole_tensor(dtype t, const shape& s, const std::string& key, std::uint64_t seed) {
  auto one = mesh::create({{"x", 1}}).value();
  auto d = dtensor::create(t, s, layout::create(std::vector<std::string>(s.size(), "unsharded"), one).value()).value();
  fill(d.view(), key, seed);
  return d;
}

// Writes a safetensors file of `tensors` (whole, one device each) at `path`.
inline void write_safetensors_file(const std::string& path, const std::vector<std::pair<std::string, const dtensor*>>& tensors,
                                   const std::map<std::string, std::string>& metadata = {{"format", "pt"}}) {
  std::vector<format::safetensor_entry> entries;
  for (const auto& [k, d] : tensors) entries.push_back({k, d->view().type(), d->view().global_shape(), 0, 0});
  auto header = format::encode_safetensors_header(entries, metadata).value();
  std::ofstream f(path, std::ios::binary);
  f.write(reinterpret_cast<const char*>(header.data()), static_cast<std::streamsize>(header.size()));
  for (const auto& [k, d] : tensors) {
    const auto& b = d->view().shards().front().data;
    f.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
  }
}

// True when every local shard of `v` holds exactly the contents `fill` would write.
inline bool matches(const dtensor_view& dv, const std::string& key, std::uint64_t seed) {
  host_image img(dv);
  const dtensor_view& v = img.view;
  auto es = static_cast<std::size_t>(dtype_size(v.type()));
  bool ok = true;
  for (const auto& sh : v.shards()) {
    auto b = v.layout().shard_box(v.global_shape(), sh.device).value();
    for_each_element(v.global_shape(), b, [&](std::int64_t flat, std::int64_t local) {
      std::uint64_t bits = element_bits(seed, key, flat);
      if (std::memcmp(sh.data.data() + static_cast<std::size_t>(local) * es, &bits, es) != 0) ok = false;
    });
  }
  return ok;
}

// A suite's size from the environment (make stress raises it, the sanitizer build lowers it):
// NAME's integer value, at least `floor`, or `fallback` when NAME is unset.
inline int env_count(const char* name, int fallback, int floor = 1) {
  const char* v = std::getenv(name);
  return v ? std::max(floor, std::atoi(v)) : fallback;
}

// The backend the API suites run on: MESHCKPT_TEST_BACKEND=posix|uring (ctest runs them with
// both); unset means posix. A uring run on a kernel without io_uring falls back to posix.
inline std::unique_ptr<io::backend> test_backend() {
  const char* v = std::getenv("MESHCKPT_TEST_BACKEND");
  if (v && std::string_view(v) == "uring") return backends::make_backend(backends::backend_kind::automatic).value();
  return backends::make_posix_backend();
}

// A fresh directory removed at scope exit.
struct temp_dir {
  std::filesystem::path path;
  temp_dir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "meshckpt-test-XXXXXX").string();
    if (!::mkdtemp(tmpl.data())) std::abort();
    path = tmpl;
  }
  ~temp_dir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  std::string str() const { return path.string(); }
  std::string operator/(const std::string& name) const { return (path / name).string(); }
};

// Copies every entry of directory `from` into `to`, creating `to`.
inline void copy_dir(const std::string& from, const std::string& to) {
  std::filesystem::create_directories(to);
  for (const auto& e : std::filesystem::directory_iterator(from)) std::filesystem::copy(e.path(), to + "/" + e.path().filename().string());
}

// Test decorators derive from the library's forwarding base (meshckpt/io/forwarding.hpp) and
// override the one or two operations they change.
using io::forwarding_backend;

// Holds data writes back until `release()` (then starts them in order): lets a test observe a
// save between its call and its first write. With `hold_opens`, file opens wait too, so a save
// cannot even read its tensors into staging (which needs no write) before the release.
class gated_backend final : public forwarding_backend {
 public:
  explicit gated_backend(std::shared_ptr<io::backend> inner, bool hold_opens = false)
      : forwarding_backend(std::move(inner)), hold_opens_(hold_opens) {}
  void release() {
    std::deque<std::function<void()>> q;
    {
      std::lock_guard lk(mu_);
      open_ = true;
      q.swap(held_);
    }
    for (auto& f : q) f();
  }
  std::string_view name() const noexcept override { return "gated"; }
  void write(io::handle f, std::uint64_t o, std::span<const std::byte> b, io::completion<void> d) override {
    {
      std::lock_guard lk(mu_);
      if (!open_) {
        held_.push_back([this, f, o, b, d = std::move(d)]() mutable { inner_->write(f, o, b, std::move(d)); });
        return;
      }
    }
    inner_->write(f, o, b, std::move(d));
  }
  void open(io::handle dir, std::string name, io::open_mode mode, io::completion<io::handle> d) override {
    {
      std::lock_guard lk(mu_);
      if (!open_ && hold_opens_) {
        held_.push_back([this, dir, name = std::move(name), mode, d = std::move(d)]() mutable {
          inner_->open(dir, std::move(name), mode, std::move(d));
        });
        return;
      }
    }
    inner_->open(dir, std::move(name), mode, std::move(d));
  }

 private:
  std::mutex mu_;
  bool hold_opens_;
  bool open_ = false;
  std::deque<std::function<void()>> held_;
};

// Fails the data writes numbered `fail_from` and later (counting from 0) with `err`: an IO
// error in the middle of a background flush.
class failing_writes final : public forwarding_backend {
 public:
  failing_writes(std::shared_ptr<io::backend> inner, int fail_from, int err)
      : forwarding_backend(std::move(inner)), fail_from_(fail_from), err_(err) {}
  std::string_view name() const noexcept override { return "failing-writes"; }
  void write(io::handle f, std::uint64_t o, std::span<const std::byte> b, io::completion<void> d) override {
    if (n_.fetch_add(1) >= fail_from_) return d(make_errno_error(err_, "write", "injected at offset " + std::to_string(o)));
    inner_->write(f, o, b, std::move(d));
  }

 private:
  int fail_from_;
  int err_;
  std::atomic<int> n_{0};
};

// A 4096-aligned buffer of `n` bytes (for O_DIRECT transfers).
struct aligned_bytes {
  explicit aligned_bytes(std::size_t n) : p(static_cast<std::byte*>(::operator new (n, std::align_val_t{4096}))) {}
  ~aligned_bytes() { ::operator delete (p, std::align_val_t{4096}); }
  aligned_bytes(const aligned_bytes&) = delete;
  aligned_bytes& operator=(const aligned_bytes&) = delete;
  std::byte* get() const { return p; }
  std::byte* p;
};

}  // namespace meshckpt::testing
