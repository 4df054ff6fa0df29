// Crash-point enumeration (RELIABILITY.md): a reference sequence — a CheckpointManager with
// max_to_keep = 2 over an 8-device mesh, two checkpoints already on disk, then three more
// saves — runs through the fault backend, which crashes it before operation k, for every k;
// then each crash state a power loss could leave (keep all, drop unsynced data, undo unsynced
// directory entries, both, torn writes with several seeds) is built on disk, and a fresh
// process-like recovery checks the invariants:
//   I1  every checkpoint with a manifest restores bit-exact, or fails with an error (never
//       present but wrong);
//   I2  every save acknowledged before the crash restores bit-exact, unless retention may
//       have deleted it (two newer checkpoints are durable);
//   I3/I4  no checkpoint (acknowledged, or on disk before) is missing unless two newer ones
//       restore; the newest committed one is never missing;
//   state file  the latest checkpoint it names restores;
//   I6  after recovery (restore_or_initialize, one more save), no temp manifest and no data
//       file without a manifest is left.
// Also the protocol audit: in the op log of the fault-free run, every data file is fsynced and
// the directory fsynced before the manifest temp is created, the temp is fsynced before the
// rename, the directory is fsynced after the rename, and nothing is deleted before that.

#include <catch2/catch.hpp>

#include <cstdio>
#include <filesystem>
#include <map>
#include <set>

#include <deque>
#include <thread>

#include "meshckpt/pipeline/tensor_io.hpp"
#include "reliability.hpp"

using namespace meshckpt;
using backends::crash_state;
using backends::fault_op;
namespace fs = std::filesystem;

using namespace meshckpt::testing;

TEST_CASE("protocol audit: fsyncs precede the manifest, the rename and any deletion", "[crash][audit]") {
  testing::temp_dir tmp;
  copy_dir(base_dir().str(), tmp.str());
  auto fb = std::make_shared<backends::fault_backend>(std::shared_ptr<io::backend>(backends::make_posix_backend()));
  auto acked = run_saves(tmp.str(), fb, 3, 5);
  REQUIRE(acked == std::vector<int>{3, 4, 5});
  auto log = fb->log();
  std::set<std::string> synced;                // files fsynced since created
  std::set<std::string> created_unsynced_dir;  // created since the last directory fsync
  bool renamed_unsynced = false;
  int manifests = 0, problems = 0;
  std::string last_problem;
  auto problem = [&](const std::string& s) {
    ++problems;
    last_problem = s;
  };
  for (const auto& op : log) {
    const auto name = fs::path(op.path).filename().string();
    const auto kind = format::classify(name);
    if (op.k == fault_op::open && (op.mode == io::open_mode::create_exclusive || op.mode == io::open_mode::create_exclusive_direct)) {
      created_unsynced_dir.insert(op.path);
      if (kind.k == format::name_kind::temp_manifest) {
        // Every data file of this token: fsynced, and its entry made durable.
        for (const auto& o : log) {
          if (o.index >= op.index) break;
          auto k2 = format::classify(fs::path(o.path).filename().string());
          if (o.k == fault_op::open && k2.k == format::name_kind::data && k2.token == kind.token) {
            if (!synced.contains(o.path)) problem("data file " + o.path + " not fsynced before the manifest temp");
            if (created_unsynced_dir.contains(o.path)) problem("data file " + o.path + " entry not durable before the manifest temp");
          }
        }
      }
    }
    if (op.k == fault_op::fsync && !op.on_dir) synced.insert(op.path);
    if (op.k == fault_op::fsync && op.on_dir) {
      created_unsynced_dir.clear();
      renamed_unsynced = false;
    }
    if (op.k == fault_op::rename) {
      const auto target = format::classify(fs::path(op.path2).filename().string());
      if (!synced.contains(op.path)) problem("rename of " + op.path + " before its fsync");
      if (target.k == format::name_kind::manifest) {
        ++manifests;
        renamed_unsynced = true;
      }
    }
    if (op.k == fault_op::unlink && renamed_unsynced)
      problem("unlink of " + op.path + " before the directory fsync that made the new manifest durable");
  }
  INFO(last_problem);
  CHECK(problems == 0);
  CHECK(manifests == 3);
  std::printf("protocol audit: %zu operations of 3 managed saves (with retention), %d problems\n", log.size(), problems);
}

