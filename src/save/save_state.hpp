#pragma once
// Private: the state of one save attempt (commit.cpp's protocol), and the writing of its data
// files (data_file_writer.cpp).

#include <functional>
#include <optional>
#include <span>
#include <stop_token>
#include <string>
#include <vector>

#include "../pipeline/common.hpp"
#include "../pipeline/dir_lock.hpp"
#include "meshckpt/format/manifest.hpp"
#include "meshckpt/plan/write_plan.hpp"

namespace meshckpt::detail {

// A token no other attempt has: random, process, time and a counter, hashed. (commit.cpp)
std::uint64_t fresh_token();

// Data files are produced front to back through runtime::staged_writer, opened with O_DIRECT
// (where the filesystem allows); the file is then truncated to its exact size. Memory stays
// bounded by the staging pool, whatever the state's size.
inline constexpr std::size_t copy_piece = 256u << 10;

struct save_state {
  save_state(io::backend& be, std::string p, std::string d, std::string n)
      : b(be), prefix(std::move(p)), dir_path(std::move(d)), base(std::move(n)) {}
  std::stop_token stop;
  std::function<void(std::uint64_t, std::uint64_t)> progress;
  std::function<void()> sources_released;  // called at most once, then cleared
  std::span<const plan::streamed_tensor> streamed;
  stream_reader read_stream;  // the bytes of `streamed`
  std::uint64_t done_bytes = 0, total_bytes = 0;
  io::backend& b;
  std::string prefix;
  std::string dir_path;
  std::string base;
  std::uint64_t token = fresh_token();
  std::optional<io::handle> dir;
  std::vector<io::handle> open_files;
  std::vector<std::string> created;  // files to remove if the attempt fails before the rename
  bool renamed = false;
  detail::dir_lock lock;  // released when the save ends
};

// Step 3 for data file `k`: creates NAME.data-TOKEN-K exclusively, writes `writes` (their
// slices' chunk checksums computed from the bytes written), truncates it to `file_size`,
// fsyncs and closes it. The file is in `s.created` from its open on; `last_file` calls
// `s.sources_released` once its last byte was taken from the sources. (data_file_writer.cpp)
task<void> write_data_file(save_state& s, format::manifest& m, std::uint32_t k, std::span<const plan::slice_write> writes,
                           std::uint64_t file_size, std::uint64_t chunk_bytes, bool last_file);

}  // namespace meshckpt::detail
