// CheckpointManager: argument errors, numbering, retention with max_to_keep and
// keep_checkpoint_every_n_hours, state recovery from the directory, step intervals,
// restore_or_initialize, safe deletion; and a retention model test of >= 10,000 random
// operations compared against a simple reference model.

#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>
#include <random>
#include <set>

#include "meshckpt/api/checkpoint_manager.hpp"
#include "meshckpt/backends/posix.hpp"
#include "meshckpt/format/names.hpp"
#include "support.hpp"

using namespace meshckpt;
namespace fs = std::filesystem;

namespace {

mesh mesh22() { return mesh::create({{"x", 2}, {"y", 2}}).value(); }

struct tiny : graph::module {
  graph::variable w{dtensor::create(dtype::float32, {4, 4}, layout::create({"x", "y"}, mesh22()).value()).value()};
  graph::scalar<std::int64_t> step{0};
  tiny() {
    track("w", w);
    track("step", step);
  }
};

// Names (for manifests: checkpoint names) of the files of one kind in `dir`.
std::set<std::string> files_of_kind(const std::string& dir, format::name_kind::kind k) {
  std::set<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) {
    auto c = format::classify(e.path().filename().string());
    if (c.k == k) out.insert(k == format::name_kind::manifest ? c.base : e.path().filename().string());
  }
  return out;
}

std::set<std::string> manifests_in(const std::string& dir) { return files_of_kind(dir, format::name_kind::manifest); }
std::size_t data_files_in(const std::string& dir) { return files_of_kind(dir, format::name_kind::data).size(); }

// Forwards to a real backend but makes fsync free: the retention model test checks the
// manager's bookkeeping over thousands of saves, not durability (test_commit_faults does).
class no_fsync final : public testing::forwarding_backend {
 public:
  using forwarding_backend::forwarding_backend;
  std::string_view name() const noexcept override { return "no_fsync"; }
  void fsync(io::handle, io::completion<void> d) override { d(success()); }
};

}  // namespace

TEST_CASE("manager arguments are validated", "[manager]") {
  tiny t;
  auto c = checkpoint::create(mesh22(), &t).value();
  testing::temp_dir tmp;
  manager_options o;
  o.max_to_keep = 0;
  CHECK_THAT(checkpoint_manager::create(*c, tmp.str(), o).error().what(), Catch::Contains("max_to_keep"));
  o.max_to_keep = -3;
  CHECK_FALSE(checkpoint_manager::create(*c, tmp.str(), o));
  manager_options i;
  i.checkpoint_interval = 10;
  CHECK_THAT(checkpoint_manager::create(*c, tmp.str(), i).error().what(), Catch::Contains("step_counter"));
  manager_options n;
  n.checkpoint_name = "a/b";
  CHECK_FALSE(checkpoint_manager::create(*c, tmp.str(), n));
}

TEST_CASE("the manager keeps max_to_keep checkpoints, deleting manifest and data of older ones", "[manager][retention]") {
  tiny t;
  auto c = checkpoint::create(mesh22(), &t).value();
  testing::temp_dir tmp;
  std::ofstream(tmp / "notes.txt") << "mine";
  std::ofstream(tmp / "ckpt-1.backup") << "also mine";
  manager_options o;
  o.max_to_keep = 2;
  auto m = checkpoint_manager::create(*c, tmp.str(), o).value();
  CHECK_FALSE(m->latest_checkpoint());
  for (int i = 1; i <= 5; ++i) CHECK(m->save().value() == tmp / ("ckpt-" + std::to_string(i)));
  CHECK(m->checkpoints() == std::vector<std::string>{tmp / "ckpt-4", tmp / "ckpt-5"});
  CHECK(m->latest_checkpoint() == tmp / "ckpt-5");
  CHECK(manifests_in(tmp.str()) == std::set<std::string>{"ckpt-4", "ckpt-5"});
  CHECK(data_files_in(tmp.str()) == 2);
  CHECK(fs::exists(tmp / "notes.txt"));
  CHECK(fs::exists(tmp / "ckpt-1.backup"));
  auto st = read_checkpoint_state(c->backend(), tmp.str()).value();
  CHECK(st.model_checkpoint_path == "ckpt-5");
  CHECK(st.all_model_checkpoint_paths == std::vector<std::string>{"ckpt-4", "ckpt-5"});
  CHECK(latest_checkpoint(tmp.str()) == tmp / "ckpt-5");
}

