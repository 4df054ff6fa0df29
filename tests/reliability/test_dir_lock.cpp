// One writer per directory (RELIABILITY.md, "one writer per directory"): a process that saves
// into a directory holds DIR/meshckpt.lock; a second process gets errc::locked naming the holder
// (pid, host), or waits when given a lock timeout. Without the lock, two trainers saving into one
// directory removed each other's files in progress as leftovers ("rename ckpt-1.manifest.tmp-…
// -> ckpt-1.manifest: No such file or directory"), and could commit a checkpoint whose data
// file the other had removed. Each scenario forks real processes: flock excludes processes.

#include <catch2/catch.hpp>

#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <thread>

#include "reliability.hpp"
#include "pipeline/dir_lock.hpp"

using namespace meshckpt;
using namespace meshckpt::testing;

namespace {

// Runs `body` in a forked child, which exits with its return value.
template <class F>
pid_t fork_child(F body) {
  pid_t pid = ::fork();
  if (pid == 0) {
    int rc = 1;
    try {
      rc = body();
    } catch (...) {
    }
    std::fflush(nullptr);
    ::_exit(rc);
  }
  return pid;
}

int wait_child(pid_t pid) {
  int status = 0;
  if (::waitpid(pid, &status, 0) != pid) return -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

struct pipe_pair {
  int fd[2] = {-1, -1};
  pipe_pair() { REQUIRE(::pipe(fd) == 0); }
  ~pipe_pair() {
    for (int f : fd)
      if (f >= 0) ::close(f);
  }
  void signal() { REQUIRE(::write(fd[1], "x", 1) == 1); }
  bool wait() {
    char c;
    return ::read(fd[0], &c, 1) == 1;
  }
};

// A child that saves ckpt-1 through a manager (so it holds the lock), tells the parent, and
// holds the lock until the parent says go (or until it is killed).
pid_t holding_child(const std::string& dir, pipe_pair& ready, pipe_pair& go) {
  return fork_child([&] {
    model mdl;
    mdl.set(1);
    auto c = checkpoint::create(mesh8(), &mdl, {}, opts(backends::make_posix_backend()));
    if (!c) return 2;
    auto m = checkpoint_manager::create(**c, dir, mopts());
    if (!m) return 3;
    if (auto s = (*m)->save(); !s || !*s) return 4;
    ready.signal();
    (void)go.wait();
    return 0;
  });
}

std::size_t count_files_of(const std::string& dir, const std::string& base) {
  std::size_t n = 0;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().filename().string().starts_with(base + ".")) ++n;
  return n;
}

}  // namespace

TEST_CASE("a second process writing into a locked directory gets errc::locked naming the holder, and leaves nothing behind",
          "[api][lock]") {
  temp_dir tmp;
  const std::string dir = tmp.str();
  pipe_pair ready, go;
  pid_t child = holding_child(dir, ready, go);
  REQUIRE(child > 0);
  REQUIRE(ready.wait());

  model mdl;
  mdl.set(7);
  auto c = checkpoint::create(mesh8(), &mdl, {}, opts(backends::make_posix_backend())).value();
  auto m = checkpoint_manager::create(*c, dir, mopts());
  REQUIRE_FALSE(m);
  CHECK(m.error().code == errc::locked);
  CHECK_THAT(m.error().what(), Catch::Contains("pid " + std::to_string(child)) && Catch::Contains("meshckpt.lock"));

  // A plain save into the same directory: refused before it wrote anything.
  auto w = c->write(dir + "/other");
  REQUIRE_FALSE(w);
  CHECK(w.error().code == errc::locked);
  CHECK_THAT(w.error().what(), Catch::Contains("save " + dir + "/other") && Catch::Contains("pid " + std::to_string(child)));
  CHECK(count_files_of(dir, "other") == 0);

  // Deletion and cleanup are writes too.
  auto d = delete_checkpoint(c->backend(), dir + "/ckpt-1");
  REQUIRE_FALSE(d);
  CHECK(d.error().code == errc::locked);
  CHECK(fs::exists(dir + "/ckpt-1.manifest"));
  CHECK(remove_orphans(c->backend(), dir, "ckpt").error().code == errc::locked);

  go.signal();
  REQUIRE(wait_child(child) == 0);
  // The holder is gone: the directory is writable again, and intact.
  auto m2 = checkpoint_manager::create(*c, dir, mopts());
  REQUIRE(m2);
  CHECK((*m2)->save(2).value().value() == dir + "/ckpt-2");
  CHECK(run_verify_cli(dir).first);
}

TEST_CASE("a writer given a lock timeout waits for the holder to finish", "[api][lock]") {
  temp_dir tmp;
  const std::string dir = tmp.str();
  pipe_pair ready, go;
  pid_t child = holding_child(dir, ready, go);
  REQUIRE(child > 0);
  REQUIRE(ready.wait());
  std::thread release([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    go.signal();
  });
  model mdl;
  mdl.set(9);
  auto c = checkpoint::create(mesh8(), &mdl, {}, opts(backends::make_posix_backend())).value();
  auto mo = mopts();
  mo.lock_timeout = std::chrono::seconds(30);
  const auto t0 = std::chrono::steady_clock::now();
  auto m = checkpoint_manager::create(*c, dir, mo);
  const auto waited = std::chrono::steady_clock::now() - t0;
  release.join();
  REQUIRE(m);
  CHECK(waited >= std::chrono::milliseconds(250));
  CHECK(wait_child(child) == 0);
  CHECK((*m)->latest_checkpoint().value() == dir + "/ckpt-1");  // it read the holder's final state
  CHECK((*m)->save(2).value().value() == dir + "/ckpt-2");
  CHECK(run_verify_cli(dir).first);
}