TEST_CASE("crash at every operation, in every crash state: the invariants hold", "[crash]") {
  // Count the operations of the reference run.
  std::uint64_t total = 0;
  {
    testing::temp_dir tmp;
    copy_dir(base_dir().str(), tmp.str());
    auto fb = std::make_shared<backends::fault_backend>(std::shared_ptr<io::backend>(backends::make_posix_backend()));
    REQUIRE(run_saves(tmp.str(), fb, 3, 5).size() == 3);
    total = fb->ops();
  }
  REQUIRE(total > 50);
  // make stress raises the number of torn variants per crash point (MESHCKPT_TORN_SEEDS).
  const int torn_seeds = env_count("MESHCKPT_TORN_SEEDS", 4);
  const std::vector<std::pair<crash_state, int>> variants = {{crash_state::keep_all, 1},
                                                             {crash_state::drop_unsynced_data, 1},
                                                             {crash_state::drop_unsynced_entries, 1},
                                                             {crash_state::power_loss, 1},
                                                             {crash_state::torn, torn_seeds}};
  violations v;
  std::size_t states = 0, changed_states = 0;
  std::map<std::size_t, std::size_t> by_acked;
  for (std::uint64_t k = 0; k <= total; ++k) {
    for (const auto& [variant, seeds] : variants) {
      for (int seed = 0; seed < seeds; ++seed) {
        testing::temp_dir tmp;
        copy_dir(base_dir().str(), tmp.str());
        backends::fault_plan plan;
        plan.crash_at = k;
        auto fb = std::make_shared<backends::fault_backend>(std::shared_ptr<io::backend>(backends::make_posix_backend()), plan);
        auto acked = run_saves(tmp.str(), fb, 3, 5);
        if (fb->materialize(variant, k * 7 + static_cast<std::uint64_t>(seed)) > 0) ++changed_states;
        std::vector<int> all = {1, 2};
        all.insert(all.end(), acked.begin(), acked.end());
        check_recovery(tmp.str(), all,
                       "crash before op " + std::to_string(k) + ", " + backends::to_string(variant) + " #" + std::to_string(seed), v);
        ++states;
        ++by_acked[acked.size()];
      }
    }
  }
  std::printf(
      "crash points: %llu operations x %d crash states = %zu states checked (%zu differ from keep-all); saves acknowledged before the "
      "crash: "
      "0: %zu, 1: %zu, 2: %zu, 3: %zu states; %zu violations\n",
      static_cast<unsigned long long>(total + 1), 4 + torn_seeds, states, changed_states, by_acked[0], by_acked[1], by_acked[2],
      by_acked[3], v.list.size());
  for (std::size_t i = 0; i < std::min<std::size_t>(v.list.size(), 20); ++i) std::printf("  %s\n", v.list[i].c_str());
  CHECK(states >= 1000);
  CHECK(v.list.empty());
}

namespace {

// A 4-process job on a 2x2 mesh (process r holds device r), saving through a thread group.
struct rank_state {
  std::deque<dtensor> keep;
  std::vector<named_tensor> tensors;
  rank_state(std::vector<std::int64_t> local, std::uint64_t seed, bool fill_it) {
    auto m = mesh::create({{"x", 2}, {"y", 2}}, {}, local).value();
    auto add = [&](std::string key, dtype t, shape sh, std::vector<std::string> axes) {
      keep.push_back(dtensor::create(t, sh, layout::create(axes, m).value()).value());
      if (fill_it) fill(keep.back().view(), key, seed);
      tensors.push_back({std::move(key), keep.back().view()});
    };
    add("w", dtype::float32, {32, 16}, {"x", "y"});
    add("b", dtype::float32, {16}, {"unsharded"});
    for (int i = 0; i < 4; ++i) add("slot/" + std::to_string(i), dtype::float32, {8}, {"unsharded"});
  }
  bool holds(std::uint64_t seed) const {
    for (const auto& nt : tensors)
      if (!matches(nt.tensor, nt.key, seed)) return false;
    return true;
  }
};

// Saves `seed` from 4 ranks; rank i uses backends[i]. Returns each rank's result.
std::vector<result<write_report>> save4(const std::string& prefix, std::vector<io::backend*> backends, std::uint64_t seed) {
  std::vector<result<write_report>> out(4, make_error(errc::invalid_argument, "did not run"));
  auto group = coord::make_thread_group(4);
  std::vector<std::thread> ts;
  for (int r = 0; r < 4; ++r)
    ts.emplace_back([&, r] {
      rank_state s({r}, seed, true);
      write_options o;
      o.coordinator = group[static_cast<std::size_t>(r)].get();
      o.coordination_timeout = std::chrono::seconds(20);
      out[static_cast<std::size_t>(r)] = write_tensors(*backends[static_cast<std::size_t>(r)], prefix, s.tensors, o);
    });
  for (auto& t : ts) t.join();
  return out;
}

}  // namespace

