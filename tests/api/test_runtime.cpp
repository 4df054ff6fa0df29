// The runtime's one waiting model (docs/ARCHITECTURE.md, "The runtime"): the blocking API faces
// are one bridge over the asynchronous operations, and that bridge refuses to run on a thread
// that runs the library's executors, where waiting would deadlock (a blocking call made inside a
// completion handler waits for the very queue whose job is running it). Debug and sanitizer
// builds abort with the reason; release builds return errc::unsupported.

#include <catch2/catch.hpp>

#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <future>
#include <iterator>
#include <memory>
#include <thread>
#include <vector>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/use_future.hpp>

#include "meshckpt/api/checkpoint_async.hpp"
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
  boost::asio::co_spawn(ctx, [&]() -> boost::asio::awaitable<void> {
    auto r = co_await async_latest_checkpoint(ctx.get_executor(), tmp.str(), boost::asio::use_awaitable);
    got = r ? *r : std::nullopt;
    auto none = co_await async_latest_checkpoint(ctx.get_executor(), tmp.str() + "/nothing-here", boost::asio::use_awaitable);
    ran = none && !*none;
  }, boost::asio::detached);
  ctx.run();
  CHECK(got == tmp.str() + "/ckpt-1");
  CHECK(ran);
}

namespace {

// Threads of the process, not counting io_uring's workers (kernel threads shown as tasks of the
// process: "iou-wrk-N", "iou-sqp-N"), which the kernel starts and retires by itself.
std::ptrdiff_t threads_in_process(std::string* names = nullptr) {
  std::ptrdiff_t n = 0;
  for (const auto& t : fs::directory_iterator("/proc/self/task")) {
    std::ifstream f(t.path() / "comm");
    std::string comm;
    std::getline(f, comm);
    if (comm.rfind("iou-", 0) == 0) continue;
    if (names) *names += comm + " ";
    ++n;
  }
  return n;
}

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
  CHECK(threads_in_process() == fixed);
  std::vector<std::future<result<std::string>>> saves;
  for (int i = 0; i < 8; ++i) saves.push_back(async_save(*ckpts[static_cast<std::size_t>(i)], tmp / ("c" + std::to_string(i)) + "/ck", boost::asio::use_future));
  CHECK(threads_in_process() == fixed);  // while eight saves are in flight
  for (auto& s : saves) CHECK(s.get());
  ckpts.clear();
  std::string after;
  auto now = threads_in_process(&after);
  INFO("after: " << after);
  CHECK(now == fixed);
}
