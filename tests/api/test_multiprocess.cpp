// Multi-process saves and restores, with "processes" played by threads of one test process
// (coord::make_thread_group): each rank holds only its own devices' shards, writes its own data
// files, and rank 0 commits. The same protocol runs over MPI in examples/multi_process and
// tests/reliability/mpi_test.sh. Checked here: the checkpoint restores bit-exact in one process and in other
// process counts and layouts; replicated slices are spread over processes; one rank's IO
// failure, a late rank, a dead rank, a dead root, and ranks that disagree all fail the save on
// every rank with the same error, leave no new manifest, and keep the previous checkpoint.

#include <catch2/catch.hpp>

#include <deque>
#include <filesystem>
#include <set>
#include <thread>

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>

#include "meshckpt/api/checkpoint_manager.hpp"
#include "meshckpt/pipeline/tensor_io.hpp"
#include "meshckpt/pipeline/tensor_io_async.hpp"
#include "runtime/thread_count.hpp"
#include "meshckpt/format/names.hpp"
#include "support.hpp"

using namespace meshckpt;
using namespace std::chrono_literals;

namespace {

// The job's state: a 2x2 mesh, one device per process when `local` is set.
struct state {
  std::deque<dtensor> keep;
  std::vector<named_tensor> tensors;
};

state make_state(const std::vector<std::int64_t>& local, std::uint64_t seed, bool alt_layout = false) {
  auto m = mesh::create({{"x", 2}, {"y", 2}}, {}, local).value();
  state s;
  auto add = [&](std::string key, dtype t, shape sh, std::vector<std::string> axes) {
    s.keep.push_back(dtensor::create(t, sh, layout::create(axes, m).value()).value());
    testing::fill(s.keep.back().view(), key, seed);
    s.tensors.push_back({std::move(key), s.keep.back().view()});
  };
  if (!alt_layout) {
    add("dense/kernel", dtype::float32, {64, 48}, {"x", "y"});
    add("dense/bias", dtype::float32, {48}, {"y"});
    add("embedding", dtype::bfloat16, {50, 16}, {"x", "unsharded"});
  } else {
    add("dense/kernel", dtype::float32, {64, 48}, {"y", "x"});
    add("dense/bias", dtype::float32, {48}, {"unsharded"});
    add("embedding", dtype::bfloat16, {50, 16}, {"unsharded", "y"});
  }
  for (int i = 0; i < 24; ++i) add("opt/slot_" + std::to_string(i), dtype::float32, {8}, {"unsharded"});
  return s;
}

// Runs body(rank, coordinator) on n threads ("processes"); `skip` ranks never run (dead).
template <class F>
void run_ranks(int n, F body, std::set<int> skip = {}) {
  auto group = coord::make_thread_group(n);
  std::vector<std::thread> ts;
  for (int r = 0; r < n; ++r)
    if (!skip.contains(r)) ts.emplace_back([&, r] { body(r, *group[static_cast<std::size_t>(r)]); });
  for (auto& t : ts) t.join();
}

std::size_t count_files(const testing::temp_dir& d, std::string_view base, format::name_kind::kind k) {
  std::size_t n = 0;
  for (const auto& e : std::filesystem::directory_iterator(d.path)) {
    auto c = format::classify(e.path().filename().string());
    if (c.base == base && c.k == k) ++n;
  }
  return n;
}

bool restores_in_one_process(io::backend& b, const std::string& prefix, std::uint64_t seed) {
  auto target = make_state({}, 0, true);
  if (!read_tensors(b, prefix, target.tensors)) return false;
  for (const auto& nt : target.tensors)
    if (!testing::matches(nt.tensor, nt.key, seed)) return false;
  return true;
}

}  // namespace

