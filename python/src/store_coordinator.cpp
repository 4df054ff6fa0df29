// A coordinator over torch.distributed's key-value store (the TCPStore that
// init_process_group sets up for gloo or NCCL): a job started by torchrun needs no MPI.
//
// Why the store and not gloo's collectives: a coordinator's rounds must survive a rank that is
// late or dead (coord/coordinator.hpp). A collective of a process group cannot be given up —
// a rank that timed out would leave it pending and every later collective would pair with the
// wrong round — whereas a store key belongs to the round its name carries: a late rank's key
// lands in a round nobody reads any more, and both sides meet again at the next one. Each
// collective is a set of keys `PREFIX/KIND/ROUND/RANK` and a counter `PREFIX/KIND/ROUND/n`
// that each rank adds 1 to once its key is set; a poll reads the counter with `add(key, 0)`,
// which never blocks (torch 1.13's Store has no `check`). The root deletes a gather's keys
// once read.
//
// The store is a Python object: every call takes the GIL through a python_section (a library
// thread polls it); once the interpreter is exiting, a collective fails instead.

#include <chrono>
#include <string>
#include <vector>

#include "bindings.hpp"
#include "meshckpt/coord/coordinator.hpp"

namespace meshckpt::python {

namespace {

using clock = std::chrono::steady_clock;

class store_coordinator final : public coord::coordinator, public std::enable_shared_from_this<store_coordinator> {
 public:
  store_coordinator(py::object store, int rank, int size, std::string prefix)
      : store_(std::make_shared<py_refs>()), handle_(store), rank_(rank), size_(size), prefix_(std::move(prefix)) {
    store_->add(std::move(store));
  }

  int rank() const noexcept override { return rank_; }
  int size() const noexcept override { return size_; }

  std::unique_ptr<coord::collective<std::vector<coord::bytes>>> start_gather(std::span<const std::byte> mine,
                                                                             coord::milliseconds timeout) override {
    const std::string round = prefix_ + "/g/" + std::to_string(gathers_++) + "/";
    if (auto r = arrive(round, mine); !r) return coord::finished<std::vector<coord::bytes>>(r.error());
    if (rank_ != 0) return coord::finished<std::vector<coord::bytes>>(std::vector<coord::bytes>{});
    return std::make_unique<waiting<std::vector<coord::bytes>>>(*this, round, keys(round), clock::now() + timeout, "gather", true);
  }

  std::unique_ptr<coord::collective<coord::bytes>> start_broadcast(std::span<const std::byte> data, coord::milliseconds timeout) override {
    const std::string round = prefix_ + "/b/" + std::to_string(broadcasts_++) + "/";
    if (rank_ == 0) {
      if (auto r = arrive(round, data); !r) return coord::finished<coord::bytes>(r.error());
      return coord::finished<coord::bytes>(coord::bytes(data.begin(), data.end()));
    }
    return std::make_unique<waiting<coord::bytes>>(*this, round, std::vector<std::string>{round + "0"}, clock::now() + timeout, "broadcast",
                                                   false);
  }

  std::unique_ptr<coord::collective<void>> start_barrier(coord::milliseconds timeout) override {
    const std::string round = prefix_ + "/r/" + std::to_string(barriers_++) + "/";
    if (auto r = arrive(round, {}); !r) return coord::finished<void>(r.error());
    return std::make_unique<waiting<void>>(*this, round, keys(round), clock::now() + timeout, "barrier", false);
  }

 private:
  std::shared_ptr<py_refs> store_;  // released with the GIL, whichever thread drops it last
  py::handle handle_;
  int rank_, size_;
  std::string prefix_;
  std::uint64_t gathers_ = 0, broadcasts_ = 0, barriers_ = 0;

  std::vector<std::string> keys(const std::string& round) const {
    std::vector<std::string> k;
    for (int r = 0; r < size_; ++r) k.push_back(round + std::to_string(r));
    return k;
  }

  static error python_error(const std::string& what) { return make_error(errc::unsupported, "torch.distributed store: " + what); }

