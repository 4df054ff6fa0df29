// Hostile files (RELIABILITY.md I1, I7), beyond the manifest bit flips and truncations of
// test_format.cpp: data files corrupted at random places, truncated at random lengths,
// swapped with another checkpoint's; symlinks, FIFOs and directories in place of the manifest
// or a data file. Every case ends in a clear error or in bit-exact values (a byte flipped in
// alignment padding changes nothing) — never in wrong values, a crash or a hang.

#include <catch2/catch.hpp>

#include <sys/stat.h>
#include <unistd.h>

#include <deque>
#include <filesystem>
#include <fstream>
#include <future>
#include <random>

#include "meshckpt/pipeline/tensor_io.hpp"
#include "support.hpp"

using namespace meshckpt;
namespace fs = std::filesystem;
using namespace std::chrono_literals;

namespace {

struct state {
  std::deque<dtensor> keep;
  std::vector<named_tensor> tensors;
};

state make_state(std::uint64_t seed, bool fill) {
  auto m = mesh::create({{"x", 2}, {"y", 2}}).value();
  state s;
  auto add = [&](std::string key, dtype t, shape sh, std::vector<std::string> axes) {
    s.keep.push_back(dtensor::create(t, sh, layout::create(axes, m).value()).value());
    if (fill) testing::fill(s.keep.back().view(), key, seed);
    s.tensors.push_back({std::move(key), s.keep.back().view()});
  };
  add("big", dtype::float32, {256, 128}, {"x", "y"});  // 32 KiB slices: aligned, several chunks
  add("small", dtype::int16, {10, 3}, {"unsharded", "unsharded"});
  add("half", dtype::bfloat16, {64, 9}, {"y", "unsharded"});
  return s;
}

write_options small_chunks() {
  write_options o;
  o.chunk_bytes = 4096;
  o.layout.max_file_bytes = 40000;  // several data files
  return o;
}

enum class outcome { error, exact, wrong };

// Restores `prefix` into a fresh state and compares with `seed`; also runs verify, which must
// report damage whenever the restore failed on data.
outcome restore(io::backend& b, const std::string& prefix, std::uint64_t seed) {
  auto t = make_state(0, false);
  auto r = read_tensors(b, prefix, t.tensors);
  if (!r) return outcome::error;
  for (const auto& nt : t.tensors)
    if (!testing::matches(nt.tensor, nt.key, seed)) return outcome::wrong;
  return outcome::exact;
}

// Runs f with a deadline: a hostile file must never make a call hang.
template <class F>
auto within(F f, std::chrono::seconds limit = 20s) {
  auto fut = std::async(std::launch::async, f);
  REQUIRE(fut.wait_for(limit) == std::future_status::ready);
  return fut.get();
}

std::string read_file(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}
void write_file(const std::string& p, const std::string& c) {
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  f.write(c.data(), static_cast<std::streamsize>(c.size()));
}

}  // namespace

TEST_CASE("random corruption and truncation of data files: an error or exact values, never wrong ones", "[hostile]") {
  auto be = testing::test_backend();
  testing::temp_dir tmp;
  const std::string prefix = tmp / "ck";
  auto s = make_state(11, true);
  REQUIRE(write_tensors(*be, prefix, s.tensors, small_chunks()));
  auto m = read_manifest(*be, prefix).value();
  REQUIRE(m.files.size() >= 2);
  std::mt19937_64 rng(2026);
  int errors = 0, exact = 0, wrong = 0, verify_missed = 0;
  for (int i = 0; i < 300; ++i) {
    const auto& f = m.files[rng() % m.files.size()];
    const std::string path = tmp / f.name;
    const std::string original = read_file(path);
    std::string damaged = original;
    const int how = static_cast<int>(rng() % 3);
    if (how == 0 && !damaged.empty()) {  // flip bits of 1..4 random bytes
      for (int n = 1 + static_cast<int>(rng() % 4); n > 0; --n) damaged[rng() % damaged.size()] ^= static_cast<char>(1 + rng() % 255);
    } else if (how == 1) {  // truncate
      damaged.resize(rng() % (damaged.size() + 1));
    } else {  // overwrite a random range with garbage
      std::size_t at = rng() % (damaged.size() + 1), len = std::min<std::size_t>(damaged.size() - at, 1 + rng() % 8192);
      for (std::size_t j = 0; j < len; ++j) damaged[at + j] = static_cast<char>(rng());
    }
    write_file(path, damaged);
    auto o = within([&] { return restore(*be, prefix, 11); });
    auto v = within([&] { return verify(*be, prefix); });
    (o == outcome::error ? errors : o == outcome::exact ? exact : wrong)++;
    if (o == outcome::error && v && v->ok()) ++verify_missed;
    write_file(path, original);
  }
  std::printf("data-file damage: 300 cases, %d detected, %d harmless (padding or no change), %d wrong values, %d missed by verify\n",
              errors, exact, wrong, verify_missed);
  CHECK(wrong == 0);
  CHECK(verify_missed == 0);
  CHECK(errors > 200);
}

TEST_CASE("data files swapped with another checkpoint's are detected", "[hostile]") {
  auto be = testing::test_backend();
  testing::temp_dir tmp;
  auto a = make_state(1, true), b = make_state(2, true);
  REQUIRE(write_tensors(*be, tmp / "a", a.tensors, small_chunks()));
  REQUIRE(write_tensors(*be, tmp / "b", b.tensors, small_chunks()));
  auto ma = read_manifest(*be, tmp / "a").value(), mb = read_manifest(*be, tmp / "b").value();
  REQUIRE(ma.files.size() == mb.files.size());
  for (std::size_t i = 0; i < ma.files.size(); ++i) {
    // Give a's name b's bytes (same layout, other values).
    const std::string pa = tmp / ma.files[i].name, pb = tmp / mb.files[i].name;
    const std::string keep = read_file(pa);
    write_file(pa, read_file(pb));
    auto o = restore(*be, tmp / "a", 1);
    CHECK(o == outcome::error);
    auto v = verify(*be, tmp / "a");
    REQUIRE(v);
    CHECK_FALSE(v->ok());
    write_file(pa, keep);
  }
  CHECK(restore(*be, tmp / "a", 1) == outcome::exact);
}

TEST_CASE("symlinks, FIFOs and directories in place of the manifest or a data file are refused, without hanging", "[hostile]") {
  auto be = testing::test_backend();
  testing::temp_dir tmp;
  const std::string prefix = tmp / "ck";
  auto s = make_state(5, true);
  REQUIRE(write_tensors(*be, prefix, s.tensors, small_chunks()));
  auto m = read_manifest(*be, prefix).value();
  testing::temp_dir elsewhere;
  const std::vector<std::string> victims = {"ck.manifest", m.files[0].name};
  int refused = 0;
  for (const auto& name : victims) {
    const std::string p = tmp / name, saved = elsewhere / name;
    fs::rename(p, saved);
    for (int kind = 0; kind < 3; ++kind) {
      if (kind == 0) fs::create_symlink(saved, p);  // points at the genuine file: still refused
      if (kind == 1) REQUIRE(::mkfifo(p.c_str(), 0644) == 0);
      if (kind == 2) fs::create_directory(p);
      auto o = within([&] { return restore(*be, prefix, 5); });
      auto v = within([&] { return verify(*be, prefix); });
      CHECK(o == outcome::error);
      CHECK((!v || !v->ok()));
      if (o == outcome::error) ++refused;
      fs::remove(p);
    }
    fs::rename(saved, p);
  }
  CHECK(refused == 6);
  CHECK(restore(*be, prefix, 5) == outcome::exact);
}
