// Property: format::tf::read_table never crashes, never reads outside its input, never
// allocates beyond its caps, and whatever it accepts survives write_table -> read_table
// unchanged.
//
// Each input is read as a whole table, and again as the contents of the one data block of a
// table whose checksums are right (format::tf::table_around_block; the first byte chooses the
// compression), so that mutations reach the block parser and snappy instead of all stopping
// at a checksum.

#include <cstdint>
#include <cstdlib>
#include <span>

#include "format/tf_table.hpp"

namespace {

void check(std::span<const std::byte> table) {
  using namespace meshckpt::format::tf;
  table_limits lim;
  lim.max_block_bytes = 1 << 20;
  lim.max_total_bytes = 4 << 20;
  auto t = read_table(table, lim);
  if (!t) return;
  auto again = write_table(*t);
  if (!again) std::abort();  // read_table accepted keys out of order
  auto back = read_table(*again);
  if (!back || back->size() != t->size()) std::abort();
  for (std::size_t i = 0; i < t->size(); ++i)
    if ((*back)[i].key != (*t)[i].key || (*back)[i].value != (*t)[i].value) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  auto input = std::as_bytes(std::span(data, size));
  check(input);
  if (size >= 1) check(meshckpt::format::tf::table_around_block(input.subspan(1), static_cast<std::uint8_t>(data[0] & 3)));
  return 0;
}
