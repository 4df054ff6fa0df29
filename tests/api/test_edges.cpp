// Edge cases of the commit, message, state-file and retention code that the scenario suites do
// not reach: hostile messages between processes, hostile state files, invalid options, odd
// directory spellings and odd directory entries. (make coverage measures these files.)
#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>

#include "save/save_messages.hpp"
#include "meshckpt/plan/write_plan.hpp"
#include "reliability.hpp"

using namespace meshckpt;
using namespace meshckpt::testing;
namespace fs = std::filesystem;

namespace {

detail::process_report sample_report() {
  detail::process_report r;
  r.ok = true;
  r.fingerprint = 0x1234;
  r.files = {{"ck.data-00000000000000ab-0", 8192}};
  r.slices.push_back({0, 0, 0, 0, 4096, 0, {1, 2}});
  r.slices.push_back({0, 1, 0, 4096, 4096, 1, {3}});
  return r;
}

void write_text(const std::string& path, const std::string& text) { std::ofstream(path, std::ios::binary) << text; }

}  // namespace

TEST_CASE("messages from other processes are decoded as hostile input", "[edges][messages]") {
  auto bytes = detail::encode(sample_report());
  auto back = detail::decode_report(bytes);
  REQUIRE(back);
  CHECK(back->slices.size() == 2);
  CHECK(back->files == sample_report().files);
  // Every truncation fails; trailing bytes fail.
  for (std::size_t n = 0; n < bytes.size(); ++n) CHECK(!detail::decode_report(std::span(bytes).first(n)));
  auto longer = bytes;
  longer.push_back(std::byte{0});
  CHECK(!detail::decode_report(longer));
  // Every single-bit flip decodes or fails cleanly (never crashes).
  std::size_t rejected = 0;
  for (std::size_t i = 0; i < bytes.size() * 8; ++i) {
    auto flipped = bytes;
    flipped[i / 8] ^= std::byte(1u << (i % 8));
    rejected += !detail::decode_report(flipped);
  }
  CHECK(rejected > 0);
  // A file name that is not plain; a slice naming a file the report lacks.
  auto bad_name = sample_report();
  bad_name.files[0].name = "../escape";
  auto r = detail::decode_report(detail::encode(bad_name));
  REQUIRE(!r);
  CHECK(r.error().code == errc::unsafe_path);
  auto bad_file = sample_report();
  bad_file.slices[1].file = 5;
  CHECK(!detail::decode_report(detail::encode(bad_file)));
  // A failed report carries its error.
  detail::process_report failed;
  failed.failure = make_error(errc::cancelled, "save cancelled");
  auto f = detail::decode_report(detail::encode(failed));
  REQUIRE(f);
  CHECK(!f->ok);
  CHECK(f->failure.what() == "save cancelled");

  // The outcome message likewise.
  detail::save_outcome o;
  o.s = detail::save_outcome::failed_after_publish;
  o.failure = make_error(errc::timed_out, "process 3 did not answer");
  auto ob = detail::encode(o);
  auto od = detail::decode_outcome(ob);
  REQUIRE(od);
  CHECK(od->s == detail::save_outcome::failed_after_publish);
  CHECK(od->failure.what() == "process 3 did not answer");
  detail::save_outcome done;
  done.s = detail::save_outcome::committed;
  done.bytes = 77;
  done.files = 3;
  auto dd = detail::decode_outcome(detail::encode(done));
  REQUIRE(dd);
  CHECK(dd->bytes == 77);
  CHECK(dd->files == 3);
  for (std::size_t n = 0; n < ob.size(); ++n) CHECK(!detail::decode_outcome(std::span(ob).first(n)));
  ob.push_back(std::byte{1});
  CHECK(!detail::decode_outcome(ob));
}

