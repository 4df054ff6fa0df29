// Backend conformance: the behaviour every io::backend must have. Each TEST_CASE runs against
// every backend in `all_backends()` (posix, uring where the kernel allows it, memory, and the
// fault decorator over posix); a new backend is added there.

#include <catch2/catch.hpp>

#include <cstring>

#include <sys/stat.h>
#include <unistd.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/use_future.hpp>

#include <filesystem>
#include <fstream>
#include <functional>
#include <thread>

#include "meshckpt/backends/fault.hpp"
#include "meshckpt/backends/memory.hpp"
#include "meshckpt/backends/posix.hpp"
#include "meshckpt/backends/uring.hpp"
#include "meshckpt/io/async.hpp"
#include "support.hpp"

using namespace meshckpt;
using io::handle;

namespace {

struct backend_factory {
  const char* name;
  std::function<std::unique_ptr<io::backend>()> make;
  bool host = true;  // its paths are the host's: a test may prepare files with the host's calls
};

std::vector<backend_factory> all_backends() {
  std::vector<backend_factory> out = {{"posix", [] { return backends::make_posix_backend(); }}};
  if (auto probe = backends::make_uring_backend())
    out.push_back({"uring", [] { return backends::make_uring_backend().value(); }});
  else
    WARN("io_uring backend skipped: " << probe.error().what());  // a kernel without io_uring skips, never fails
  out.push_back({"memory", [] { return std::unique_ptr<io::backend>(backends::make_memory_backend()); }, false});
  // The fault backend wrapping a real one, injecting nothing: a decorator must be transparent.
  out.push_back({"fault(posix)",
                 [] { return std::unique_ptr<io::backend>(std::make_unique<backends::fault_backend>(backends::make_posix_backend())); }});
  return out;
}

// Blocking shorthands over the callback interface.
struct ops {
  io::backend& b;
  result<handle> open_dir(const std::string& p, bool create = false) {
    return io::wait<handle>([&](auto d) { b.open_dir(p, create, std::move(d)); });
  }
  result<handle> open(handle dir, const std::string& n, io::open_mode m) {
    return io::wait<handle>([&](auto d) { b.open(dir, n, m, std::move(d)); });
  }
  result<void> write(handle f, std::uint64_t off, std::string_view s) {
    return io::wait<void>([&](auto d) { b.write(f, off, std::as_bytes(std::span(s.data(), s.size())), std::move(d)); });
  }
  result<std::string> read(handle f, std::uint64_t off, std::size_t n) {
    std::string s(n, '\0');
    auto r = io::wait<std::size_t>([&](auto d) { b.read(f, off, std::as_writable_bytes(std::span(s.data(), s.size())), std::move(d)); });
    if (!r) return r.error();
    s.resize(*r);
    return s;
  }
  result<std::uint64_t> size(handle f) {
    return io::wait<std::uint64_t>([&](auto d) { b.size(f, std::move(d)); });
  }
  result<void> fsync(handle f) {
    return io::wait<void>([&](auto d) { b.fsync(f, std::move(d)); });
  }
  result<void> close(handle f) {
    return io::wait<void>([&](auto d) { b.close(f, std::move(d)); });
  }
  result<void> rename(handle dir, const std::string& a, const std::string& c) {
    return io::wait<void>([&](auto d) { b.rename(dir, a, c, std::move(d)); });
  }
  result<void> unlink(handle dir, const std::string& n) {
    return io::wait<void>([&](auto d) { b.unlink(dir, n, std::move(d)); });
  }
  result<std::vector<io::dir_entry>> list(handle dir) {
    return io::wait<std::vector<io::dir_entry>>([&](auto d) { b.list(dir, std::move(d)); });
  }
};

void write_file(const std::string& path, const std::string& content) { std::ofstream(path, std::ios::binary) << content; }

// Prepares a test directory: through the host's calls for a backend on the host's filesystem,
// through the backend itself for one with a namespace of its own (memory).
struct fixture {
  const backend_factory& f;
  ops o;
  // Opens `path`, which the test made (a temp directory): an in-memory backend creates it.
  result<handle> dir(const std::string& path) { return o.open_dir(path, !f.host); }
  void file(const std::string& dir_path, const std::string& name, const std::string& content) {
    if (f.host) return write_file(dir_path + "/" + name, content);
    auto d = o.open_dir(dir_path, true).value();
    auto h = o.open(d, name, io::open_mode::create_exclusive).value();
    REQUIRE(o.write(h, 0, content));
    REQUIRE(o.close(h));
    REQUIRE(o.close(d));
  }
  void subdir(const std::string& path) {
    if (f.host)
      std::filesystem::create_directory(path);
    else
      REQUIRE(o.close(o.open_dir(path, true).value()));
  }
};

}  // namespace

