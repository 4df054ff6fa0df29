#include "meshckpt/coord/mpi.hpp"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <tuple>

namespace meshckpt::coord {

namespace {

using clock = std::chrono::steady_clock;

// Tags of the four message kinds on the coordinator's private communicator.
enum : int { tag_gather = 1, tag_bcast = 2, tag_barrier_in = 3, tag_barrier_out = 4 };

std::string mpi_error_text(int rc) {
  char buf[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(rc, buf, &len) != MPI_SUCCESS) return "MPI error " + std::to_string(rc);
  return std::string(buf, static_cast<std::size_t>(len));
}

error mpi_error(const char* call, int rc) {
  return make_error(errc::invalid_argument, std::string(call) + " failed: " + mpi_error_text(rc));
}

std::string rank_list(const std::vector<int>& ranks) {
  std::string s;
  for (int r : ranks) s += (s.empty() ? "" : ", ") + std::to_string(r);
  return s;
}

class mpi_coordinator;

// One collective of one rank: `step` looks at the mailbox and the sends under the
// coordinator's lock and returns the outcome once there is one. `rounds` are the (tag, round)
// pairs whose messages it waits for: kept in the mailbox while it lives, dropped after.
template <class T, class Step>
class mpi_collective final : public collective<T> {
 public:
  mpi_collective(mpi_coordinator& c, std::vector<std::pair<int, std::uint64_t>> rounds, clock::time_point deadline, Step step);
  ~mpi_collective() override;
  std::optional<result<T>> poll() override;

 private:
  mpi_coordinator& c_;
  std::vector<std::pair<int, std::uint64_t>> rounds_;
  clock::time_point deadline_;
  Step step_;
  bool done_ = false;
};

class mpi_coordinator final : public coordinator {
 private:
  // Declared first: the collectives below deduce their types from it.
  template <class Step>
  auto make(std::vector<std::pair<int, std::uint64_t>> rounds, clock::time_point deadline, Step step) {
    using T = typename std::invoke_result_t<Step&, bool>::value_type::value_type;
    for (const auto& r : rounds) open_.insert(r);
    return std::unique_ptr<collective<T>>(std::make_unique<mpi_collective<T, Step>>(*this, std::move(rounds), deadline, std::move(step)));
  }

 public:
  mpi_coordinator(MPI_Comm comm, int rank, int size) : comm_(comm), rank_(rank), size_(size) {}
  ~mpi_coordinator() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (finalized) return;
    reap();
    // A send nobody took (its receiver died or gave up): let MPI finish or drop it; its buffer
    // must outlive the request, so it is deliberately leaked.
    for (auto& s : sends_) {
      MPI_Request_free(&s.req);
      new std::vector<std::byte>(std::move(s.buf));
    }
    MPI_Comm_free(&comm_);
  }

  int rank() const noexcept override { return rank_; }
  int size() const noexcept override { return size_; }

  std::unique_ptr<collective<std::vector<bytes>>> start_gather(std::span<const std::byte> mine, milliseconds timeout) override {
    std::lock_guard lk(mu_);
    const auto deadline = clock::now() + timeout;
    const std::uint64_t round = gathers_++;
    if (rank_ != 0) {
      auto id = send(0, tag_gather, round, mine);
      if (!id) return finished<std::vector<bytes>>(id.error());
      return make({}, deadline, [this, id = *id](bool late) -> std::optional<result<std::vector<bytes>>> {
        if (sent({id}).empty()) return std::vector<bytes>{};
        if (late)
          return result<std::vector<bytes>>(make_error(
              errc::timed_out, "gather on rank " + std::to_string(rank_) + " timed out: rank 0 did not take this rank's message"));
        return std::nullopt;
      });
    }
    bytes own(mine.begin(), mine.end());
    return make({{tag_gather, round}}, deadline,
                [this, round, own = std::move(own)](bool late) mutable -> std::optional<result<std::vector<bytes>>> {
                  auto missing = absent(tag_gather, round, 1);
                  if (missing.empty()) {
                    std::vector<bytes> out(static_cast<std::size_t>(size_));
                    out[0] = std::move(own);
                    for (int r = 1; r < size_; ++r) out[static_cast<std::size_t>(r)] = take(tag_gather, r, round);
                    return out;
                  }
                  if (late)
                    return result<std::vector<bytes>>(
                        make_error(errc::timed_out, "gather on rank 0 timed out waiting for rank(s) " + rank_list(missing)));
                  return std::nullopt;
                });
  }

