// make_backend (meshckpt/io/make_backend.hpp): the runtime probe between io_uring and POSIX, and
// the routing of s3:// paths to the S3 backend.

#include "meshckpt/io/make_backend.hpp"

#include <cstdio>
#include <mutex>

#include "meshckpt/backends/posix.hpp"
#include "meshckpt/backends/s3.hpp"
#include "meshckpt/backends/uring.hpp"
#include "meshckpt/io/url.hpp"

namespace meshckpt::backends {

namespace {

// Local paths to the disk backend, s3:// URLs to an S3 backend made on first use from the AWS
// environment (s3_options_from_env). The S3 backend's handles are told apart by a high bit.
class routing_backend final : public io::backend {
 public:
  explicit routing_backend(std::unique_ptr<io::backend> local) : local_(std::move(local)) {}

  std::string_view name() const noexcept override { return local_->name(); }
  io::capabilities caps() const override { return local_->caps(); }
  io::capabilities caps(io::handle dir) const override {
    if (auto* s = remote(dir)) return s->caps(strip(dir));
    return local_->caps(dir);
  }
  void open_dir(std::string path, bool create, io::completion<io::handle> done) override {
    if (!is_s3_path(path)) {
      if (io::is_url(path)) return done(io::url_refused(path));
      return local_->open_dir(std::move(path), create, std::move(done));
    }
    auto s = s3();
    if (!s) return done(s.error());
    (*s)->open_dir(std::move(path), create, tagged(std::move(done)));
  }
  void open(io::handle dir, std::string n, io::open_mode m, io::completion<io::handle> d) override {
    if (auto* s = remote(dir)) return s->open(strip(dir), std::move(n), m, tagged(std::move(d)));
    local_->open(dir, std::move(n), m, std::move(d));
  }
  void size(io::handle f, io::completion<std::uint64_t> d) override { pick(f)->size(strip(f), std::move(d)); }
  void read(io::handle f, std::uint64_t o, std::span<std::byte> b, io::completion<std::size_t> d) override {
    pick(f)->read(strip(f), o, b, std::move(d));
  }
  void write(io::handle f, std::uint64_t o, std::span<const std::byte> b, io::completion<void> d) override {
    pick(f)->write(strip(f), o, b, std::move(d));
  }
  void truncate(io::handle f, std::uint64_t n, io::completion<void> d) override { pick(f)->truncate(strip(f), n, std::move(d)); }
  void fsync(io::handle f, io::completion<void> d) override { pick(f)->fsync(strip(f), std::move(d)); }
  void close(io::handle f, io::completion<void> d) override { pick(f)->close(strip(f), std::move(d)); }
  void rename(io::handle dir, std::string a, std::string b, io::completion<void> d) override {
    pick(dir)->rename(strip(dir), std::move(a), std::move(b), std::move(d));
  }
  void unlink(io::handle dir, std::string n, io::completion<void> d) override { pick(dir)->unlink(strip(dir), std::move(n), std::move(d)); }
  void list(io::handle dir, io::completion<std::vector<io::dir_entry>> d) override { pick(dir)->list(strip(dir), std::move(d)); }
  void register_buffer(std::span<std::byte> m) override { local_->register_buffer(m); }
  void discard_unpublished(io::handle dir, io::completion<std::size_t> d) override {
    pick(dir)->discard_unpublished(strip(dir), std::move(d));
  }
  std::string version(io::handle f) const override {
    if (auto* s = remote(f)) return s->version(strip(f));
    return local_->version(f);
  }
  result<void> expect_version(io::handle f, std::string v) override {
    if (auto* s = remote(f)) return s->expect_version(strip(f), std::move(v));
    return local_->expect_version(f, std::move(v));
  }

 private:
  static constexpr std::int64_t tag = std::int64_t{1} << 60;
  io::backend* remote(io::handle h) const {
    if (h.value < tag) return nullptr;
    std::lock_guard lk(mu_);
    return s3_.get();
  }
  io::backend* pick(io::handle h) {
    auto* s = remote(h);
    return s ? s : local_.get();
  }
  static io::handle strip(io::handle h) { return h.value >= tag ? io::handle{h.value - tag} : h; }
  static io::completion<io::handle> tagged(io::completion<io::handle> done) {
    return [done = std::move(done)](result<io::handle> r) {
      if (r) r = io::handle{r->value + tag};
      done(std::move(r));
    };
  }
  result<io::backend*> s3() {
    std::lock_guard lk(mu_);
    if (!s3_) {
      BOOST_OUTCOME_TRY(s3_, make_s3_backend(s3_options_from_env()));
    }
    return s3_.get();
  }

  std::unique_ptr<io::backend> local_;
  mutable std::mutex mu_;
  std::unique_ptr<s3_backend_interface> s3_;
};

result<std::unique_ptr<io::backend>> make_local(backend_kind kind) {
  if (kind == backend_kind::posix) return make_posix_backend();
  auto u = make_uring_backend();
  if (u || kind == backend_kind::uring) return u;
  static std::once_flag once;
  std::call_once(once, [&] { std::fprintf(stderr, "meshckpt: using the POSIX backend: %s\n", u.error().what().c_str()); });
  return make_posix_backend();
}

}  // namespace

result<std::unique_ptr<io::backend>> make_backend(backend_kind kind) {
  BOOST_OUTCOME_TRY(auto local, make_local(kind));
  return std::unique_ptr<io::backend>(std::make_unique<routing_backend>(std::move(local)));
}

}  // namespace meshckpt::backends
