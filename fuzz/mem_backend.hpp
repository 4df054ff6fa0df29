#pragma once
// What the reader's fuzzers share: the in-memory backend (io_backends/memory) and the packing of
// a checkpoint (manifest and data files) into one fuzz input.

#include <cerrno>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "meshckpt/format/names.hpp"
#include "meshckpt/backends/memory.hpp"
#include "meshckpt/io/backend.hpp"

namespace meshckpt::fuzzing {

// The in-memory backend of io_backends/memory.
using mem_backend = backends::memory_backend;

// The fuzz input: [manifest length, 4 bytes LE][manifest][data], the data split over the
// manifest's data files in order by their recorded sizes (the last one takes the rest).
inline std::vector<std::byte> pack(const std::vector<std::byte>& manifest, const std::vector<std::vector<std::byte>>& data) {
  std::vector<std::byte> out(4);
  for (int i = 0; i < 4; ++i) out[static_cast<std::size_t>(i)] = static_cast<std::byte>(manifest.size() >> (8 * i));
  out.insert(out.end(), manifest.begin(), manifest.end());
  for (const auto& d : data) out.insert(out.end(), d.begin(), d.end());
  return out;
}

}  // namespace meshckpt::fuzzing
