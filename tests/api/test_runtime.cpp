// The runtime's one waiting model (docs/ARCHITECTURE.md, "The runtime"): the blocking API faces
// are one bridge over the asynchronous operations, and that bridge refuses to run on a thread
// that runs the library's executors, where waiting would deadlock (a blocking call made inside a
// completion handler waits for the very queue whose job is running it). Debug and sanitizer
// builds abort with the reason; release builds return errc::unsupported.

#include <catch2/catch.hpp>

#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <deque>
#include <fstream>
#include <future>
#include <iterator>
#include <memory>
#include <mutex>
#include <set>
#include <sstream>
#include <thread>
#include <vector>

#include <boost/asio/bind_executor.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/use_future.hpp>

#include "runtime/host_memory.hpp"
#include "runtime/recycler.hpp"
#include "runtime/sequential_reader.hpp"
#include "runtime/staged_writer.hpp"
#include "runtime/thread_count.hpp"
#include "meshckpt/api/checkpoint_async.hpp"
#include "meshckpt/pipeline/tensor_io.hpp"
#include "meshckpt/io/forwarding.hpp"
#include "reliability.hpp"

using namespace meshckpt;
using namespace meshckpt::testing;

namespace {

// Inside the completion of a lazy save (which runs on the checkpoint's IO thread), makes a
// blocking save; returns what that blocking call returned.
result<std::string> blocking_call_inside_completion(const std::string& dir) {
  model mdl;
  mdl.set(1);
  auto c = checkpoint::create(mesh8(), &mdl, {}, opts(backends::make_posix_backend())).value();
  std::promise<result<std::string>> inner;
  auto lazy = c->write_lazy(dir + "/a");
  lazy.on_committed([&](result<std::string>) { inner.set_value(c->write(dir + "/b")); });
  return inner.get_future().get();
}

constexpr bool refusal_aborts =
#if !defined(NDEBUG) || defined(MESHCKPT_SANITIZED_BUILD)
    true;
#else
    false;
#endif

}  // namespace

TEST_CASE("a blocking call inside a completion on the library's thread is refused instead of deadlocking", "[runtime][bridge]") {
  temp_dir tmp;
  ::setenv("MESHCKPT_BLOCKING_REFUSAL_RETURNS", "1", 1);
  auto r = blocking_call_inside_completion(tmp.str());
  ::unsetenv("MESHCKPT_BLOCKING_REFUSAL_RETURNS");
  REQUIRE_FALSE(r);
  CHECK(r.error().code == errc::unsupported);
  CHECK_THAT(r.error().what(), Catch::Contains("checkpoint::write") && Catch::Contains("asynchronous form"));
  CHECK_FALSE(fs::exists(tmp.str() + "/b.manifest"));
  CHECK(fs::exists(tmp.str() + "/a.manifest"));
}

TEST_CASE("debug and sanitizer builds abort on a blocking call on a library thread; release builds return the error", "[runtime][bridge]") {
  temp_dir tmp;
  pid_t pid = ::fork();
  if (pid == 0) {
    ::unsetenv("MESHCKPT_BLOCKING_REFUSAL_RETURNS");
    ::freopen("/dev/null", "w", stderr);
    auto r = blocking_call_inside_completion(tmp.str());
    ::_exit(!r && r.error().code == errc::unsupported ? 0 : 1);
  }
  REQUIRE(pid > 0);
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  if (refusal_aborts) {
    CHECK(WIFSIGNALED(status));
    CHECK(WTERMSIG(status) == SIGABRT);
  } else {
    CHECK(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);
  }
}

TEST_CASE("lazy_save's blocking waits are refused inside a completion too", "[runtime][bridge]") {
  temp_dir tmp;
  model mdl;
  mdl.set(2);
  auto c = checkpoint::create(mesh8(), &mdl, {}, opts(backends::make_posix_backend())).value();
  ::setenv("MESHCKPT_BLOCKING_REFUSAL_RETURNS", "1", 1);
  std::promise<result<void>> inner;
  auto first = c->write_lazy(tmp.str() + "/a");
  auto second = c->write_lazy(tmp.str() + "/b");
  first.on_committed([&](result<std::string>) { inner.set_value(second.wait_snapshot()); });
  auto r = inner.get_future().get();
  ::unsetenv("MESHCKPT_BLOCKING_REFUSAL_RETURNS");
  REQUIRE_FALSE(r);
  CHECK(r.error().code == errc::unsupported);
  CHECK(second.wait_committed().value() == tmp.str() + "/b");  // off the library thread: fine
}

