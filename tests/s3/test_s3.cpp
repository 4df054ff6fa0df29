// The S3 backend against a real Ceph RGW on 127.0.0.1 (tests/s3/rgw.sh, started by CTest's
// s3 fixture; MESHCKPT_RGW_DIR names its directory): the backend's file semantics over objects,
// then the library's saves, restores, verification, manager and commit on s3:// prefixes.
#include <catch2/catch.hpp>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <deque>
#include <fstream>
#include <thread>

#include <sys/wait.h>
#include <unistd.h>

#include "meshckpt/api/checkpoint_manager.hpp"
#include "meshckpt/backends/s3.hpp"
#include "meshckpt/format/names.hpp"
#include "meshckpt/io/make_backend.hpp"
#include "meshckpt/pipeline/tensor_io.hpp"
#include "fault_proxy.hpp"
#include "s3_support.hpp"
#include "support.hpp"

using namespace meshckpt;

using namespace meshckpt::testing::s3;

TEST_CASE("s3: small and multipart objects round-trip; nothing is visible before fsync", "[s3][backend]") {
  auto b = s3();
  CHECK(b->caps().atomic_rename == false);
  CHECK(b->caps().host_filesystem == false);
  auto prefix = fresh_prefix("backend");
  auto d = run<io::handle>([&](auto done) { b->open_dir(prefix, true, std::move(done)); }).value();

  auto small = pattern(1000, 1);
  REQUIRE(put_file(*b, d, "small", small));
  CHECK(get_file(*b, d, "small") == small);
  CHECK(get_file(*b, d, "small", 100, 10) == std::vector<std::byte>(small.begin() + 100, small.begin() + 110));

  // 21 MiB in pieces of 1 MiB, padded to a 4 KiB multiple and trimmed back, as O_DIRECT writers do: three parts.
  auto big = pattern((21u << 20) + 123, 2);
  auto padded = big;
  padded.resize((big.size() + 4095) / 4096 * 4096);
  auto h = run<io::handle>([&](auto done) { b->open(d, "big", io::open_mode::create_exclusive_direct, std::move(done)); }).value();
  // Out of order within the window, as several writes in flight may land.
  std::vector<std::size_t> order;
  for (std::size_t at = 0; at < padded.size(); at += 1 << 20) order.push_back(at);
  for (std::size_t i = 0; i + 1 < order.size(); i += 2) std::swap(order[i], order[i + 1]);
  for (auto at : order) {
    auto part = std::span<const std::byte>(padded).subspan(at, std::min<std::size_t>(1 << 20, padded.size() - at));
    REQUIRE(run<void>([&](auto done) { b->write(h, at, part, std::move(done)); }));
  }
  REQUIRE(run<void>([&](auto done) { b->truncate(h, big.size(), std::move(done)); }));
  CHECK(names_in(*b, d) == std::vector<std::string>{"small"});  // not yet published
  REQUIRE(run<void>([&](auto done) { b->fsync(h, std::move(done)); }));
  REQUIRE(run<void>([&](auto done) { b->close(h, std::move(done)); }));
  CHECK(get_file(*b, d, "big") == big);
  CHECK(get_file(*b, d, "big", (8u << 20) - 5, 10) == std::vector<std::byte>(big.begin() + (8 << 20) - 5, big.begin() + (8 << 20) + 5));
  CHECK(get_file(*b, d, "big", big.size() - 3, 100).size() == 3);

  // Closed before fsync: nothing remains, not even the uploaded parts' object.
  h = run<io::handle>([&](auto done) { b->open(d, "abandoned", io::open_mode::create_exclusive, std::move(done)); }).value();
  auto junk = pattern(17u << 20, 3);
  for (std::size_t at = 0; at < junk.size(); at += 4 << 20)
    REQUIRE(run<void>([&](auto done) {
      b->write(h, at, std::span<const std::byte>(junk).subspan(at, std::min<std::size_t>(4 << 20, junk.size() - at)), std::move(done));
    }));
  REQUIRE(run<void>([&](auto done) { b->close(h, std::move(done)); }));
  CHECK(names_in(*b, d) == std::vector<std::string>{"big", "small"});

  // create_exclusive is create-only; replace replaces.
  auto again = put_file(*b, d, "small", pattern(10, 4));
  REQUIRE_FALSE(again);
  CHECK(again.error().code == std::error_code(EEXIST, std::system_category()));
  CHECK_THAT(again.error().what(), Catch::Contains("s3://meshckpt-test/") && Catch::Contains("exists"));
  CHECK(get_file(*b, d, "small") == small);
  REQUIRE(put_file(*b, d, "small", pattern(10, 4), io::open_mode::replace));
  CHECK(get_file(*b, d, "small") == pattern(10, 4));

  // Missing objects, unlink, rename, unsafe names.
  auto missing = run<io::handle>([&](auto done) { b->open(d, "nothing", io::open_mode::read, std::move(done)); });
  REQUIRE_FALSE(missing);
  CHECK(missing.error().code == std::error_code(ENOENT, std::system_category()));
  CHECK_THAT(missing.error().what(), Catch::Contains(prefix + "/nothing"));
  REQUIRE(run<void>([&](auto done) { b->unlink(d, "small", std::move(done)); }));
  CHECK(names_in(*b, d) == std::vector<std::string>{"big"});
  auto ren = run<void>([&](auto done) { b->rename(d, "big", "other", std::move(done)); });
  CHECK(ren.error().code == errc::unsupported);
  auto bad = run<io::handle>([&](auto done) { b->open(d, "../x", io::open_mode::read, std::move(done)); });
  CHECK(bad.error().code == errc::unsafe_path);
  (void)run<void>([&](auto done) { b->close(d, std::move(done)); });

  auto c = b->counts();
  CHECK(c.put >= 8);  // 2 small PUTs + 1 create, 3 parts, 1 completion, 1 abandoned create + parts ...
  CHECK(c.get >= 5);
  CHECK(c.retries == 0);
}