TEST_CASE("backends create, write, read, size, fsync and close files", "[io][conformance]") {
  for (const auto& f : all_backends()) {
    INFO("backend " << f.name);
    testing::temp_dir tmp;
    auto be = f.make();
    ops o{*be};
    auto dir = o.open_dir(tmp / "a/b/c", true).value();
    if (f.host) CHECK(std::filesystem::is_directory(tmp / "a/b/c"));
    auto h = o.open(dir, "file", io::open_mode::create_exclusive).value();
    REQUIRE(o.write(h, 0, "hello "));
    REQUIRE(o.write(h, 6, "world"));
    REQUIRE(o.write(h, 100, "!"));  // past the end: a hole of zeros
    REQUIRE(o.fsync(h));
    REQUIRE(o.close(h));
    auto again = o.open(dir, "file", io::open_mode::create_exclusive);
    REQUIRE_FALSE(again);
    CHECK(again.error().code == std::errc::file_exists);
    CHECK_THAT(again.error().what(), Catch::Contains("file"));
    auto r = o.open(dir, "file", io::open_mode::read).value();
    CHECK(o.size(r).value() == 101);
    CHECK(o.read(r, 0, 11).value() == "hello world");
    CHECK(o.read(r, 11, 3).value() == std::string(3, '\0'));
    CHECK(o.read(r, 95, 100).value().size() == 6);  // short only at end of file
    CHECK(o.read(r, 500, 10).value().empty());
    REQUIRE(o.close(r));
    REQUIRE(o.fsync(dir));
    REQUIRE(o.close(dir));
  }
}

TEST_CASE("backends write aligned blocks to direct-IO files and truncate the padding", "[io][conformance][direct]") {
  for (const auto& f : all_backends()) {
    INFO("backend " << f.name);
    testing::temp_dir tmp;
    auto be = f.make();
    ops o{*be};
    fixture fx{f, o};
    auto dir = fx.dir(tmp.str()).value();
    auto h = o.open(dir, "d", io::open_mode::create_exclusive_direct).value();
    testing::aligned_bytes buf(8192);
    for (int i = 0; i < 8192; ++i) buf.get()[i] = static_cast<std::byte>(i % 251);
    REQUIRE(io::wait<void>([&](auto d) { be->write(h, 4096, std::span<const std::byte>(buf.get(), 8192), std::move(d)); }));
    REQUIRE(io::wait<void>([&](auto d) { be->truncate(h, 4096 + 5000, std::move(d)); }));
    REQUIRE(o.fsync(h));
    REQUIRE(o.close(h));
    auto r = o.open(dir, "d", io::open_mode::read).value();
    CHECK(o.size(r).value() == 9096);
    auto back = o.read(r, 4096, 8192).value();
    REQUIRE(back.size() == 5000);
    for (int i = 0; i < 5000; ++i) CHECK(static_cast<unsigned char>(back[static_cast<std::size_t>(i)]) == i % 251);
    CHECK(o.read(r, 0, 4096).value() == std::string(4096, '\0'));
    REQUIRE(o.close(r));
    // Direct reads: aligned buffer, offset and length; a read past the end returns the bytes up
    // to it (one short transfer, not an error from retrying at the unaligned rest).
    auto rd = o.open(dir, "d", io::open_mode::read_direct).value();
    std::memset(buf.get(), 0xee, 8192);
    auto got = io::wait<std::size_t>([&](auto d) { be->read(rd, 4096, std::span<std::byte>(buf.get(), 8192), std::move(d)); });
    REQUIRE(got);
    CHECK(*got == 5000);
    for (int i = 0; i < 5000; ++i) CHECK(static_cast<unsigned char>(buf.get()[i]) == i % 251);
    got = io::wait<std::size_t>([&](auto d) { be->read(rd, 12288, std::span<std::byte>(buf.get(), 4096), std::move(d)); });
    REQUIRE(got);
    CHECK(*got == 0);  // entirely past the end
    REQUIRE(o.close(rd));
    REQUIRE(o.close(dir));
  }
}

