// The state file on an object store (tests/s3/rgw.sh's RGW, as test_s3): its compare and swap
// (If-Match on the version read), a conflict merged by the manager, and a lost answer to a swap
// recognised as our own; the multipart uploads that dead writers left, aborted.
#include <catch2/catch.hpp>

#include <cerrno>

#include <sys/wait.h>
#include <unistd.h>

#include "meshckpt/api/checkpoint_files.hpp"
#include "meshckpt/api/checkpoint_manager.hpp"
#include "meshckpt/format/names.hpp"
#include "s3_support.hpp"

using namespace meshckpt;
using namespace meshckpt::testing::s3;

namespace {

mesh mesh22() { return mesh::create({{"x", 2}, {"y", 2}}).value(); }

struct one_var : graph::module {
  graph::variable w{dtensor::create(dtype::float32, {4, 4}, layout::create({"x", "y"}, mesh22()).value()).value()};
  one_var() { track("w", w); }
};

std::string text_of(const std::vector<std::byte>& b) { return std::string(reinterpret_cast<const char*>(b.data()), b.size()); }

std::vector<std::byte> bytes_of(std::string_view s) {
  auto b = std::as_bytes(std::span(s.data(), s.size()));
  return {b.begin(), b.end()};
}

std::string version_of(io::backend& b, io::handle d, const std::string& name) {
  auto h = run<io::handle>([&](auto done) { b.open(d, name, io::open_mode::read, std::move(done)); }).value();
  auto v = b.version(h);
  (void)run<void>([&](auto done) { b.close(h, std::move(done)); });
  return v;
}

// Publishes `text` as `name` only over `expected` (open_mode::replace + expect_version).
result<void> replace_if(io::backend& b, io::handle d, const std::string& name, const std::string& text, const std::string& expected) {
  BOOST_OUTCOME_TRY(auto h, run<io::handle>([&](auto done) { b.open(d, name, io::open_mode::replace, std::move(done)); }));
  auto r = b.expect_version(h, expected);
  auto bytes = bytes_of(text);
  if (r) r = run<void>([&](auto done) { b.write(h, 0, bytes, std::move(done)); });
  if (r) r = run<void>([&](auto done) { b.fsync(h, std::move(done)); });
  (void)run<void>([&](auto done) { b.close(h, std::move(done)); });
  return r;
}

}  // namespace

TEST_CASE("s3 state: a replace over a version is a compare and swap; a stale version publishes nothing", "[s3][backend][state]") {
  auto dir = fresh_prefix("cas");
  auto b = s3();
  auto d = run<io::handle>([&](auto done) { b->open_dir(dir, true, std::move(done)); }).value();
  REQUIRE(put_file(*b, d, "f", bytes_of("one")));
  const auto v1 = version_of(*b, d, "f");
  REQUIRE_FALSE(v1.empty());

  REQUIRE(replace_if(*b, d, "f", "two", v1));
  const auto v2 = version_of(*b, d, "f");
  CHECK(v2 != v1);
  CHECK(text_of(get_file(*b, d, "f")) == "two");

  auto stale = replace_if(*b, d, "f", "three", v1);
  REQUIRE_FALSE(stale);
  CHECK(stale.error().code == std::error_code(ESTALE, std::system_category()));
  CHECK_THAT(stale.error().what(), Catch::Contains("If-Match refused") && Catch::Contains(dir.substr(5) + "/f"));
  CHECK(text_of(get_file(*b, d, "f")) == "two");
  CHECK(version_of(*b, d, "f") == v2);

  // Only a file opened with open_mode::replace takes a version to expect.
  auto h = run<io::handle>([&](auto done) { b->open(d, "g", io::open_mode::create_exclusive, std::move(done)); }).value();
  CHECK_FALSE(b->expect_version(h, v2));
  (void)run<void>([&](auto done) { b->close(h, std::move(done)); });
  (void)run<void>([&](auto done) { b->close(d, std::move(done)); });
}

TEST_CASE("s3 state: another writer's state update is merged by the manager's retried swap, not lost", "[s3][manager][state]") {
  load_rgw_env();
  auto dir = fresh_prefix("merge");
  auto be = routed();
  one_var t;
  auto c = checkpoint::create(mesh22(), &t).value();
  manager_options o;
  o.max_to_keep = 3;
  auto m = checkpoint_manager::create(*c, dir, o).value();
  REQUIRE(m->save().value() == dir + "/ckpt-1");

  // Meanwhile another writer (a tool) records its own checkpoint "other-7" in the state file.
  auto s = s3();
  auto d = run<io::handle>([&](auto done) { s->open_dir(dir, false, std::move(done)); }).value();
  REQUIRE(put_file(*s, d, "other-7.manifest", get_file(*s, d, "ckpt-1.manifest")));
  auto theirs = read_checkpoint_state(*be, dir).value();
  theirs.model_checkpoint_path = "other-7";
  theirs.all_model_checkpoint_paths.push_back("other-7");
  theirs.all_model_checkpoint_timestamps.push_back(theirs.all_model_checkpoint_timestamps.back() + 0.5);
  REQUIRE(write_checkpoint_state(*be, dir, theirs));

  // The manager's next swap expects the version it wrote: refused, re-read, merged, retried.
  REQUIRE(m->save().value() == dir + "/ckpt-2");
  auto st = read_checkpoint_state(*be, dir).value();
  CHECK(st.model_checkpoint_path == "ckpt-2");
  CHECK(st.all_model_checkpoint_paths == std::vector<std::string>{"other-7", "ckpt-1", "ckpt-2"});
  CHECK(st.all_model_checkpoint_timestamps.size() == 3);
  CHECK(m->checkpoints() == std::vector<std::string>{dir + "/other-7", dir + "/ckpt-1", dir + "/ckpt-2"});

  // Adopted, it is managed: the oldest, it is the first that retention deletes.
  REQUIRE(m->save().value() == dir + "/ckpt-3");
  st = read_checkpoint_state(*be, dir).value();
  CHECK(st.all_model_checkpoint_paths == std::vector<std::string>{"ckpt-1", "ckpt-2", "ckpt-3"});
  auto names = names_in(*s, d);
  CHECK(std::count(names.begin(), names.end(), "other-7.manifest") == 0);
  CHECK(std::count(names.begin(), names.end(), "ckpt-1.manifest") == 1);
  (void)run<void>([&](auto done) { s->close(d, std::move(done)); });
}