TEST_CASE("async_latest_checkpoint reads the state file without blocking the caller's executor", "[runtime][api]") {
  temp_dir tmp;
  model mdl;
  mdl.set(3);
  auto c = checkpoint::create(mesh8(), &mdl, {}, opts(backends::make_posix_backend())).value();
  REQUIRE(c->save(tmp.str() + "/ckpt").value() == tmp.str() + "/ckpt-1");
  boost::asio::io_context ctx;
  std::optional<std::string> got;
  bool ran = false;
  boost::asio::co_spawn(
      ctx,
      [&]() -> boost::asio::awaitable<void> {
        auto r = co_await async_latest_checkpoint(ctx.get_executor(), tmp.str(), boost::asio::use_awaitable);
        got = r ? *r : std::nullopt;
        auto none = co_await async_latest_checkpoint(ctx.get_executor(), tmp.str() + "/nothing-here", boost::asio::use_awaitable);
        ran = none && !*none;
      },
      boost::asio::detached);
  ctx.run();
  CHECK(got == tmp.str() + "/ckpt-1");
  CHECK(ran);
}

namespace {

// Records the threads that make a checkpoint's metadata calls (directory opens, file opens,
// renames, unlinks): those come from the job's coroutine itself, not from the CPU pool or the
// backend's completions.
class thread_recorder : public io::forwarding_backend {
 public:
  using forwarding_backend::forwarding_backend;
  void open_dir(std::string p, bool c, io::completion<io::handle> d) override {
    note();
    inner_->open_dir(std::move(p), c, std::move(d));
  }
  void open(io::handle dir, std::string n, io::open_mode m, io::completion<io::handle> d) override {
    note();
    inner_->open(dir, std::move(n), m, std::move(d));
  }
  void rename(io::handle dir, std::string a, std::string b, io::completion<void> d) override {
    note();
    inner_->rename(dir, std::move(a), std::move(b), std::move(d));
  }
  void unlink(io::handle dir, std::string n, io::completion<void> d) override {
    note();
    inner_->unlink(dir, std::move(n), std::move(d));
  }
  std::set<std::thread::id> take() {
    std::lock_guard lk(mu_);
    return std::exchange(seen_, {});
  }

 private:
  void note() {
    std::lock_guard lk(mu_);
    seen_.insert(std::this_thread::get_id());
  }
  std::mutex mu_;
  std::set<std::thread::id> seen_;
};

}  // namespace

