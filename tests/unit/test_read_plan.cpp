// Read planning (plan/read_plan): the policy's rules on chosen cases, then the brute-force
// oracle (fuzz/read_plan_oracle.hpp) on many generated scenarios.

#include <catch2/catch.hpp>

#include <random>

#include "../../fuzz/read_plan_oracle.hpp"
#include "meshckpt/plan/global_copy.hpp"
#include "meshckpt/tensor/dtensor.hpp"

using namespace meshckpt;
using namespace meshckpt::plan;

namespace {

alignas(4096) std::byte memory[1 << 16];

wanted_range whole(std::uint32_t file, std::uint64_t offset, std::uint64_t length, std::byte* dst) {
  return {file, offset, length, 0, length, {{dst, copy_run{.length = length}}}};
}

}  // namespace

TEST_CASE("small neighbours merge within the gap and extent limits", "[plan][read]") {
  read_policy pol{.alignment = 1, .piece_bytes = 4096, .large_bytes = 1024, .merge_gap = 100, .max_extent = 1000};
  std::vector<wanted_range> w = {
      whole(0, 0, 100, memory),                                            // merged with the next (gap 50)
      whole(0, 150, 100, memory + 200), whole(0, 400, 100, memory + 400),  // gap 150: a new read
      whole(1, 500, 100, memory + 600),                                    // another file: a new read
  };
  auto p = plan_reads(w, 4096, pol).value();
  REQUIRE(p.requests.size() == 3);
  CHECK(p.requests[0].pieces.size() == 2);
  CHECK_FALSE(p.requests[0].direct);
  CHECK(p.requests[0].offset == 0);
  CHECK(p.requests[0].required == 250);
  CHECK(p.requests[0].pieces[1] == read_piece{1, 0, 100, 150});
  CHECK(p.requests[1].direct);  // alone and nothing to align: read in place
  CHECK(p.requests[2].file == 1);
  CHECK(p.bytes == 400);

  pol.max_extent = 200;  // the first two no longer fit one read
  CHECK(plan_reads(w, 4096, pol).value().requests.size() == 4);
}

TEST_CASE("large ranges are read in pieces of whole chunks, in place when aligned", "[plan][read]") {
  read_policy pol{.alignment = 4096, .piece_bytes = 8192, .large_bytes = 4096};
  std::vector<wanted_range> w = {whole(0, 4096, 20000, memory)};
  auto p = plan_reads(w, 4096, pol).value();
  REQUIRE(p.requests.size() == 3);
  CHECK(p.requests[0].direct == direct_dest{0, 0});
  CHECK(p.requests[1].direct == direct_dest{0, 8192});
  // The tail (3616 bytes) is not a multiple of the alignment: staged over its aligned cover.
  CHECK_FALSE(p.requests[2].direct);
  CHECK(p.requests[2].offset == 4096 + 16384);
  CHECK(p.requests[2].length == 4096);
  CHECK(p.requests[2].required == 3616);

  // A destination at an unaligned address: every piece staged.
  w = {whole(0, 4096, 20000, memory + 8)};
  auto staged = plan_reads(w, 4096, pol).value();
  for (const auto& q : staged.requests) CHECK_FALSE(q.direct);
  // A replica that is aligned takes the read in place; the other is copied from it.
  w[0].targets.push_back({memory + 8192, copy_run{.length = 20000}});
  CHECK(plan_reads(w, 4096, pol).value().requests[0].direct == direct_dest{1, 0});
}

TEST_CASE("chunks larger than a piece are verified once in a destination that holds them whole", "[plan][read]") {
  read_policy pol{.alignment = 1, .piece_bytes = 1024, .large_bytes = 1024};
  std::vector<wanted_range> w = {whole(0, 0, 10000, memory)};
  auto p = plan_reads(w, 8192, pol).value();
  CHECK(p.requests.size() == 10);
  CHECK(p.verify_after == std::vector<std::pair<std::size_t, std::size_t>>{{0, 0}});
  // Resharding (a strided run): pieces of whole chunks instead.
  w[0].targets[0].run = copy_run{.src_offset = 0, .length = 100, .count = 50, .src_stride = 200, .dst_stride = 100};
  p = plan_reads(w, 8192, pol).value();
  CHECK(p.verify_after.empty());
  CHECK(p.requests.size() == 2);
}

