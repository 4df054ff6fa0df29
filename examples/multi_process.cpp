// meshckpt multi_process: one checkpoint written by several MPI processes, then restored by
// fewer processes in other layouts.
//
//   mpirun -np 4 build/bin/multi_process --dir DIR          save from 4 ranks, restore onto 2 and 1
//   mpirun -np 2 build/bin/multi_process --dir DIR --restore-only     restore an existing one onto 2
//
// The state lives on an 8-device mesh x=2,y=4; with N processes (N divides 8) process r holds
// devices [8r/N, 8(r+1)/N). Every process writes the slices its devices own to its own data
// file; process 0 commits the manifest once every process reported success. The restores use
// a mesh x=4,y=2 and other layouts (sharded <-> replicated, other mesh dimensions, uneven
// splits): each restoring process reads only what its devices need, and checks every value
// against the deterministic generator. Exit status 0 only when every value on every process
// matched. DIR must be visible to every process (a shared filesystem when they run on several
// hosts).

#include <mpi.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <deque>
#include <string>
#include <vector>

#include "meshckpt/pipeline/tensor_io.hpp"
#include "meshckpt/backends/uring.hpp"
#include "meshckpt/coord/mpi.hpp"
#include "meshckpt/format/checksum.hpp"

using namespace meshckpt;
using namespace std::chrono_literals;

namespace {

constexpr int mesh_devices = 8;

struct spec {
  std::string key;
  dtype type;
  shape global;
  std::vector<std::string> saved, restored;  // layouts on x=2,y=4 and on x=4,y=2
};

std::vector<spec> specs() {
  std::vector<spec> s = {
      {"model/dense/kernel", dtype::float32, {256, 128}, {"x", "y"}, {"y", "x"}},
      {"model/dense/bias", dtype::float32, {128}, {"y"}, {"unsharded"}},
      {"model/embedding", dtype::bfloat16, {1000, 64}, {"y", "unsharded"}, {"unsharded", "x"}},
      {"model/head", dtype::float32, {131, 6}, {"x", "unsharded"}, {"x", "unsharded"}},  // uneven: 66 + 65 rows, then 33+33+33+32
      {"optimizer/step", dtype::int64, {}, {}, {}},
  };
  for (int i = 0; i < 16; ++i) s.push_back({"optimizer/m/" + std::to_string(i), dtype::float32, {64}, {"unsharded"}, {"y"}});
  return s;
}

// Element `flat` of tensor `key`: a function of both only, so every process (and every replica)
// agrees, and a restore can be checked against a regenerated value.
std::uint64_t element(const std::string& key, std::int64_t flat) {
  std::uint64_t x =
      format::checksum(std::as_bytes(std::span(key.data(), key.size()))) ^ (static_cast<std::uint64_t>(flat) * 0x9E3779B97F4A7C15ull);
  x ^= x >> 31;
  x *= 0xBF58476D1CE4E5B9ull;
  return x ^ (x >> 29);
}

// Calls f(global flat index, local flat index) over the shard of `v` on `device`.
template <class F>
void for_each(const dtensor_view& v, std::int64_t device, F f) {
  auto b = v.layout().shard_box(v.global_shape(), device).value();
  if (b.empty()) return;
  std::vector<std::int64_t> idx(b.rank(), 0);
  const std::int64_t n = *b.volume();
  for (std::int64_t local = 0; local < n; ++local) {
    std::int64_t flat = 0;
    for (std::size_t d = 0; d < b.rank(); ++d) flat = flat * v.global_shape()[d] + b.origin[d] + idx[d];
    f(flat, local);
    for (std::size_t d = b.rank(); d-- > 0;) {
      if (++idx[d] < b.extent[d]) break;
      idx[d] = 0;
    }
  }
}

struct state {
  std::deque<dtensor> keep;
  std::vector<named_tensor> tensors;
};

// The state on `dims` for devices [first, first + count), in the saved or restored layouts;
// filled with the generator's values when `fill`.
state make_state(std::vector<mesh_dim> dims, std::int64_t first, std::int64_t count, bool restored, bool fill) {
  std::vector<std::int64_t> local;
  for (std::int64_t d = first; d < first + count; ++d) local.push_back(d);
  auto m = mesh::create(std::move(dims), {}, local).value();
  state s;
  for (const auto& sp : specs()) {
    auto l = layout::create(restored ? sp.restored : sp.saved, m).value();
    s.keep.push_back(dtensor::create(sp.type, sp.global, l).value());
    auto v = s.keep.back().view();
    if (fill) {
      auto es = static_cast<std::size_t>(dtype_size(sp.type));
      for (const auto& sh : v.shards())
        for_each(v, sh.device, [&](std::int64_t flat, std::int64_t i) {
          std::uint64_t bits = element(sp.key, flat);
          std::memcpy(sh.data.data() + static_cast<std::size_t>(i) * es, &bits, es);
        });
    }
    s.tensors.push_back({sp.key, v});
  }
  return s;
}

std::uint64_t mismatches(const state& s) {
  std::uint64_t bad = 0;
  for (const auto& nt : s.tensors) {
    auto es = static_cast<std::size_t>(dtype_size(nt.tensor.type()));
    for (const auto& sh : nt.tensor.shards())
      for_each(nt.tensor, sh.device, [&](std::int64_t flat, std::int64_t i) {
        std::uint64_t bits = element(nt.key, flat);
        if (std::memcmp(sh.data.data() + static_cast<std::size_t>(i) * es, &bits, es) != 0) ++bad;
      });
  }
  return bad;
}

double ms_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t).count();
}