TEST_CASE("merging reports: every slice exactly once, by a process that planned the same skeleton", "[edges][messages]") {
  auto m1 = mesh::create({{"x", 2}}).value();
  auto t = dtensor::create(dtype::float32, {2048, 2}, layout::create({"x", "unsharded"}, m1).value()).value();
  std::vector<plan::named_tensor> ts = {{"t", t.view()}};
  auto p = plan::plan_write(ts, {}, true).value();
  REQUIRE(p.skeleton.tensors.size() == 1);
  REQUIRE(p.skeleton.tensors[0].slices.size() == 2);
  const auto fp = detail::skeleton_fingerprint(p.skeleton);
  auto report = [&](int rank, std::vector<detail::written_slice> slices) {
    detail::process_report r;
    r.ok = true;
    r.fingerprint = fp;
    r.files = {{"ck.data-00000000000000ab-" + std::to_string(rank * 10000), 8192}};
    r.slices = std::move(slices);
    return r;
  };
  const auto& sl = p.skeleton.tensors[0].slices;
  auto good0 = report(0, {{0, 0, 0, 0, sl[0].length, sl[0].writer_device, {7}}});
  auto good1 = report(1, {{0, 1, 0, 0, sl[1].length, sl[1].writer_device, {8}}});
  {
    auto m = p.skeleton;
    std::vector<detail::process_report> reps = {good0, good1};
    REQUIRE(detail::merge_reports(m, reps));
    CHECK(m.files.size() == 2);
    CHECK(m.tensors[0].slices[1].checksums == std::vector<std::uint64_t>{8});
  }
  auto fails = [&](std::vector<detail::process_report> reps, const char* what) {
    auto m = p.skeleton;
    auto r = detail::merge_reports(m, reps);
    INFO(what);
    REQUIRE(!r);
    return r.error().what();
  };
  auto out_of_range = good1;
  out_of_range.slices[0].slice = 9;
  fails({good0, out_of_range}, "a slice the skeleton lacks");
  auto other_writer = good1;
  other_writer.slices[0].writer_device = sl[1].writer_device + 1;
  fails({good0, other_writer}, "a slice written by another device than planned");
  auto empty1 = report(1, {});
  CHECK_THAT(fails({good0, empty1}, "a slice nobody wrote"), Catch::Contains("slice"));
  auto twice = good1;
  twice.slices[0].slice = 0;
  twice.slices[0].writer_device = sl[0].writer_device;
  fails({good0, twice}, "a slice written twice");
  auto mismatch = good1;
  mismatch.fingerprint = fp + 1;
  fails({good0, mismatch}, "another skeleton");
}

