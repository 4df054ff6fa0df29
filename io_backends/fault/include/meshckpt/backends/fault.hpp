#pragma once
/// \file
/// The fault backend: a decorator over any backend for reliability tests (tests/reliability/test_crash.cpp,
/// tests/reliability/test_faults.cpp). It numbers every operation, records them in an op log, and can
///
/// - fail operation N with a chosen errno, once (transient) or from N on (persistent: a dead
///   disk); make write N a *short write* (half of it reaches the file, then ENOSPC) or read N a
///   *short read* (half the bytes, as if the file ended);
/// - *crash* at operation k: k and every later operation do nothing and fail, as if the process
///   had died there;
/// - afterwards, *materialize a crash state* on the real directory: what a power loss at that
///   moment could leave. It tracks, per file, the content at its last successful fsync, and per
///   directory, the entry changes (creations, renames, unlinks) since its last fsync, and can drop
///   unsynced data, undo unsynced entry changes, both (a power loss), or keep a torn prefix of
///   unsynced writes.
///
/// Intended for tests of small checkpoints: it reads a file's whole content at each fsync (the
/// model of "what is durable") and keeps copies of replaced and unlinked files.

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "meshckpt/io/forwarding.hpp"

namespace meshckpt::backends {

/// One operation as the fault backend saw it, in submission order.
struct fault_op {
  enum kind { open_dir, open, size, read, write, truncate, fsync, close, rename, unlink, list };
  kind k = open_dir;
  std::uint64_t index = 0;  ///< 0-based operation number
  std::string path;         ///< full path of the file or directory (rename: the source)
  std::string path2;        ///< rename: the target
  bool on_dir = false;      ///< fsync/close of a directory handle
  io::open_mode mode = io::open_mode::read;
  std::uint64_t offset = 0, length = 0;
  bool injected = false;  ///< an injected error or short transfer
  bool skipped = false;   ///< at or after the crash point: not executed
};

/// Name of an op kind ("write", "fsync", ...).
const char* to_string(fault_op::kind k) noexcept;

/// What to inject.
struct fault_plan {
  /// Operation to fail (none when unset).
  std::optional<std::uint64_t> fail_at;
  int err = 5;              ///< errno of the failure (EIO)
  bool persistent = false;  ///< fail every operation from `fail_at` on (except close, which always releases)
  /// Instead of failing a write at `fail_at`: write its first half, then fail with ENOSPC. A
  /// read at `fail_at` returns half of the bytes instead (as if the file ended there).
  bool short_transfer = false;
  /// Crash at this operation: it and all later ones are skipped and fail with EIO.
  std::optional<std::uint64_t> crash_at;
};

/// Crash states `fault_backend::materialize` can build.
enum class crash_state {
  keep_all,               ///< everything that was executed survived (a process kill, not a power loss)
  drop_unsynced_data,     ///< files lose writes not covered by a later fsync (never-fsynced files become empty)
  drop_unsynced_entries,  ///< creations, renames and unlinks not covered by a directory fsync are undone
  power_loss,             ///< both of the above
  torn,                   ///< entries kept; each file with unsynced writes keeps a random 4 KiB-aligned prefix of them
};
const char* to_string(crash_state s) noexcept;

/// A decorator (io::forwarding_backend, as RocksDB's FaultInjectionTestFS derives from its
/// wrapper): it forwards what it does not fail, and models what a crash would keep.
class fault_backend final : public io::forwarding_backend {
 public:
  explicit fault_backend(std::shared_ptr<io::backend> inner, fault_plan plan = {});
  ~fault_backend() override;

  /// Replaces the plan and restarts the op numbering (the state model is kept).
  void reset(fault_plan plan);
  /// Operations submitted so far.
  std::uint64_t ops() const;
  /// The op log.
  std::vector<fault_op> log() const;
  /// Operations that were injected (failed, short) or skipped.
  std::uint64_t injected() const;

  /// Rewrites the files and entries this backend touched into crash state `s` (the files of the
  /// real directory; `seed` picks torn prefixes). Call once every operation completed. Returns
  /// the number of files and entries changed.
  std::size_t materialize(crash_state s, std::uint64_t seed = 0);
  /// Forgets the model: from now on, everything currently on disk counts as durable.
  void mark_durable();

  std::string_view name() const noexcept override { return "fault"; }
  void open_dir(std::string path, bool create, io::completion<io::handle> done) override;
  void open(io::handle dir, std::string name, io::open_mode mode, io::completion<io::handle> done) override;
  void size(io::handle file, io::completion<std::uint64_t> done) override;
  void read(io::handle file, std::uint64_t offset, std::span<std::byte> buf, io::completion<std::size_t> done) override;
  void write(io::handle file, std::uint64_t offset, std::span<const std::byte> buf, io::completion<void> done) override;
  void truncate(io::handle file, std::uint64_t size, io::completion<void> done) override;
  void fsync(io::handle file, io::completion<void> done) override;
  void close(io::handle file, io::completion<void> done) override;
  void rename(io::handle dir, std::string from, std::string to, io::completion<void> done) override;
  void unlink(io::handle dir, std::string name, io::completion<void> done) override;
  void list(io::handle dir, io::completion<std::vector<io::dir_entry>> done) override;

 private:
  struct model;
  // Numbers and logs an op; returns the error to fail it with instead of running it, if any.
  std::optional<error> admit(fault_op op, bool* short_transfer = nullptr);
  std::string path_of(io::handle h, bool* is_dir = nullptr) const;

  mutable std::mutex mu_;
  fault_plan plan_;
  std::uint64_t next_ = 0;
  std::uint64_t injected_ = 0;
  std::vector<fault_op> log_;
  std::unique_ptr<model> m_;
};

}  // namespace meshckpt::backends