  // This rank's part of a round: its key, then the round's counter.
  result<void> arrive(const std::string& round, std::span<const std::byte> value) {
    python_section py;
    if (!py.ok()) return python_error("the interpreter is exiting");
    try {
      handle_.attr("set")(round + std::to_string(rank_), py::bytes(reinterpret_cast<const char*>(value.data()), value.size()));
      handle_.attr("add")(round + "n", 1);
      return success();
    } catch (py::error_already_set& e) {
      return python_error("set " + round + ": " + e.what());
    }
  }

  // The keys' values once `expected` ranks arrived in the round (fetched when `fetch`); none
  // before. With `missing`, names the ranks whose key is not there yet.
  result<std::optional<std::vector<coord::bytes>>> try_get(const std::string& round, const std::vector<std::string>& keys,
                                                           std::int64_t expected, bool fetch, bool remove, std::string* missing) {
    python_section py;
    if (!py.ok()) return python_error("the interpreter is exiting");
    try {
      if (handle_.attr("add")(round + "n", 0).cast<std::int64_t>() < expected) {
        if (missing) {
          const auto brief = py::module_::import("datetime").attr("timedelta")(py::arg("milliseconds") = 1);
          for (const auto& k : keys) {
            try {
              handle_.attr("wait")(std::vector<std::string>{k}, brief);
            } catch (py::error_already_set&) {
              *missing += (missing->empty() ? "" : ", ") + k.substr(k.rfind('/') + 1);
            }
          }
        }
        return std::optional<std::vector<coord::bytes>>{};
      }
      std::vector<coord::bytes> out;
      if (fetch)
        for (const auto& k : keys) {
          std::string v = handle_.attr("get")(k).cast<std::string>();
          const auto* p = reinterpret_cast<const std::byte*>(v.data());
          out.emplace_back(p, p + v.size());
          if (remove) handle_.attr("delete_key")(k);
        }
      return std::optional<std::vector<coord::bytes>>(std::move(out));
    } catch (py::error_already_set& e) {
      return python_error(std::string("poll of ") + round + ": " + e.what());
    }
  }

  template <class T>
  class waiting final : public coord::collective<T> {
   public:
    waiting(store_coordinator& c, std::string round, std::vector<std::string> keys, clock::time_point deadline, const char* what,
            bool remove)
        : c_(c.shared_from_this()), round_(std::move(round)), keys_(std::move(keys)), deadline_(deadline), what_(what), remove_(remove) {}

    std::optional<result<T>> poll() override {
      const bool late = clock::now() >= deadline_;
      std::string missing;
      auto got =
          c_->try_get(round_, keys_, static_cast<std::int64_t>(keys_.size()), !std::is_void_v<T>, remove_, late ? &missing : nullptr);
      if (!got) return result<T>(got.error());
      if (*got) {
        if constexpr (std::is_void_v<T>)
          return result<T>(success());
        else if constexpr (std::is_same_v<T, coord::bytes>)
          return result<T>(std::move((**got)[0]));
        else
          return result<T>(std::move(**got));
      }
      if (!late) return std::nullopt;
      return result<T>(make_error(errc::timed_out, std::string("torch.distributed store ") + what_ + ": no word from rank(s) " + missing +
                                                       " of " + std::to_string(c_->size_) + " in time"));
    }

   private:
    std::shared_ptr<store_coordinator> c_;
    std::string round_;
    std::vector<std::string> keys_;
    clock::time_point deadline_;
    const char* what_;
    bool remove_;
  };
};

}  // namespace

void bind_store_coordinator(py::module_& m) {
  m.def(
      "store_coordinator",
      [](py::object store, int rank, int size, std::string prefix) -> std::shared_ptr<coord::coordinator> {
        if (size < 1 || rank < 0 || rank >= size)
          throw error_exception{
              make_error(errc::invalid_argument, "store_coordinator: rank " + std::to_string(rank) + " of " + std::to_string(size))};
        for (const char* f : {"set", "get", "add", "wait", "delete_key"})
          if (!py::hasattr(store, f))
            throw error_exception{make_error(errc::invalid_argument, std::string("store_coordinator: the store has no ") + f + "()")};
        return std::make_shared<store_coordinator>(std::move(store), rank, size, std::move(prefix));
      },
      py::arg("store"), py::arg("rank"), py::arg("size"), py::arg("prefix"),
      "A coordinator over a torch.distributed Store (set/get/add/wait/delete_key): every rank creates it with the same prefix.");
}

}  // namespace meshckpt::python
