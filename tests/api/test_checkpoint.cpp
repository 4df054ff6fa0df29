// The low-level checkpoint API over the POSIX backend: round trips across layouts and dtypes,
// the async faces, atomic overwrite, leftovers, and every error the reader must report.

#include <catch2/catch.hpp>

#include <sys/stat.h>
#include <unistd.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/use_future.hpp>

#include <deque>
#include <filesystem>
#include <fstream>

#include "meshckpt/pipeline/tensor_io_async.hpp"
#include "meshckpt/backends/posix.hpp"
#include "meshckpt/format/names.hpp"
#include "support.hpp"

using namespace meshckpt;
namespace fs = std::filesystem;
namespace asio = boost::asio;

namespace {

struct spec {
  std::string key;
  dtype type;
  shape global;
  std::vector<std::string> layout;
};

// A state: owning tensors plus the named views the API takes.
struct state {
  std::deque<dtensor> storage;
  std::vector<named_tensor> named;
};

state make_state(const mesh& m, const std::vector<spec>& specs, std::optional<std::uint64_t> seed) {
  state s;
  for (const auto& sp : specs) {
    s.storage.push_back(dtensor::create(sp.type, sp.global, layout::create(sp.layout, m).value()).value());
    if (seed) testing::fill(s.storage.back().view(), sp.key, *seed);
    s.named.push_back({sp.key, s.storage.back().view()});
  }
  return s;
}

bool matches(const state& s, std::uint64_t seed) {
  for (const auto& n : s.named)
    if (!testing::matches(n.tensor, n.key, seed)) return false;
  return true;
}

const std::vector<spec> model = {
    {"model/embedding", dtype::float32, {64, 48}, {"x", "y"}},
    {"model/dense/kernel", dtype::bfloat16, {48, 40}, {"unsharded", "y"}},
    {"model/dense/bias", dtype::float16, {40}, {"y"}},
    {"model/uneven", dtype::float64, {7, 5}, {"y", "x"}},
    {"model/tiny_uneven", dtype::int8, {3}, {"y"}},  // 1,1,1,0: an empty trailing shard
    {"model/empty", dtype::float32, {0, 4}, {"x", "unsharded"}},
    {"opt/step", dtype::int64, {}, {}},
    {"opt/flags", dtype::boolean, {6}, {"unsharded"}},
    {"opt/fp8", dtype::float8_e4m3, {16}, {"x"}},
    {"opt/fp8b", dtype::float8_e5m2, {16}, {"unsharded"}},
    {"opt/u16", dtype::uint16, {9}, {"x"}},
    {"opt/u32", dtype::uint32, {9}, {"unsharded"}},
    {"opt/u64", dtype::uint64, {2, 2}, {"unsharded", "x"}},
    {"opt/i16", dtype::int16, {5}, {"y"}},
    {"opt/i32", dtype::int32, {5}, {"x"}},
    {"opt/u8", dtype::uint8, {300}, {"y"}},
    {"rng/state", dtype::blob, {32}, {"unsharded"}},
    {"big/aligned", dtype::float32, {256, 512}, {"x", "unsharded"}},  // 256 KiB slices: 4 KiB aligned
};

mesh mesh24() { return mesh::create({{"x", 2}, {"y", 4}}).value(); }

std::vector<std::string> files_in(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

std::string only_data_file(const std::string& dir) {
  for (const auto& f : files_in(dir))
    if (format::classify(f).k == format::name_kind::data) return dir + "/" + f;
  FAIL("no data file in " << dir);
  return {};
}

// Reads checkpoint `prefix` into fresh tensors of `model` and checks they hold the contents of `seed`.
bool restores_to(io::backend& be, const std::string& prefix, std::uint64_t seed) {
  auto dst = make_state(mesh24(), model, std::nullopt);
  auto r = read_tensors(be, prefix, dst.named);
  if (!r) {
    UNSCOPED_INFO(r.error().what());
    return false;
  }
  return matches(dst, seed);
}

void corrupt_byte(const std::string& path, std::uint64_t offset) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(static_cast<std::streamoff>(offset));
  char c;
  f.get(c);
  f.seekp(static_cast<std::streamoff>(offset));
  f.put(static_cast<char>(c ^ 0x40));
}

}  // namespace

