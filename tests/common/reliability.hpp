#pragma once
// Shared by the reliability suites (test_crash.cpp, test_faults.cpp): the reference model and
// managed save sequence, and the recovery check of the invariants of RELIABILITY.md.

#include <catch2/catch.hpp>

#include <cstdio>
#include <filesystem>
#include <set>

#include "meshckpt/api/checkpoint_manager.hpp"
#include "meshckpt/backends/fault.hpp"
#include "meshckpt/format/names.hpp"
#include "support.hpp"

namespace meshckpt::testing {

namespace fs = std::filesystem;

inline mesh mesh8() { return mesh::create({{"x", 2}, {"y", 4}}).value(); }

// Several layouts over 8 devices: sharded both ways, one way (replicated along the other),
// uneven, replicated, and a host scalar.
struct model : graph::module {
  // Host storage, or simulated device memory under MESHCKPT_TEST_SHARDS=simulated (support.hpp).
  graph::variable w = make_variable(dtype::float32, {64, 96}, layout::create({"x", "y"}, mesh8()).value());
  graph::variable e = make_variable(dtype::bfloat16, {50, 16}, layout::create({"y", "unsharded"}, mesh8()).value());
  graph::variable b = make_variable(dtype::float32, {96}, layout::create({"unsharded"}, mesh8()).value());
  graph::variable u = make_variable(dtype::float32, {13, 8}, layout::create({"x", "unsharded"}, mesh8()).value());
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
    fill(w.view(), "w", seed);
    fill(e.view(), "e", seed);
    fill(b.view(), "b", seed);
    fill(u.view(), "u", seed);
    step.set(s);
  }
  bool holds(std::int64_t s) const {
    const auto seed = static_cast<std::uint64_t>(s);
    return step.get() == s && matches(w.view(), "w", seed) && matches(e.view(), "e", seed) && matches(b.view(), "b", seed) &&
           matches(u.view(), "u", seed);
  }
};

inline checkpoint_options opts(std::shared_ptr<io::backend> be) {
  checkpoint_options o;
  o.backend = std::move(be);
  o.write.chunk_bytes = 4096;             // several chunks per slice
  o.write.layout.max_file_bytes = 16384;  // several data files per checkpoint
  return o;
}

inline manager_options mopts() {
  manager_options mo;
  mo.max_to_keep = 2;
  return mo;
}

// The checkpoint number N of "ckpt-N" (0 when not one).
inline int number_of(const std::string& base) {
  if (!base.starts_with("ckpt-")) return 0;
  return std::atoi(base.c_str() + 5);
}

// Runs saves `first`..`last` (values = step) through `be`; returns the numbers acknowledged.
inline std::vector<int> run_saves(const std::string& dir, std::shared_ptr<io::backend> be, int first, int last) {
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

// Runs the command-line tool's `verify DIR` (the path comes from the build: MESHCKPT_CLI) and
// returns whether it passed, and what it printed.
inline std::pair<bool, std::string> run_verify_cli(const std::string& dir) {
  std::string cmd = std::string("'") + MESHCKPT_CLI + "' verify --no-progress '" + dir + "' 2>&1";
  FILE* f = ::popen(cmd.c_str(), "r");
  if (!f) return {false, "cannot run " + cmd};
  std::string out;
  char buf[4096];
  for (std::size_t n; (n = std::fread(buf, 1, sizeof buf, f)) > 0;) out.append(buf, n);
  int rc = ::pclose(f);
  return {rc == 0, out};
}

struct violations {
  std::vector<std::string> list;
  void add(std::string s) { list.push_back(std::move(s)); }
};

// Recovers `dir` as a restarted trainer would and checks the invariants. `acked`: checkpoints
// acknowledged before the crash (including the ones on disk before the run).
inline void check_recovery(const std::string& dir, const std::vector<int>& acked, const std::string& what, violations& v) {
  auto be = std::shared_ptr<io::backend>(backends::make_posix_backend());
  if (!fs::exists(dir)) {  // killed before its first save created the directory
    if (!acked.empty()) v.add(what + ": the directory is gone");
    return;
  }
  auto scan = scan_directory(*be, dir);
  if (!scan) return v.add(what + ": scan failed: " + scan.error().what());
  // What an operator runs first: `meshckpt verify DIR` passes (every checkpoint intact, the state
  // file lists only checkpoints that are there), unless no checkpoint was ever committed.
  if (!scan->checkpoints.empty()) {
    auto out = run_verify_cli(dir);
    if (!out.first) v.add(what + ": meshckpt verify " + dir + " fails: " + out.second);
  }
  // I1: every manifest restores bit-exact or fails loudly.
  std::set<int> restorable;
  for (const auto& name : scan->checkpoints) {
    int n = number_of(name);
    model back;
    auto c = checkpoint::create(mesh8(), &back, {}, opts(be)).value();
    auto st = c->restore(dir + "/" + name);
    if (st) {
      if (!back.holds(n))
        v.add(what + ": I1: " + name + " restores, with wrong values");
      else
        restorable.insert(n);
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
    if (newer < 2)
      v.add(what + ": I2/I3: acknowledged ckpt-" + std::to_string(n) + " is gone or damaged, and only " + std::to_string(newer) +
            " newer checkpoint(s) restore");
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
  if (after && !after->leftovers.empty())
    v.add(what + ": I6: leftovers after recovery: " + after->leftovers.front() + " (" + std::to_string(after->leftovers.size()) + ")");
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().filename().string().starts_with("checkpoint.tmp-"))
      v.add(what + ": I6: a temp state file is left: " + e.path().filename().string());
}

// The template: ckpt-1 and ckpt-2 written (durably) by a fault-free run.
inline const temp_dir& base_dir() {
  static temp_dir d;
  static bool made = [] {
    auto acked = run_saves(d.str(), backends::make_posix_backend(), 1, 2);
    return acked.size() == 2;
  }();
  REQUIRE(made);
  return d;
}

}  // namespace meshckpt::testing