TEST_CASE("the planner refuses ranges and policies it cannot honour", "[plan][read]") {
  std::vector<wanted_range> w = {whole(0, 0, 100, memory)};
  w[0].end = 200;
  CHECK(plan_reads(w, 4096).error().code == errc::invalid_argument);
  w = {whole(0, ~std::uint64_t{0} - 50, 100, memory)};
  CHECK(plan_reads(w, 4096).error().code == errc::invalid_argument);
  w = {whole(0, 0, 100, memory)};
  w[0].targets.clear();
  CHECK(plan_reads(w, 4096).error().code == errc::invalid_argument);
  w = {whole(0, 0, 100, memory)};
  w[0].targets[0].run.length = 101;
  CHECK(plan_reads(w, 4096).error().code == errc::invalid_argument);
  w[0].targets[0].run = copy_run{.length = 10, .count = ~std::uint64_t{0}, .src_stride = 1u << 20};
  CHECK(plan_reads(w, 4096).error().code == errc::invalid_argument);
  w = {whole(0, 0, 100, memory)};
  w[0].begin = 10;
  CHECK(plan_reads(w, 4096).error().code == errc::invalid_argument);  // not on a chunk
  CHECK(plan_reads({}, 0).error().code == errc::invalid_argument);
  CHECK(plan_reads({}, 4096, read_policy{.alignment = 3}).error().code == errc::invalid_argument);
  CHECK(plan_reads({}, 4096, read_policy{.piece_bytes = 100}).error().code == errc::invalid_argument);
}

TEST_CASE("read plans match the brute-force oracle", "[plan][read][oracle]") {
  std::mt19937 rng(20261130);
  std::size_t requests = 0, direct = 0, merged = 0;
  for (int round = 0; round < 20000; ++round) {
    std::vector<std::uint8_t> bytes(256);
    for (auto& b : bytes) b = static_cast<std::uint8_t>(rng());
    oracle::byte_source in{bytes.data(), bytes.size()};
    auto s = oracle::make_read_scenario(in);
    auto p = plan_reads(s.wants, s.chunk, s.policy);
    INFO((p ? std::string() : p.error().message));
    REQUIRE(p);
    auto bad = oracle::check_read_plan(s, *p);
    if (bad.empty()) bad = oracle::execute_and_compare(s, *p);
    INFO("round " << round);
    REQUIRE(bad == "");
    requests += p->requests.size();
    for (const auto& q : p->requests) {
      direct += q.direct.has_value();
      merged += q.pieces.size() > 1;
    }
  }
  // The generator reaches every kind of request.
  CHECK(direct > 1000);
  CHECK(merged > 1000);
  CHECK(requests - direct > 1000);
}

// ---------------------------------------------------------------- a whole array in and out

TEST_CASE("assign_global and copy_to_global move a whole array into every layout's shards and back", "[plan][global]") {
  auto m = mesh::create({{"x", 2}, {"y", 3}}).value();
  const shape g = {5, 7, 2};  // uneven over both mesh dimensions
  std::vector<std::int32_t> whole(5 * 7 * 2);
  for (std::size_t i = 0; i < whole.size(); ++i) whole[i] = static_cast<std::int32_t>(i * 7 + 1);
  const auto bytes = std::as_bytes(std::span(whole));
  for (std::vector<std::string> specs : {std::vector<std::string>{"x", "y", "unsharded"},
                                         {"y", "unsharded", "x"},
                                         {"unsharded", "x", "unsharded"},
                                         {"unsharded", "unsharded", "unsharded"}}) {
    auto l = layout::create(specs, m).value();
    auto d = dtensor::create(dtype::int32, g, l).value();
    REQUIRE(assign_global(d.view(), bytes));
    // Every element of every shard is the global element at its coordinates.
    for (const auto& s : d.view().shards()) {
      const box b = l.shard_box(g, s.device).value();
      const auto* p = reinterpret_cast<const std::int32_t*>(s.data.data());
      std::size_t k = 0;
      for (std::int64_t i = 0; i < b.extent[0]; ++i)
        for (std::int64_t j = 0; j < b.extent[1]; ++j)
          for (std::int64_t c = 0; c < b.extent[2]; ++c, ++k)
            REQUIRE(p[k] == whole[((b.origin[0] + i) * 7 + b.origin[1] + j) * 2 + b.origin[2] + c]);
    }
    std::vector<std::int32_t> back(whole.size(), -1);
    REQUIRE(copy_to_global(d.view(), std::as_writable_bytes(std::span(back))));
    CHECK(back == whole);
  }
}

TEST_CASE("copy_to_global leaves other processes' parts alone; a wrongly sized array is refused", "[plan][global]") {
  auto m = mesh::create({{"x", 4}}, {}, {1, 2}).value();
  auto d = dtensor::create(dtype::int32, {8}, layout::create({"x"}, m).value()).value();
  std::vector<std::int32_t> whole = {0, 1, 2, 3, 4, 5, 6, 7};
  REQUIRE(assign_global(d.view(), std::as_bytes(std::span(whole))));
  std::vector<std::int32_t> back(8, -1);
  REQUIRE(copy_to_global(d.view(), std::as_writable_bytes(std::span(back))));
  CHECK(back == std::vector<std::int32_t>{-1, -1, 2, 3, 4, 5, -1, -1});
  auto r = assign_global(d.view(), std::as_bytes(std::span(whole)).first(28));
  REQUIRE(!r);
  CHECK(r.error().code == errc::invalid_argument);
  CHECK(r.error().message.find("28 bytes") != std::string::npos);
}
