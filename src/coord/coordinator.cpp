#include "meshckpt/coord/coordinator.hpp"

#include <condition_variable>
#include <map>
#include <mutex>
#include <optional>
#include <string>

namespace meshckpt::coord {

namespace {

class single_process final : public coordinator {
 public:
  int rank() const noexcept override { return 0; }
  int size() const noexcept override { return 1; }
  result<std::vector<std::vector<std::byte>>> gather(std::span<const std::byte> mine, milliseconds) override {
    return std::vector<std::vector<std::byte>>{{mine.begin(), mine.end()}};
  }
  result<std::vector<std::byte>> broadcast(std::span<const std::byte> data, milliseconds) override {
    return std::vector<std::byte>(data.begin(), data.end());
  }
  result<void> barrier(milliseconds) override { return success(); }
};

// Shared state of a thread group: one entry per (collective, round).
struct group {
  explicit group(int n) : size(n) {}
  const int size;
  std::mutex mu;
  std::condition_variable cv;
  struct round {
    std::vector<std::optional<std::vector<std::byte>>> parts;  // gather: per rank; broadcast: [0]
    int arrived = 0;                                          // barrier, broadcast
    int left = 0;                                             // barrier: ranks that saw it complete
  };
  // (kind, round number). A round some rank gave up on stays, so a late rank's contribution
  // lands in it (and is ignored) instead of in the next round.
  std::map<std::pair<int, std::uint64_t>, round> rounds;
};

class thread_rank final : public coordinator {
 public:
  thread_rank(std::shared_ptr<group> g, int r) : g_(std::move(g)), rank_(r) {}
  int rank() const noexcept override { return rank_; }
  int size() const noexcept override { return g_->size; }

  result<std::vector<std::vector<std::byte>>> gather(std::span<const std::byte> mine, milliseconds timeout) override {
    std::unique_lock lk(g_->mu);
    auto& r = entry(0, gathers_++);
    r.parts[static_cast<std::size_t>(rank_)] = std::vector<std::byte>(mine.begin(), mine.end());
    g_->cv.notify_all();
    if (rank_ != 0) return std::vector<std::vector<std::byte>>{};
    auto key = std::pair(0, gathers_ - 1);
    bool all = g_->cv.wait_for(lk, timeout, [&] {
      auto& rr = g_->rounds[key];
      for (const auto& p : rr.parts)
        if (!p) return false;
      return true;
    });
    if (!all) return fail(lk, "gather", g_->rounds[key]);
    std::vector<std::vector<std::byte>> out;
    for (auto& p : g_->rounds[key].parts) out.push_back(std::move(*p));
    g_->rounds.erase(key);
    return out;
  }

  result<std::vector<std::byte>> broadcast(std::span<const std::byte> data, milliseconds timeout) override {
    std::unique_lock lk(g_->mu);
    auto key = std::pair(1, broadcasts_++);
    auto& r = entry(1, key.second);
    if (rank_ == 0) {
      r.parts[0] = std::vector<std::byte>(data.begin(), data.end());
      ++r.arrived;
      g_->cv.notify_all();
      return *r.parts[0];
    }
    bool got = g_->cv.wait_for(lk, timeout, [&] { return g_->rounds[key].parts[0].has_value(); });
    if (!got) return fail(lk, "broadcast", g_->rounds[key]);
    auto& rr = g_->rounds[key];
    auto out = *rr.parts[0];
    if (++rr.arrived == g_->size) g_->rounds.erase(key);
    return out;
  }

  result<void> barrier(milliseconds timeout) override {
    std::unique_lock lk(g_->mu);
    auto key = std::pair(2, barriers_++);
    ++entry(2, key.second).arrived;
    g_->cv.notify_all();
    bool all = g_->cv.wait_for(lk, timeout, [&] { return g_->rounds[key].arrived >= g_->size; });
    if (!all) return fail(lk, "barrier", g_->rounds[key]);
    if (++g_->rounds[key].left == g_->size) g_->rounds.erase(key);
    return success();
  }

 private:
  group::round& entry(int kind, std::uint64_t round) {
    auto& r = g_->rounds[{kind, round}];
    if (r.parts.empty()) r.parts.resize(static_cast<std::size_t>(g_->size));
    return r;
  }
  error fail(std::unique_lock<std::mutex>&, const char* what, const group::round& r) const {
    std::string missing;
    for (std::size_t i = 0; i < r.parts.size(); ++i)
      if (!r.parts[i] && (std::string(what) != "broadcast" || i == 0)) missing += (missing.empty() ? "" : ", ") + std::to_string(i);
    return make_error(errc::timed_out, std::string(what) + " on rank " + std::to_string(rank_) + " timed out" +
                                           (missing.empty() || std::string(what) == "barrier" ? std::string() : " waiting for rank(s) " + missing));
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