TEST_CASE("four ranks save together from one thread: collectives are polled, never a thread each", "[multiprocess][threads]") {
  // The four "processes" are four asynchronous saves on one io_context run by this thread. A
  // collective that blocked a thread (the engine's, or this one) would hang the job until the
  // timeout; a thread per collective would show in the count, sampled while the saves run.
  auto be = testing::test_backend();
  testing::temp_dir tmp;
  const std::string prefix = tmp / "ck";
  {  // warm the process-wide threads
    auto s = make_state({0, 1, 2, 3}, 1);
    REQUIRE(write_tensors(*be, tmp / "warm", s.tensors));
  }
  const int fixed = runtime::thread_count();
  auto group = coord::make_thread_group(4);
  boost::asio::io_context io;
  std::deque<state> states;  // never relocated: the tensors view their shards
  for (int r = 0; r < 4; ++r) states.push_back(make_state({r}, 11));
  std::vector<std::optional<result<write_report>>> reports(4);
  for (int r = 0; r < 4; ++r) {
    write_options o;
    o.coordinator = group[static_cast<std::size_t>(r)].get();
    o.coordination_timeout = 20s;
    async_write_tensors(io.get_executor(), *be, prefix, states[static_cast<std::size_t>(r)].tensors, o,
                        [&reports, r](result<write_report> rep) { reports[static_cast<std::size_t>(r)] = std::move(rep); });
  }
  int most = 0, samples = 0;
  boost::asio::steady_timer sampler(io);
  std::function<void()> sample = [&] {
    most = std::max(most, runtime::thread_count());
    ++samples;
    if (std::all_of(reports.begin(), reports.end(), [](const auto& r) { return r.has_value(); })) return;
    sampler.expires_after(200us);
    sampler.async_wait([&](boost::system::error_code) { sample(); });
  };
  sample();
  const auto started = std::chrono::steady_clock::now();
  io.run();
  CHECK(std::chrono::steady_clock::now() - started < 10s);  // no collective waited out a timeout
  for (auto& rep : reports) {
    REQUIRE(rep);
    REQUIRE(*rep);
    CHECK((*rep)->processes == 4);
  }
  INFO(samples << " samples");
  CHECK(samples > 1);
  CHECK(most == fixed);
  CHECK(restores_in_one_process(*be, prefix, 11));
}

TEST_CASE("four processes save one checkpoint; it restores in 1, 2 and 4 processes in other layouts", "[multiprocess]") {
  auto be = testing::test_backend();
  testing::temp_dir tmp;
  const std::string prefix = tmp / "ck";
  std::vector<result<write_report>> reports(4, make_error(errc::invalid_argument, "did not run"));
  run_ranks(4, [&](int r, coord::coordinator& co) {
    auto s = make_state({r}, 7);
    write_options o;
    o.coordinator = &co;
    o.coordination_timeout = 20s;
    reports[static_cast<std::size_t>(r)] = write_tensors(*be, prefix, s.tensors, o);
  });
  for (auto& rep : reports) {
    REQUIRE(rep);
    CHECK(rep->processes == 4);
    CHECK(rep->tensors == 27);
    CHECK(rep->bytes == reports[0]->bytes);
    CHECK(rep->files == reports[0]->files);
    CHECK(rep->manifest_path == prefix + ".manifest");
  }
  auto v = verify(*be, prefix);
  REQUIRE(v);
  CHECK(v->ok());

  // One data file per process that owns something; replicated slices are spread.
  auto m = read_manifest(*be, prefix).value();
  std::set<std::int64_t> writers;
  std::set<std::string> files;
  for (const auto& t : m.tensors)
    if (t.key.starts_with("opt/"))
      for (const auto& s : t.slices) writers.insert(s.writer_device);
  for (const auto& f : m.files) files.insert(f.name);
  CHECK(writers.size() == 4);  // 24 replicated tensors: every process stores some
  CHECK(m.files.size() == 4);
  CHECK(files.contains(format::data_file_name("ck", format::classify(m.files[0].name).token, 30000)));

  // Restore: one process holding every device, in another layout.
  CHECK(restores_in_one_process(*be, prefix, 7));
  // Two processes of two devices each, another layout; each reads only its own shards.
  std::atomic<int> bad{0};
  run_ranks(2, [&](int r, coord::coordinator&) {
    auto t = make_state({2 * r, 2 * r + 1}, 0, true);
    auto rr = read_tensors(*be, prefix, t.tensors);
    if (!rr) ++bad;
    for (const auto& nt : t.tensors)
      if (!testing::matches(nt.tensor, nt.key, 7)) ++bad;
  });
  CHECK(bad == 0);
  // Four processes, one device each, the saved layout.
  run_ranks(4, [&](int r, coord::coordinator&) {
    auto t = make_state({r}, 0);
    if (!read_tensors(*be, prefix, t.tensors)) ++bad;
    for (const auto& nt : t.tensors)
      if (!testing::matches(nt.tensor, nt.key, 7)) ++bad;
  });
  CHECK(bad == 0);

  // A second save of the same name by the group replaces the first and removes its files.
  run_ranks(4, [&](int r, coord::coordinator& co) {
    auto s = make_state({r}, 8);
    write_options o;
    o.coordinator = &co;
    reports[static_cast<std::size_t>(r)] = write_tensors(*be, prefix, s.tensors, o);
  });
  for (auto& rep : reports) REQUIRE(rep);
  CHECK(reports[0]->cleaned_files == 4);
  CHECK(count_files(tmp, "ck", format::name_kind::data) == 4);
  CHECK(restores_in_one_process(*be, prefix, 8));
}

