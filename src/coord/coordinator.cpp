#include "meshckpt/coord/coordinator.hpp"

#include <algorithm>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <thread>

namespace meshckpt::coord {

std::chrono::microseconds poll_delay(int attempt) noexcept {
  return std::min(std::chrono::microseconds(20 << std::clamp(attempt, 0, 6)), std::chrono::microseconds(1000));
}

namespace {

class single_process final : public coordinator {
 public:
  int rank() const noexcept override { return 0; }
  int size() const noexcept override { return 1; }
  std::unique_ptr<collective<std::vector<bytes>>> start_gather(std::span<const std::byte> mine, milliseconds) override {
    return finished<std::vector<bytes>>(std::vector<bytes>{{mine.begin(), mine.end()}});
  }
  std::unique_ptr<collective<bytes>> start_broadcast(std::span<const std::byte> data, milliseconds) override {
    return finished<bytes>(bytes(data.begin(), data.end()));
  }
  std::unique_ptr<collective<void>> start_barrier(milliseconds) override { return finished<void>(success()); }
};

using clock = std::chrono::steady_clock;

// Shared state of a thread group: one entry per (collective, round).
struct group {
  explicit group(int n) : size(n) {}
  const int size;
  std::mutex mu;  // held only to look and to change, never across a wait
  struct round {
    std::vector<std::optional<bytes>> parts;  // gather: per rank; broadcast: [0]
    int arrived = 0;                          // barrier
    int left = 0;                             // ranks done with it: it goes when all are
    // The waiting ranks' wakes (collective::notify), by waiter. Called under `mu` at each
    // contribution, and erased under it when their waiter has its outcome or goes: no copy of
    // one escapes the lock, so none is called after its waiter has gone.
    std::map<const void*, std::function<void()>> waiters;
  };
  enum kind : int { gather = 0, broadcast = 1, barrier = 2 };
  // (kind, round number). A round some rank gave up on stays, so a late rank's contribution
  // lands in it (and is ignored) instead of in the next round.
  std::map<std::pair<int, std::uint64_t>, round> rounds;

  round& entry(std::pair<int, std::uint64_t> key) {
    auto& r = rounds[key];
    if (r.parts.empty()) r.parts.resize(static_cast<std::size_t>(size));
    return r;
  }
  // Rank done with a round; the last one removes it.
  void leave(std::pair<int, std::uint64_t> key) {
    auto it = rounds.find(key);
    if (it != rounds.end() && ++it->second.left == size) rounds.erase(it);
  }
};

// One rank's collective of one round; `step` looks at the round under the lock and returns the
// outcome once there is one.
template <class T, class Step>
class group_collective final : public collective<T> {
 public:
  group_collective(std::shared_ptr<group> g, std::pair<int, std::uint64_t> key, clock::time_point deadline, Step step)
      : g_(std::move(g)), key_(key), deadline_(deadline), step_(std::move(step)) {}
  ~group_collective() override {
    std::lock_guard lk(g_->mu);
    if (auto it = g_->rounds.find(key_); it != g_->rounds.end()) it->second.waiters.erase(this);
    if (!done_) g_->leave(key_);
  }
  bool notify(std::function<void()> wake) override {
    std::lock_guard lk(g_->mu);
    g_->entry(key_).waiters[this] = std::move(wake);
    return true;
  }
  std::optional<result<T>> poll() override {
    std::lock_guard lk(g_->mu);
    auto out = step_(g_->entry(key_), clock::now() >= deadline_);
    if (out) {
      done_ = true;
      g_->entry(key_).waiters.erase(this);
      g_->leave(key_);
    }
    return out;
  }

 private:
  std::shared_ptr<group> g_;
  std::pair<int, std::uint64_t> key_;
  clock::time_point deadline_;
  Step step_;
  bool done_ = false;
};

class thread_rank final : public coordinator {
 private:
  // Declared first: the collectives below deduce their types from it.
  template <class Step>
  auto make(std::pair<int, std::uint64_t> key, milliseconds timeout, Step step) {
    using T = typename std::invoke_result_t<Step, group::round&, bool>::value_type::value_type;
    return std::unique_ptr<collective<T>>(std::make_unique<group_collective<T, Step>>(g_, key, clock::now() + timeout, std::move(step)));
  }