TEST_CASE("backends report missing files with ENOENT and the file name", "[io][conformance]") {
  for (const auto& f : all_backends()) {
    INFO("backend " << f.name);
    testing::temp_dir tmp;
    auto be = f.make();
    ops o{*be};
    fixture fx{f, o};
    auto dir = fx.dir(tmp.str()).value();
    auto r = o.open(dir, "absent", io::open_mode::read);
    REQUIRE_FALSE(r);
    CHECK(r.error().code == std::errc::no_such_file_or_directory);
    CHECK_THAT(r.error().what(), Catch::Contains("open absent") && Catch::Contains("errno 2"));
    CHECK(o.open_dir(tmp / "missing").error().code == std::errc::no_such_file_or_directory);
    CHECK_FALSE(o.unlink(dir, "absent"));
    CHECK_FALSE(o.rename(dir, "absent", "other"));
    REQUIRE(o.close(dir));
  }
}

TEST_CASE("backends refuse names outside the directory, symlinks, FIFOs and directories", "[io][conformance][hostile]") {
  for (const auto& f : all_backends()) {
    INFO("backend " << f.name);
    testing::temp_dir tmp;
    auto be = f.make();
    ops o{*be};
    fixture fx{f, o};
    fx.file(tmp.str(), "target", "secret");
    std::vector<std::string> specials = {"sub"};
    if (f.host) {  // the host's special files; an in-memory backend has none
      REQUIRE(::symlink((tmp / "target").c_str(), (tmp / "link").c_str()) == 0);
      REQUIRE(::mkfifo((tmp / "fifo").c_str(), 0644) == 0);
      specials = {"link", "fifo", "sub"};
    }
    fx.subdir(tmp / "sub");
    auto dir = fx.dir(tmp.str()).value();
    for (std::string bad : {std::string(".."), std::string("."), std::string(""), std::string("sub/../target"), std::string("/etc/passwd"),
                            std::string("a\0b", 3)}) {
      auto r = o.open(dir, bad, io::open_mode::read);
      REQUIRE_FALSE(r);
      CHECK(r.error().code == errc::unsafe_path);
      CHECK(o.open(dir, bad, io::open_mode::create_exclusive).error().code == errc::unsafe_path);
      CHECK(o.unlink(dir, bad).error().code == errc::unsafe_path);
      CHECK(o.rename(dir, "target", bad).error().code == errc::unsafe_path);
    }
    for (const std::string& special : specials) {
      INFO(special);
      auto r = o.open(dir, special, io::open_mode::read);  // must not block on the FIFO
      REQUIRE_FALSE(r);
      CHECK(r.error().code == errc::unsafe_path);
    }
    if (f.host) CHECK_FALSE(o.open(dir, "link", io::open_mode::create_exclusive));  // never writes through a symlink
    REQUIRE(o.close(dir));
  }
}

TEST_CASE("backends rename atomically over an existing file, unlink, and list entries with types", "[io][conformance]") {
  for (const auto& f : all_backends()) {
    INFO("backend " << f.name);
    testing::temp_dir tmp;
    auto be = f.make();
    ops o{*be};
    fixture fx{f, o};
    fx.file(tmp.str(), "old", "old");
    fx.file(tmp.str(), "new", "new");
    fx.subdir(tmp / "d");
    if (f.host) REQUIRE(::symlink("old", (tmp / "s").c_str()) == 0);
    auto dir = fx.dir(tmp.str()).value();
    REQUIRE(o.rename(dir, "new", "old"));
    auto h = o.open(dir, "old", io::open_mode::read).value();
    CHECK(o.read(h, 0, 10).value() == "new");
    REQUIRE(o.close(h));
    auto l = o.list(dir).value();
    std::sort(l.begin(), l.end(), [](auto& a, auto& b) { return a.name < b.name; });
    REQUIRE(l.size() == (f.host ? 3u : 2u));
    CHECK(l[0].name == "d");
    CHECK(l[0].type == io::dir_entry::directory);
    CHECK(l[1].name == "old");
    CHECK(l[1].type == io::dir_entry::regular);
    if (f.host) {
      CHECK(l[2].name == "s");
      CHECK(l[2].type == io::dir_entry::symlink);
    }
    REQUIRE(o.unlink(dir, "old"));
    CHECK(o.list(dir).value().size() == (f.host ? 2u : 1u));
    REQUIRE(o.close(dir));
  }
}