namespace {

// Saves seed 1 with all four ranks, then runs a second save (seed 2) in which `tweak` changes
// rank r's setup; returns every rank's result of the second save.
template <class Tweak>
std::vector<result<write_report>> failing_second_save(io::backend& be, const std::string& prefix, Tweak tweak, std::set<int> dead = {}) {
  std::vector<result<write_report>> out(4, make_error(errc::invalid_argument, "did not run"));
  run_ranks(4, [&](int r, coord::coordinator& co) {
    auto s = make_state({r}, 1);
    write_options o;
    o.coordinator = &co;
    out[static_cast<std::size_t>(r)] = write_tensors(be, prefix, s.tensors, o);
  });
  for (auto& rep : out) REQUIRE(rep);
  run_ranks(
      4,
      [&](int r, coord::coordinator& co) {
        auto s = make_state({r}, 2);
        write_options o;
        o.coordinator = &co;
        o.coordination_timeout = 300ms;
        io::backend* b = &be;
        tweak(r, s, o, b);
        out[static_cast<std::size_t>(r)] = write_tensors(*b, prefix, s.tensors, o);
      },
      dead);
  return out;
}

// Every rank in `ranks` failed with `code`, saying `says`; with `identical`, word for word the
// same message (false only where process 0 is gone and each rank reports its own timeout).
void same_error_everywhere(const std::vector<result<write_report>>& out, std::set<int> ranks, std::error_code code, std::string_view says,
                           bool identical = true) {
  const error* first = nullptr;
  for (int r : ranks) {
    const auto& x = out[static_cast<std::size_t>(r)];
    REQUIRE_FALSE(x);
    CHECK(x.error().code == code);
    CHECK_THAT(x.error().what(), Catch::Contains(std::string(says)));
    if (!first) first = &x.error();
    if (identical) CHECK(x.error().what() == first->what());
  }
}

}  // namespace

TEST_CASE("one process's IO error fails the save on every process, with the same error", "[multiprocess][faults]") {
  auto be = testing::test_backend();
  std::shared_ptr<io::backend> shared(be.get(), [](io::backend*) {});
  for (int victim : {0, 2}) {
    testing::temp_dir tmp;
    const std::string prefix = tmp / "ck";
    std::unique_ptr<io::backend> failing;
    auto out = failing_second_save(*be, prefix, [&](int r, state&, write_options&, io::backend*& b) {
      if (r != victim) return;
      failing = std::make_unique<testing::failing_writes>(shared, 0, ENOSPC);
      b = failing.get();
    });
    same_error_everywhere(out, {0, 1, 2, 3}, std::error_code(ENOSPC, std::system_category()), "process " + std::to_string(victim));
    CHECK(count_files(tmp, "ck", format::name_kind::data) == 4);  // the first save's only: every process removed its own
    CHECK(count_files(tmp, "ck", format::name_kind::temp_manifest) == 0);
    CHECK(restores_in_one_process(*be, prefix, 1));
  }
}

