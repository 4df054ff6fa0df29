// Allocation failure (RELIABILITY.md): the N-th allocation made by the calling thread fails
// (std::bad_alloc), for every N up to the number of allocations of a save, a restore, and a
// managed save with retention. Each run must end in a result — success, or an error saying
// "out of memory" — with no crash, the previous checkpoint intact, and no leaked file
// descriptor. (Allocations on the backends' worker threads are not failed: a failure there
// is a failure of the process, not of an operation.)

#include <catch2/catch.hpp>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <deque>
#include <execinfo.h>
#include <filesystem>
#include <new>
#include <thread>

#include "meshckpt/interchange/safetensors_io.hpp"
#include "meshckpt/pipeline/tensor_io.hpp"
#include "meshckpt/interchange/tf_bundle_io.hpp"
#include "meshckpt/format/safetensors.hpp"
#include "reliability.hpp"

namespace {

thread_local long countdown = -1;      // < 0: off; the allocation that brings it to 0 fails
thread_local long counted = 0;         // allocations while counting
thread_local long pending = -1;        // the countdown `arm()` starts
thread_local std::size_t largest = 0;  // the largest allocation while counting

void* allocate(std::size_t n, std::size_t align) {
  if (countdown > 0 && --countdown == 0) {
    countdown = -1;
    if (std::getenv("MESHCKPT_ALLOC_BACKTRACE")) {  // where the failing allocation is (addr2line)
      void* frames[64];
      backtrace_symbols_fd(frames, backtrace(frames, 64), 2);
    }
    throw std::bad_alloc();
  }
  if (countdown == -2) {
    ++counted;
    largest = std::max(largest, n);
  }
  void* p = align > alignof(std::max_align_t) ? std::aligned_alloc(align, (n + align - 1) / align * align) : std::malloc(n ? n : 1);
  if (!p) throw std::bad_alloc();
  return p;
}

}  // namespace

void* operator new(std::size_t n) { return allocate(n, 0); }
void* operator new[](std::size_t n) { return allocate(n, 0); }
void* operator new(std::size_t n, std::align_val_t a) { return allocate(n, static_cast<std::size_t>(a)); }
void* operator new[](std::size_t n, std::align_val_t a) { return allocate(n, static_cast<std::size_t>(a)); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }

using namespace meshckpt;
using namespace meshckpt::testing;

namespace {

std::size_t open_fds() {
  std::size_t n = 0;
  for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator("/proc/self/fd")) ++n;
  return n;
}

// "fd=target" for every open descriptor (to name a leak).
std::string open_fd_list() {
  std::string target;
  for (const auto& e : std::filesystem::directory_iterator("/proc/self/fd")) {
    int fd = std::atoi(e.path().filename().c_str());
    std::error_code ec;
    auto t = std::filesystem::read_symlink(e.path(), ec);
    if (!ec) target += " " + std::to_string(fd) + "=" + t.string();
  }
  return target;
}

// Starts the countdown each_failure prepared: called by the operation under test right before
// the call whose allocations are failed (not before its set-up).
void arm() { countdown = std::exchange(pending, -1); }

// Counts the allocations of f() on this thread (and notes the largest).
template <class F>
long allocations_of(F f) {
  counted = 0;
  largest = 0;
  countdown = -2;
  f();
  countdown = -1;
  return counted;
}

struct tally {
  long runs = 0, failed = 0, succeeded = 0;
  std::vector<std::string> problems;
};