TEST_CASE("backends run many operations in flight from several threads", "[io][conformance]") {
  for (const auto& f : all_backends()) {
    INFO("backend " << f.name);
    testing::temp_dir tmp;
    auto be = f.make();
    ops o{*be};
    fixture fx{f, o};
    auto dir = fx.dir(tmp.str()).value();
    auto h = o.open(dir, "big", io::open_mode::create_exclusive).value();
    constexpr int blocks = 256;
    std::vector<std::string> data(blocks);
    std::vector<std::future<result<void>>> pending;
    for (int i = 0; i < blocks; ++i) {
      data[static_cast<std::size_t>(i)] = std::string(4096, static_cast<char>('a' + i % 26));
      auto p = std::make_shared<std::promise<result<void>>>();
      pending.push_back(p->get_future());
      const auto& d = data[static_cast<std::size_t>(i)];
      be->write(h, static_cast<std::uint64_t>(i) * 4096, std::as_bytes(std::span(d.data(), d.size())),
                [p](result<void> r) { p->set_value(std::move(r)); });
    }
    for (auto& p : pending) REQUIRE(p.get());
    REQUIRE(o.close(h));
    auto r = o.open(dir, "big", io::open_mode::read).value();
    for (int i = 0; i < blocks; i += 17)
      CHECK(o.read(r, static_cast<std::uint64_t>(i) * 4096, 4096).value() == data[static_cast<std::size_t>(i)]);
    REQUIRE(o.close(r));
    REQUIRE(o.close(dir));
  }
}

TEST_CASE("the io_uring backend keeps the completion queue from overflowing with thousands of operations", "[io][uring]") {
  auto probe = backends::make_uring_backend({8});
  if (!probe) {
    WARN("skipped: " << probe.error().what());
    return;
  }
  auto be = std::move(*probe);
  testing::temp_dir tmp;
  ops o{*be};
  auto dir = o.open_dir(tmp.str()).value();
  auto h = o.open(dir, "f", io::open_mode::create_exclusive).value();
  constexpr int n = 5000;  // far more than the 8-deep queue
  std::vector<std::uint64_t> vals(n);
  std::atomic<int> ok{0}, completed{0};
  std::promise<void> all;
  for (int i = 0; i < n; ++i) {
    vals[static_cast<std::size_t>(i)] = 0x1234567800000000ull + static_cast<std::uint64_t>(i);
    be->write(h, static_cast<std::uint64_t>(i) * 8, std::as_bytes(std::span(&vals[static_cast<std::size_t>(i)], 1)), [&](result<void> r) {
      if (r) ++ok;
      if (++completed == n) all.set_value();
    });
  }
  all.get_future().wait();
  CHECK(ok == n);
  REQUIRE(o.fsync(h));
  REQUIRE(o.close(h));
  auto r = o.open(dir, "f", io::open_mode::read).value();
  std::vector<std::uint64_t> back(n);
  auto got = io::wait<std::size_t>([&](auto d) { be->read(r, 0, std::as_writable_bytes(std::span(back)), std::move(d)); });
  CHECK(got.value() == n * 8);
  CHECK(back == vals);
  REQUIRE(o.close(r));
  REQUIRE(o.close(dir));
}

TEST_CASE("automatic backend selection prefers io_uring and falls back to POSIX", "[io][select]") {
  auto a = backends::make_backend(backends::backend_kind::automatic).value();
  CHECK((a->name() == "uring" || a->name() == "posix"));
  CHECK(backends::make_backend(backends::backend_kind::posix).value()->name() == "posix");
  if (backends::make_uring_backend()) CHECK(a->name() == "uring");
}

