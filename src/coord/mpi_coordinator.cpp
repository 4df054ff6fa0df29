#include "meshckpt/coord/mpi.hpp"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <deque>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

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

// Polling backs off from 20 us to 1 ms: latency stays low for the common quick answer, and a
// long wait (process 0 waiting for every data write) does not burn a core.
class backoff {
 public:
  void pause() {
    std::this_thread::sleep_for(delay_);
    delay_ = std::min(delay_ * 2, std::chrono::microseconds(1000));
  }

 private:
  std::chrono::microseconds delay_{20};
};

class mpi_coordinator final : public coordinator {
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

  result<std::vector<std::vector<std::byte>>> gather(std::span<const std::byte> mine, milliseconds timeout) override {
    std::lock_guard lk(mu_);
    const auto deadline = clock::now() + timeout;
    const std::uint64_t round = gathers_++;
    if (rank_ != 0) {
      BOOST_OUTCOME_TRY(auto id, send(0, tag_gather, round, mine));
      if (!wait_sent({id}, deadline).empty())
        return make_error(errc::timed_out, "gather on rank " + std::to_string(rank_) + " timed out: rank 0 did not take this rank's message");
      return std::vector<std::vector<std::byte>>{};
    }
    std::vector<std::vector<std::byte>> out(static_cast<std::size_t>(size_));
    out[0].assign(mine.begin(), mine.end());
    std::vector<int> missing;
    for (int r = 1; r < size_; ++r) missing.push_back(r);
    BOOST_OUTCOME_TRY(receive_all(missing, tag_gather, round, deadline, &out));
    if (!missing.empty())
      return make_error(errc::timed_out, "gather on rank 0 timed out waiting for rank(s) " + rank_list(missing));
    return out;
  }

  result<std::vector<std::byte>> broadcast(std::span<const std::byte> data, milliseconds timeout) override {
    std::lock_guard lk(mu_);
    const auto deadline = clock::now() + timeout;
    const std::uint64_t round = broadcasts_++;
    if (rank_ == 0) {
      std::vector<std::uint64_t> ids;
      for (int r = 1; r < size_; ++r) {
        BOOST_OUTCOME_TRY(auto id, send(r, tag_bcast, round, data));
        ids.push_back(id);
      }
      if (auto late = wait_sent(ids, deadline); !late.empty())
        return make_error(errc::timed_out, "broadcast on rank 0 timed out: rank(s) " + rank_list(late) + " did not take the message");
      return std::vector<std::byte>(data.begin(), data.end());
    }
    std::vector<int> missing{0};
    std::vector<std::vector<std::byte>> got(1);
    BOOST_OUTCOME_TRY(receive_all(missing, tag_bcast, round, deadline, &got, true));
    if (!missing.empty())
      return make_error(errc::timed_out, "broadcast on rank " + std::to_string(rank_) + " timed out waiting for rank(s) 0");
    return std::move(got[0]);
  }

  result<void> barrier(milliseconds timeout) override {
    std::lock_guard lk(mu_);
    const auto deadline = clock::now() + timeout;
    const std::uint64_t round = barriers_++;
    if (rank_ != 0) {
      BOOST_OUTCOME_TRY(send(0, tag_barrier_in, round, {}));
      std::vector<int> missing{0};
      std::vector<std::vector<std::byte>> got(1);
      BOOST_OUTCOME_TRY(receive_all(missing, tag_barrier_out, round, deadline, &got, true));
      if (!missing.empty()) return make_error(errc::timed_out, "barrier on rank " + std::to_string(rank_) + " timed out waiting for rank 0");
      return success();
    }
    std::vector<int> missing;
    for (int r = 1; r < size_; ++r) missing.push_back(r);
    BOOST_OUTCOME_TRY(receive_all(missing, tag_barrier_in, round, deadline, nullptr));
    if (!missing.empty()) return make_error(errc::timed_out, "barrier on rank 0 timed out waiting for rank(s) " + rank_list(missing));
    for (int r = 1; r < size_; ++r) {
      BOOST_OUTCOME_TRY(send(r, tag_barrier_out, round, {}));
    }
    return success();
  }

 private:
  struct pending_send {
    std::uint64_t id;
    MPI_Request req;
    std::vector<std::byte> buf;
    int dest;
  };