TEST_CASE("hostile checkpoint state files: a clear error naming the line, never a crash", "[edges][state]") {
  const char* bad[] = {
      "model_checkpoint_path \"a\"\n",                                       // no colon
      "frobnicate: \"a\"\n",                                                 // unknown field
      "model_checkpoint_path: a\n",                                          // unquoted
      "model_checkpoint_path: \"a\\\"\n",                                    // dangling escape
      "model_checkpoint_path: \"a\"\nall_model_checkpoint_timestamps: x\n",  // not a number
      "model_checkpoint_path: \"a\"\nall_model_checkpoint_timestamps: 1.5junk\n",
      "all_model_checkpoint_paths: \"a\"\n",  // no model_checkpoint_path
      // 2 paths, 1 timestamp:
      "model_checkpoint_path: \"a\"\nall_model_checkpoint_paths: \"a\"\nall_model_checkpoint_paths: "
      "\"b\"\nall_model_checkpoint_timestamps: 1\n",
      "model_checkpoint_path: \"\n",
      "model_checkpoint_path: ab\n",                                // no opening quote
      "model_checkpoint_path: \"ab\n",                              // no closing quote
      "model_checkpoint_path: \"a\"\nlast_preserved_timestamp:\n",  // no number at all
  };
  for (const char* text : bad) {
    INFO(text);
    auto r = parse_checkpoint_state(text);
    REQUIRE(!r);
    CHECK(r.error().code == errc::corrupt_manifest);
  }
  // Comments, blank lines, CRLF and trailing spaces are fine; escapes round-trip.
  auto ok =
      parse_checkpoint_state("# written by hand\r\n\r\nmodel_checkpoint_path:   \"c\\\"k\\\\-2\"  \r\nlast_preserved_timestamp: 12.5\n");
  REQUIRE(ok);
  CHECK(ok->model_checkpoint_path == "c\"k\\-2");
  CHECK(ok->last_preserved_timestamp == 12.5);
  checkpoint_state s;
  s.model_checkpoint_path = "we\"ird\\name";
  s.all_model_checkpoint_paths = {"a", "we\"ird\\name"};
  s.all_model_checkpoint_timestamps = {1.25, 2.5};
  auto back = parse_checkpoint_state(format_checkpoint_state(s));
  REQUIRE(back);
  CHECK(back->model_checkpoint_path == s.model_checkpoint_path);
  CHECK(back->all_model_checkpoint_paths == s.all_model_checkpoint_paths);
  CHECK(back->all_model_checkpoint_timestamps == s.all_model_checkpoint_timestamps);

  // More paths than the parser accepts (a million).
  {
    std::string many = "model_checkpoint_path: \"a\"\n";
    for (int i = 0; i <= 1000000; ++i) many += "all_model_checkpoint_paths: \"a\"\n";
    auto r = parse_checkpoint_state(many);
    REQUIRE(!r);
    CHECK_THAT(r.error().what(), Catch::Contains("too many paths"));
  }

  auto be = std::shared_ptr<io::backend>(backends::make_posix_backend());
  temp_dir dir;
  // The empty directory is the current one.
  {
    const auto cwd = fs::current_path();
    fs::current_path(dir.str());
    auto none = read_checkpoint_state(*be, "");
    CHECK(!none);
    CHECK(!latest_checkpoint(""));
    fs::current_path(cwd);
  }
  auto missing = read_checkpoint_state(*be, dir / "nowhere");
  REQUIRE(!missing);
  CHECK(missing.error().code == errc::not_found);
  CHECK(!latest_checkpoint(dir / "nowhere"));
  // Larger than the 16 MiB cap: refused before it is read.
  {
    std::ofstream big(dir / "checkpoint", std::ios::binary);
    big << "model_checkpoint_path: \"a\"\n";
    big.seekp(17 << 20);
    big << '\n';
  }
  auto huge = read_checkpoint_state(*be, dir.str());
  REQUIRE(!huge);
  CHECK(huge.error().code == errc::limit_exceeded);
  // latest_checkpoint: trailing slashes; a state file naming a checkpoint that is gone.
  fs::remove(dir / "checkpoint");
  model mdl;
  mdl.set(3);
  {
    auto c = checkpoint::create(mesh8(), &mdl, {}, opts(be)).value();
    auto mgr = checkpoint_manager::create(*c, dir.str() + "///", mopts()).value();
    REQUIRE(mgr->save());
  }
  auto latest = latest_checkpoint(dir.str() + "//");
  REQUIRE(latest);
  CHECK(fs::path(*latest).filename() == "ckpt-1");
  REQUIRE(delete_checkpoint(*be, *latest));
  CHECK(!latest_checkpoint(dir.str()));
}

TEST_CASE("retention and leftovers: odd names and entries are left alone", "[edges][retention]") {
  auto be = std::shared_ptr<io::backend>(backends::make_posix_backend());
  temp_dir dir;
  copy_dir(base_dir().str(), dir.str());
  // Not ours to remove: another name, names that only look numbered, a directory with a data
  // file's name, and a committed checkpoint's files.
  const std::vector<std::string> keep = {"other-1.data-00000000000000ab-0", "ckpt.data-00000000000000ab-0",
                                         "ckptx-1.data-00000000000000ab-0", "ckpt-a.data-00000000000000ab-0",
                                         "ckpt-.data-00000000000000ab-0"};
  for (const auto& k : keep) write_text(dir / k, "x");
  fs::create_directory(dir / "ckpt-7.data-00000000000000ab-0");
  write_text(dir / "ckpt-9.data-00000000000000ab-0", "leftover");  // an interrupted save: removed
  auto removed = remove_orphans(*be, dir.str(), "ckpt");
  REQUIRE(removed);
  CHECK(*removed == 1);
  for (const auto& k : keep) CHECK(fs::exists(dir / k));
  CHECK(fs::is_directory(dir / "ckpt-7.data-00000000000000ab-0"));
  CHECK(!fs::exists(dir / "ckpt-9.data-00000000000000ab-0"));
  CHECK(!remove_orphans(*be, dir / "nowhere", "ckpt"));
  // Deleting a checkpoint removes its files only, even with look-alikes around.
  REQUIRE(delete_checkpoint(*be, dir / "ckpt-1"));
  CHECK(!fs::exists(dir / "ckpt-1.manifest"));
  CHECK(fs::exists(dir / "ckpt-2.manifest"));
  CHECK(!delete_checkpoint(*be, dir / "nowhere/ckpt-1"));
  auto bad = delete_checkpoint(*be, dir / "..");
  CHECK(!bad);
}