TEST_CASE("async save, restore and manager save run as one coroutine chain on the caller's executor", "[runtime][async][executor]") {
  temp_dir tmp;
  auto rec = std::make_shared<thread_recorder>(backends::make_posix_backend());
  model mdl;
  mdl.set(4);
  auto c = checkpoint::create(mesh8(), &mdl, {}, opts(rec)).value();
  model back;
  auto d = checkpoint::create(mesh8(), &back, {}, opts(rec)).value();
  manager_options mo;
  mo.max_to_keep = 1;  // the second managed save deletes the first: retention runs on the caller's executor too
  auto mgr = checkpoint_manager::create(*c, tmp / "managed", mo).value();
  (void)rec->take();

  // The caller's io_context is run by this thread alone: every step of every call runs here.
  boost::asio::io_context ctx;
  std::vector<std::string> steps;
  boost::asio::co_spawn(
      ctx,
      [&]() -> boost::asio::awaitable<void> {
        auto saved = co_await async_save(*c, tmp / "ck", boost::asio::use_awaitable);
        steps.push_back(saved ? *saved : saved.error().what());
        auto written = co_await async_write(*c, tmp / "w", boost::asio::use_awaitable);
        steps.push_back(written ? *written : written.error().what());
        auto restored = co_await async_restore(*d, tmp / "ck-1", boost::asio::use_awaitable);
        steps.push_back(restored ? "restored" : restored.error().what());
        auto read = co_await async_read(*d, tmp / "w", boost::asio::use_awaitable);
        steps.push_back(read ? "read" : read.error().what());
        for (int i = 0; i < 2; ++i) {
          auto managed = co_await async_save(*mgr, boost::asio::use_awaitable);
          steps.push_back(!managed ? managed.error().what() : *managed ? **managed : "skipped");
        }
      },
      boost::asio::detached);
  ctx.run();
  REQUIRE(steps == std::vector<std::string>{tmp / "ck-1", tmp / "w", "restored", "read", tmp / "managed/ckpt-2", tmp / "managed/ckpt-3"});
  CHECK(back.holds(4));
  CHECK_FALSE(fs::exists(tmp / "managed/ckpt-2.manifest"));  // retention ran
  CHECK(rec->take() == std::set<std::thread::id>{std::this_thread::get_id()});

  // Without an executor of its own (a future), the work runs on the library's engine.
  REQUIRE(async_save(*c, tmp / "ck", boost::asio::use_future).get());
  auto engine_side = rec->take();
  CHECK_FALSE(engine_side.empty());
  CHECK_FALSE(engine_side.count(std::this_thread::get_id()));
}

TEST_CASE("a blocking call on the thread that runs an unfinished async call's executor fails instead of hanging",
          "[runtime][async][executor]") {
  temp_dir tmp;
  model mdl;
  mdl.set(5);
  checkpoint_options o = opts(backends::make_posix_backend());
  auto c = checkpoint::create(mesh8(), &mdl, {}, o).value();
  auto mgr = checkpoint_manager::create(*c, tmp / "managed", mopts()).value();
  o.snapshot_budget_bytes = 1;  // no snapshot fits: a copy-mode save returns once its write read the tensors
  model tight;
  tight.set(6);
  auto t = checkpoint::create(mesh8(), &tight, {}, o).value();
  auto t2 = checkpoint::create(mesh8(), &tight, {}, o).value();

  boost::asio::io_context ctx;
  std::vector<std::string> errors;
  std::optional<result<std::string>> first, second, refused, third;
  std::optional<result<load_status>> pending_restore;
  auto note = [&](const auto& r) { errors.push_back(r ? std::string("no error") : std::string(r.error().what())); };
  auto into = [&](auto& slot) { return boost::asio::bind_executor(ctx, [&slot](auto r) { slot = std::move(r); }); };
  boost::asio::post(ctx, [&] {
    // Queued on this very context, not awaited: it cannot progress until this handler returns.
    async_save(*c, tmp / "ck", into(first));
    note(c->save(tmp / "blocking"));
    note(c->restore(tmp / "ck-1"));
    note(c->sync());
    note(mgr->save());
    // A copy-mode save may still copy here and now (no limit on snapshot memory)...
    async_save(*c, tmp / "ck", into(second));
    // ...but not wait for a write that a job ahead of it, on this context, holds up.
    async_restore(*t, tmp / "nothing", into(pending_restore));
    async_save(*t, tmp / "t", into(refused));
    // With no job ahead of it here, such a save's own job runs on the engine: this thread may
    // wait for it, and for blocking calls after it.
    async_save(*t2, tmp / "t2", into(third));
    note(t2->save(tmp / "t2"));
  });
  ctx.run();
  REQUIRE(errors.size() == 5);
  CHECK(errors[4] == "no error");
  for (std::size_t i = 0; i < 4; ++i) {
    INFO(errors[i]);
    CHECK_THAT(errors[i], Catch::Contains("runs the executor of an unfinished asynchronous save or restore"));
  }
  CHECK_THAT(errors[0], Catch::StartsWith("checkpoint::save"));
  CHECK_THAT(errors[3], Catch::StartsWith("checkpoint_manager::save"));
  REQUIRE(first);
  CHECK(first->value() == tmp / "ck-1");
  REQUIRE(second);
  CHECK(second->value() == tmp / "ck-2");  // refused calls took no number
  REQUIRE(pending_restore);
  CHECK_FALSE(*pending_restore);
  REQUIRE(refused);
  REQUIRE_FALSE(*refused);
  CHECK_THAT(refused->error().what(), Catch::StartsWith("async_save in copy mode"));
  CHECK(t->save_counter() == 0);  // the refused save took no number either
  REQUIRE(third);
  CHECK(third->value() == tmp / "t2-1");
  CHECK(fs::exists(tmp / "t2-2.manifest"));
  CHECK_FALSE(fs::exists(tmp / "t-1.manifest"));
  CHECK_FALSE(fs::exists(tmp / "blocking-1.manifest"));
  // Off that thread, the same calls work.
  CHECK(c->save(tmp / "blocking").value() == tmp / "blocking-3");
  CHECK(c->sync());
}