  // Starts a send of [round (8 bytes, little-endian)][payload]; returns its id.
  result<std::uint64_t> send(int dest, int tag, std::uint64_t round, std::span<const std::byte> payload) {
    reap();
    pending_send s{next_id_++, MPI_REQUEST_NULL, std::vector<std::byte>(8 + payload.size()), dest};
    for (int i = 0; i < 8; ++i) s.buf[static_cast<std::size_t>(i)] = static_cast<std::byte>(round >> (8 * i));
    if (!payload.empty()) std::memcpy(s.buf.data() + 8, payload.data(), payload.size());
    if (s.buf.size() > static_cast<std::size_t>(INT32_MAX)) return make_error(errc::limit_exceeded, "a coordinator message is limited to 2 GiB");
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
      if (MPI_Test(&it->req, &done, MPI_STATUS_IGNORE) != MPI_SUCCESS || done) it = sends_.erase(it);
      else ++it;
    }
  }

  // Waits until the sends `ids` completed; returns the ranks still not served at the deadline
  // (empty: all done).
  std::vector<int> wait_sent(const std::vector<std::uint64_t>& ids, clock::time_point deadline) {
    backoff b;
    while (true) {
      reap();
      std::vector<int> open;
      for (const auto& s : sends_)
        if (std::find(ids.begin(), ids.end(), s.id) != ids.end()) open.push_back(s.dest);
      if (open.empty()) return open;
      if (clock::now() >= deadline) return open;
      b.pause();
    }
  }

  // Receives this round's message of kind `tag` from every rank in `from` (removing each from
  // it) until the deadline; `out[r]` (or out[0] when `single`) gets rank r's payload. Messages
  // of earlier rounds (given up on) are dropped.
  result<void> receive_all(std::vector<int>& from, int tag, std::uint64_t round, clock::time_point deadline,
                           std::vector<std::vector<std::byte>>* out, bool single = false) {
    backoff b;
    while (!from.empty()) {
      bool progress = false;
      for (auto it = from.begin(); it != from.end();) {
        int flag = 0;
        MPI_Status st;
        int rc = MPI_Iprobe(*it, tag, comm_, &flag, &st);
        if (rc != MPI_SUCCESS) return mpi_error("MPI_Iprobe", rc);
        if (!flag) {
          ++it;
          continue;
        }
        int count = 0;
        MPI_Get_count(&st, MPI_BYTE, &count);
        std::vector<std::byte> buf(static_cast<std::size_t>(std::max(count, 0)));
        rc = MPI_Recv(buf.data(), count, MPI_BYTE, *it, tag, comm_, MPI_STATUS_IGNORE);
        if (rc != MPI_SUCCESS) return mpi_error("MPI_Recv", rc);
        progress = true;
        if (buf.size() < 8) return make_error(errc::invalid_argument, "a coordinator message from rank " + std::to_string(*it) + " is truncated");
        std::uint64_t r = 0;
        for (int i = 0; i < 8; ++i) r |= std::uint64_t{static_cast<std::uint8_t>(buf[static_cast<std::size_t>(i)])} << (8 * i);
        if (r < round) continue;  // a round this rank gave up on: drop, probe again
        if (r > round)
          return make_error(errc::invalid_argument, "rank " + std::to_string(*it) + " is in round " + std::to_string(r) + ", this rank in " +
                                                        std::to_string(round) + ": collectives were called in different orders");
        if (out) (*out)[single ? 0 : static_cast<std::size_t>(*it)].assign(buf.begin() + 8, buf.end());
        it = from.erase(it);
      }
      if (from.empty()) break;
      if (clock::now() >= deadline) break;
      if (!progress) b.pause();
    }
    return success();
  }

  MPI_Comm comm_;
  int rank_, size_;
  std::mutex mu_;
  std::uint64_t gathers_ = 0, broadcasts_ = 0, barriers_ = 0;
  std::uint64_t next_id_ = 0;
  std::deque<pending_send> sends_;
};

}  // namespace

result<std::unique_ptr<coordinator>> make_mpi_coordinator(MPI_Comm comm) {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (!initialized || finalized) return make_error(errc::unsupported, "MPI is not initialized (call MPI_Init_thread first)");
  int level = 0;
  MPI_Query_thread(&level);
  if (level < MPI_THREAD_SERIALIZED)
    return make_error(errc::unsupported, "MPI was initialized with a thread level below MPI_THREAD_SERIALIZED; a save calls the "
                                         "coordinator from a thread of its own: use MPI_Init_thread(..., MPI_THREAD_MULTIPLE, ...)");
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