TEST_CASE("s3: directories: a missing bucket or prefix, bad names, listing with subdirectories", "[s3][backend]") {
  auto b = s3();
  auto nob = run<io::handle>([&](auto done) { b->open_dir("s3://no-such-bucket-here/x", true, std::move(done)); });
  REQUIRE_FALSE(nob);
  CHECK(nob.error().code == std::error_code(ENOENT, std::system_category()));
  CHECK_THAT(nob.error().what(), Catch::Contains("no-such-bucket-here") && Catch::Contains("does not exist"));
  auto prefix = fresh_prefix("dirs");
  auto none = run<io::handle>([&](auto done) { b->open_dir(prefix, false, std::move(done)); });
  CHECK(none.error().code == std::error_code(ENOENT, std::system_category()));
  auto badname = run<io::handle>([&](auto done) { b->open_dir("s3://UPPER/x", true, std::move(done)); });
  CHECK(badname.error().code == errc::invalid_argument);
  auto dotdot = run<io::handle>([&](auto done) { b->open_dir(std::string("s3://") + bucket + "/a/../b", true, std::move(done)); });
  CHECK(dotdot.error().code == errc::unsafe_path);

  auto d = run<io::handle>([&](auto done) { b->open_dir(prefix, true, std::move(done)); }).value();
  std::vector<std::string> expect;
  for (int i = 0; i < 12; ++i) {
    expect.push_back("f" + std::to_string(100 + i));
    REQUIRE(put_file(*b, d, expect.back(), pattern(3, i)));
  }
  auto sub = run<io::handle>([&](auto done) { b->open_dir(prefix + "/sub", true, std::move(done)); }).value();
  REQUIRE(put_file(*b, sub, "inner", pattern(3, 9)));
  auto d2 = run<io::handle>([&](auto done) { b->open_dir(prefix, false, std::move(done)); }).value();
  auto l = run<std::vector<io::dir_entry>>([&](auto done) { b->list(d2, std::move(done)); }).value();
  REQUIRE(l.size() == expect.size() + 1);
  CHECK(l.back().name == "sub");
  CHECK(l.back().type == io::dir_entry::directory);
}