TEST_CASE("tensors of every dtype and layout round-trip bit-exact", "[api][roundtrip]") {
  testing::temp_dir tmp;
  auto be = testing::test_backend();
  auto m = mesh24();
  auto src = make_state(m, model, 7);
  auto w = write_tensors(*be, tmp / "ck", src.named).value();
  CHECK(w.tensors == model.size());
  CHECK(w.files == 1);
  CHECK(w.manifest_path == tmp / "ck.manifest");
  auto dst = make_state(m, model, std::nullopt);
  CHECK_FALSE(matches(dst, 7));
  auto r = read_tensors(*be, tmp / "ck", dst.named).value();
  CHECK(r.tensors == model.size());
  CHECK(r.bytes_read == w.bytes);
  CHECK(matches(dst, 7));
  auto v = verify(*be, tmp / "ck").value();
  CHECK(v.ok());
  CHECK(v.bytes_checked == w.bytes);
  auto man = read_manifest(*be, tmp / "ck").value();
  for (const auto& t : man.tensors)
    for (const auto& s : t.slices)
      if (s.length >= 64 * 1024) CHECK(s.offset % 4096 == 0);
  // Only the manifest, the data file and the directory's writer lock: no temp files.
  CHECK(files_in(tmp.str()) ==
        std::vector<std::string>{fs::path(only_data_file(tmp.str())).filename().string(), "ck.manifest", "meshckpt.lock"});
}

TEST_CASE("a process holding some devices reads only its shards", "[api][roundtrip]") {
  testing::temp_dir tmp;
  auto be = testing::test_backend();
  auto src = make_state(mesh24(), model, 11);
  REQUIRE(write_tensors(*be, tmp / "ck", src.named));
  auto part = mesh::create({{"x", 2}, {"y", 4}}, {}, {5, 6}).value();
  auto dst = make_state(part, model, std::nullopt);
  REQUIRE(read_tensors(*be, tmp / "ck", dst.named));
  CHECK(matches(dst, 11));
  // A subset of keys is fine too.
  std::vector<named_tensor> one = {dst.named[0]};
  CHECK(read_tensors(*be, tmp / "ck", one));
}

TEST_CASE("async forms complete through use_future, use_awaitable and callbacks", "[api][async]") {
  testing::temp_dir tmp;
  auto be = testing::test_backend();
  auto src = make_state(mesh24(), model, 3);
  asio::thread_pool pool(1);
  auto ex = pool.get_executor();
  auto fut = async_write_tensors(ex, *be, tmp / "a", src.named, {}, asio::use_future);
  REQUIRE(fut.get());

  auto dst = make_state(mesh24(), model, std::nullopt);
  asio::io_context ctx;
  result<read_report> got = make_error(errc::invalid_argument, "not run");
  asio::co_spawn(
      ctx,
      [&]() -> asio::awaitable<void> {
        auto e = co_await asio::this_coro::executor;
        got = co_await async_read_tensors(e, *be, tmp / "a", dst.named, {}, asio::use_awaitable);
      },
      asio::detached);
  ctx.run();
  REQUIRE(got);
  CHECK(matches(dst, 3));

  std::promise<bool> called;
  async_verify(ex, *be, tmp / "a", [&](result<verify_report> r) { called.set_value(r && r->ok()); });
  CHECK(called.get_future().get());
  auto mf = async_read_manifest(ex, *be, tmp / "a", asio::use_future).get();
  REQUIRE(mf);
  CHECK(mf->tensors.size() == model.size());
  pool.join();
}

TEST_CASE("many concurrent async saves and restores share one io_context", "[api][async][concurrency]") {
  testing::temp_dir tmp;
  auto be = testing::test_backend();
  constexpr int n = 12;
  std::deque<state> src, dst;  // stable addresses: the views point into each state's tensors
  for (int i = 0; i < n; ++i) {
    src.push_back(make_state(mesh24(), model, 100 + static_cast<std::uint64_t>(i)));
    dst.push_back(make_state(mesh24(), model, std::nullopt));
  }
  asio::io_context ctx;
  int saved = 0, restored = 0, failed = 0;
  for (int i = 0; i < n; ++i)
    asio::co_spawn(
        ctx,
        [&, i]() -> asio::awaitable<void> {
          auto e = co_await asio::this_coro::executor;
          std::string prefix = tmp / ("c" + std::to_string(i));
          auto w = co_await async_write_tensors(e, *be, prefix, src[static_cast<std::size_t>(i)].named, {}, asio::use_awaitable);
          if (!w) {
            ++failed;
            co_return;
          }
          ++saved;
          auto r = co_await async_read_tensors(e, *be, prefix, dst[static_cast<std::size_t>(i)].named, {}, asio::use_awaitable);
          if (r)
            ++restored;
          else
            ++failed;
        },
        asio::detached);
  ctx.run();  // one thread drives all of them; IO completes on the backend's threads
  CHECK(failed == 0);
  CHECK(saved == n);
  CHECK(restored == n);
  for (int i = 0; i < n; ++i) CHECK(matches(dst[static_cast<std::size_t>(i)], 100 + static_cast<std::uint64_t>(i)));
}

