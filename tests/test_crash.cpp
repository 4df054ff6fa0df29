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
  std::set<std::string> synced;               // files fsynced since created
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
    if (op.k == fault_op::unlink && renamed_unsynced) problem("unlink of " + op.path + " before the directory fsync that made the new manifest durable");
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
  const char* torn_env = std::getenv("MESHCKPT_TORN_SEEDS");
  const int torn_seeds = torn_env ? std::max(1, std::atoi(torn_env)) : 4;
  const std::vector<std::pair<crash_state, int>> variants = {{crash_state::keep_all, 1}, {crash_state::drop_unsynced_data, 1},
                                                             {crash_state::drop_unsynced_entries, 1}, {crash_state::power_loss, 1},
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
        check_recovery(tmp.str(), all, "crash before op " + std::to_string(k) + ", " + backends::to_string(variant) + " #" + std::to_string(seed), v);
        ++states;
        ++by_acked[acked.size()];
      }
    }
  }
  std::printf("crash points: %llu operations x %d crash states = %zu states checked (%zu differ from keep-all); saves acknowledged before the crash: "
              "0: %zu, 1: %zu, 2: %zu, 3: %zu states; %zu violations\n",
              static_cast<unsigned long long>(total + 1), 4 + torn_seeds, states, changed_states, by_acked[0], by_acked[1], by_acked[2], by_acked[3], v.list.size());
  for (std::size_t i = 0; i < std::min<std::size_t>(v.list.size(), 20); ++i) std::printf("  %s\n", v.list[i].c_str());
  CHECK(states >= 1000);
  CHECK(v.list.empty());
}