TEST_CASE("s3 state: a swap whose answer was lost is retried and recognised as ours", "[s3][faults][state]") {
  testing::fault_proxy proxy(rgw_port());
  int state_puts = 0;
  proxy.set_rule([&](const std::string& line, int) {
    return has(line, "PUT ") && has(line, "/checkpoint ") && ++state_puts == 2 ? testing::fault::lose_response : testing::fault::none;
  });
  auto be = through(proxy);
  auto dir = fresh_prefix("lost-state");
  checkpoint_state a;
  a.model_checkpoint_path = "ckpt-1";
  a.all_model_checkpoint_paths = {"ckpt-1"};
  a.all_model_checkpoint_timestamps = {1000.0};
  a.last_preserved_timestamp = 999.0;
  REQUIRE(write_checkpoint_state(*be, dir, a));  // created (If-None-Match)
  auto b = a;
  b.model_checkpoint_path = "ckpt-2";
  b.all_model_checkpoint_paths.push_back("ckpt-2");
  b.all_model_checkpoint_timestamps.push_back(1001.0);
  auto r = write_checkpoint_state(*be, dir, b);  // the If-Match PUT lands, its answer is lost
  INFO((r ? std::string() : r.error().what()));
  REQUIRE(r);
  CHECK(state_puts >= 3);  // the lost one, then the retries that found it ours
  auto st = read_checkpoint_state(*routed(), dir).value();
  CHECK(st.model_checkpoint_path == "ckpt-2");
  CHECK(st.all_model_checkpoint_paths == b.all_model_checkpoint_paths);
}

namespace {

// A writer that dies mid-upload: a child process starts a multipart upload of `name` under
// `dir` (its first part on the way) and exits without publishing or aborting it.
void die_mid_upload(const std::string& dir, const std::string& name) {
  load_rgw_env();
  pid_t child = ::fork();
  if (child == 0) {
    auto o = backends::s3_options_from_env();
    o.part_bytes = 5u << 20;
    auto b = backends::make_s3_backend(o);
    if (!b) ::_exit(2);
    auto d = run<io::handle>([&](auto done) { (*b)->open_dir(dir, true, std::move(done)); });
    if (!d) ::_exit(3);
    auto h = run<io::handle>([&](auto done) { (*b)->open(*d, name, io::open_mode::create_exclusive, std::move(done)); });
    if (!h) ::_exit(4);
    auto bytes = pattern((5u << 20) + 1, 7);  // a byte beyond the first part sends it
    if (!run<void>([&](auto done) { (*b)->write(*h, 0, bytes, std::move(done)); })) ::_exit(5);
    for (int i = 0; i < 1000 && (*b)->counts().put < 2; ++i) ::usleep(10000);  // the upload created, its part sent
    ::_exit((*b)->counts().put >= 2 ? 0 : 6);
  }
  int status = 0;
  ::waitpid(child, &status, 0);
  REQUIRE(WIFEXITED(status));
  REQUIRE(WEXITSTATUS(status) == 0);
}

}  // namespace

TEST_CASE("s3 leftovers: the multipart uploads of dead writers are aborted; this process's own are kept", "[s3][leftovers]") {
  auto dir = fresh_prefix("uploads");
  die_mid_upload(dir, "ckpt-3.data-00000-of-00001");
  die_mid_upload(dir, "ckpt-3.data-00000-of-00001");  // a second try of the same file, dead too

  // A live upload of this process, under the same prefix.
  auto o = backends::s3_options_from_env();
  o.part_bytes = 5u << 20;
  auto b = backends::make_s3_backend(o).value();
  auto d = run<io::handle>([&](auto done) { b->open_dir(dir, true, std::move(done)); }).value();
  REQUIRE(put_file(*b, d, "notes.txt", bytes_of("not ours")));  // a prefix exists while an object is under it
  auto h = run<io::handle>([&](auto done) {
             b->open(d, "ckpt-4.data-00000-of-00001", io::open_mode::create_exclusive, std::move(done));
           }).value();
  auto bytes = pattern((10u << 20) + 3, 9);
  REQUIRE(run<void>([&](auto done) { b->write(h, 0, bytes, std::move(done)); }));
  for (int i = 0; i < 1000 && b->counts().put < 2; ++i) ::usleep(10000);

  // Through the library's cleanup, which takes the prefix's lease first.
  auto removed = remove_orphans(*routed(), dir, "ckpt");
  INFO((removed ? std::string() : removed.error().what()));
  REQUIRE(removed);
  CHECK(*removed == 2);
  CHECK(remove_orphans(*routed(), dir, "ckpt").value() == 0);  // nothing left to abort

  // The live one still publishes whole.
  REQUIRE(run<void>([&](auto done) { b->fsync(h, std::move(done)); }));
  (void)run<void>([&](auto done) { b->close(h, std::move(done)); });
  CHECK(get_file(*b, d, "ckpt-4.data-00000-of-00001") == bytes);
  CHECK(text_of(get_file(*b, d, "notes.txt")) == "not ours");
  (void)run<void>([&](auto done) { b->close(d, std::move(done)); });
}