// Restores the checkpoint on `group` processes (ranks 0..group-1 take part) over x=4,y=2 in the
// restored layouts; returns this process's mismatch count (0 when it did not take part), or
// fails.
result<std::uint64_t> restore_on(io::backend& b, const std::string& prefix, int rank, int group) {
  if (rank >= group) return std::uint64_t{0};
  const std::int64_t per = mesh_devices / group;
  auto s = make_state({{"x", 4}, {"y", 2}}, rank * per, per, true, false);
  auto t0 = std::chrono::steady_clock::now();
  BOOST_OUTCOME_TRY(auto rep, read_tensors(b, prefix, s.tensors));
  auto bad = mismatches(s);
  std::printf(
      "rank %d: restored %zu tensors onto %d process(es) (mesh x=4,y=2, devices %lld..%lld, other layouts): read %.2f MiB in %.1f ms, "
      "%zu shards resharded, %s\n",
      rank, rep.tensors, group, static_cast<long long>(rank * per), static_cast<long long>(rank * per + per - 1),
      static_cast<double>(rep.bytes_read) / (1 << 20), ms_since(t0), rep.resharded_shards,
      bad ? (std::to_string(bad) + " values differ").c_str() : "every value matches");
  std::fflush(stdout);
  return bad;
}

}  // namespace

int main(int argc, char** argv) {
  std::string dir;
  bool restore_only = false;
  long timeout_ms = 60000;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--dir" && i + 1 < argc)
      dir = argv[++i];
    else if (a == "--restore-only")
      restore_only = true;
    else if (a == "--timeout-ms" && i + 1 < argc)
      timeout_ms = std::stol(argv[++i]);
    else {
      std::fprintf(stderr, "usage: mpirun -np N multi_process --dir DIR [--restore-only] [--timeout-ms T]   (N divides 8)\n");
      return 2;
    }
  }
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
  int rank = 0, size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  if (dir.empty() || mesh_devices % size != 0) {
    if (rank == 0) std::fprintf(stderr, "multi_process: --dir DIR is required, and the process count (%d) must divide 8\n", size);
    MPI_Finalize();
    return 2;
  }
  auto co = coord::make_mpi_coordinator();
  if (!co) {
    std::fprintf(stderr, "rank %d: %s\n", rank, co.error().what().c_str());
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  auto backend = backends::make_backend(backends::backend_kind::automatic).value();
  const std::string prefix = dir + "/ckpt";
  const auto timeout = std::chrono::milliseconds(timeout_ms);
  int status = 0;

  if (!restore_only) {
    const std::int64_t per = mesh_devices / size;
    auto s = make_state({{"x", 2}, {"y", 4}}, rank * per, per, false, true);
    write_options o;
    o.coordinator = co->get();
    o.coordination_timeout = timeout;
    auto t0 = std::chrono::steady_clock::now();
    auto rep = write_tensors(*backend, prefix, s.tensors, o);
    if (!rep) {
      std::printf("rank %d: save failed: %s\n", rank, rep.error().what().c_str());
      status = 1;
    } else if (rank == 0) {
      std::printf(
          "saved %s from %d processes (mesh x=2,y=4, %lld devices each): %zu tensors, %zu slices, %.2f MiB in %zu data files, %.1f ms\n",
          rep->manifest_path.c_str(), rep->processes, static_cast<long long>(per), rep->tensors, rep->slices,
          static_cast<double>(rep->bytes) / (1 << 20), rep->files, ms_since(t0));
    }
    std::fflush(stdout);
  }

  // Restores: every process of this job when --restore-only; otherwise onto 2 and onto 1.
  std::vector<int> groups = restore_only ? std::vector<int>{size} : std::vector<int>{2, 1};
  for (int g : groups) {
    if (status || g > size) continue;
    if (auto b = (*co)->barrier(timeout); !b) {  // the save (or the previous restore) is done everywhere
      std::printf("rank %d: %s\n", rank, b.error().what().c_str());
      status = 1;
      break;
    }
    auto bad = restore_on(*backend, prefix, rank, g);
    if (!bad) std::printf("rank %d: restore onto %d process(es) failed: %s\n", rank, g, bad.error().what().c_str());
    if (!bad || *bad) status = 1;
  }

  // Every process learns whether every process succeeded.
  int all = 0;
  MPI_Allreduce(&status, &all, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  if (rank == 0)
    std::printf("%s\n", all ? "multi_process: FAILED on at least one process" : "multi_process: every value on every process matches");
  co->reset();
  MPI_Finalize();
  return all;
}