TEST_CASE("copy-mode saves one after another on a held-up executor each copy at once: a finished snapshot is no longer queued",
          "[runtime][async][executor][snapshot]") {
  // Regression: the copier set `released` before it stopped counting its snapshot as queued, so
  // the caller, woken, could start its next save while the count still said a snapshot was ahead
  // of it, and that save was refused (seen under ASan in CI).
  temp_dir tmp;
  model mdl;
  mdl.set(7);
  auto c = checkpoint::create(mesh8(), &mdl, {}, opts(backends::make_posix_backend())).value();
  boost::asio::io_context ctx;
  constexpr int n = 40;
  std::optional<result<std::string>> first;
  std::vector<std::optional<result<std::string>>> later(n);
  boost::asio::post(ctx, [&] {
    async_save(*c, tmp / "ck", boost::asio::bind_executor(ctx, [&](auto r) { first = std::move(r); }));
    for (int i = 0; i < n; ++i) async_save(*c, tmp / "ck", boost::asio::bind_executor(ctx, [&, i](auto r) { later[i] = std::move(r); }));
  });
  ctx.run();
  REQUIRE(first);
  CHECK(first->value() == tmp / "ck-1");
  for (int i = 0; i < n; ++i) {
    INFO("save " << i);
    REQUIRE(later[i]);
    REQUIRE(*later[i]);
    CHECK(later[i]->value() == tmp / ("ck-" + std::to_string(i + 2)));
  }
}

namespace {

// Threads of the process, not counting io_uring's workers (kernel threads shown as tasks of the
// process: "iou-wrk-N", "iou-sqp-N"), which the kernel starts and retires by itself.
std::ptrdiff_t threads_in_process(std::string* names = nullptr) { return runtime::thread_count(names); }

}  // namespace

TEST_CASE("the process's threads are a fixed number, whatever the number of checkpoints and backends", "[runtime][threads]") {
  temp_dir tmp;
  // Warm: the engine, the CPU pool and the blocking pool exist once a save and a restore ran;
  // Asio's system executor (where completions of a future or of a callback without an executor
  // run) once an asynchronous call completed.
  {
    model a;
    a.set(1);
    auto c = checkpoint::create(mesh8(), &a).value();
    REQUIRE(async_save(*c, tmp / "warm", boost::asio::use_future).get());
    model b;
    auto d = checkpoint::create(mesh8(), &b).value();
    REQUIRE(d->restore(tmp / "warm-1"));
    REQUIRE(b.holds(1));
  }
  std::string names;
  const auto fixed = threads_in_process(&names);
  INFO("threads: " << names);
  // The main thread, the engine, the CPU pool (2-4), the blocking pool (4), Asio's system pool
  // (twice the hardware threads).
  CHECK(fixed <= 10 + 2 * std::thread::hardware_concurrency());
  std::vector<std::unique_ptr<model>> models;
  std::vector<std::unique_ptr<checkpoint>> ckpts;
  for (int i = 0; i < 8; ++i) {
    models.push_back(std::make_unique<model>());
    models.back()->set(i);
    // Each with a backend of its own (io_uring where the kernel allows it).
    ckpts.push_back(checkpoint::create(mesh8(), models.back().get()).value());
  }
  {
    std::string created;
    auto n = threads_in_process(&created);
    INFO("after creating them: " << created);
    CHECK(n == fixed);
  }
  std::vector<std::future<result<std::string>>> saves;
  for (int i = 0; i < 8; ++i)
    saves.push_back(async_save(*ckpts[static_cast<std::size_t>(i)], tmp / ("c" + std::to_string(i)) + "/ck", boost::asio::use_future));
  {
    std::string saving;
    auto n = threads_in_process(&saving);
    INFO("while eight saves are in flight: " << saving);
    CHECK(n == fixed);
  }
  for (auto& s : saves) CHECK(s.get());
  ckpts.clear();
  std::string after;
  auto now = threads_in_process(&after);
  INFO("after: " << after);
  CHECK(now == fixed);
}

