// Property: format::decode never crashes, never reads outside its input, never allocates beyond
// the caps, and whatever it accepts is a valid manifest that survives encode -> decode unchanged.
//
// Each input is decoded as given, and again "resealed": with the body-length field and the
// trailing checksum recomputed, so that mutations reach the section parser and the validator
// instead of all stopping at the checksum.

#include <cstdint>
#include <cstdlib>
#include <span>
#include <vector>

#include "meshckpt/format/checksum.hpp"
#include "meshckpt/format/manifest.hpp"

namespace {

void check(std::span<const std::byte> input) {
  using namespace meshckpt::format;
  limits lim;
  lim.max_manifest_bytes = 1 << 20;
  auto m = decode(input, lim);
  if (!m) return;
  m->minor = minor_version;  // encode always writes this build's minor version
  auto bytes = encode(*m);
  if (!bytes) std::abort();  // decode accepted something validate rejects
  auto again = decode(*bytes);
  if (!again || !(*again == *m)) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  auto input = std::as_bytes(std::span(data, size));
  check(input);
  if (size >= 32) {
    std::vector<std::byte> sealed(input.begin(), input.end());
    std::uint64_t body = size - 32;
    for (int i = 0; i < 8; ++i) sealed[16 + static_cast<std::size_t>(i)] = static_cast<std::byte>(body >> (8 * i));
    std::uint64_t c = meshckpt::format::checksum(std::span(sealed).first(size - 8));
    for (int i = 0; i < 8; ++i) sealed[size - 8 + static_cast<std::size_t>(i)] = static_cast<std::byte>(c >> (8 * i));
    check(sealed);
  }
  return 0;
}