namespace {

struct state {
  std::deque<dtensor> storage;
  std::vector<named_tensor> named;
};

mesh mesh22() { return mesh::create({{"x", 2}, {"y", 2}}).value(); }

state make_state(std::optional<std::uint64_t> seed) {
  state s;
  auto m = mesh22();
  auto add = [&](std::string key, dtype t, shape sh, std::vector<std::string> l) {
    s.storage.push_back(dtensor::create(t, std::move(sh), layout::create(l, m).value()).value());
    if (seed) testing::fill(s.storage.back().view(), key, *seed);
    s.named.push_back({key, s.storage.back().view()});
  };
  add("model/big", dtype::float32, {1024, 3000}, {"x", "unsharded"});  // 12 MiB: multipart data
  add("model/w", dtype::bfloat16, {48, 40}, {"unsharded", "y"});
  add("opt/step", dtype::int64, {}, {});
  return s;
}

bool matches(const state& s, std::uint64_t seed) {
  for (const auto& n : s.named)
    if (!testing::matches(n.tensor, n.key, seed)) return false;
  return true;
}

}  // namespace

TEST_CASE("s3: tensors saved to an s3:// prefix restore bit-exact and verify", "[s3][api]") {
  auto be = routed();
  auto prefix = fresh_prefix("api") + "/ck";
  auto src = make_state(5);
  auto w = write_tensors(*be, prefix, src.named).value();
  CHECK(w.manifest_path == prefix + ".manifest");
  auto dst = make_state(std::nullopt);
  auto r = read_tensors(*be, prefix, dst.named).value();
  CHECK(r.bytes_read == w.bytes);
  CHECK(matches(dst, 5));
  auto v = verify(*be, prefix).value();
  CHECK(v.ok());
  CHECK(v.bytes_checked == w.bytes);

  // The same name again: the manifest is create-only on an object store.
  auto again = write_tensors(*be, prefix, src.named);
  REQUIRE_FALSE(again);
  CHECK(again.error().code == std::error_code(EEXIST, std::system_category()));
  auto dst2 = make_state(std::nullopt);
  REQUIRE(read_tensors(*be, prefix, dst2.named));
  CHECK(matches(dst2, 5));
}

TEST_CASE("s3: of two writers committing one checkpoint, exactly one succeeds", "[s3][api][commit]") {
  auto be = routed();
  auto prefix = fresh_prefix("race") + "/ck";
  auto a = make_state(1), b = make_state(2);
  result<write_report> ra = make_error(errc::unsupported, ""), rb = make_error(errc::unsupported, "");
  std::thread ta([&] { ra = write_tensors(*be, prefix, a.named); });
  std::thread tb([&] { rb = write_tensors(*be, prefix, b.named); });
  ta.join();
  tb.join();
  REQUIRE(static_cast<int>(ra.has_value()) + static_cast<int>(rb.has_value()) == 1);
  auto& lost = ra ? rb : ra;
  CHECK(lost.error().code == std::error_code(EEXIST, std::system_category()));
  auto dst = make_state(std::nullopt);
  REQUIRE(read_tensors(*be, prefix, dst.named));
  CHECK(matches(dst, ra ? 1 : 2));
  CHECK(verify(*be, prefix).value().ok());
}

