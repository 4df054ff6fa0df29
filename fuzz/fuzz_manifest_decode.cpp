// Property: format::decode never crashes, never reads outside its input, never allocates beyond
// the caps, and whatever it accepts is a valid manifest that survives encode -> decode unchanged.

#include <cstdint>
#include <cstdlib>
#include <span>

#include "meshckpt/format/manifest.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace meshckpt::format;
  limits lim;
  lim.max_manifest_bytes = 1 << 20;
  auto m = decode(std::as_bytes(std::span(data, size)), lim);
  if (!m) return 0;
  m->minor = minor_version;  // encode always writes this build's minor version
  auto bytes = encode(*m);
  if (!bytes) std::abort();  // decode accepted something validate rejects
  auto again = decode(*bytes);
  if (!again || !(*again == *m)) std::abort();
  return 0;
}
