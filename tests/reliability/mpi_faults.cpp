// Multi-process saves over MPI under faults (run by tests/reliability/mpi_test.sh under mpirun).
//
//   mpi_faults --dir D --fault none|io|delay|kill --victim R [--timeout-ms T]
//       Every rank saves seed 1 (must succeed), then seed 2 with the fault injected on rank R:
//         io     R's data writes fail with EIO
//         delay  R starts its save 3 x T late (process 0 gives up on it after T)
//         kill   R is SIGKILLed at its first data write (mpirun then ends the job)
//       Each rank writes D/result-<rank>: "ok" or "error <category>:<code> <message>".
//   mpi_faults --dir D --check SEED
//       One process: the checkpoint D/ck restores onto a single device layout with exactly the
//       values of SEED (so no partial or foreign manifest is visible), and verifies; then a new
//       save removes any leftovers of the failed attempt. Prints what it found.

#include <mpi.h>
#include <signal.h>

#include <cstdio>
#include <deque>
#include <fstream>
#include <thread>

#include "meshckpt/pipeline/tensor_io.hpp"
#include "meshckpt/coord/mpi.hpp"
#include "support.hpp"

using namespace meshckpt;

namespace {

struct state {
  std::deque<dtensor> keep;
  std::vector<named_tensor> tensors;
};

// A 2x2 mesh; `local` empty means every device.
state make_state(std::vector<std::int64_t> local, std::uint64_t seed, bool fill) {
  auto m = mesh::create({{"x", 2}, {"y", 2}}, {}, local).value();
  state s;
  auto add = [&](std::string key, dtype t, shape sh, std::vector<std::string> axes) {
    s.keep.push_back(dtensor::create(t, sh, layout::create(axes, m).value()).value());
    if (fill) testing::fill(s.keep.back().view(), key, seed);
    s.tensors.push_back({std::move(key), s.keep.back().view()});
  };
  add("w", dtype::float32, {512, 256}, {"x", "y"});
  add("b", dtype::float32, {256}, {"y"});
  for (int i = 0; i < 12; ++i) add("slot/" + std::to_string(i), dtype::float32, {1024}, {"unsharded"});
  return s;
}

// Kills this process at its first data write: a rank dying in the middle of a save.
class kill_at_write final : public testing::forwarding_backend {
 public:
  using forwarding_backend::forwarding_backend;
  void write(io::handle, std::uint64_t, std::span<const std::byte>, io::completion<void>) override { ::raise(SIGKILL); }
};

std::string describe(const result<write_report>& r) {
  if (r) return "ok";
  const auto& c = r.error().code;
  return "error " + std::string(c.category().name()) + ":" + std::to_string(c.value()) + " " + r.error().what();
}

int check(const std::string& dir, std::uint64_t seed) {
  auto be = testing::test_backend();
  const std::string prefix = dir + "/ck";
  auto s = make_state({}, 0, false);
  auto r = read_tensors(*be, prefix, s.tensors);
  if (!r) {
    std::printf("check: restore failed: %s\n", r.error().what().c_str());
    return 1;
  }
  std::size_t bad = 0;
  for (const auto& nt : s.tensors)
    if (!testing::matches(nt.tensor, nt.key, seed)) ++bad;
  auto v = verify(*be, prefix);
  auto scan = scan_directory(*be, dir);
  std::printf("check: %s restores the values of seed %llu in %zu of %zu tensors; verify %s; %zu leftover file(s) of the failed attempt\n",
              prefix.c_str(), static_cast<unsigned long long>(seed), s.tensors.size() - bad, s.tensors.size(),
              v && v->ok() ? "ok" : "FAILED", scan ? scan->leftovers.size() : 0);
  // The next save of the name removes them.
  auto again = make_state({}, seed, true);
  auto w = write_tensors(*be, prefix, again.tensors);
  auto after = scan_directory(*be, dir);
  std::size_t left = after ? after->leftovers.size() : 99;
  std::printf("check: after a new save, %zu leftover file(s)\n", left);
  return bad || !v || !v->ok() || !w || left ? 1 : 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::string dir, fault = "none";
  int victim = -1;
  long timeout_ms = 2000;
  long check_seed = -1;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string a = argv[i], v = argv[i + 1];
    if (a == "--dir")
      dir = v;
    else if (a == "--fault")
      fault = v;
    else if (a == "--victim")
      victim = std::stoi(v);
    else if (a == "--timeout-ms")
      timeout_ms = std::stol(v);
    else if (a == "--check")
      check_seed = std::stol(v);
  }
  if (dir.empty()) return 2;
  if (check_seed >= 0) return check(dir, static_cast<std::uint64_t>(check_seed));

  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
  int rank = 0, size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  if (size != 4) {
    std::fprintf(stderr, "mpi_faults runs with 4 processes\n");
    MPI_Abort(MPI_COMM_WORLD, 2);
  }
  auto co = coord::make_mpi_coordinator().value();
  std::shared_ptr<io::backend> be = testing::test_backend();
  const std::string prefix = dir + "/ck";
  const auto timeout = std::chrono::milliseconds(timeout_ms);

  write_options o;
  o.coordinator = co.get();
  o.coordination_timeout = timeout;
  auto first = make_state({rank}, 1, true);
  auto r1 = write_tensors(*be, prefix, first.tensors, o);
  if (!r1) {
    std::fprintf(stderr, "rank %d: the first save failed: %s\n", rank, r1.error().what().c_str());
    MPI_Abort(MPI_COMM_WORLD, 3);
  }
  if (auto b = co->barrier(timeout); !b) MPI_Abort(MPI_COMM_WORLD, 3);

  auto second = make_state({rank}, 2, true);
  std::shared_ptr<io::backend> use = be;
  if (rank == victim) {
    if (fault == "io") use = std::make_shared<testing::failing_writes>(be, 0, EIO);
    if (fault == "kill") use = std::make_shared<kill_at_write>(be);
    if (fault == "delay") std::this_thread::sleep_for(3 * timeout);
  }
  auto r2 = write_tensors(*use, prefix, second.tensors, o);
  std::ofstream(dir + "/result-" + std::to_string(rank)) << describe(r2) << "\n";
  std::printf("rank %d: %s\n", rank, describe(r2).c_str());
  std::fflush(stdout);
  co.reset();
  MPI_Finalize();
  return 0;
}
