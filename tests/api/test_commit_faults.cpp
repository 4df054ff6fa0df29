// The commit protocol under failure: every IO operation of a save fails in turn (EIO, ENOSPC),
// and the process "crashes" before every operation in turn. After each: the save reports an
// error (or, when only the post-commit cleanup failed, success), the directory holds the old or
// the new checkpoint bit-exact — the old one whenever the failure came before the rename — and
// the next save leaves no leftovers. The full fault backend (dropping unsynced data, torn
// writes) is io_backends/fault's job; this covers the protocol's ordering and its rollback.

#include <catch2/catch.hpp>

#include <atomic>
#include <deque>
#include <mutex>

#include "meshckpt/pipeline/tensor_io.hpp"
#include "meshckpt/backends/posix.hpp"
#include "support.hpp"

using namespace meshckpt;

namespace {

// Numbers every operation; fails operation `fail_at` (or, in crash mode, every operation from
// `fail_at` on, as if the process had died there) with `err`.
class failing_backend final : public io::backend {
 public:
  explicit failing_backend(io::backend& inner) : inner_(inner) {}
  int fail_at = -1;
  int err = EIO;
  bool crash = false;
  std::vector<std::string> log;

  std::string_view name() const noexcept override { return "failing"; }
  io::capabilities caps() const override { return inner_.caps(); }

  void open_dir(std::string p, bool c, io::completion<io::handle> d) override {
    if (!inject("open_dir", p, d)) inner_.open_dir(std::move(p), c, std::move(d));
  }
  void open(io::handle dir, std::string n, io::open_mode m, io::completion<io::handle> d) override {
    if (!inject(m == io::open_mode::read || m == io::open_mode::read_direct ? "open" : "create", n, d))
      inner_.open(dir, std::move(n), m, std::move(d));
  }
  void size(io::handle f, io::completion<std::uint64_t> d) override {
    if (!inject("size", "", d)) inner_.size(f, std::move(d));
  }
  void read(io::handle f, std::uint64_t o, std::span<std::byte> b, io::completion<std::size_t> d) override {
    if (!inject("read", "", d)) inner_.read(f, o, b, std::move(d));
  }
  void write(io::handle f, std::uint64_t o, std::span<const std::byte> b, io::completion<void> d) override {
    if (!inject("write", "", d)) inner_.write(f, o, b, std::move(d));
  }
  void truncate(io::handle f, std::uint64_t n, io::completion<void> d) override {
    if (!inject("truncate", "", d)) inner_.truncate(f, n, std::move(d));
  }
  void fsync(io::handle f, io::completion<void> d) override {
    if (!inject("fsync", "", d)) inner_.fsync(f, std::move(d));
  }
  void close(io::handle f, io::completion<void> d) override {
    if (!inject("close", "", d)) inner_.close(f, std::move(d));
  }
  void rename(io::handle dir, std::string a, std::string b, io::completion<void> d) override {
    if (!inject("rename", a, d)) inner_.rename(dir, std::move(a), std::move(b), std::move(d));
  }
  void unlink(io::handle dir, std::string n, io::completion<void> d) override {
    if (!inject("unlink", n, d)) inner_.unlink(dir, std::move(n), std::move(d));
  }
  void list(io::handle dir, io::completion<std::vector<io::dir_entry>> d) override {
    if (!inject("list", "", d)) inner_.list(dir, std::move(d));
  }