TEST_CASE("saves and restores report progress up to the total", "[api][progress]") {
  testing::temp_dir tmp;
  auto be = testing::test_backend();
  auto big = make_state(mesh24(), {{"w", dtype::float32, {2048, 4096}, {"x", "unsharded"}}}, 3);  // 32 MiB stored
  std::vector<std::pair<std::uint64_t, std::uint64_t>> seen;
  write_options wo;
  wo.progress = [&](std::uint64_t d, std::uint64_t t) { seen.emplace_back(d, t); };
  REQUIRE(write_tensors(*be, tmp / "p", big.named, wo));
  REQUIRE(seen.size() >= 4);
  for (std::size_t i = 1; i < seen.size(); ++i) CHECK(seen[i].first >= seen[i - 1].first);
  CHECK(seen.back().first == seen.back().second);
  CHECK(seen.back().second == 32u << 20);
  seen.clear();
  read_options ro;
  ro.progress = [&](std::uint64_t d, std::uint64_t t) { seen.emplace_back(d, t); };
  auto dst = make_state(mesh24(), {{"w", dtype::float32, {2048, 4096}, {"x", "unsharded"}}}, std::nullopt);
  REQUIRE(read_tensors(*be, tmp / "p", dst.named, ro));
  REQUIRE_FALSE(seen.empty());
  CHECK(seen.back().first == seen.back().second);
  CHECK(matches(dst, 3));
}

TEST_CASE("a cancelled save leaves the previous checkpoint and no new file", "[api][cancel]") {
  testing::temp_dir tmp;
  auto be = testing::test_backend();
  auto old = make_state(mesh24(), {{"w", dtype::float32, {2048, 4096}, {"x", "unsharded"}}}, 1);
  auto neu = make_state(mesh24(), {{"w", dtype::float32, {2048, 4096}, {"x", "unsharded"}}}, 2);
  REQUIRE(write_tensors(*be, tmp / "ck", old.named));
  auto files_before = files_in(tmp.str());
  for (int when : {0, 1}) {  // before it starts; in the middle of the flush
    INFO("cancel " << (when ? "mid-flush" : "before start"));
    std::stop_source stop;
    write_options wo;
    wo.stop = stop.get_token();
    if (when == 0)
      stop.request_stop();
    else
      wo.progress = [&](std::uint64_t d, std::uint64_t) {
        if (d > 0) stop.request_stop();
      };
    auto r = write_tensors(*be, tmp / "ck", neu.named, wo);
    REQUIRE_FALSE(r);
    CHECK(r.error().code == errc::cancelled);
    CHECK_THAT(r.error().what(), Catch::Contains("cancelled"));
    CHECK(files_in(tmp.str()) == files_before);  // nothing new left behind
    auto dst = make_state(mesh24(), {{"w", dtype::float32, {2048, 4096}, {"x", "unsharded"}}}, std::nullopt);
    REQUIRE(read_tensors(*be, tmp / "ck", dst.named));
    CHECK(matches(dst, 1));
  }
}

TEST_CASE("overwriting a prefix replaces it atomically and removes the old data", "[api][commit]") {
  testing::temp_dir tmp;
  auto be = testing::test_backend();
  auto a = make_state(mesh24(), model, 1);
  auto b = make_state(mesh24(), model, 2);
  REQUIRE(write_tensors(*be, tmp / "ck", a.named));
  auto old_data = only_data_file(tmp.str());
  auto w = write_tensors(*be, tmp / "ck", b.named).value();
  CHECK(w.cleaned_files == 1);
  CHECK_FALSE(fs::exists(old_data));
  CHECK(files_in(tmp.str()) ==
        std::vector<std::string>{fs::path(only_data_file(tmp.str())).filename().string(), "ck.manifest", "meshckpt.lock"});
  CHECK(restores_to(*be, tmp / "ck", 2));
}