TEST_CASE("s3: a flipped byte in a data object is detected by restore and verify", "[s3][api][corruption]") {
  auto be = routed();
  auto dir = fresh_prefix("flip");
  auto prefix = dir + "/ck";
  auto src = make_state(3);
  REQUIRE(write_tensors(*be, prefix, src.named));
  auto m = read_manifest(*be, prefix).value();
  const std::string data = m.files.at(0).name;
  auto s = s3();
  auto d = run<io::handle>([&](auto done) { s->open_dir(dir, false, std::move(done)); }).value();
  auto bytes = get_file(*s, d, data);
  bytes[bytes.size() / 2] ^= std::byte{0x10};
  REQUIRE(put_file(*s, d, data, bytes, io::open_mode::replace, 8 << 20));
  auto dst = make_state(std::nullopt);
  auto r = read_tensors(*be, prefix, dst.named);
  REQUIRE_FALSE(r);
  CHECK(r.error().code == errc::checksum_mismatch);
  CHECK_THAT(r.error().what(), Catch::Contains(data));
  auto v = verify(*be, prefix).value();
  CHECK_FALSE(v.ok());
}

TEST_CASE("s3: the manager saves, keeps max_to_keep and recovers its state on s3://", "[s3][manager]") {
  load_rgw_env();
  auto dir = fresh_prefix("manager");
  struct tiny : graph::module {
    graph::variable w{dtensor::create(dtype::float32, {4, 4}, layout::create({"x", "y"}, mesh22()).value()).value()};
    graph::scalar<std::int64_t> step{0};
    tiny() {
      track("w", w);
      track("step", step);
    }
  };
  {
    tiny t;
    auto c = checkpoint::create(mesh22(), &t).value();
    manager_options o;
    o.max_to_keep = 2;
    auto m = checkpoint_manager::create(*c, dir, o).value();
    for (int i = 1; i <= 4; ++i) {
      t.step.set(i);
      CHECK(m->save().value() == dir + "/ckpt-" + std::to_string(i));
    }
    CHECK(m->checkpoints() == std::vector<std::string>{dir + "/ckpt-3", dir + "/ckpt-4"});
  }
  // The older checkpoints' objects are gone.
  auto s = s3();
  auto d = run<io::handle>([&](auto done) { s->open_dir(dir, false, std::move(done)); }).value();
  std::size_t manifests = 0, data = 0;
  for (const auto& n : names_in(*s, d)) {
    auto k = format::classify(n);
    if (k.k == format::name_kind::manifest) ++manifests;
    if (k.k == format::name_kind::data) ++data;
  }
  CHECK(manifests == 2);
  CHECK(data == 2);

  tiny t;
  auto c = checkpoint::create(mesh22(), &t).value();
  manager_options o;
  o.max_to_keep = 2;
  auto m = checkpoint_manager::create(*c, dir, o).value();
  CHECK(m->latest_checkpoint() == dir + "/ckpt-4");
  REQUIRE(m->restore_or_initialize().value() == dir + "/ckpt-4");
  CHECK(t.step.get() == 4);
  CHECK(m->save().value() == dir + "/ckpt-5");
}

TEST_CASE("s3: a URL of another scheme is refused, never made a local directory", "[s3][url]") {
  auto be = routed();
  auto src = make_state(1);
  auto r = write_tensors(*be, "gs://bucket/run/ck", src.named);
  REQUIRE_FALSE(r);
  CHECK(r.error().code == errc::unsupported);
  CHECK_THAT(r.error().what(), Catch::Contains("gs://bucket/run") && Catch::Contains("scheme \"gs\""));
  CHECK_FALSE(std::filesystem::exists("gs:"));
}

// ---------------------------------------------------------------- faults between meshckpt and the server

namespace {

std::vector<std::string> objects_under(const std::string& dir) {
  auto b = s3();
  auto d = run<io::handle>([&](auto done) { b->open_dir(dir, false, std::move(done)); });
  if (!d) return {};
  auto names = names_in(*b, *d);
  std::erase(names, "meshckpt.lease");  // the writer lease, released asynchronously
  return names;
}

}  // namespace

