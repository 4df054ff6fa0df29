// Coordinators: the single-process one, and the in-process thread group used to test
// multi-process protocols — collectives in order over many rounds, and a missing rank turning
// into a timeout (naming the rank) on the others instead of a hang.

#include <catch2/catch.hpp>

#include <atomic>
#include <string>
#include <thread>

#include "meshckpt/coord/coordinator.hpp"

using namespace meshckpt;
using namespace std::chrono_literals;

namespace {

std::vector<std::byte> bytes_of(const std::string& s) {
  std::vector<std::byte> v;
  for (char c : s) v.push_back(static_cast<std::byte>(c));
  return v;
}

std::string string_of(const std::vector<std::byte>& v) {
  std::string s;
  for (auto b : v) s.push_back(static_cast<char>(b));
  return s;
}

}  // namespace

TEST_CASE("the single-process coordinator is trivial", "[coord]") {
  auto c = coord::make_single_process_coordinator();
  CHECK(c->rank() == 0);
  CHECK(c->size() == 1);
  auto g = c->gather(bytes_of("x"), 1ms).value();
  REQUIRE(g.size() == 1);
  CHECK(string_of(g[0]) == "x");
  CHECK(string_of(c->broadcast(bytes_of("y"), 1ms).value()) == "y");
  CHECK(c->barrier(1ms));
}

TEST_CASE("a thread group runs collectives in order, round after round", "[coord]") {
  constexpr int n = 4, rounds = 200;
  auto group = coord::make_thread_group(n);
  std::vector<std::thread> ts;
  std::atomic<int> bad{0};
  for (int r = 0; r < n; ++r)
    ts.emplace_back([&, r] {
      auto& c = *group[static_cast<std::size_t>(r)];
      for (int i = 0; i < rounds; ++i) {
        auto g = c.gather(bytes_of(std::to_string(r * 1000 + i)), 10s);
        if (!g)
          ++bad;
        else if (r == 0) {
          for (int k = 0; k < n; ++k)
            if (string_of((*g)[static_cast<std::size_t>(k)]) != std::to_string(k * 1000 + i)) ++bad;
        } else if (!g->empty()) {
          ++bad;
        }
        auto b = c.broadcast(bytes_of(r == 0 ? "round " + std::to_string(i) : "ignored"), 10s);
        if (!b || string_of(*b) != "round " + std::to_string(i)) ++bad;
        if (!c.barrier(10s)) ++bad;
      }
    });
  for (auto& t : ts) t.join();
  CHECK(bad == 0);
}

TEST_CASE("a rank that arrives late makes the root time out, naming it, and still joins the next round", "[coord][timeout]") {
  auto group = coord::make_thread_group(3);
  // Rank 2 is late: it gathers only after the root gave up, then waits for the broadcast.
  std::atomic<bool> r1_heard{false};  // Catch asserts on the test's thread only
  std::thread r1([&] {
    (void)group[1]->gather(bytes_of("one"), 5s);
    auto b = group[1]->broadcast({}, 5s);
    r1_heard = b && string_of(*b) == "gave up";
  });
  auto g = group[0]->gather(bytes_of("zero"), 200ms);
  REQUIRE_FALSE(g);
  CHECK(g.error().code == errc::timed_out);
  CHECK_THAT(g.error().what(), Catch::Contains("rank(s) 2"));
  CHECK(group[0]->broadcast(bytes_of("gave up"), 1s));
  (void)group[2]->gather(bytes_of("two, late"), 1s);  // lands in the abandoned round
  auto b2 = group[2]->broadcast({}, 1s);
  REQUIRE(b2);
  CHECK(string_of(*b2) == "gave up");
  r1.join();
  CHECK(r1_heard);
  // A barrier that one rank never enters.
  auto b = group[1]->barrier(100ms);
  REQUIRE_FALSE(b);
  CHECK(b.error().code == errc::timed_out);
  // A broadcast whose root is missing.
  auto group2 = coord::make_thread_group(2);
  auto bc = group2[1]->broadcast({}, 100ms);
  REQUIRE_FALSE(bc);
  CHECK_THAT(bc.error().what(), Catch::Contains("rank(s) 0"));
}