TEST_CASE("backend operations complete through Asio tokens: awaitable, future, callback", "[io][conformance][async]") {
  namespace asio = boost::asio;
  for (const auto& f : all_backends()) {
    INFO("backend " << f.name);
    testing::temp_dir tmp;
    auto be = f.make();
    ops o{*be};
    fixture{f, o}.file(tmp.str(), "x", "0123456789");
    asio::io_context ctx;
    std::string got;
    asio::co_spawn(
        ctx,
        [&]() -> asio::awaitable<void> {
          auto ex = co_await asio::this_coro::executor;
          auto dir = co_await io::async_open_dir(*be, ex, tmp.str(), false, asio::use_awaitable);
          REQUIRE(dir);
          auto h = co_await io::async_open(*be, ex, *dir, "x", io::open_mode::read, asio::use_awaitable);
          REQUIRE(h);
          std::string buf(4, '\0');
          auto n = co_await io::async_read(*be, ex, *h, 3, std::as_writable_bytes(std::span(buf.data(), buf.size())), asio::use_awaitable);
          REQUIRE(n);
          got = buf;
          (void)co_await io::async_close(*be, ex, *h, asio::use_awaitable);
          (void)co_await io::async_close(*be, ex, *dir, asio::use_awaitable);
        },
        asio::detached);
    ctx.run();  // returns only when the coroutine finished: IO on other threads counts as work
    CHECK(got == "3456");

    asio::io_context ctx2;
    auto work = asio::make_work_guard(ctx2);
    std::thread runner([&] { ctx2.run(); });
    auto fut = io::async_open_dir(*be, ctx2.get_executor(), tmp.str(), false, asio::use_future);
    auto dir = fut.get();
    REQUIRE(dir);
    std::promise<std::uint64_t> sz;
    auto h = io::wait<handle>([&](auto d) { be->open(*dir, "x", io::open_mode::read, std::move(d)); }).value();
    io::async_size(*be, ctx2.get_executor(), h, [&](result<std::uint64_t> r) { sz.set_value(r.value()); });
    CHECK(sz.get_future().get() == 10);
    REQUIRE(io::async_close(*be, ctx2.get_executor(), h, asio::use_future).get());
    REQUIRE(io::async_close(*be, ctx2.get_executor(), *dir, asio::use_future).get());
    work.reset();
    runner.join();
  }
}

TEST_CASE("registered buffers: transfers inside them go through the fixed-buffer path", "[io][conformance][fixed]") {
  for (const auto& f : all_backends()) {
    INFO("backend " << f.name);
    testing::temp_dir tmp;
    auto be = f.make();
    if (f.name == std::string("uring")) CHECK(be->caps().registered_buffers);  // a 6.x kernel has sparse tables
    ops o{*be};
    fixture fx{f, o};
    auto dir = fx.dir(tmp.str()).value();
    constexpr std::size_t size = 1 << 20;
    testing::aligned_bytes src(size), dst(size);
    be->register_buffer({src.get(), size});
    be->register_buffer({src.get(), size});  // idempotent
    be->register_buffer({dst.get(), size});
    for (std::size_t i = 0; i < size; ++i) src.get()[i] = static_cast<std::byte>((i * 7 + 3) % 253);
    auto h = o.open(dir, "fixed", io::open_mode::create_exclusive_direct).value();
    // The whole buffer, then a piece from its middle (still inside the registered range).
    REQUIRE(io::wait<void>([&](auto d) { be->write(h, 0, std::span<const std::byte>(src.get(), size), std::move(d)); }));
    REQUIRE(io::wait<void>([&](auto d) { be->write(h, size, std::span<const std::byte>(src.get() + 8192, 65536), std::move(d)); }));
    REQUIRE(o.fsync(h));
    REQUIRE(o.close(h));
    auto r = o.open(dir, "fixed", io::open_mode::read_direct).value();
    auto got = io::wait<std::size_t>([&](auto d) { be->read(r, 0, std::span<std::byte>(dst.get(), size), std::move(d)); });
    REQUIRE(got);
    CHECK(*got == size);
    CHECK(std::memcmp(dst.get(), src.get(), size) == 0);
    got = io::wait<std::size_t>([&](auto d) { be->read(r, size, std::span<std::byte>(dst.get() + 4096, 65536), std::move(d)); });
    REQUIRE(got);
    CHECK(*got == 65536);
    CHECK(std::memcmp(dst.get() + 4096, src.get() + 8192, 65536) == 0);
    REQUIRE(o.close(r));
    REQUIRE(o.close(dir));
  }
}
