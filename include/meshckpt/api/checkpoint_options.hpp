#pragma once
/// \file
/// `checkpoint_options`: how a `checkpoint` writes and reads (backend, write and read options,
/// callbacks, snapshots).

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "meshckpt/pipeline/tensor_io.hpp"
#include "meshckpt/io/backend.hpp"

namespace meshckpt {

/// Options of a `checkpoint`.
struct checkpoint_options {
  /// IO backend; null means `backends::make_backend(automatic)`: io_uring when the kernel
  /// allows it, else POSIX.
  std::shared_ptr<io::backend> backend{};
  write_options write{};
  read_options read{};
  /// Run, in order, with the written path after each successful `save`/`write` commit.
  std::vector<std::function<void(const std::string& path)>> write_callbacks{};
  /// Snapshot (copy) the tensors when a save is issued, so the caller may modify them as soon as
  /// `async_save`/`async_write` returns; the save then writes from the copy. The copy is one
  /// memcpy of the distinct slices (replicas are copied once) into reusable host memory.
  bool snapshot = true;
  /// Most bytes of snapshot memory kept (0: no limit). A save whose state does not fit waits, on
  /// the calling thread, for earlier saves to release theirs; one larger than the whole budget is
  /// not snapshotted: the call then returns only after its write completed (so the caller may
  /// still modify the tensors right after it returns).
  std::uint64_t snapshot_budget_bytes = 0;
  /// Name-based restores (a checkpoint without an object graph: TensorFlow 1, flat or
  /// imported): the checkpoint key of a live object path where it is not the default one.
  /// Keys are live object paths as `meshckpt inspect` prints a checkpoint's (escaped names
  /// joined by '/'); by default a path is looked up as itself, and in a TensorFlow checkpoint as
  /// its names unescaped and joined by '/'. E.g. {{"encoder/kernel", "bert/encoder/layer_0/kernel"}}.
  std::map<std::string, std::string> restore_names{};
};

}  // namespace meshckpt