TEST_CASE("a late process makes the save time out on every process, with the same error", "[multiprocess][faults]") {
  auto be = testing::test_backend();
  testing::temp_dir tmp;
  const std::string prefix = tmp / "ck";
  auto out = failing_second_save(*be, prefix, [&](int r, state&, write_options&, io::backend*&) {
    if (r == 3) std::this_thread::sleep_for(1s);  // longer than the timeout: process 0 gives up
  });
  same_error_everywhere(out, {0, 1, 2, 3}, errc::timed_out, "rank(s) 3");
  CHECK(count_files(tmp, "ck", format::name_kind::data) == 4);  // the late one removed its files too
  CHECK(restores_in_one_process(*be, prefix, 1));
}

TEST_CASE("a dead process fails the save on the others; a dead process 0 leaves the others timed out and nothing committed",
          "[multiprocess][faults]") {
  auto be = testing::test_backend();
  {
    testing::temp_dir tmp;
    const std::string prefix = tmp / "ck";
    auto out = failing_second_save(*be, prefix, [](int, state&, write_options&, io::backend*&) {}, {2});
    same_error_everywhere(out, {0, 1, 3}, errc::timed_out, "rank(s) 2");
    CHECK(count_files(tmp, "ck", format::name_kind::data) == 4);
    CHECK(restores_in_one_process(*be, prefix, 1));
  }
  {
    testing::temp_dir tmp;
    const std::string prefix = tmp / "ck";
    auto out = failing_second_save(*be, prefix, [](int, state&, write_options&, io::backend*&) {}, {0});
    // Without process 0 there is no token: nobody writes anything.
    same_error_everywhere(out, {1, 2, 3}, errc::timed_out, "token", false);
    CHECK(count_files(tmp, "ck", format::name_kind::data) == 4);
    CHECK(restores_in_one_process(*be, prefix, 1));
  }
}

TEST_CASE("process 0 dying after the data writes leaves the outcome unknown: the others keep their files", "[multiprocess][faults]") {
  auto be = testing::test_backend();
  std::shared_ptr<io::backend> shared(be.get(), [](io::backend*) {});
  testing::temp_dir tmp;
  const std::string prefix = tmp / "ck";
  // Process 0's writes block forever (a hung disk): it never reports nor announces anything.
  std::unique_ptr<testing::gated_backend> hung;
  std::thread root_thread;
  auto out = failing_second_save(*be, prefix, [&](int r, state&, write_options&, io::backend*& b) {
    if (r != 0) return;
    hung = std::make_unique<testing::gated_backend>(shared);
    b = hung.get();
    // Release it only after the others gave up, so that the test ends.
    root_thread = std::thread([&] {
      std::this_thread::sleep_for(1500ms);
      hung->release();
    });
  });
  root_thread.join();
  same_error_everywhere(out, {1, 2, 3}, errc::timed_out, "announce the save's outcome", false);
  // Process 0 heard nobody within its timeout after its writes? It got their reports (they were
  // sent before it finished), so it committed: the others' files had to stay.
  if (out[0])
    CHECK(restores_in_one_process(*be, prefix, 2));
  else
    CHECK(restores_in_one_process(*be, prefix, 1));
}

TEST_CASE("processes that disagree, or a device no process holds, fail everywhere without a commit", "[multiprocess][faults]") {
  auto be = testing::test_backend();
  {
    testing::temp_dir tmp;
    const std::string prefix = tmp / "ck";
    auto out = failing_second_save(*be, prefix, [](int r, state& s, write_options&, io::backend*&) {
      if (r == 1) s = make_state({1}, 2, true);  // another layout
    });
    same_error_everywhere(out, {0, 1, 2, 3}, errc::invalid_argument, "process 1 saves a different set of tensors");
    CHECK(restores_in_one_process(*be, prefix, 1));
    CHECK(count_files(tmp, "ck", format::name_kind::data) == 4);
  }
  {
    testing::temp_dir tmp;
    const std::string prefix = tmp / "ck";
    auto out = failing_second_save(*be, prefix, [](int r, state& s, write_options&, io::backend*&) {
      if (r == 3) s = make_state({2}, 2);  // device 3 held by nobody, device 2 by two processes
    });
    same_error_everywhere(out, {0, 1, 2, 3}, errc::invalid_argument, "is local to both");
    CHECK(restores_in_one_process(*be, prefix, 1));
  }
}