TEST_CASE("leftovers of a crashed save are ignored, reported, and cleaned by the next save", "[api][commit]") {
  testing::temp_dir tmp;
  auto be = testing::test_backend();
  auto a = make_state(mesh24(), model, 1);
  REQUIRE(write_tensors(*be, tmp / "ck", a.named));
  std::ofstream(tmp / format::temp_manifest_name("ck", 0xdead)) << "half a manifest";
  std::ofstream(tmp / format::data_file_name("ck", 0xdead, 0)) << "orphan";
  std::ofstream(tmp / "notes.txt") << "not ours";
  std::ofstream(tmp / format::data_file_name("other", 0xbeef, 0)) << "another checkpoint's orphan";
  auto scan = scan_directory(*be, tmp.str()).value();
  CHECK(scan.checkpoints == std::vector<std::string>{"ck"});
  CHECK(scan.leftovers.size() == 3);
  CHECK(restores_to(*be, tmp / "ck", 1));
  auto w = write_tensors(*be, tmp / "ck", a.named).value();
  CHECK(w.cleaned_files == 3);                                          // old data + the two leftovers of "ck"
  CHECK(fs::exists(tmp / "notes.txt"));                                 // never touches files it did not write
  CHECK(fs::exists(tmp / format::data_file_name("other", 0xbeef, 0)));  // nor other checkpoints' files
  CHECK(scan_directory(*be, tmp.str()).value().leftovers.size() == 1);
}

TEST_CASE("a missing checkpoint is not_found, with a hint when a -N suffix looks missing", "[api][errors]") {
  testing::temp_dir tmp;
  auto be = testing::test_backend();
  auto a = make_state(mesh24(), model, 1);
  REQUIRE(write_tensors(*be, tmp / "ckpt-3", a.named));
  REQUIRE(write_tensors(*be, tmp / "ckpt-12", a.named));
  auto r = read_manifest(*be, tmp / "ckpt");
  REQUIRE_FALSE(r);
  CHECK(r.error().code == errc::not_found);
  CHECK_THAT(r.error().what(), Catch::Contains("ckpt.manifest does not exist") && Catch::Contains("did you mean ckpt-12?"));
  auto nodir = read_tensors(*be, tmp / "nowhere/ckpt", a.named);
  REQUIRE_FALSE(nodir);
  CHECK(nodir.error().code == errc::not_found);
  CHECK_THAT(nodir.error().what(), Catch::Contains("does not exist"));
}

TEST_CASE("dtype, shape, layout and key mismatches are errors naming the tensor", "[api][errors]") {
  testing::temp_dir tmp;
  auto be = testing::test_backend();
  auto m = mesh24();
  auto a = make_state(m, {{"w", dtype::float32, {8, 8}, {"x", "y"}}}, 1);
  REQUIRE(write_tensors(*be, tmp / "ck", a.named));
  auto err = [&](const std::vector<spec>& s) {
    auto dst = make_state(m, s, std::nullopt);
    auto r = read_tensors(*be, tmp / "ck", dst.named);
    REQUIRE_FALSE(r);
    return r.error();
  };
  auto e = err({{"w", dtype::bfloat16, {8, 8}, {"x", "y"}}});
  CHECK(e.code == errc::dtype_mismatch);
  CHECK_THAT(e.what(), Catch::Contains("\"w\"") && Catch::Contains("float32") && Catch::Contains("bfloat16"));
  e = err({{"w", dtype::float32, {8, 4}, {"x", "y"}}});
  CHECK(e.code == errc::shape_mismatch);
  CHECK_THAT(e.what(), Catch::Contains("[8, 8]") && Catch::Contains("[8, 4]"));
  {
    // Another layout is not an error any more: it is resharded.
    auto dst = make_state(m, {{"w", dtype::float32, {8, 8}, {"y", "x"}}}, std::nullopt);
    auto r = read_tensors(*be, tmp / "ck", dst.named);
    REQUIRE(r);
    CHECK(r->resharded_shards == 8);
    CHECK(matches(dst, 1));
  }
  e = err({{"v", dtype::float32, {8, 8}, {"x", "y"}}});
  CHECK(e.code == errc::not_found);
  CHECK_THAT(e.what(), Catch::Contains("\"v\" is not in the checkpoint"));
}