 private:
  template <class T>
  bool inject(const char* op, const std::string& what, io::completion<T>& done) {
    int n;
    {
      std::lock_guard lk(mu_);
      n = static_cast<int>(log.size());
      log.push_back(std::string(op) + " " + what);
    }
    bool fail = crash ? (fail_at >= 0 && n >= fail_at) : n == fail_at;
    if (fail) done(make_errno_error(err, std::string("injected ") + op, what));
    return fail;
  }
  io::backend& inner_;
  std::mutex mu_;
};

struct state {
  std::deque<dtensor> storage;
  std::vector<named_tensor> named;
};

state make_state(std::optional<std::uint64_t> seed) {
  auto m = mesh::create({{"x", 2}, {"y", 2}}).value();
  const std::vector<std::tuple<std::string, shape, std::vector<std::string>>> specs = {
      {"a/big", {256, 256}, {"x", "y"}},             // 64 KiB slices: aligned, written directly
      {"a/huge", {1024, 1024}, {"x", "unsharded"}},  // 2 MiB slices: direct writes
      {"b/small", {10}, {"unsharded"}},
      {"c/uneven", {7, 3}, {"y", "unsharded"}},
  };
  state s;
  for (const auto& [key, sh, l] : specs) {
    s.storage.push_back(dtensor::create(dtype::float32, sh, layout::create(l, m).value()).value());
    if (seed) testing::fill(s.storage.back().view(), key, *seed);
    s.named.push_back({key, s.storage.back().view()});
  }
  return s;
}

// Which of the two states the checkpoint holds now: 1, 2, or 0 when unreadable or neither.
int holds(io::backend& be, const std::string& prefix) {
  auto dst = make_state(std::nullopt);
  if (!read_tensors(be, prefix, dst.named)) return 0;
  for (std::uint64_t seed : {1, 2}) {
    bool all = true;
    for (const auto& n : dst.named) all = all && testing::matches(n.tensor, n.key, seed);
    if (all) return static_cast<int>(seed);
  }
  return 0;
}

// Writes `a`, then saves `b` over it through a counting backend: the number of IO operations
// of that save and the index of its rename (the commit point).
struct reference_save {
  int ops;
  int rename_at;
  std::vector<std::string> log;
};

reference_save profile_save(io::backend& real, const std::string& prefix, const state& a, const state& b) {
  failing_backend probe(real);
  REQUIRE(write_tensors(real, prefix, a.named));
  REQUIRE(write_tensors(probe, prefix, b.named));
  auto it = std::find_if(probe.log.begin(), probe.log.end(), [](auto& s) { return s.starts_with("rename"); });
  REQUIRE(it != probe.log.end());
  return {static_cast<int>(probe.log.size()), static_cast<int>(it - probe.log.begin()), probe.log};
}

}  // namespace

TEST_CASE("a save that fails at any IO operation never loses or damages a checkpoint", "[commit][faults]") {
  auto real = testing::test_backend();
  auto a = make_state(1), b = make_state(2);
  testing::temp_dir tmp;
  const std::string prefix = tmp / "ck";

  const auto ref = profile_save(*real, prefix, a, b);
  const int ops = ref.ops, rename_at = ref.rename_at;
  INFO("reference save: " << ops << " operations, rename is #" << rename_at);

  int errors = 0, successes = 0;
  for (int err : {EIO, ENOSPC}) {
    for (int k = 0; k < ops; ++k) {
      INFO("failing operation #" << k << " (" << ref.log[static_cast<std::size_t>(k)] << ") with errno " << err);
      REQUIRE(write_tensors(*real, prefix, a.named));
      failing_backend fb(*real);
      fb.fail_at = k;
      fb.err = err;
      auto r = write_tensors(fb, prefix, b.named);
      int now = holds(*real, prefix);
      if (r) {
        ++successes;
        CHECK(k > rename_at + 1);  // only the best-effort cleanup may fail silently
        CHECK(now == 2);
      } else {
        ++errors;
        CHECK(r.error().code.value() == err);
        CHECK_THAT(r.error().what(), Catch::Contains("save " + prefix) && Catch::Contains("injected"));
        CHECK(now == (k < rename_at ? 1 : now));
        CHECK(now != 0);
        if (k < rename_at) CHECK(scan_directory(*real, tmp.str()).value().leftovers.empty());  // rolled back
      }
    }
  }
  WARN("injected " << 2 * ops << " IO errors into a " << ops << "-operation save: " << errors << " reported, " << successes
                   << " in post-commit cleanup tolerated; 0 checkpoints lost");
}

TEST_CASE("a save that dies before any IO operation leaves the old or the new checkpoint intact", "[commit][faults][crash]") {
  auto real = testing::test_backend();
  auto a = make_state(1), b = make_state(2);
  testing::temp_dir tmp;
  const std::string prefix = tmp / "ck";
  const auto ref = profile_save(*real, prefix, a, b);
  const int ops = ref.ops, rename_at = ref.rename_at;

  for (int k = 0; k <= ops; ++k) {
    INFO("crash before operation #" << k);
    REQUIRE(write_tensors(*real, prefix, a.named));
    {
      failing_backend fb(*real);
      fb.fail_at = k;
      fb.crash = true;
      (void)write_tensors(fb, prefix, b.named);
    }
    int now = holds(*real, prefix);
    CHECK(now == (k <= rename_at ? 1 : 2));
    // Recovery: the next save succeeds and removes every leftover of the crashed one.
    REQUIRE(write_tensors(*real, prefix, a.named));
    CHECK(scan_directory(*real, tmp.str()).value().leftovers.empty());
    CHECK(holds(*real, prefix) == 1);
  }
}
