// libFuzzer target: the read planner against the brute-force oracle (read_plan_oracle.hpp).
// The input chooses the policy, the files, the wanted ranges and their destinations; every
// plan must succeed, honour the policy, and put every wanted byte exactly where its run says.

#include <cstddef>
#include <cstdint>

#include "read_plan_oracle.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace meshckpt;
  oracle::byte_source in{data, size};
  auto s = oracle::make_read_scenario(in);
  auto p = plan::plan_reads(s.wants, s.chunk, s.policy);
  if (!p) __builtin_trap();
  if (!oracle::check_read_plan(s, *p).empty() || !oracle::execute_and_compare(s, *p).empty()) __builtin_trap();
  return 0;
}