TEST_CASE("a new manager recovers its state from the directory's checkpoint file", "[manager][recovery]") {
  testing::temp_dir tmp;
  {
    tiny t;
    auto c = checkpoint::create(mesh22(), &t).value();
    manager_options o;
    o.max_to_keep = 3;
    auto m = checkpoint_manager::create(*c, tmp.str(), o).value();
    for (int i = 0; i < 4; ++i) REQUIRE(m->save());
  }
  tiny t;
  auto c = checkpoint::create(mesh22(), &t).value();
  manager_options o;
  o.max_to_keep = 3;
  auto m = checkpoint_manager::create(*c, tmp.str(), o).value();
  CHECK(m->checkpoints() == std::vector<std::string>{tmp / "ckpt-2", tmp / "ckpt-3", tmp / "ckpt-4"});
  CHECK(m->latest_checkpoint() == tmp / "ckpt-4");
  REQUIRE(m->restore_or_initialize().value() == tmp / "ckpt-4");
  CHECK(c->save_counter() == 4);
  CHECK(m->save().value() == tmp / "ckpt-5");  // numbering continues across the restart
  CHECK(m->checkpoints() == std::vector<std::string>{tmp / "ckpt-3", tmp / "ckpt-4", tmp / "ckpt-5"});
  CHECK(manifests_in(tmp.str()).size() == 3);
}

TEST_CASE("keep_checkpoint_every_n_hours preserves instead of deleting", "[manager][retention]") {
  tiny t;
  auto c = checkpoint::create(mesh22(), &t).value();
  testing::temp_dir tmp;
  manager_options o;
  o.max_to_keep = 1;
  o.keep_checkpoint_every_n_hours = 1e-9;  // every checkpoint is "old enough" to be preserved
  auto m = checkpoint_manager::create(*c, tmp.str(), o).value();
  for (int i = 0; i < 3; ++i) REQUIRE(m->save());
  CHECK(m->checkpoints() == std::vector<std::string>{tmp / "ckpt-3"});
  CHECK(manifests_in(tmp.str()).size() == 3);  // 1 and 2 preserved forever
  // After a restart the preserved ones are older than last_preserved_timestamp: not managed.
  auto m2 = checkpoint_manager::create(*c, tmp.str(), o).value();
  CHECK(m2->checkpoints() == std::vector<std::string>{tmp / "ckpt-3"});

  manager_options never;
  never.max_to_keep = 1;
  never.keep_checkpoint_every_n_hours = 1e6;  // nothing is old enough
  testing::temp_dir tmp2;
  auto m3 = checkpoint_manager::create(*c, tmp2.str(), never).value();
  for (int i = 0; i < 3; ++i) REQUIRE(m3->save());
  CHECK(manifests_in(tmp2.str()).size() == 1);
}

TEST_CASE("checkpoint_interval skips saves until the step advanced enough", "[manager][interval]") {
  tiny t;
  auto c = checkpoint::create(mesh22(), &t).value();
  testing::temp_dir tmp;
  std::int64_t step = 0;
  manager_options o;
  o.max_to_keep = std::nullopt;  // keep everything
  o.step_counter = [&] { return step; };
  o.checkpoint_interval = 5;
  auto m = checkpoint_manager::create(*c, tmp.str(), o).value();
  CHECK(m->save().value());  // first save always happens
  step = 3;
  CHECK_FALSE(m->save().value());  // 3 < 0 + 5
  step = 5;
  CHECK(m->save().value());
  CHECK_FALSE(m->save().value());                     // same step
  CHECK_FALSE(m->save(std::nullopt, false).value());  // same step even with check_interval = false (TensorFlow's rule)
  step = 7;
  CHECK_FALSE(m->save().value());               // 7 < 5 + 5
  CHECK(m->save(std::nullopt, false).value());  // check_interval = false waives the interval
  step = 12;
  CHECK(m->save(100).value().value() == tmp / "ckpt-100");  // explicit number
  CHECK(m->checkpoints().size() == 4);
}

