#pragma once
// Private: what the torch.save reader (torch_io.cpp) shares with the DCP reader (dcp_io.cpp),
// whose chunks are torch.save zips inside its .distcp files.

#include <string>
#include <vector>

#include "../pipeline/common.hpp"
#include "restorable.hpp"
#include "meshckpt/format/manifest.hpp"
#include "meshckpt/format/torch_file.hpp"

namespace meshckpt::detail {

// The largest pickle read (a state of millions of tensors pickles to a few hundred MB).
constexpr std::uint64_t max_pickle_bytes = std::uint64_t{1} << 30;

// A torch.save zip: a whole file, or a window of one (a DCP .distcp file holds one per chunk).
// Offsets are the window's.
struct torch_source {
  io::handle h;
  std::string path;
  std::uint64_t size = 0;  // of the window
  std::uint64_t base = 0;  // where the window starts in the file
};

// What a torch.save zip holds: its state, and a tensor (one slice, offsets in the file) per
// stored entry.
struct torch_part {
  format::torch::state_file state;
  std::vector<format::saved_tensor> tensors;
};

// Reads the torch.save zip `f`: its central directory, its pickle (keys under `root_key`
// when given), the local headers of its storages.
task<torch_part> read_zip(io::backend& b, const torch_source& f, std::string root_key = {});

// An empty manifest of a foreign checkpoint whose slices carry one CRC-32 each, on a mesh of
// one device.
format::manifest foreign_manifest(std::string writer);

// Sorts the tensors by key; two of one name are an error naming `path`.
result<void> sort_unique(format::manifest& m, const std::string& path);

// A DCP directory as a restorable (dcp_io.cpp).
task<restorable> read_dcp(io::backend& b, std::string dir);

}  // namespace meshckpt::detail