TEST_CASE("s3 faults: 503 SlowDown, resets and truncated responses are retried; the save and restore complete", "[s3][faults]") {
  testing::fault_proxy proxy(rgw_port());
  // The first two tries of every part upload answer 503; every third request is reset; every
  // ranged GET's first try is truncated.
  std::map<std::string, int> tries;
  proxy.set_rule([&](const std::string& line, int n) {
    if (has(line, "partNumber=") && ++tries[line] <= 2) return testing::fault::status_503;
    if (has(line, "GET ") && has(line, "ck.data") && ++tries[line] == 1) return testing::fault::truncate;
    if (n % 3 == 0) return testing::fault::reset;
    return testing::fault::none;
  });
  auto be = through(proxy, 6);
  auto prefix = fresh_prefix("faults") + "/ck";
  auto src = make_state(21);
  REQUIRE(write_tensors(*be, prefix, src.named));
  auto dst = make_state(std::nullopt);
  REQUIRE(read_tensors(*be, prefix, dst.named));
  CHECK(matches(dst, 21));
  CHECK(proxy.injected() > 5);
  CHECK(be->counts().retries >= static_cast<std::uint64_t>(proxy.injected()) / 2);
  // Read without the proxy, the committed checkpoint is whole.
  CHECK(verify(*routed(), prefix).value().ok());
}

TEST_CASE("s3 faults: a manifest PUT that keeps failing ends the save with a named error and commits nothing", "[s3][faults]") {
  testing::fault_proxy proxy(rgw_port());
  proxy.set_rule([&](const std::string& line, int) {
    return has(line, "PUT ") && has(line, ".manifest") ? testing::fault::status_503 : testing::fault::none;
  });
  auto be = through(proxy, 3);
  auto dir = fresh_prefix("nomanifest");
  auto src = make_state(4);
  auto t0 = std::chrono::steady_clock::now();
  auto w = write_tensors(*be, dir + "/ck", src.named);
  REQUIRE_FALSE(w);
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(10));  // bounded
  CHECK_THAT(w.error().what(), Catch::Contains("PUT s3://meshckpt-test/") && Catch::Contains("ck.manifest") &&
                                   Catch::Contains("HTTP 503 SlowDown") && Catch::Contains("after 3 tries"));
  // Nothing committed, and the save removed its data objects.
  for (const auto& n : objects_under(dir)) CHECK(format::classify(n).k != format::name_kind::manifest);
  CHECK(objects_under(dir).empty());
  auto r = read_manifest(*routed(), dir + "/ck");
  CHECK(r.error().code == errc::not_found);
}

TEST_CASE("s3 faults: a 412 on the manifest is another writer's commit: EEXIST, nothing of ours stays", "[s3][faults][commit]") {
  testing::fault_proxy proxy(rgw_port());
  proxy.set_rule([&](const std::string& line, int) {
    return has(line, "PUT ") && has(line, ".manifest") ? testing::fault::status_412 : testing::fault::none;
  });
  auto be = through(proxy);
  auto dir = fresh_prefix("412");
  auto src = make_state(4);
  auto w = write_tensors(*be, dir + "/ck", src.named);
  REQUIRE_FALSE(w);
  CHECK(w.error().code == std::error_code(EEXIST, std::system_category()));
  CHECK_THAT(w.error().what(), Catch::Contains("ck.manifest") && Catch::Contains("If-None-Match"));
  CHECK(be->counts().retries == 0);  // a 412 is an answer, not a failure to retry
  CHECK(objects_under(dir).empty());
}

TEST_CASE("s3 faults: a server that resets every connection fails each request after max_attempts, naming it", "[s3][faults]") {
  testing::fault_proxy proxy(rgw_port());
  proxy.set_rule([](const std::string&, int) { return testing::fault::reset; });
  auto be = through(proxy, 3);
  auto t0 = std::chrono::steady_clock::now();
  auto d = run<io::handle>([&](auto done) { be->open_dir(fresh_prefix("reset"), true, std::move(done)); });
  REQUIRE_FALSE(d);
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(5));
  CHECK_THAT(d.error().what(), Catch::Contains("HEAD s3://meshckpt-test") && Catch::Contains("after 3 tries"));
  CHECK(proxy.requests() == 3);
  CHECK(be->counts().retries == 2);
}