namespace {

// A model on the 2x2 mesh, holding the shards of `local` devices (empty: all).
struct model : graph::module {
  explicit model(std::vector<std::int64_t> local)
      : m(mesh::create({{"x", 2}, {"y", 2}}, {}, local).value()),
        w(dtensor::create(dtype::float32, {32, 16}, layout::create({"x", "y"}, m).value()).value()),
        b(dtensor::create(dtype::float32, {16}, layout::create({"unsharded"}, m).value()).value()) {
    track("w", w);
    track("b", b);
    track("step", step);
  }
  void set(std::uint64_t seed) {
    testing::fill(w.view(), "w", seed);
    testing::fill(b.view(), "b", seed);
    step.set(static_cast<std::int64_t>(seed));
  }
  bool holds(std::uint64_t seed) const {
    return testing::matches(w.view(), "w", seed) && testing::matches(b.view(), "b", seed) && step.get() == static_cast<std::int64_t>(seed);
  }
  mesh m;
  graph::variable w, b;
  graph::scalar<std::int64_t> step{0};
};

}  // namespace

TEST_CASE("Checkpoint and CheckpointManager across processes: one commit, process 0 keeps the state file and retention",
          "[multiprocess][api]") {
  testing::temp_dir tmp;
  std::vector<std::vector<std::string>> kept(4);
  std::vector<std::optional<std::string>> latest(4);
  std::atomic<int> bad{0};
  run_ranks(4, [&](int r, coord::coordinator& co) {
    model mdl({r});
    checkpoint_options o;
    o.write.coordinator = &co;
    o.write.coordination_timeout = 20s;
    auto c = checkpoint::create(mdl.m, &mdl, {}, o).value();
    if (c->writes_shared_files() != (r == 0)) ++bad;  // Catch asserts on the test's thread only
    manager_options mo;
    mo.max_to_keep = 2;
    auto mgr = checkpoint_manager::create(*c, tmp.str(), mo).value();
    for (std::uint64_t i = 1; i <= 3; ++i) {
      mdl.set(i);
      auto p = mgr->save();
      if (!p || !*p) ++bad;
    }
    kept[static_cast<std::size_t>(r)] = mgr->checkpoints();
    latest[static_cast<std::size_t>(r)] = mgr->latest_checkpoint();
    // Every process restores its own shards of the latest one.
    model back({r});
    auto c2 = checkpoint::create(back.m, &back, {}, o).value();
    auto st = c2->restore(*mgr->latest_checkpoint());
    if (!st || !back.holds(3) || c2->save_counter() != 3) ++bad;
  });
  CHECK(bad == 0);
  for (int r = 0; r < 4; ++r) {
    CHECK(kept[static_cast<std::size_t>(r)] == std::vector<std::string>{tmp / "ckpt-2", tmp / "ckpt-3"});
    CHECK(latest[static_cast<std::size_t>(r)] == tmp / "ckpt-3");
  }
  CHECK(count_files(tmp, "ckpt-1", format::name_kind::manifest) == 0);
  CHECK(count_files(tmp, "ckpt-1", format::name_kind::data) == 0);
  CHECK(count_files(tmp, "ckpt-3", format::name_kind::manifest) == 1);
  // One process holding every device: the state file names ckpt-3, which restores exactly.
  model all({});
  auto c = checkpoint::create(all.m, &all).value();
  auto mgr = checkpoint_manager::create(*c, tmp.str()).value();
  REQUIRE(mgr->latest_checkpoint() == tmp / "ckpt-3");
  auto st = c->restore(*mgr->latest_checkpoint());
  REQUIRE(st);
  CHECK(st->assert_consumed());
  CHECK(all.holds(3));
}