 public:
  thread_rank(std::shared_ptr<group> g, int r) : g_(std::move(g)), rank_(r) {}
  int rank() const noexcept override { return rank_; }
  int size() const noexcept override { return g_->size; }

  std::unique_ptr<collective<std::vector<bytes>>> start_gather(std::span<const std::byte> mine, milliseconds timeout) override {
    auto key = std::pair<int, std::uint64_t>(group::gather, gathers_++);
    contribute(key, [&](group::round& r) { r.parts[static_cast<std::size_t>(rank_)] = bytes(mine.begin(), mine.end()); });
    if (rank_ != 0) {
      std::lock_guard lk(g_->mu);
      g_->leave(key);
      return finished<std::vector<bytes>>(std::vector<bytes>{});
    }
    return make(key, timeout, [this](group::round& r, bool late) -> std::optional<result<std::vector<bytes>>> {
      if (std::all_of(r.parts.begin(), r.parts.end(), [](const auto& p) { return p.has_value(); })) {
        std::vector<bytes> out;
        for (auto& p : r.parts) out.push_back(std::move(*p));
        return out;
      }
      if (late) return result<std::vector<bytes>>(timed_out("gather", missing(r)));
      return std::nullopt;
    });
  }

  std::unique_ptr<collective<bytes>> start_broadcast(std::span<const std::byte> data, milliseconds timeout) override {
    auto key = std::pair<int, std::uint64_t>(group::broadcast, broadcasts_++);
    if (rank_ == 0) {
      contribute(key, [&](group::round& r) { r.parts[0] = bytes(data.begin(), data.end()); });
      std::lock_guard lk(g_->mu);
      g_->leave(key);
      return finished<bytes>(bytes(data.begin(), data.end()));
    }
    return make(key, timeout, [this](group::round& r, bool late) -> std::optional<result<bytes>> {
      if (r.parts[0]) return *r.parts[0];
      if (late) return result<bytes>(timed_out("broadcast", " waiting for rank(s) 0"));
      return std::nullopt;
    });
  }

  std::unique_ptr<collective<void>> start_barrier(milliseconds timeout) override {
    auto key = std::pair<int, std::uint64_t>(group::barrier, barriers_++);
    contribute(key, [](group::round& r) { ++r.arrived; });
    return make(key, timeout, [this](group::round& r, bool late) -> std::optional<result<void>> {
      if (r.arrived >= g_->size) return success();
      if (late) return result<void>(timed_out("barrier", ""));
      return std::nullopt;
    });
  }

 private:
  // Changes round `key` and wakes its waiters, both under the lock (group::round::waiters).
  template <class Change>
  void contribute(std::pair<int, std::uint64_t> key, Change change) {
    std::lock_guard lk(g_->mu);
    auto& r = g_->entry(key);
    change(r);
    for (const auto& [who, wake] : r.waiters) wake();
  }

  static std::string missing(const group::round& r) {
    std::string m;
    for (std::size_t i = 0; i < r.parts.size(); ++i)
      if (!r.parts[i]) m += (m.empty() ? "" : ", ") + std::to_string(i);
    return m.empty() ? m : " waiting for rank(s) " + m;
  }
  error timed_out(const char* what, const std::string& waiting_for) const {
    return make_error(errc::timed_out, std::string(what) + " on rank " + std::to_string(rank_) + " timed out" + waiting_for);
  }

  std::shared_ptr<group> g_;
  int rank_;
  std::uint64_t gathers_ = 0, broadcasts_ = 0, barriers_ = 0;
};

}  // namespace

std::unique_ptr<coordinator> make_single_process_coordinator() { return std::make_unique<single_process>(); }

std::vector<std::unique_ptr<coordinator>> make_thread_group(int n) {
  auto g = std::make_shared<group>(n);
  std::vector<std::unique_ptr<coordinator>> out;
  for (int r = 0; r < n; ++r) out.push_back(std::make_unique<thread_rank>(g, r));
  return out;
}

}  // namespace meshckpt::coord