TEST_CASE("s3 faults: a manifest PUT whose answer was lost is retried and recognised as our own commit", "[s3][faults][commit]") {
  testing::fault_proxy proxy(rgw_port());
  int manifest_puts = 0;
  proxy.set_rule([&](const std::string& line, int) {
    return has(line, "PUT ") && has(line, ".manifest") && ++manifest_puts == 1 ? testing::fault::lose_response : testing::fault::none;
  });
  auto be = through(proxy);
  auto prefix = fresh_prefix("lost") + "/ck";
  auto src = make_state(8);
  REQUIRE(write_tensors(*be, prefix, src.named));  // the retry's 412 is ours: the stored manifest is our bytes
  CHECK(manifest_puts == 2);
  auto dst = make_state(std::nullopt);
  REQUIRE(read_tensors(*routed(), prefix, dst.named));
  CHECK(matches(dst, 8));
}

// ---------------------------------------------------------------- the writer lease

namespace {

std::string lease_text(const std::string& holder, std::int64_t expires_in_ms) {
  auto now = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count();
  return holder + "\nexpires_unix_ms: " + std::to_string(now + expires_in_ms) + "\n";
}

void plant_lease(const std::string& dir, const std::string& text) {
  auto b = s3();
  auto d = run<io::handle>([&](auto done) { b->open_dir(dir, true, std::move(done)); }).value();
  REQUIRE(put_file(*b, d, "meshckpt.lease", std::as_bytes(std::span(text.data(), text.size())), io::open_mode::replace));
}

std::string lease_now(const std::string& dir) {
  auto b = s3();
  auto d = run<io::handle>([&](auto done) { b->open_dir(dir, true, std::move(done)); }).value();
  auto h = run<io::handle>([&](auto done) { b->open(d, "meshckpt.lease", io::open_mode::read, std::move(done)); });
  if (!h) return "";  // (one HEAD, one GET: it may go in between)
  auto size = run<std::uint64_t>([&](auto done) { b->size(*h, std::move(done)); }).value();
  std::string text(size, '\0');
  auto got =
      run<std::size_t>([&](auto done) { b->read(*h, 0, std::as_writable_bytes(std::span(text.data(), text.size())), std::move(done)); });
  (void)run<void>([&](auto done) { b->close(*h, std::move(done)); });
  return got ? text : std::string();
}

struct one_var : graph::module {
  graph::variable w{dtensor::create(dtype::float32, {4, 4}, layout::create({"x", "y"}, mesh22()).value()).value()};
  one_var() { track("w", w); }
};

}  // namespace

