#pragma once
/// \file
/// `io::forwarding_backend`: a backend that forwards every operation to an inner one. A
/// decorator (fault injection, tracing, throttling, a test's gate) derives from it and overrides
/// only the operations it changes.

#include <memory>

#include "meshckpt/io/backend.hpp"

namespace meshckpt::io {

/// Forwards every operation to `inner` (capabilities included); override what you change.
class forwarding_backend : public backend {
 public:
  explicit forwarding_backend(std::shared_ptr<backend> inner) : inner_(std::move(inner)) {}
  std::string_view name() const noexcept override { return "forwarding"; }
  capabilities caps() const override { return inner_->caps(); }
  capabilities caps(handle dir) const override { return inner_->caps(dir); }
  void open_dir(std::string p, bool c, completion<handle> d) override { inner_->open_dir(std::move(p), c, std::move(d)); }
  void open(handle dir, std::string n, open_mode m, completion<handle> d) override { inner_->open(dir, std::move(n), m, std::move(d)); }
  void size(handle f, completion<std::uint64_t> d) override { inner_->size(f, std::move(d)); }
  void read(handle f, std::uint64_t o, std::span<std::byte> b, completion<std::size_t> d) override { inner_->read(f, o, b, std::move(d)); }
  void write(handle f, std::uint64_t o, std::span<const std::byte> b, completion<void> d) override { inner_->write(f, o, b, std::move(d)); }
  void truncate(handle f, std::uint64_t n, completion<void> d) override { inner_->truncate(f, n, std::move(d)); }
  void fsync(handle f, completion<void> d) override { inner_->fsync(f, std::move(d)); }
  void close(handle f, completion<void> d) override { inner_->close(f, std::move(d)); }
  void rename(handle dir, std::string a, std::string b, completion<void> d) override {
    inner_->rename(dir, std::move(a), std::move(b), std::move(d));
  }
  void unlink(handle dir, std::string n, completion<void> d) override { inner_->unlink(dir, std::move(n), std::move(d)); }
  void list(handle dir, completion<std::vector<dir_entry>> d) override { inner_->list(dir, std::move(d)); }
  void register_buffer(std::span<std::byte> m) override { inner_->register_buffer(m); }
  std::string version(handle f) const override { return inner_->version(f); }
  void discard_unpublished(handle d, completion<std::size_t> done) override { inner_->discard_unpublished(d, std::move(done)); }
  result<void> expect_version(handle f, std::string v) override { return inner_->expect_version(f, std::move(v)); }

 protected:
  std::shared_ptr<backend> inner_;
};

}  // namespace meshckpt::io