TEST_CASE("restore_or_initialize calls init_fn when there is no checkpoint", "[manager]") {
  tiny t;
  auto c = checkpoint::create(mesh22(), &t).value();
  testing::temp_dir tmp;
  int inits = 0;
  manager_options o;
  o.init_fn = [&] { ++inits; };
  auto m = checkpoint_manager::create(*c, tmp.str(), o).value();
  CHECK_FALSE(m->restore_or_initialize().value());
  CHECK(inits == 1);
  testing::fill(t.w.view(), "w", 77);
  REQUIRE(m->save());
  tiny back;
  auto c2 = checkpoint::create(mesh22(), &back).value();
  auto m2 = checkpoint_manager::create(*c2, tmp.str(), o).value();
  CHECK(m2->restore_or_initialize().value() == tmp / "ckpt-1");
  CHECK(inits == 1);
  CHECK(testing::matches(back.w.view(), "w", 77));
}

TEST_CASE("retention model: 10,000 random save/restart operations match a reference model", "[manager][model]") {
  std::mt19937_64 rng(20261128);
  testing::temp_dir tmp;
  tiny t;
  checkpoint_options copt;
  copt.backend = std::make_shared<no_fsync>(backends::make_posix_backend());
  auto c = checkpoint::create(mesh22(), &t, {}, copt).value();
  const int max_keep = 3;
  manager_options o;
  o.max_to_keep = max_keep;
  auto m = checkpoint_manager::create(*c, tmp.str(), o).value();
  // Reference model: the managed list (oldest first) and the set of checkpoints on disk.
  std::vector<std::string> model_list;
  std::set<std::string> model_disk;
  std::int64_t counter = 0;
  // Fewer in the ASan build (tests/CMakeLists.txt), where the 10,000 take minutes.
  const int total_ops = testing::env_count("MESHCKPT_MODEL_OPS", 10000, 100);
  int ops = 0, saves = 0, restarts = 0, foreign = 0, divergences = 0;
  for (; ops < total_ops; ++ops) {
    int what = static_cast<int>(rng() % 100);
    if (what < 70) {
      std::optional<std::int64_t> number;
      if (rng() % 5 == 0) number = static_cast<std::int64_t>(rng() % 40);  // explicit numbers, sometimes repeating
      auto r = m->save(number);
      REQUIRE(r);
      ++counter;
      std::string base = "ckpt-" + std::to_string(number.value_or(counter));
      std::erase(model_list, base);
      model_list.push_back(base);
      model_disk.insert(base);
      while (model_list.size() > static_cast<std::size_t>(max_keep)) {
        model_disk.erase(model_list.front());
        model_list.erase(model_list.begin());
      }
      ++saves;
    } else if (what < 95) {
      m.reset();
      c = checkpoint::create(mesh22(), &t, {}, copt).value();
      m = checkpoint_manager::create(*c, tmp.str(), o).value();
      if (!model_list.empty()) REQUIRE(m->restore_or_initialize());
      ++restarts;
    } else {
      std::ofstream(tmp / ("foreign-" + std::to_string(ops))) << "x";  // never deleted
      ++foreign;
    }
    std::vector<std::string> expect;
    for (const auto& b : model_list) expect.push_back(tmp / b);
    if (m->checkpoints() != expect) ++divergences;
    if (ops % 100 == 0 || ops == total_ops - 1) {
      if (manifests_in(tmp.str()) != model_disk) ++divergences;
      if (data_files_in(tmp.str()) != model_disk.size()) ++divergences;
    }
    REQUIRE(divergences == 0);
  }
  std::size_t foreign_left = 0;
  for (const auto& e : fs::directory_iterator(tmp.str()))
    if (e.path().filename().string().starts_with("foreign-")) ++foreign_left;
  CHECK(foreign_left == static_cast<std::size_t>(foreign));
  WARN("retention model: " << ops << " operations (" << saves << " saves, " << restarts << " restarts, " << foreign << " foreign files), "
                           << divergences << " divergences");
}