TEST_CASE("invalid options are refused before anything is written", "[edges][options]") {
  auto be = std::shared_ptr<io::backend>(backends::make_posix_backend());
  temp_dir dir;
  auto m1 = mesh::create({{"x", 1}}).value();
  auto t = dtensor::create(dtype::float32, {4}, layout::create({"unsharded"}, m1).value()).value();
  std::vector<named_tensor> ts = {{"t", t.view()}};
  for (std::uint64_t chunk : {std::uint64_t{0}, std::uint64_t{1000}, std::uint64_t{4096 + 1}, std::uint64_t{128} << 20}) {
    write_options o;
    o.chunk_bytes = chunk;
    auto r = write_tensors(*be, dir / "ck", ts, o);
    REQUIRE(!r);
    CHECK(r.error().code == errc::invalid_argument);
  }
  write_options o;
  o.coordination_timeout = std::chrono::milliseconds(0);
  CHECK(!write_tensors(*be, dir / "ck", ts, o));
  for (const char* name : {"..", "ck.manifest", ""}) {
    INFO(name);
    auto r = write_tensors(*be, dir / name, ts);
    REQUIRE(!r);
    CHECK(r.error().code == errc::invalid_argument);
  }
  auto slash = write_tensors(*be, dir.str() + "/", ts);  // a directory is not a prefix
  REQUIRE(!slash);
  CHECK_THAT(slash.error().what(), Catch::Contains("not a directory"));
  CHECK(fs::is_empty(dir.str()));
  // Manager options: a negative interval; directory spellings.
  model mdl;
  auto c = checkpoint::create(mesh8(), &mdl, {}, opts(be)).value();
  manager_options mo;
  mo.checkpoint_interval = -1;
  CHECK(!checkpoint_manager::create(*c, dir.str(), mo));
  fs::create_directories(dir / "m");
  auto mgr = checkpoint_manager::create(*c, dir / "m///", mopts());
  REQUIRE(mgr);
  REQUIRE((*mgr)->save());
  CHECK(fs::exists(dir / "m/ckpt-1.manifest"));
  // A relative prefix in the current directory, and a manager over the current directory ("").
  {
    const auto cwd = fs::current_path();
    fs::current_path(dir.str());
    auto r = write_tensors(*be, "relative", ts);
    CHECK(r);
    if (r) CHECK(r->manifest_path == "relative.manifest");
    model here;
    auto hc = checkpoint::create(mesh8(), &here, {}, opts(be)).value();
    CHECK(checkpoint_manager::create(*hc, "", mopts()));
    fs::current_path(cwd);
  }
  // A step counter with an interval: a save at the same step is skipped.
  {
    std::int64_t step = 10;
    manager_options so = mopts();
    so.step_counter = [&] { return step; };
    so.checkpoint_interval = 5;
    fs::create_directories(dir / "steps");
    auto sm = checkpoint_manager::create(*c, dir / "steps", so).value();
    auto first = sm->save(std::nullopt, true);
    REQUIRE(first);
    CHECK(*first);
    auto again = sm->save(std::nullopt, true);
    REQUIRE(again);
    CHECK(!*again);  // skipped: the interval has not passed
    step = 15;
    auto later = sm->save(std::nullopt, true);
    REQUIRE(later);
    CHECK(*later);
  }
  // A state file written by TensorFlow without timestamps is adopted.
  write_text(dir / "m/checkpoint", "model_checkpoint_path: \"ckpt-1\"\nall_model_checkpoint_paths: \"ckpt-1\"\n");
  auto again = checkpoint_manager::create(*c, dir / "m", mopts());
  REQUIRE(again);
  CHECK((*again)->latest_checkpoint());
}