  std::unique_ptr<collective<bytes>> start_broadcast(std::span<const std::byte> data, milliseconds timeout) override {
    std::lock_guard lk(mu_);
    const auto deadline = clock::now() + timeout;
    const std::uint64_t round = broadcasts_++;
    if (rank_ == 0) {
      std::vector<std::uint64_t> ids;
      for (int r = 1; r < size_; ++r) {
        auto id = send(r, tag_bcast, round, data);
        if (!id) return finished<bytes>(id.error());
        ids.push_back(*id);
      }
      bytes own(data.begin(), data.end());
      return make({}, deadline, [this, ids = std::move(ids), own = std::move(own)](bool late) mutable -> std::optional<result<bytes>> {
        auto open = sent(ids);
        if (open.empty()) return std::move(own);
        if (late)
          return result<bytes>(
              make_error(errc::timed_out, "broadcast on rank 0 timed out: rank(s) " + rank_list(open) + " did not take the message"));
        return std::nullopt;
      });
    }
    return make({{tag_bcast, round}}, deadline, [this, round](bool late) -> std::optional<result<bytes>> {
      if (absent(tag_bcast, round, 0, 0).empty()) return take(tag_bcast, 0, round);
      if (late)
        return result<bytes>(
            make_error(errc::timed_out, "broadcast on rank " + std::to_string(rank_) + " timed out waiting for rank(s) 0"));
      return std::nullopt;
    });
  }

  std::unique_ptr<collective<void>> start_barrier(milliseconds timeout) override {
    std::lock_guard lk(mu_);
    const auto deadline = clock::now() + timeout;
    const std::uint64_t round = barriers_++;
    if (rank_ != 0) {
      if (auto id = send(0, tag_barrier_in, round, {}); !id) return finished<void>(id.error());
      return make({{tag_barrier_out, round}}, deadline, [this, round](bool late) -> std::optional<result<void>> {
        if (absent(tag_barrier_out, round, 0, 0).empty()) {
          (void)take(tag_barrier_out, 0, round);
          return success();
        }
        if (late)
          return result<void>(make_error(errc::timed_out, "barrier on rank " + std::to_string(rank_) + " timed out waiting for rank 0"));
        return std::nullopt;
      });
    }
    return make({{tag_barrier_in, round}}, deadline, [this, round](bool late) -> std::optional<result<void>> {
      auto missing = absent(tag_barrier_in, round, 1);
      if (missing.empty()) {
        for (int r = 1; r < size_; ++r) {
          (void)take(tag_barrier_in, r, round);
          if (auto id = send(r, tag_barrier_out, round, {}); !id) return result<void>(id.error());
        }
        return success();
      }
      if (late) return result<void>(make_error(errc::timed_out, "barrier on rank 0 timed out waiting for rank(s) " + rank_list(missing)));
      return std::nullopt;
    });
  }

 private:
  template <class T, class Step>
  friend class mpi_collective;

  struct pending_send {
    std::uint64_t id;
    MPI_Request req;
    std::vector<std::byte> buf;
    int dest;
  };
  using key = std::tuple<int, int, std::uint64_t>;  // tag, source, round

  // Starts a send of [round (8 bytes, little-endian)][payload]; returns its id.
  result<std::uint64_t> send(int dest, int tag, std::uint64_t round, std::span<const std::byte> payload) {
    reap();
    pending_send s{next_id_++, MPI_REQUEST_NULL, std::vector<std::byte>(8 + payload.size()), dest};
    for (int i = 0; i < 8; ++i) s.buf[static_cast<std::size_t>(i)] = static_cast<std::byte>(round >> (8 * i));
    if (!payload.empty()) std::memcpy(s.buf.data() + 8, payload.data(), payload.size());
    if (s.buf.size() > static_cast<std::size_t>(INT32_MAX))
      return make_error(errc::limit_exceeded, "a coordinator message is limited to 2 GiB");
    sends_.push_back(std::move(s));
    auto& b = sends_.back();
    int rc = MPI_Isend(b.buf.data(), static_cast<int>(b.buf.size()), MPI_BYTE, dest, tag, comm_, &b.req);
    if (rc != MPI_SUCCESS) {
      sends_.pop_back();
      return mpi_error("MPI_Isend", rc);
    }
    return b.id;
  }

  // Drops completed sends.
  void reap() {
    for (auto it = sends_.begin(); it != sends_.end();) {
      int done = 0;
      if (MPI_Test(&it->req, &done, MPI_STATUS_IGNORE) != MPI_SUCCESS || done)
        it = sends_.erase(it);
      else
        ++it;
    }
  }

  // The destinations of the sends `ids` not completed yet (empty: all done).
  std::vector<int> sent(const std::vector<std::uint64_t>& ids) const {
    std::vector<int> open;
    for (const auto& s : sends_)
      if (std::find(ids.begin(), ids.end(), s.id) != ids.end()) open.push_back(s.dest);
    return open;
  }