// Runs f() with the n-th allocation failing, for every n; f returns the operation's result.
template <class F, class Check>
tally each_failure(const char* phase, long total, F f, Check after) {
  tally t;
  // To debug one allocation point: MESHCKPT_ALLOC_PHASE=save|restore|managed MESHCKPT_ALLOC_FROM=n.
  if (const char* only = std::getenv("MESHCKPT_ALLOC_PHASE"); only && std::string_view(only) != phase) return t;
  std::size_t fds = open_fds();
  long first = 1;
  if (const char* f = std::getenv("MESHCKPT_ALLOC_FROM")) first = std::atol(f);  // to debug one allocation point
  for (long n = first; n <= total; ++n) {
    if (std::getenv("MESHCKPT_ALLOC_TRACE")) std::fprintf(stderr, "allocation %ld of %ld\n", n, total);
    pending = n;
    result<void> r = success();
    try {
      r = f();
    } catch (const std::bad_alloc&) {
      r = make_error(errc::limit_exceeded, "out of memory (thrown to the caller)");
    }
    countdown = -1;
    pending = -1;
    if (std::getenv("MESHCKPT_ALLOC_TRACE")) std::fprintf(stderr, "  -> %s\n", r ? "ok" : r.error().what().c_str());
    ++t.runs;
    if (r) {
      ++t.succeeded;
    } else {
      ++t.failed;
      if (r.error().what().find("out of memory") == std::string::npos && r.error().code != errc::limit_exceeded)
        t.problems.push_back("allocation " + std::to_string(n) + ": unclear error: " + r.error().what());
    }
    if (auto p = after(); !p.empty()) t.problems.push_back("allocation " + std::to_string(n) + ": " + p);
    // Detached closes (the cleanup of last resort) complete on the backend's threads: give them
    // a moment before calling a descriptor leaked.
    for (int i = 0; i < 200 && open_fds() != fds; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    if (const std::size_t now = open_fds(); now != fds) {
      t.problems.push_back("allocation " + std::to_string(n) + ": " + std::to_string(now) + " file descriptors open, " +
                           std::to_string(fds) + " before (open: " + open_fd_list() + ")");
      fds = now;  // each leak reported once
    }
  }
  return t;
}

struct small_state {
  std::deque<dtensor> keep;
  std::vector<named_tensor> tensors;
  explicit small_state(std::uint64_t seed) {
    auto m = mesh::create({{"x", 2}}).value();
    keep.push_back(dtensor::create(dtype::float32, {64, 8}, layout::create({"x", "unsharded"}, m).value()).value());
    keep.push_back(dtensor::create(dtype::int32, {5}, layout::create({"unsharded"}, m).value()).value());
    fill(keep[0].view(), "a", seed);
    fill(keep[1].view(), "b", seed);
    tensors = {{"a", keep[0].view()}, {"b", keep[1].view()}};
  }
  bool holds(std::uint64_t seed) const { return matches(keep[0].view(), "a", seed) && matches(keep[1].view(), "b", seed); }
};

}  // namespace