TEST_CASE("a recycler keeps at most its slots, only what it accepts, and never waits", "[runtime][recycle]") {
  runtime::recycler<std::vector<int>, 2> r([](const std::vector<int>& v) { return v.capacity() <= 100; });
  CHECK(r.take().capacity() == 0);  // nothing kept yet: a new one
  std::vector<int> a(50), b(60), c(70), big(1000);
  const int* pa = a.data();
  r.give(std::move(big));  // too big: freed
  r.give(std::move(a));
  r.give(std::move(b));
  r.give(std::move(c));  // both slots taken: freed
  auto x = r.take(), y = r.take(), z = r.take();
  CHECK((x.data() == pa || y.data() == pa));
  CHECK(x.capacity() + y.capacity() == 110);
  CHECK(z.capacity() == 0);
}

TEST_CASE("saves and restores of different states in one process reuse memory and stay exact", "[runtime][recycle]") {
  temp_dir tmp;
  auto m = mesh::create({{"x", 2}, {"y", 4}}).value();
  auto be = backends::make_posix_backend();
  // States of different sizes, keys, ranks and layouts, saved and restored in turn: each
  // save plans in the memory of the previous manifest, each restore decodes into it.
  struct state {
    std::deque<dtensor> tensors;
    std::vector<named_tensor> named;
  };
  auto make = [&](int n, int variant, bool fill) {
    state s;
    for (int i = 0; i < n; ++i) {
      auto l = (i + variant) % 3 == 0   ? std::vector<std::string>{"x", "y"}
               : (i + variant) % 3 == 1 ? std::vector<std::string>{"unsharded", "y"}
                                        : std::vector<std::string>{"unsharded", "unsharded"};
      s.tensors.push_back(dtensor::create(dtype::float32, {4 + variant * 4, 8}, layout::create(l, m).value()).value());
      if (fill)
        for (const auto& sh : s.tensors.back().view().shards()) {
          auto* p = reinterpret_cast<float*>(sh.data.data());
          for (std::size_t k = 0; k < sh.data.size() / 4; ++k) p[k] = static_cast<float>(variant * 1000 + i) + static_cast<float>(k);
        }
      s.named.push_back({"v" + std::to_string(variant) + "/" + std::to_string(i), s.tensors.back().view()});
    }
    return s;
  };
  auto same = [](const state& a, const state& b) {
    for (std::size_t i = 0; i < a.tensors.size(); ++i)
      for (std::size_t k = 0; k < a.tensors[i].view().shards().size(); ++k) {
        auto x = a.tensors[i].view().shards()[k].data, y = b.tensors[i].view().shards()[k].data;
        if (x.size() != y.size() || std::memcmp(x.data(), y.data(), x.size()) != 0) return false;
      }
    return true;
  };
  const std::vector<std::pair<int, int>> runs = {{300, 0}, {20, 1}, {500, 2}, {1, 3}, {300, 0}};
  for (const auto& [n, variant] : runs) {
    auto src = make(n, variant, true);
    const std::string prefix = tmp / ("s" + std::to_string(variant));
    REQUIRE(write_tensors(*be, prefix, src.named));
    auto dst = make(n, variant, false);
    REQUIRE(read_tensors(*be, prefix, dst.named));
    CHECK(same(src, dst));
  }
  // And once more the first, from disk, into memory last used by other states.
  auto src = make(300, 0, true);
  auto dst = make(300, 0, false);
  REQUIRE(read_tensors(*be, tmp / "s0", dst.named));
  CHECK(same(src, dst));
}

