#pragma once
// Private: the one-writer-per-directory lock. A process that writes into a checkpoint directory
// (a save's commit, a manager's retention and cleanup, a deletion) holds an exclusive advisory
// lock (flock) on DIR/meshckpt.lock. The kernel releases it when the process dies, so a killed
// writer never leaves the directory locked. The file records its holder ("pid P on host H
// since T") so that a second writer's error can name it.
//
// Within a process the lock is shared: every holder of the same directory (a manager and the
// saves of its checkpoint, the processes of a thread-group save) takes a reference to one
// flock, released with the last reference. It excludes other processes only.

#include <chrono>
#include <memory>
#include <string>
#include <string_view>

#include "../runtime/task.hpp"
#include "meshckpt/error.hpp"

namespace meshckpt::detail {

inline constexpr std::string_view lock_file_name = "meshckpt.lock";

// A held lock; the lock is released when the last copy goes away.
using dir_lock = std::shared_ptr<const void>;

// Takes the lock of directory `dir` (which must exist) without waiting. errc::locked, naming
// the holder, when another process holds it.
// Local directories only: an s3:// prefix's counterpart, its writer lease (DIR/meshckpt.lease),
// is awaited through try_lock_dir_async or lock_dir.
result<dir_lock> try_lock_dir(const std::string& dir);
// As try_lock_dir, and for an s3:// prefix its lease, awaited.
runtime::task<dir_lock> try_lock_dir_async(std::string dir);

// As try_lock_dir, trying again for up to `wait` while another process holds the lock: each
// time the lock file is closed (an inotify watch on it: a holder on this host releases its
// lock by closing it, at exit too), and at least every `longest_poll` (a holder on another
// host). Without inotify it polls, 10 ms doubling to 200 ms between tries.
runtime::task<dir_lock> lock_dir(std::string dir, std::chrono::milliseconds wait,
                                 std::chrono::milliseconds longest_poll = std::chrono::seconds(1));
// lock_dir through the blocking bridge, for blocking entry points.
result<dir_lock> lock_dir_blocking(const std::string& dir, std::chrono::milliseconds wait,
                                   std::chrono::milliseconds longest_poll = std::chrono::seconds(1));

}  // namespace meshckpt::detail