  // Receives every message that has arrived into the mailbox. A message of a round this rank
  // is over with (finished, or given up on after a timeout) is dropped; one of a round still
  // open, or not started here yet (its sender is ahead), is kept.
  result<void> drain() {
    while (true) {
      int flag = 0;
      MPI_Status st;
      int rc = MPI_Iprobe(MPI_ANY_SOURCE, MPI_ANY_TAG, comm_, &flag, &st);
      if (rc != MPI_SUCCESS) return mpi_error("MPI_Iprobe", rc);
      if (!flag) return success();
      int count = 0;
      MPI_Get_count(&st, MPI_BYTE, &count);
      std::vector<std::byte> buf(static_cast<std::size_t>(std::max(count, 0)));
      rc = MPI_Recv(buf.data(), count, MPI_BYTE, st.MPI_SOURCE, st.MPI_TAG, comm_, MPI_STATUS_IGNORE);
      if (rc != MPI_SUCCESS) return mpi_error("MPI_Recv", rc);
      if (buf.size() < 8)
        return make_error(errc::invalid_argument, "a coordinator message from rank " + std::to_string(st.MPI_SOURCE) + " is truncated");
      std::uint64_t r = 0;
      for (int i = 0; i < 8; ++i) r |= std::uint64_t{static_cast<std::uint8_t>(buf[static_cast<std::size_t>(i)])} << (8 * i);
      if (r < started(st.MPI_TAG) && !open_.contains({st.MPI_TAG, r})) continue;
      buf.erase(buf.begin(), buf.begin() + 8);
      mailbox_[key{st.MPI_TAG, st.MPI_SOURCE, r}] = std::move(buf);
    }
  }

  // Rounds of the kind of `tag` this rank has started.
  std::uint64_t started(int tag) const {
    switch (tag) {
      case tag_gather: return gathers_;
      case tag_bcast: return broadcasts_;
      default: return barriers_;
    }
  }

  // The ranks in [from, to] (to < 0: size - 1) whose message of (tag, round) has not arrived.
  std::vector<int> absent(int tag, std::uint64_t round, int from, int to = -1) const {
    std::vector<int> missing;
    for (int r = from; r <= (to < 0 ? size_ - 1 : to); ++r)
      if (!mailbox_.contains(key{tag, r, round})) missing.push_back(r);
    return missing;
  }

  bytes take(int tag, int source, std::uint64_t round) {
    auto node = mailbox_.extract(key{tag, source, round});
    return std::move(node.mapped());
  }

  // A collective is over: later messages of its rounds are dropped, and so is what came.
  void close(const std::vector<std::pair<int, std::uint64_t>>& rounds) {
    for (const auto& [tag, round] : rounds) {
      open_.erase({tag, round});
      std::erase_if(mailbox_, [t = tag, r = round](const auto& m) { return std::get<0>(m.first) == t && std::get<2>(m.first) == r; });
    }
  }

  MPI_Comm comm_;
  int rank_, size_;
  std::mutex mu_;  // the coordinator's MPI calls and state; held only to look and to change
  std::uint64_t gathers_ = 0, broadcasts_ = 0, barriers_ = 0;
  std::uint64_t next_id_ = 0;
  std::deque<pending_send> sends_;
  std::map<key, bytes> mailbox_;
  std::set<std::pair<int, std::uint64_t>> open_;
};

template <class T, class Step>
mpi_collective<T, Step>::mpi_collective(mpi_coordinator& c, std::vector<std::pair<int, std::uint64_t>> rounds, clock::time_point deadline,
                                        Step step)
    : c_(c), rounds_(std::move(rounds)), deadline_(deadline), step_(std::move(step)) {}

template <class T, class Step>
mpi_collective<T, Step>::~mpi_collective() {
  if (done_) return;
  std::lock_guard lk(c_.mu_);
  c_.close(rounds_);
}

template <class T, class Step>
std::optional<result<T>> mpi_collective<T, Step>::poll() {
  std::lock_guard lk(c_.mu_);
  c_.reap();
  std::optional<result<T>> out;
  if (auto d = c_.drain(); !d)
    out.emplace(d.error());
  else
    out = step_(clock::now() >= deadline_);
  if (out) {
    done_ = true;
    c_.close(rounds_);
  }
  return out;
}

}  // namespace

result<std::unique_ptr<coordinator>> make_mpi_coordinator(MPI_Comm comm) {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (!initialized || finalized) return make_error(errc::unsupported, "MPI is not initialized (call MPI_Init_thread first)");
  int level = 0;
  MPI_Query_thread(&level);
  if (level < MPI_THREAD_SERIALIZED)
    return make_error(errc::unsupported,
                      "MPI was initialized with a thread level below MPI_THREAD_SERIALIZED; a save calls the "
                      "coordinator from the library's engine thread: use MPI_Init_thread(..., MPI_THREAD_MULTIPLE, ...)");
  MPI_Comm dup;
  int rc = MPI_Comm_dup(comm, &dup);
  if (rc != MPI_SUCCESS) return mpi_error("MPI_Comm_dup", rc);
  MPI_Comm_set_errhandler(dup, MPI_ERRORS_RETURN);  // errors become results, not aborts
  int rank = 0, size = 0;
  MPI_Comm_rank(dup, &rank);
  MPI_Comm_size(dup, &size);
  return std::unique_ptr<coordinator>(std::make_unique<mpi_coordinator>(dup, rank, size));
}

}  // namespace meshckpt::coord