namespace {

// Runs `body(executor, file)` as a coroutine on a private io_context, with `name` in `dir` open
// in `mode` through `b` (closed after); its result.
result<void> with_open_file(io::backend& b, const std::string& dir, const std::string& name, io::open_mode mode,
                            std::function<runtime::task<void>(boost::asio::any_io_executor, io::handle)> body) {
  boost::asio::io_context ctx;
  std::optional<result<void>> out;
  auto coro = [&]() -> runtime::task<void> {
    auto ex = co_await boost::asio::this_coro::executor;
    BOOST_OUTCOME_CO_TRY(auto d, co_await io::async_open_dir(b, ex, dir, false, runtime::use_awaitable));
    auto h = co_await io::async_open(b, ex, d, name, mode, runtime::use_awaitable);
    result<void> r = success();
    if (!h) {
      r = h.error();
    } else {
      auto running = body(ex, *h);  // named before co_await (GCC 12)
      r = co_await std::move(running);
      (void)co_await io::async_close(b, ex, *h, runtime::use_awaitable);
    }
    (void)co_await io::async_close(b, ex, d, runtime::use_awaitable);
    co_return r;
  };
  runtime::spawn<void>(ctx.get_executor(), coro(), [&](result<void> r) { out = std::move(r); });
  ctx.run();
  REQUIRE(out);  // the coroutine finished
  return *out;
}

}  // namespace

TEST_CASE("staged_writer places bytes at increasing offsets over blocks, zero-fills the gaps and reports a failed write",
          "[runtime][staging]") {
  temp_dir tmp;
  // Pieces at increasing offsets: unaligned, across block boundaries, one larger than a block,
  // one after a gap longer than a block; the file ends unaligned.
  constexpr std::uint64_t blk = runtime::staged_writer::block_bytes;
  const std::vector<std::pair<std::uint64_t, std::uint64_t>> pieces = {
      {0, 13}, {100, 5000}, {blk - 7, 20}, {blk + 4096, 2 * blk + 3}, {5 * blk + 11, 4001}};
  const std::uint64_t size = pieces.back().first + pieces.back().second;
  std::vector<std::byte> expect(size);
  for (std::size_t i = 0; i < pieces.size(); ++i)
    for (std::uint64_t j = 0; j < pieces[i].second; ++j) expect[pieces[i].first + j] = static_cast<std::byte>((i * 131 + j * 7) % 251 + 1);

  // Writes the pieces to `name` through `b`; the error of the first failure.
  auto write_file = [&](io::backend& b, const std::string& name) {
    return with_open_file(b, tmp.str(), name, io::open_mode::create_exclusive_direct, [&](auto ex, io::handle h) -> runtime::task<void> {
      result<void> r = success();
      {
        runtime::staged_writer w(b, ex, h, size);
        std::uint64_t written = 0;
        w.on_written = [&](std::size_t n) { written += n; };
        for (const auto& [at, n] : pieces) {
          if (!r) break;
          auto op = w.write(at, std::span(expect).subspan(at, n));
          r = co_await std::move(op);
        }
        if (r) w.submit_last();
        auto drained = co_await w.drain();  // always, before the writer goes away
        if (r) r = drained;
        if (r) CHECK(written == (size + 4095) / 4096 * 4096);  // every block, the last padded to a page
      }
      if (r) r = co_await io::async_truncate(b, ex, h, size, runtime::use_awaitable);
      co_return r;
    });
  };
  auto be = std::shared_ptr<io::backend>(backends::make_posix_backend());
  REQUIRE(write_file(*be, "f"));
  std::ifstream in(tmp / "f", std::ios::binary);
  std::vector<char> got((std::istreambuf_iterator<char>(in)), {});
  REQUIRE(got.size() == size);
  CHECK(std::memcmp(got.data(), expect.data(), size) == 0);

  // A write that fails (the third block's) fails the writer, which still waits for the others.
  failing_writes failing(be, 2, EIO);
  auto r = write_file(failing, "g");
  REQUIRE_FALSE(r);
  CHECK(r.error().what().find("injected") != std::string::npos);
}