TEST_CASE("collectives of every rank are polled from one thread: none blocks, each completes", "[coord][poll]") {
  // What a multi-process save does on the library's engine: start, then poll, never wait.
  constexpr int n = 4;
  auto group = coord::make_thread_group(n);
  for (int round = 0; round < 20; ++round) {
    std::vector<std::unique_ptr<coord::collective<std::vector<coord::bytes>>>> gathers;
    for (int r = n - 1; r >= 0; --r)  // the root starts last: it finds everything there
      gathers.push_back(group[static_cast<std::size_t>(r)]->start_gather(bytes_of(std::to_string(r + round)), 5s));
    std::vector<std::unique_ptr<coord::collective<coord::bytes>>> casts;
    for (int r = 1; r < n; ++r) casts.push_back(group[static_cast<std::size_t>(r)]->start_broadcast({}, 5s));
    // Non-root ranks wait for the broadcast: nothing yet.
    for (auto& c : casts) CHECK_FALSE(c->poll());
    casts.push_back(group[0]->start_broadcast(bytes_of("r" + std::to_string(round)), 5s));
    for (auto& c : casts) {
      auto got = c->poll();
      REQUIRE(got);
      REQUIRE(*got);
      CHECK(string_of(**got) == "r" + std::to_string(round));
    }
    for (std::size_t i = 0; i < gathers.size(); ++i) {
      auto got = gathers[i]->poll();
      REQUIRE(got);
      REQUIRE(*got);
      if (i + 1 < gathers.size()) {
        CHECK((*got)->empty());
      } else {
        REQUIRE((*got)->size() == n);
        for (int r = 0; r < n; ++r) CHECK(string_of((**got)[static_cast<std::size_t>(r)]) == std::to_string(r + round));
      }
    }
    std::vector<std::unique_ptr<coord::collective<void>>> barriers;
    for (int r = 0; r < n; ++r) {
      for (auto& b : barriers) CHECK_FALSE(b->poll());  // not everyone is in
      barriers.push_back(group[static_cast<std::size_t>(r)]->start_barrier(5s));
    }
    for (auto& b : barriers) {
      auto got = b->poll();
      REQUIRE(got);
      CHECK(*got);
    }
  }
}

TEST_CASE("a polled collective times out by itself, and one given up early drops its round", "[coord][poll][timeout]") {
  auto group = coord::make_thread_group(2);
  // The root's gather, polled until its deadline: rank 1 never comes.
  auto g = group[0]->start_gather(bytes_of("zero"), 30ms);
  CHECK_FALSE(g->poll());
  const auto until = std::chrono::steady_clock::now() + 2s;
  std::optional<result<std::vector<coord::bytes>>> out;
  while (!(out = g->poll()) && std::chrono::steady_clock::now() < until) std::this_thread::sleep_for(coord::poll_delay(5));
  REQUIRE(out);
  REQUIRE_FALSE(*out);
  CHECK(out->error().code == errc::timed_out);
  CHECK_THAT(out->error().what(), Catch::Contains("rank(s) 1"));
  // A broadcast rank 1 gives up on by dropping it; rank 1's late gather lands in the round the
  // root gave up on, and both meet in the next broadcast.
  group[1]->start_broadcast({}, 5s).reset();
  (void)group[1]->gather(bytes_of("one, late"), 1s);
  CHECK(group[0]->broadcast(bytes_of("round 0"), 1s));  // round 0: rank 1 gave it up
  auto later = group[1]->start_broadcast({}, 1s);
  CHECK(group[0]->broadcast(bytes_of("round 1"), 1s));
  auto got = later->poll();
  REQUIRE(got);
  REQUIRE(*got);
  CHECK(string_of(**got) == "round 1");
  CHECK(coord::poll_delay(0) == 20us);
  CHECK(coord::poll_delay(100) == 1000us);
}

TEST_CASE("a thread group's collective wakes its waiter at each contribution; others have no event to wait on", "[coord][event]") {
  auto group = coord::make_thread_group(3);
  auto g = group[0]->start_gather(bytes_of("zero"), 5s);
  std::atomic<int> wakes{0};
  REQUIRE(g->notify([&] { ++wakes; }));
  CHECK_FALSE(g->poll());
  // Rank 1 contributes on another thread: the waiter is woken, its poll still waits for rank 2.
  std::thread([&] { (void)group[1]->start_gather(bytes_of("one"), 5s); }).join();
  CHECK(wakes == 1);
  CHECK_FALSE(g->poll());
  (void)group[2]->start_gather(bytes_of("two"), 5s);
  CHECK(wakes == 2);
  auto out = g->poll();
  REQUIRE(out);
  REQUIRE(*out);
  CHECK(string_of((**out)[2]) == "two");
  // Done: no more wakes from later rounds.
  (void)group[1]->start_gather(bytes_of("next"), 5s);
  CHECK(wakes == 2);
  // A broadcast's waiters are woken by the root's data; a barrier's by each arrival.
  auto b = group[1]->start_broadcast({}, 5s);
  int b_wakes = 0;
  REQUIRE(b->notify([&] { ++b_wakes; }));
  (void)group[0]->start_broadcast(bytes_of("data"), 5s);
  CHECK(b_wakes == 1);
  auto heard = b->poll();
  REQUIRE(heard);
  CHECK(string_of(**heard) == "data");
  // A collective given up takes its wake back: later arrivals call nothing of it.
  auto gone = group[0]->start_barrier(5s);
  int gone_wakes = 0;
  REQUIRE(gone->notify([&] { ++gone_wakes; }));
  gone.reset();
  (void)group[1]->start_barrier(5s);
  (void)group[2]->start_barrier(5s);
  CHECK(gone_wakes == 0);
  // The single-process coordinator's collectives have their outcome at once: nothing to wait on.
  auto single = coord::make_single_process_coordinator();
  CHECK_FALSE(single->start_barrier(1s)->notify([] {}));
}
