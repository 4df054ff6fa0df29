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

#include "meshckpt/api/checkpoint_manager.hpp"
#include "meshckpt/backends/fault.hpp"
#include "meshckpt/format/names.hpp"
#include "support.hpp"

using namespace meshckpt;
using backends::crash_state;
using backends::fault_op;
namespace fs = std::filesystem;

namespace {

mesh mesh8() { return mesh::create({{"x", 2}, {"y", 4}}).value(); }

// Several layouts over 8 devices: sharded both ways, one way (replicated along the other),
// uneven, replicated, and a host scalar.
struct model : graph::module {
  graph::variable w{dtensor::create(dtype::float32, {64, 96}, layout::create({"x", "y"}, mesh8()).value()).value()};
  graph::variable e{dtensor::create(dtype::bfloat16, {50, 16}, layout::create({"y", "unsharded"}, mesh8()).value()).value()};
  graph::variable b{dtensor::create(dtype::float32, {96}, layout::create({"unsharded"}, mesh8()).value()).value()};
  graph::variable u{dtensor::create(dtype::float32, {13, 8}, layout::create({"x", "unsharded"}, mesh8()).value()).value()};
  graph::scalar<std::int64_t> step{0};
  model() {
    track("w", w);
    track("e", e);
    track("b", b);
    track("u", u);
    track("step", step);
  }
  void set(std::int64_t s) {
    const auto seed = static_cast<std::uint64_t>(s);
    testing::fill(w.view(), "w", seed);
    testing::fill(e.view(), "e", seed);
    testing::fill(b.view(), "b", seed);
    testing::fill(u.view(), "u", seed);
    step.set(s);
  }
  bool holds(std::int64_t s) const {
    const auto seed = static_cast<std::uint64_t>(s);
    return step.get() == s && testing::matches(w.view(), "w", seed) && testing::matches(e.view(), "e", seed) &&
           testing::matches(b.view(), "b", seed) && testing::matches(u.view(), "u", seed);
  }
};

checkpoint_options opts(std::shared_ptr<io::backend> be) {
  checkpoint_options o;
  o.backend = std::move(be);
  o.write.chunk_bytes = 4096;            // several chunks per slice
  o.write.layout.max_file_bytes = 16384;  // several data files per checkpoint
  return o;
}

manager_options mopts() {
  manager_options mo;
  mo.max_to_keep = 2;
  return mo;
}

// The checkpoint number N of "ckpt-N" (0 when not one).
int number_of(const std::string& base) {
  if (!base.starts_with("ckpt-")) return 0;
  return std::atoi(base.c_str() + 5);
}

// Runs saves `first`..`last` (values = step) through `be`; returns the numbers acknowledged.
std::vector<int> run_saves(const std::string& dir, std::shared_ptr<io::backend> be, int first, int last) {
  std::vector<int> acked;
  model mdl;
  auto c = checkpoint::create(mesh8(), &mdl, {}, opts(be));
  if (!c) return acked;
  auto mgr = checkpoint_manager::create(**c, dir, mopts());
  if (!mgr) return acked;
  (*c)->set_save_counter(first - 1);
  for (int s = first; s <= last; ++s) {
    mdl.set(s);
    auto r = (*mgr)->save();
    if (!r || !*r) break;  // after the crash nothing more succeeds
    acked.push_back(s);
  }
  return acked;
}

struct violations {
  std::vector<std::string> list;
  void add(std::string s) { list.push_back(std::move(s)); }
};

// Recovers `dir` as a restarted trainer would and checks the invariants. `acked`: checkpoints
// acknowledged before the crash (including the ones on disk before the run).
void check_recovery(const std::string& dir, const std::vector<int>& acked, const std::string& what, violations& v) {
  auto be = std::shared_ptr<io::backend>(backends::make_posix_backend());
  auto scan = scan_directory(*be, dir);
  if (!scan) return v.add(what + ": scan failed: " + scan.error().what());
  // I1: every manifest restores bit-exact or fails loudly.
  std::set<int> restorable;
  for (const auto& name : scan->checkpoints) {
    int n = number_of(name);
    model back;
    auto c = checkpoint::create(mesh8(), &back, {}, opts(be)).value();
    auto st = c->restore(dir + "/" + name);
    if (st) {
      if (!back.holds(n)) v.add(what + ": I1: " + name + " restores, with wrong values");
      else restorable.insert(n);
      (void)st->expect_partial();
    }
  }
  // I2-I4: an acknowledged (or pre-existing) checkpoint may be missing only if two newer ones
  // restore (retention may then have deleted it); the newest acknowledged one must restore.
  for (int n : acked) {
    if (restorable.contains(n)) continue;
    int newer = 0;
    for (int r : restorable)
      if (r > n) ++newer;
    if (newer < 2) v.add(what + ": I2/I3: acknowledged ckpt-" + std::to_string(n) + " is gone or damaged, and only " + std::to_string(newer) + " newer checkpoint(s) restore");
  }
  // The state file: a manager over the directory; the latest it names must restore.
  model back;
  auto c = checkpoint::create(mesh8(), &back, {}, opts(be)).value();
  auto mgr = checkpoint_manager::create(*c, dir, mopts());
  if (!mgr) return v.add(what + ": the state file cannot be read: " + mgr.error().what());
  auto latest = (*mgr)->latest_checkpoint();
  if (!acked.empty() && !latest) v.add(what + ": the state file names no checkpoint");
  auto rr = (*mgr)->restore_or_initialize();
  if (!rr) return v.add(what + ": restore_or_initialize failed: " + rr.error().what());
  if (latest && !back.holds(number_of(fs::path(*latest).filename().string())))
    v.add(what + ": the latest checkpoint " + *latest + " does not restore its values");
  if (latest && !acked.empty() && number_of(fs::path(*latest).filename().string()) < acked.back())
    v.add(what + ": the state file's latest is older than the last acknowledged save");
  // I6: one more save; then nothing of the crashed attempt is left.
  back.set(c->save_counter() + 1);
  auto s = (*mgr)->save();
  if (!s || !*s) return v.add(what + ": the save after recovery failed: " + (s ? std::string("skipped") : s.error().what()));
  auto after = scan_directory(*be, dir);
  if (after && !after->leftovers.empty()) v.add(what + ": I6: leftovers after recovery: " + after->leftovers.front() + " (" + std::to_string(after->leftovers.size()) + ")");
}

// The template: ckpt-1 and ckpt-2 written (durably) by a fault-free run.
const testing::temp_dir& base_dir() {
  static testing::temp_dir d;
  static bool made = [] {
    auto acked = run_saves(d.str(), backends::make_posix_backend(), 1, 2);
    return acked.size() == 2;
  }();
  REQUIRE(made);
  return d;
}

void copy_dir(const std::string& from, const std::string& to) {
  fs::create_directories(to);
  for (const auto& e : fs::directory_iterator(from)) fs::copy(e.path(), to + "/" + e.path().filename().string());
}

}  // namespace

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
  const std::vector<std::pair<crash_state, int>> variants = {{crash_state::keep_all, 1}, {crash_state::drop_unsynced_data, 1},
                                                             {crash_state::drop_unsynced_entries, 1}, {crash_state::power_loss, 1},
                                                             {crash_state::torn, 4}};
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
  std::printf("crash points: %llu operations x 8 crash states = %zu states checked (%zu differ from keep-all); saves acknowledged before the crash: "
              "0: %zu, 1: %zu, 2: %zu, 3: %zu states; %zu violations\n",
              static_cast<unsigned long long>(total + 1), states, changed_states, by_acked[0], by_acked[1], by_acked[2], by_acked[3], v.list.size());
  for (std::size_t i = 0; i < std::min<std::size_t>(v.list.size(), 20); ++i) std::printf("  %s\n", v.list[i].c_str());
  CHECK(states >= 1000);
  CHECK(v.list.empty());
}
