#pragma once
// Private: publishing a file durably, the one way the library does it (the manifest of a commit,
// the `checkpoint` state file, exported safetensors files and their index). Through the backend,
// so the fault backend sees (and can crash) every step:
//
//   1. create TEMP exclusively in DIR, write BYTES, fsync, close;
//   2. (`before_rename`, e.g. the last check for cancellation)
//   3. rename TEMP -> NAME (atomically replaces an older NAME);
//   4. fsync DIR. Only now does it succeed: NAME's new content is durable.
//
// A crash before 3 leaves the old NAME (if any) and possibly TEMP; after 3, the new NAME.
// A failure before 3 removes TEMP; a failure in 4 reports an error with `renamed` set: the new
// NAME may be visible.
//
// On an object store (`caps(dir).atomic_rename` false) NAME is written directly and published
// whole by its fsync; with `create_only`, only if no NAME exists (If-None-Match), else EEXIST;
// with `if_version`, only over that version (If-Match), else ESTALE.

#include <functional>
#include <optional>
#include <span>
#include <string>

#include "task.hpp"

namespace meshckpt::runtime {

struct replace_options {
  std::function<result<void>()> before_rename{};  // an error here ends the replace before step 3
  bool* renamed = nullptr;                        // set once step 3 succeeded
  bool direct = false;                            // TEMP is opened with O_DIRECT where the filesystem allows (io::open_mode)
  bool create_only = false;                       // object stores: NAME must not exist yet (a manifest)
  // Object stores: a compare and swap, NAME replaced only while at this version (empty: only
  // while absent); a conflict fails with EEXIST or ESTALE. Ignored on a filesystem.
  std::optional<std::string> if_version{};
  std::string* new_version = nullptr;  // object stores: the published version
};

task<void> durable_replace(io::backend& b, io::handle dir, std::string temp, std::string name, std::span<const std::byte> bytes,
                           replace_options opt = {});

// As above, with the content written by `fill(file)` into the open temp file (streamed: in
// pieces, at the offsets it chooses).
task<void> durable_replace(io::backend& b, io::handle dir, std::string temp, std::string name, std::function<task<void>(io::handle)> fill,
                           replace_options opt = {});

}  // namespace meshckpt::runtime