// Multi-process commits: in a 4-process save (thread group), one process's IO stops at each of
// its operations in turn (the crash point; its files are then put in the crash state), while
// its protocol goes on reporting the failure. Deaths of whole processes are the kill scenarios
// of test_multiprocess.cpp and tests/reliability/mpi_test.sh.
TEST_CASE(
    "multi-process commits: one process's IO crashes at each of its operations; every process agrees and the checkpoint is old or new, "
    "never broken",
    "[crash][multiprocess]") {
  auto posix = std::shared_ptr<io::backend>(backends::make_posix_backend());
  // The operations of each rank in a fault-free second save.
  std::vector<std::uint64_t> ops(4);
  {
    temp_dir tmp;
    std::vector<std::shared_ptr<backends::fault_backend>> fbs;
    std::vector<io::backend*> bs;
    for (int r = 0; r < 4; ++r) {
      fbs.push_back(std::make_shared<backends::fault_backend>(posix));
      bs.push_back(fbs.back().get());
    }
    for (auto& x : save4(tmp / "ck", {posix.get(), posix.get(), posix.get(), posix.get()}, 1)) REQUIRE(x);
    for (auto& x : save4(tmp / "ck", bs, 2)) REQUIRE(x);
    for (int r = 0; r < 4; ++r) ops[static_cast<std::size_t>(r)] = fbs[static_cast<std::size_t>(r)]->ops();
  }
  violations v;
  std::size_t states = 0, disagreements = 0, committed = 0;
  for (int victim = 0; victim < 4; ++victim)
    for (std::uint64_t k = 0; k <= ops[static_cast<std::size_t>(victim)]; ++k)
      for (auto variant : {crash_state::keep_all, crash_state::power_loss}) {
        temp_dir tmp;
        const std::string prefix = tmp / "ck";
        for (auto& x : save4(prefix, {posix.get(), posix.get(), posix.get(), posix.get()}, 1)) REQUIRE(x);
        backends::fault_plan plan;
        plan.crash_at = k;
        auto fb = std::make_shared<backends::fault_backend>(posix, plan);
        std::vector<io::backend*> bs(4, posix.get());
        bs[static_cast<std::size_t>(victim)] = fb.get();
        auto out = save4(prefix, bs, 2);
        fb->materialize(variant, k);
        const std::string what =
            "rank " + std::to_string(victim) + " crashed before its op " + std::to_string(k) + ", " + backends::to_string(variant);
        ++states;
        // The same outcome everywhere.
        for (int r = 1; r < 4; ++r) {
          const auto& a = out[0];
          const auto& b = out[static_cast<std::size_t>(r)];
          if (static_cast<bool>(a) != static_cast<bool>(b) || (!a && a.error().what() != b.error().what())) {
            ++disagreements;
            v.add(what + ": ranks 0 and " + std::to_string(r) + " disagree");
          }
        }
        if (out[0]) ++committed;
        // Old or new values — new whenever the save was acknowledged.
        rank_state back({}, 0, false);
        auto rr = read_tensors(*posix, prefix, back.tensors);
        if (!rr)
          v.add(what + ": the checkpoint does not restore: " + rr.error().what());
        else if (out[0] ? !back.holds(2) : !(back.holds(1) || back.holds(2)))
          v.add(what + ": the checkpoint holds wrong values");
        // The next save by the group leaves nothing behind.
        for (auto& x : save4(prefix, {posix.get(), posix.get(), posix.get(), posix.get()}, 3))
          if (!x) v.add(what + ": the next save failed: " + x.error().what());
        auto scan = scan_directory(*posix, tmp.str());
        if (scan && !scan->leftovers.empty()) v.add(what + ": leftovers after the next save: " + scan->leftovers.front());
      }
  std::printf(
      "multi-process crash points: 4 ranks x their operations (%llu, %llu, %llu, %llu) x 2 crash states = %zu states; %zu committed; "
      "%zu disagreements; %zu violations\n",
      static_cast<unsigned long long>(ops[0]), static_cast<unsigned long long>(ops[1]), static_cast<unsigned long long>(ops[2]),
      static_cast<unsigned long long>(ops[3]), states, committed, disagreements, v.list.size());
  for (std::size_t i = 0; i < std::min<std::size_t>(v.list.size(), 20); ++i) std::printf("  %s\n", v.list[i].c_str());
  CHECK(v.list.empty());
}