TEST_CASE("the n-th allocation fails during a save, a restore and a managed save: an error, never a crash", "[alloc]") {
  auto be = std::shared_ptr<io::backend>(test_backend());
  std::printf("backend: %s\n", std::string(be->name()).c_str());
  temp_dir tmp;
  const std::string prefix = tmp / "ck";
  small_state one(1), two(2);
  REQUIRE(write_tensors(*be, prefix, one.tensors));

  // Save (over an existing checkpoint).
  const long save_allocs = allocations_of([&] { (void)write_tensors(*be, prefix, two.tensors); });
  REQUIRE(write_tensors(*be, prefix, one.tensors));
  auto saves = each_failure(
      "save", save_allocs,
      [&]() -> result<void> {
        arm();
        auto r = write_tensors(*be, prefix, two.tensors);
        return r ? result<void>(success()) : result<void>(r.error());
      },
      [&]() -> std::string {
        small_state back(0);
        if (!read_tensors(*be, prefix, back.tensors)) return "the checkpoint does not restore";
        if (!back.holds(1) && !back.holds(2)) return "the checkpoint holds neither the old nor the new values";
        if (back.holds(2) && !write_tensors(*be, prefix, one.tensors)) return "cannot reset";
        return {};
      });
  // Restore.
  small_state target(0);
  const long restore_allocs = allocations_of([&] { (void)read_tensors(*be, prefix, target.tensors); });
  auto restores = each_failure(
      "restore", restore_allocs,
      [&]() -> result<void> {
        arm();
        auto r = read_tensors(*be, prefix, target.tensors);
        if (r && !target.holds(1)) return make_error(errc::invalid_argument, "restore succeeded with wrong values");
        return r ? result<void>(success()) : result<void>(r.error());
      },
      [] { return std::string(); });
  // A managed save with retention (deletes the oldest of two).
  temp_dir mdir;
  {
    model mdl;
    auto c = checkpoint::create(mesh8(), &mdl, {}, opts(be)).value();
    auto mgr = checkpoint_manager::create(*c, mdir.str(), mopts()).value();
    for (int s = 1; s <= 2; ++s) {
      mdl.set(s);
      REQUIRE(mgr->save());
    }
  }
  long manager_allocs = 0;
  auto managed = [&](bool count) -> result<void> {
    model mdl;
    auto c = checkpoint::create(mesh8(), &mdl, {}, opts(be));
    if (!c) return c.error();
    auto mgr = checkpoint_manager::create(**c, mdir.str(), mopts());
    if (!mgr) return mgr.error();
    (void)(*mgr)->restore_or_initialize();
    mdl.set((*c)->save_counter() + 1);
    if (count) {
      result<void> r = success();
      manager_allocs = allocations_of([&] {
        auto saved = (*mgr)->save();
        if (!saved) r = saved.error();
      });
      return r;
    }
    arm();
    auto r = (*mgr)->save();
    countdown = -1;
    return r ? result<void>(success()) : result<void>(r.error());
  };
  {
    auto counted_save = managed(true);
    INFO((counted_save ? std::string() : counted_save.error().what()));
    REQUIRE(counted_save);
  }
  auto managed_runs = each_failure(
      "managed", manager_allocs, [&] { return managed(false); },
      [&]() -> std::string {
        violations v;
        auto be2 = std::shared_ptr<io::backend>(backends::make_posix_backend());
        auto scan = scan_directory(*be2, mdir.str());
        if (!scan || scan->checkpoints.empty()) return "no checkpoint left";
        for (const auto& name : scan->checkpoints) {
          model back;
          auto c = checkpoint::create(mesh8(), &back, {}, opts(be2)).value();
          auto st = c->restore(mdir / name);
          if (!st || !back.holds(number_of(name))) return name + " does not restore its values";
          (void)st->expect_partial();
        }
        return {};
      });
  // Retention, as the manager runs it after a commit (on its IO thread; here on the calling
  // thread, whose allocations the countdown fails): delete the oldest checkpoint, record the
  // state file, remove leftovers. Each run starts from a copy of ckpt-1 and ckpt-2.
  temp_dir rdirs;
  int copies = 0;
  std::string rdir;
  auto fresh = [&] {
    rdir = rdirs / ("r" + std::to_string(copies++));
    copy_dir(base_dir().str(), rdir);
  };
  auto retention = [&]() -> result<void> {
    auto be2 = std::shared_ptr<io::backend>(backends::make_posix_backend());
    checkpoint_state st;
    st.model_checkpoint_path = "ckpt-2";
    st.all_model_checkpoint_paths = {"ckpt-2"};
    arm();
    auto r = delete_checkpoint(*be2, rdir + "/ckpt-1");
    if (r) r = write_checkpoint_state(*be2, rdir, st);
    if (r) {
      auto o = remove_orphans(*be2, rdir, "ckpt");
      if (!o) r = o.error();
    }
    countdown = -1;
    return r;
  };
  fresh();
  long retention_allocs = 0;
  {
    result<void> counted_run = success();
    retention_allocs = allocations_of([&] { counted_run = retention(); });
    REQUIRE(counted_run);
  }
  auto retention_runs = each_failure(
      "retention", retention_allocs,
      [&] {
        fresh();
        return retention();
      },
      [&]() -> std::string {
        violations v;
        check_recovery(rdir, {2}, "retention", v);
        return v.list.empty() ? std::string() : v.list.front();
      });
  std::printf(
      "allocation failures: save %ld runs (%ld failed cleanly, %ld succeeded), restore %ld (%ld, %ld), managed save %ld (%ld, %ld), "
      "retention %ld (%ld, %ld)\n",
      saves.runs, saves.failed, saves.succeeded, restores.runs, restores.failed, restores.succeeded, managed_runs.runs, managed_runs.failed,
      managed_runs.succeeded, retention_runs.runs, retention_runs.failed, retention_runs.succeeded);
  for (const auto* t : {&saves, &restores, &managed_runs, &retention_runs})
    for (std::size_t i = 0; i < std::min<std::size_t>(t->problems.size(), 10); ++i) std::printf("  %s\n", t->problems[i].c_str());
  CHECK(saves.problems.empty());
  CHECK(restores.problems.empty());
  CHECK(managed_runs.problems.empty());
  CHECK(retention_runs.problems.empty());
  if (!std::getenv("MESHCKPT_ALLOC_PHASE")) CHECK(saves.runs > 50);
}