TEST_CASE("s3 lease: a live writer elsewhere keeps others out, naming itself; an expired lease is taken over", "[s3][lease]") {
  load_rgw_env();
  auto dir = fresh_prefix("lease");
  plant_lease(dir, lease_text("pid 4242 on host elsewhere since 2026-12-07T10:00:00Z", 60000));
  one_var t;
  auto c = checkpoint::create(mesh22(), &t).value();
  auto m = checkpoint_manager::create(*c, dir, {});
  REQUIRE_FALSE(m);
  CHECK(m.error().code == errc::locked);
  CHECK_THAT(m.error().what(), Catch::Contains("pid 4242 on host elsewhere") && Catch::Contains("meshckpt.lease"));
  auto src = make_state(1);
  auto w = write_tensors(*routed(), dir + "/ck", src.named);
  REQUIRE_FALSE(w);
  CHECK(w.error().code == errc::locked);

  plant_lease(dir, lease_text("pid 4242 on host elsewhere since 2026-12-07T10:00:00Z", -1000));  // expired
  {
    auto m2 = checkpoint_manager::create(*c, dir, {}).value();
    CHECK_THAT(lease_now(dir), Catch::Contains("pid " + std::to_string(::getpid())));
    REQUIRE(m2->save());
  }
  // Released with the manager: deleted soon after (on the backend's thread).
  for (int i = 0; i < 100 && !lease_now(dir).empty(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  CHECK(lease_now(dir).empty());
}

TEST_CASE("s3 lease: the lease of a dead process of this host is broken at once", "[s3][lease]") {
  load_rgw_env();
  auto dir = fresh_prefix("deadlease");
  pid_t child = ::fork();
  if (child == 0) ::_exit(0);
  ::waitpid(child, nullptr, 0);
  char host[256] = {};
  ::gethostname(host, sizeof host - 1);
  plant_lease(dir, lease_text("pid " + std::to_string(child) + " on host " + host + " since 2026-12-07T10:00:00Z", 60000));
  auto src = make_state(2);
  auto first = write_tensors(*routed(), dir + "/ck", src.named);
  INFO((first ? std::string() : first.error().what()));
  REQUIRE(first);
  // Saving again right away: our released lease (still there, or going) is ours to take.
  auto second = write_tensors(*routed(), dir + "/ck2", src.named);
  INFO((second ? std::string() : second.error().what()));
  REQUIRE(second);
}

TEST_CASE("s3 lease: a lease deleted between its read and its takeover is then created anew", "[s3][lease][faults]") {
  testing::fault_proxy proxy(rgw_port());
  auto dir = fresh_prefix("vanishing");
  plant_lease(dir, lease_text("pid 4242 on host elsewhere since 2026-12-07T10:00:00Z", -1000));  // expired
  int lease_puts = 0;
  proxy.set_rule([&](const std::string& line, int) {
    // The takeover (the second PUT of the lease) finds it gone: its holder released it meanwhile.
    if (has(line, "PUT ") && has(line, "meshckpt.lease") && ++lease_puts == 2) {
      auto b = s3();
      auto d = run<io::handle>([&](auto done) { b->open_dir(dir, true, std::move(done)); }).value();
      (void)run<void>([&](auto done) { b->unlink(d, "meshckpt.lease", std::move(done)); });
    }
    return testing::fault::none;
  });
  auto be = through(proxy);
  auto got = run<std::shared_ptr<const void>>([&](auto done) {
    be->acquire_lease(
        dir, "pid 1 on host here since now", std::chrono::seconds(30), [](const std::string&) { return false; }, std::move(done));
  });
  INFO((got ? std::string() : got.error().what()));
  REQUIRE(got);
  CHECK(lease_puts >= 3);  // create (412), takeover (404 or 412: gone), create again
  CHECK_THAT(lease_now(dir), Catch::Contains("pid 1 on host here"));
  got->reset();
}

TEST_CASE("s3: a manager resumed after a save killed between its manifest and the state file saves under that number again",
          "[s3][manager][crash]") {
  load_rgw_env();
  auto dir = fresh_prefix("unrecorded");
  one_var t;
  auto c = checkpoint::create(mesh22(), &t).value();
  {
    auto m = checkpoint_manager::create(*c, dir, {}).value();
    REQUIRE(m->save());  // ckpt-1, recorded
  }
  // ckpt-2 committed but never recorded: the state file still names ckpt-1 (a copy of ckpt-1's objects).
  auto b = s3();
  auto d = run<io::handle>([&](auto done) { b->open_dir(dir, false, std::move(done)); }).value();
  auto manifest = get_file(*b, d, "ckpt-1.manifest");
  REQUIRE(put_file(*b, d, "ckpt-2.manifest", manifest));
  auto m = checkpoint_manager::create(*c, dir, {}).value();
  REQUIRE(m->restore_or_initialize().value() == dir + "/ckpt-1");
  auto saved = m->save();
  INFO((saved ? std::string() : saved.error().what()));
  REQUIRE(saved);
  CHECK(saved->value() == dir + "/ckpt-2");
  CHECK(verify(*routed(), dir + "/ckpt-2").value().ok());
}