TEST_CASE("a waiting writer wakes when the holder releases the lock, not at its next poll", "[api][lock]") {
  // The wait is on the lock file's close (inotify), not a timer: with polls 60 s apart, the
  // lock is taken as soon as the holder exits. A poll would take 60 s; the bound is 20.
  temp_dir tmp;
  const std::string dir = tmp.str();
  pipe_pair ready, go;
  pid_t child = holding_child(dir, ready, go);
  REQUIRE(child > 0);
  REQUIRE(ready.wait());
  auto busy = detail::try_lock_dir(dir);
  REQUIRE(!busy);
  CHECK(busy.error().code == errc::locked);
  std::thread release([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    go.signal();
  });
  const auto t0 = std::chrono::steady_clock::now();
  auto l = detail::lock_dir_blocking(dir, std::chrono::minutes(2), std::chrono::seconds(60));
  const auto waited = std::chrono::steady_clock::now() - t0;
  release.join();
  CHECK(wait_child(child) == 0);
  REQUIRE(l);
  CHECK(waited >= std::chrono::milliseconds(250));
  CHECK(waited < std::chrono::seconds(20));
  // A holder that never releases: the wait ends at its timeout, errc::locked naming it.
  pipe_pair ready2, go2;
  l->reset();
  pid_t child2 = holding_child(dir, ready2, go2);
  REQUIRE(child2 > 0);
  REQUIRE(ready2.wait());
  auto timed_out = detail::lock_dir_blocking(dir, std::chrono::milliseconds(300), std::chrono::seconds(60));
  go2.signal();
  CHECK(wait_child(child2) == 0);
  REQUIRE(!timed_out);
  CHECK(timed_out.error().code == errc::locked);
  CHECK(timed_out.error().what().find("pid ") != std::string::npos);
}

TEST_CASE("a plain save given a lock timeout waits, and one without gives up at once", "[api][lock]") {
  temp_dir tmp;
  const std::string dir = tmp.str();
  pipe_pair ready, go;
  pid_t child = holding_child(dir, ready, go);
  REQUIRE(child > 0);
  REQUIRE(ready.wait());
  model mdl;
  mdl.set(5);
  auto o = opts(backends::make_posix_backend());
  o.write.lock_timeout = std::chrono::milliseconds(100);
  auto c = checkpoint::create(mesh8(), &mdl, {}, o).value();
  const auto t0 = std::chrono::steady_clock::now();
  auto w = c->write(dir + "/mine");
  CHECK(std::chrono::steady_clock::now() - t0 >= std::chrono::milliseconds(90));
  REQUIRE_FALSE(w);
  CHECK(w.error().code == errc::locked);
  std::thread release([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    go.signal();
  });
  o.write.lock_timeout = std::chrono::seconds(30);
  auto c2 = checkpoint::create(mesh8(), &mdl, {}, o).value();
  auto w2 = c2->write(dir + "/mine");
  release.join();
  CHECK(wait_child(child) == 0);
  REQUIRE(w2);
  model back;
  auto r = checkpoint::create(mesh8(), &back, {}, opts(backends::make_posix_backend())).value();
  REQUIRE(r->restore(dir + "/mine"));
  CHECK(back.holds(5));
}

TEST_CASE("two trainers saving into one directory take turns: every save succeeds and the directory verifies", "[api][lock]") {
  // The reported failure: two demo trainers on one directory, 7 failed saves in 12 tries.
  temp_dir tmp;
  const std::string dir = tmp.str();
  auto trainer = [&](int first) {
    return fork_child([&, first] {
      for (int i = 0; i < 4; ++i) {
        model mdl;
        mdl.set(first + i);
        auto c = checkpoint::create(mesh8(), &mdl, {}, opts(backends::make_posix_backend()));
        if (!c) return 2;
        auto mo = mopts();
        mo.lock_timeout = std::chrono::seconds(60);
        auto m = checkpoint_manager::create(**c, dir, mo);
        if (!m) {
          std::fprintf(stderr, "trainer %d: %s\n", first, m.error().what().c_str());
          return 3;
        }
        auto s = (*m)->save();
        if (!s || !*s) {
          std::fprintf(stderr, "trainer %d: %s\n", first, s ? "skipped" : s.error().what().c_str());
          return 4;
        }
      }
      return 0;
    });
  };
  pid_t a = trainer(100), b = trainer(200);
  CHECK(wait_child(a) == 0);
  CHECK(wait_child(b) == 0);
  auto v = run_verify_cli(dir);
  INFO(v.second);
  CHECK(v.first);
  // The latest checkpoint restores the values its writer saved.
  model back;
  auto c = checkpoint::create(mesh8(), &back, {}, opts(backends::make_posix_backend())).value();
  auto m = checkpoint_manager::create(*c, dir, mopts()).value();
  REQUIRE(m->restore_or_initialize().value());
  CHECK((back.holds(back.step.get()) && (back.step.get() >= 100)));
}