namespace {

// A safetensors file, a meshckpt checkpoint and a TensorFlow bundle of `tensors` (whole, one
// device each) in `dir`: "in.safetensors", "src", "tf".
void write_sources(io::backend& be, const temp_dir& dir, const std::vector<named_tensor>& tensors) {
  std::vector<format::safetensor_entry> entries;
  for (const auto& t : tensors) entries.push_back({t.key, t.tensor.type(), t.tensor.global_shape(), 0, 0});
  auto header = format::encode_safetensors_header(entries, {{"format", "pt"}}).value();
  std::FILE* f = std::fopen((dir / "in.safetensors").c_str(), "wb");
  REQUIRE(f);
  std::fwrite(header.data(), 1, header.size(), f);
  for (const auto& t : tensors) std::fwrite(t.tensor.shards().front().data.data(), 1, t.tensor.shards().front().data.size(), f);
  std::fclose(f);
  REQUIRE(write_tensors(be, dir / "src", tensors));
  REQUIRE(export_tf_bundle(be, dir / "src", dir / "tf"));
}

}  // namespace

TEST_CASE("imports stream: no allocation holds a tensor, and a failed allocation leaves no checkpoint", "[alloc][import]") {
  auto be = std::shared_ptr<io::backend>(test_backend());
  auto import = [&](bool tf, const temp_dir& dir, const std::string& to) {
    auto r = tf ? import_tf_checkpoint(*be, dir / "tf", to) : import_safetensors(*be, dir / "in.safetensors", to);
    return r ? result<void>(success()) : result<void>(r.error());
  };
  {
    // 48 MiB in one tensor: no allocation of the import is larger than a staging buffer (8 MiB;
    // the old import allocated the whole tensor).
    temp_dir big_dir;
    auto big = whole_tensor(dtype::float32, {4096, 3072}, "big", 5);
    write_sources(*be, big_dir, {{"big", big.view()}});
    for (const bool tf : {false, true}) {
      INFO((tf ? "TensorFlow" : "safetensors"));
      result<void> r = success();
      allocations_of([&] { r = import(tf, big_dir, big_dir / (tf ? "from-tf" : "from-st")); });
      REQUIRE(r);
      std::printf("import of a 48 MiB tensor from %s: largest allocation %zu bytes\n", tf ? "TensorFlow" : "safetensors", largest);
      CHECK(largest <= (8u << 20) + 4096);
    }
    // Restored from TensorFlow onto two shards (each needs half of the stored tensor, whose
    // one CRC covers it whole): checked in staging pieces, never buffered whole.
    auto tf = read_tf_checkpoint(*be, big_dir / "tf").value();
    auto m2 = mesh::create({{"x", 2}}).value();
    auto target = dtensor::create(dtype::float32, {4096, 3072}, layout::create({"unsharded", "x"}, m2).value()).value();
    std::vector<named_tensor> targets = {{"big", target.view()}};
    result<read_report> r = read_report{};
    allocations_of([&] { r = read_tensors(*be, tf.prefix, tf.manifest, targets); });
    REQUIRE(r);
    CHECK(matches(target.view(), "big", 5));
    std::printf("resharded restore of a 48 MiB TensorFlow tensor: largest allocation %zu bytes\n", largest);
    CHECK(largest <= (8u << 20) + 4096);
    // Exported to safetensors from a sharded checkpoint and from TensorFlow: blocks of rows.
    REQUIRE(write_tensors(*be, big_dir / "sharded", targets));
    auto sharded = read_manifest(*be, big_dir / "sharded").value();
    for (const bool from_tf : {false, true}) {
      INFO((from_tf ? "from TensorFlow" : "from a sharded checkpoint"));
      result<void> e = success();
      allocations_of([&] {
        e = from_tf ? export_safetensors(*be, tf.prefix, tf.manifest, {"big"}, {}, big_dir / "tf.safetensors")
                    : export_safetensors(*be, big_dir / "sharded", sharded, {"big"}, {}, big_dir / "sharded.safetensors");
      });
      REQUIRE(e);
      std::printf("export to safetensors of a 48 MiB tensor %s: largest allocation %zu bytes\n",
                  from_tf ? "from TensorFlow" : "stored sharded", largest);
      CHECK(largest <= (8u << 20) + 4096);
      auto back = whole_tensor(dtype::float32, {4096, 3072}, "x", 5);
      std::vector<named_tensor> into = {{"big", back.view()}};
      REQUIRE(read_safetensors(*be, big_dir / (from_tf ? "tf.safetensors" : "sharded.safetensors"), into));
      CHECK(matches(back.view(), "big", 5));
    }
  }
  temp_dir dir;
  auto a = whole_tensor(dtype::float32, {300, 100}, "a", 5);
  auto b = whole_tensor(dtype::int64, {3}, "b", 5);
  write_sources(*be, dir, {{"a", a.view()}, {"b", b.view()}});
  for (const bool tf : {false, true}) {
    INFO((tf ? "TensorFlow" : "safetensors"));
    const long total = allocations_of([&] { (void)import(tf, dir, dir / "counted"); });
    int attempt = 0;
    std::string to;
    auto runs = each_failure(
        tf ? "import_tf" : "import_safetensors", total,
        [&] {
          to = dir / ("imp" + std::to_string(attempt++));
          arm();
          auto r = import(tf, dir, to);
          countdown = -1;
          return r;
        },
        [&]() -> std::string {
          const bool committed = std::filesystem::exists(to + ".manifest");
          if (committed) {
            auto ta = whole_tensor(dtype::float32, {300, 100}, "x", 5);
            auto tb = whole_tensor(dtype::int64, {3}, "x", 5);
            std::vector<named_tensor> back = {{"a", ta.view()}, {"b", tb.view()}};
            if (!read_tensors(*be, to, back) || !matches(ta.view(), "a", 5) || !matches(tb.view(), "b", 5))
              return "the import does not restore";
            return {};
          }
          const auto base = std::filesystem::path(to).filename().string();
          for (const auto& e : std::filesystem::directory_iterator(dir.path))
            if (e.path().filename().string().rfind(base + ".", 0) == 0) return "left " + e.path().filename().string();
          return {};
        });
    std::printf("allocation failures: import from %s %ld runs (%ld failed cleanly, %ld succeeded)\n", tf ? "TensorFlow" : "safetensors",
                runs.runs, runs.failed, runs.succeeded);
    for (std::size_t i = 0; i < std::min<std::size_t>(runs.problems.size(), 10); ++i) std::printf("  %s\n", runs.problems[i].c_str());
    CHECK(runs.problems.empty());
    CHECK(runs.failed > 20);
  }
}