TEST_CASE("sequential_reader reads a range ahead in aligned blocks, in pieces of any size, and reports a short file or a failed read",
          "[runtime][staging]") {
  temp_dir tmp;
  constexpr std::uint64_t blk = runtime::sequential_reader::block_bytes;
  const std::uint64_t file_size = 4 * blk + 777;
  std::vector<std::byte> bytes(file_size);
  for (std::uint64_t i = 0; i < file_size; ++i) bytes[i] = static_cast<std::byte>((i * 2654435761u) >> 13);
  {
    std::ofstream out(tmp / "f", std::ios::binary);
    out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  }
  // Reads [begin, end) of the file in pieces of the sizes given (cycled) into `got`.
  auto read_range = [&](io::backend& b, std::uint64_t begin, std::uint64_t end, std::vector<std::size_t> sizes,
                        std::vector<std::byte>& got) {
    got.assign(end - begin, std::byte{0});
    return with_open_file(b, tmp.str(), "f", io::open_mode::read_direct, [&](auto ex, io::handle h) -> runtime::task<void> {
      result<void> r = success();
      runtime::sequential_reader in(b, ex, h, begin, end, "the test range");
      std::span<std::byte> rest(got);
      for (std::size_t k = 0; r && !rest.empty(); ++k) {
        auto piece = rest.first(std::min(rest.size(), sizes[k % sizes.size()]));
        auto op = in.read(piece);
        r = co_await std::move(op);
        rest = rest.subspan(piece.size());
      }
      (void)co_await in.drain();  // always, before the reader goes away
      co_return r;
    });
  };
  auto be = std::shared_ptr<io::backend>(backends::make_posix_backend());
  std::vector<std::byte> got;
  // Unaligned ranges: inside one block, across several, to the end of the file; pieces small,
  // odd, larger than a block.
  for (const auto& [begin, end] :
       {std::pair{std::uint64_t{5}, std::uint64_t{4000}}, std::pair{blk - 3, 3 * blk + 10}, std::pair{std::uint64_t{4097}, file_size}}) {
    INFO("range [" << begin << ", " << end << ")");
    REQUIRE(read_range(*be, begin, end, {1, 4093, blk + 5, 70000}, got));
    CHECK(std::memcmp(got.data(), bytes.data() + begin, got.size()) == 0);
  }
  // A range past the end of the file: the bytes before it arrive, then errc::short_read.
  auto r = read_range(*be, blk, file_size + 10, {blk}, got);
  REQUIRE_FALSE(r);
  CHECK(r.error().code == errc::short_read);
  CHECK(r.error().what().find("the test range") != std::string::npos);
  // A failed read fails the reader, which still waits for the others.
  backends::fault_plan plan;
  plan.fail_at = 4;  // the third block's read (after the directory and file opens)
  backends::fault_backend failing(be, plan);
  r = read_range(failing, 0, file_size, {blk / 2}, got);
  REQUIRE_FALSE(r);
}

TEST_CASE("host buffers: large ones are huge-page mappings, small ones plain memory; both hold their bytes", "[runtime][memory]") {
  for (std::size_t n : {std::size_t{1}, std::size_t{4096}, (std::size_t{2} << 20) - 1, std::size_t{2} << 20, (std::size_t{5} << 20) + 3}) {
    auto b = runtime::allocate_host(n);
    REQUIRE(b);
    if (n >= (std::size_t{2} << 20)) CHECK(reinterpret_cast<std::uintptr_t>(b.get()) % 4096 == 0);  // a fresh mapping
    std::memset(b.get(), 0x5a, n);
    CHECK(b[0] == std::byte{0x5a});
    CHECK(b[n - 1] == std::byte{0x5a});
  }
}