TEST_CASE("a corrupted data byte fails verify and read with a checksum error naming the tensor", "[api][corruption]") {
  testing::temp_dir tmp;
  auto be = testing::test_backend();
  auto m = mesh24();
  auto a = make_state(m, model, 5);
  REQUIRE(write_tensors(*be, tmp / "ck", a.named));
  auto man = read_manifest(*be, tmp / "ck").value();
  const auto* t = man.find("model/embedding");
  REQUIRE(t);
  const auto& s = t->slices[3];
  corrupt_byte(only_data_file(tmp.str()), s.offset + 17);
  auto v = verify(*be, tmp / "ck").value();
  REQUIRE(v.problems.size() == 1);
  CHECK(v.problems[0].code == errc::checksum_mismatch);
  CHECK_THAT(v.problems[0].what(), Catch::Contains("\"model/embedding\"") && Catch::Contains(man.files[0].name));
  auto dst = make_state(m, model, std::nullopt);
  auto r = read_tensors(*be, tmp / "ck", dst.named);
  REQUIRE_FALSE(r);
  CHECK(r.error().code == errc::checksum_mismatch);
  CHECK_THAT(r.error().what(), Catch::Contains("\"model/embedding\"") && Catch::Contains(to_string(s.where)));
  // Without verification the read succeeds (the option exists for speed, not for safety).
  read_options fast;
  fast.verify_checksums = false;
  CHECK(read_tensors(*be, tmp / "ck", dst.named, fast));
}

TEST_CASE("truncated, missing and replaced data files are reported", "[api][corruption][hostile]") {
  testing::temp_dir tmp;
  auto be = testing::test_backend();
  auto m = mesh24();
  auto a = make_state(m, model, 5);
  auto dst = make_state(m, model, std::nullopt);
  REQUIRE(write_tensors(*be, tmp / "ck", a.named));
  auto data = only_data_file(tmp.str());
  auto size = fs::file_size(data);

  fs::resize_file(data, size - 1);
  auto r = read_tensors(*be, tmp / "ck", dst.named);
  REQUIRE_FALSE(r);
  CHECK(r.error().code == errc::short_read);
  CHECK_THAT(r.error().what(), Catch::Contains("truncated"));
  CHECK_FALSE(verify(*be, tmp / "ck").value().ok());

  fs::rename(data, data + ".moved");
  r = read_tensors(*be, tmp / "ck", dst.named);
  REQUIRE_FALSE(r);
  CHECK(r.error().code == errc::not_found);
  CHECK_THAT(r.error().what(), Catch::Contains("is missing"));

  REQUIRE(::symlink((data + ".moved").c_str(), data.c_str()) == 0);
  r = read_tensors(*be, tmp / "ck", dst.named);
  REQUIRE_FALSE(r);
  CHECK(r.error().code == errc::unsafe_path);
  fs::remove(data);
  REQUIRE(::mkfifo(data.c_str(), 0644) == 0);
  r = read_tensors(*be, tmp / "ck", dst.named);
  REQUIRE_FALSE(r);
  CHECK(r.error().code == errc::unsafe_path);
}

TEST_CASE("write rejects bad prefixes and options without touching the directory", "[api][errors]") {
  testing::temp_dir tmp;
  auto be = testing::test_backend();
  auto a = make_state(mesh24(), model, 1);
  CHECK(write_tensors(*be, tmp / "x.manifest", a.named).error().code == errc::invalid_argument);
  CHECK(write_tensors(*be, tmp.str() + "/..", a.named).error().code == errc::invalid_argument);
  write_options bad;
  bad.chunk_bytes = 1000;
  CHECK_THAT(write_tensors(*be, tmp / "ck", a.named, bad).error().what(), Catch::Contains("chunk_bytes 1000"));
  CHECK(files_in(tmp.str()).empty());
  // Small chunks: many checksums per slice, still verified.
  write_options small;
  small.chunk_bytes = 4096;
  REQUIRE(write_tensors(*be, tmp / "ck", a.named, small));
  CHECK(restores_to(*be, tmp / "ck", 1));
}

TEST_CASE("a save creates missing parent directories", "[api][commit]") {
  testing::temp_dir tmp;
  auto be = testing::test_backend();
  auto a = make_state(mesh24(), model, 9);
  REQUIRE(write_tensors(*be, tmp / "runs/exp1/ckpts/step", a.named));
  CHECK(fs::exists(tmp / "runs/exp1/ckpts/step.manifest"));
  CHECK(restores_to(*be, tmp / "runs/exp1/ckpts/step", 9));
}
