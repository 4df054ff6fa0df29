#pragma once
/// \file
/// The files of a checkpoint directory beside the checkpoints: the `checkpoint` state file
/// (TensorFlow's CheckpointState), `latest_checkpoint`, deleting a checkpoint, removing the
/// leftovers of interrupted saves.

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "meshckpt/error.hpp"
#include "meshckpt/io/backend.hpp"

namespace meshckpt {

/// The path of the latest checkpoint recorded in `dir`'s `checkpoint` state file, if that
/// checkpoint's manifest exists — or, for a checkpoint TensorFlow wrote, its valid `.index` —
/// otherwise nullopt. A path the state file gives as absolute (TensorFlow writes them, and the
/// directory may come from another machine) is taken by its base name in `dir`, as TensorFlow
/// resolves it.
std::optional<std::string> latest_checkpoint(std::string_view dir);

/// The `checkpoint` state file of a directory (TensorFlow's CheckpointState, as text).
struct checkpoint_state {
  std::string model_checkpoint_path;                    ///< relative to the directory
  std::vector<std::string> all_model_checkpoint_paths;  ///< oldest to newest
  std::vector<double> all_model_checkpoint_timestamps;  ///< seconds since the epoch
  double last_preserved_timestamp = 0;
};

/// Reads `dir/checkpoint`. `errc::not_found` when absent; `errc::corrupt_manifest` when
/// malformed (the message names the line). Absolute paths come back as their base names.
result<checkpoint_state> read_checkpoint_state(io::backend& b, std::string_view dir);
/// `read_checkpoint_state` through the default POSIX backend (as `latest_checkpoint` does).
result<checkpoint_state> read_checkpoint_state(std::string_view dir);
/// Writes `dir/checkpoint` atomically: temp file, fsync, rename, directory fsync. On an object
/// store (`s3://`): one PUT, a compare and swap (`If-Match`) on the version it reads first, retried
/// on conflict, so the file is always one writer's whole state.
result<void> write_checkpoint_state(io::backend& b, std::string_view dir, const checkpoint_state& s);
/// Parses the text form (exposed for tests and tools).
result<checkpoint_state> parse_checkpoint_state(std::string_view text);
/// The text form.
std::string format_checkpoint_state(const checkpoint_state& s);

/// Deletes the checkpoint `prefix`: its manifest first, then a directory fsync, then the data
/// files the manifest named (and leftovers of that name). Never touches other files.
/// `errc::locked` while another process writes into the directory (it holds DIR/meshckpt.lock).
result<void> delete_checkpoint(io::backend& b, std::string_view prefix);

/// Removes the leftovers in `dir` of checkpoints named `<name>-<number>`: data files and temp
/// manifests of such a name that has no manifest (what an interrupted save or deletion leaves).
/// Never touches a committed checkpoint or a file of another pattern. Call it only while no
/// save of such a name is in progress: `checkpoint_manager` does after each of its saves (which
/// run one at a time, under the directory's writer lock). On an object store it also aborts the
/// incomplete multipart uploads of dead writers under the prefix (io::backend::discard_unpublished),
/// counted with the files. Returns the number of files removed;
/// stops at the first error; `errc::locked` while another process writes into the directory.
result<std::size_t> remove_orphans(io::backend& b, std::string_view dir, std::string_view name);

}  // namespace meshckpt
