#pragma once
/// \file
/// The IO backend interface: a narrow, file-shaped set of asynchronous operations. Each
/// operation takes a completion callback that receives a `result<T>`; it may run on any thread
/// (a backend's worker or the kernel's completion path). `io/async.hpp` turns these into Asio
/// operations (awaitables, futures, callbacks) on an executor.
///
/// Backends convert errno to errors in one place and name the operation and the file:
/// "write ck.data-…-0: No space left on device (errno 28)". Names passed to `open`, `rename`
/// and `unlink` must be plain names (no '/', not "." or "..") inside the given directory;
/// backends refuse anything else with `errc::unsafe_path`, never follow symlinks when opening
/// files, and open for reading only regular files.

#include <cstddef>
#include <cstdint>
#include <functional>
#include <future>
#include <new>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "meshckpt/error.hpp"

namespace meshckpt::io {

/// An open file or directory of a backend (opaque; only meaningful to the backend).
struct handle {
  std::int64_t value = -1;
  friend bool operator==(handle, handle) = default;
};

/// How to open a file.
enum class open_mode {
  read,  ///< existing regular file, read-only
  /// As `read`, bypassing the page cache (O_DIRECT) where the filesystem allows it (buffered
  /// elsewhere). Every read must then use a buffer, offset and length aligned to 4096 bytes; a
  /// read may extend past the end of the file and then returns the bytes up to it.
  read_direct,
  create_exclusive,  ///< new file, write-only; fails with EEXIST when the name exists
  /// As `create_exclusive`, bypassing the page cache (O_DIRECT) where the filesystem allows it
  /// (silently buffered elsewhere). Every write to it must then use a buffer, offset and length
  /// aligned to 4096 bytes; `truncate` trims the padding of the last block.
  create_exclusive_direct,
  /// New content for `name`, write-only, that replaces it whole (or creates it) when the file is
  /// made durable (`fsync`). Only where `caps().atomic_rename` is false (object stores), whose
  /// callers publish this way instead of by rename; other backends refuse it
  /// (errc::unsupported).
  replace,
};

/// What a backend can do; higher layers adapt buffers and reporting to it.
struct capabilities {
  bool direct_io = false;           ///< writes/reads bypass the page cache (O_DIRECT)
  bool registered_buffers = false;  ///< fixed buffers registered with the kernel
  std::size_t alignment = 1;        ///< required alignment of offsets, lengths and buffers
  std::string notes;                ///< human-readable remarks (e.g. why a fallback happened)
  /// Directory paths name directories of this host's filesystem, which other processes share:
  /// writers then take the directory's lock (DIR/meshckpt.lock). False for a backend with a
  /// private namespace (in memory).
  bool host_filesystem = true;
  /// `rename` atomically replaces its target (a filesystem). False on an object store: there a
  /// file opened for writing becomes visible whole at its `fsync` (a `create_exclusive` one
  /// only if the name is still free), and a file is published with `open_mode::replace`.
  bool atomic_rename = true;
};

/// One directory entry.
struct dir_entry {
  enum kind { regular, directory, symlink, other };
  std::string name;
  kind type = other;
};

/// Completion callback of an operation producing `T`.
template <class T>
using completion = std::function<void(result<T>)>;

/// The backend interface. Implementations must be thread-safe: operations may be started from
/// several threads, and many may be in flight at once. A buffer passed to `read`/`write` must
/// stay valid until its completion runs. Destroying a backend waits for operations in flight
/// and closes handles left open. An operation either takes its completion and calls it exactly
/// once, or throws (`std::bad_alloc`) before it started anything, having destroyed its copy of
/// the completion: callers rely on this to report an allocation failure as an error.
class backend {
 public:
  virtual ~backend() = default;

  /// Short name ("posix", "uring", ...).
  virtual std::string_view name() const noexcept = 0;
  virtual capabilities caps() const = 0;
  /// The capabilities that hold inside directory `dir`: those of `caps()`, except in a backend
  /// that routes paths to several (a local disk, `s3://` prefixes).
  virtual capabilities caps(handle dir) const {
    (void)dir;
    return caps();
  }

  /// Opens a directory by path; with `create`, creates it and missing parents first (each new
  /// directory is made durable by fsyncing its parent).
  virtual void open_dir(std::string path, bool create, completion<handle> done) = 0;
  /// Opens `name` inside directory `dir`.
  virtual void open(handle dir, std::string name, open_mode mode, completion<handle> done) = 0;
  /// Current size of an open file in bytes.
  virtual void size(handle file, completion<std::uint64_t> done) = 0;
  /// Reads into `buf` from `offset` until it is full or the file ends; yields the bytes read
  /// (short only at end of file). Short reads from the OS are resubmitted.
  virtual void read(handle file, std::uint64_t offset, std::span<std::byte> buf, completion<std::size_t> done) = 0;
  /// Writes all of `buf` at `offset` (short writes are resubmitted) or fails.
  virtual void write(handle file, std::uint64_t offset, std::span<const std::byte> buf, completion<void> done) = 0;
  /// Sets the size of a file open for writing (used to trim the alignment padding of O_DIRECT
  /// writes).
  virtual void truncate(handle file, std::uint64_t size, completion<void> done) = 0;
  /// Flushes a file's data and metadata (or a directory's entries) to stable storage.
  virtual void fsync(handle file, completion<void> done) = 0;
  /// Closes a handle (always releases it, even when reporting an error).
  virtual void close(handle file, completion<void> done) = 0;
  /// Atomically renames `from` to `to` inside `dir`, replacing `to` if it exists.
  virtual void rename(handle dir, std::string from, std::string to, completion<void> done) = 0;
  /// Removes file `name` from `dir`.
  virtual void unlink(handle dir, std::string name, completion<void> done) = 0;
  /// Lists the entries of `dir` (without "." and "..").
  virtual void list(handle dir, completion<std::vector<dir_entry>> done) = 0;

  /// Offers `memory` for registration with the kernel (io_uring fixed buffers): later reads and
  /// writes whose buffer lies inside it then skip per-operation page pinning. `memory` must stay
  /// allocated at the same address for the backend's whole lifetime (the staging pool never
  /// frees its buffers for this reason). Optional and idempotent; the default ignores it, and a
  /// backend may decline (no free slot, locked-memory limit) without error.
  virtual void register_buffer(std::span<std::byte> memory) { (void)memory; }

  /// The version of an open file: a token that changes whenever the file is replaced (an
  /// object's ETag), as it was when opened for reading, or as published by the `fsync` of a
  /// file opened for writing. Empty where the backend keeps none: on a filesystem, writers are
  /// serialised by the directory lock instead.
  virtual std::string version(handle file) const {
    (void)file;
    return {};
  }
  /// Discards what writers of files in `dir` left unpublished, and yields how many: an object
  /// store's incomplete multipart uploads, whose parts hold storage until aborted. Writes of
  /// files still open in this process are kept; the caller holds the directory's lock (or
  /// lease), so any other writer is gone. Filesystems have nothing of the kind (their leftovers
  /// are files, removed by name): 0.
  virtual void discard_unpublished(handle dir, completion<std::size_t> done) {
    (void)dir;
    done(std::size_t{0});
  }
  /// Makes the publication of `file`, opened with `open_mode::replace`, a compare and swap: its
  /// `fsync` replaces the file only while its version is still `expected` (from `version()`),
  /// and otherwise fails with ESTALE, publishing nothing. errc::unsupported where the backend
  /// keeps no versions.
  virtual result<void> expect_version(handle file, std::string expected) {
    (void)file;
    return make_error(errc::unsupported, "a conditional replace (expected version " + expected + ") on the " + std::string(name()) +
                                             " backend, which keeps no versions");
  }
};

/// Blocks the calling thread until an operation completes and returns its result, e.g.
/// `io::wait<std::uint64_t>([&](auto done) { be.size(f, std::move(done)); })`. For tools and
/// tests; library code awaits operations through `io/async.hpp` instead.
template <class T, class Start>
result<T> wait(Start&& start) {
  std::future<result<T>> f;
  try {
    auto p = std::make_shared<std::promise<result<T>>>();
    f = p->get_future();
    start(completion<T>([p](result<T> r) { p->set_value(std::move(r)); }));
  } catch (const std::bad_alloc&) {
    return out_of_memory("starting an IO operation");  // nothing was started (see `backend`)
  }
  return f.get();
}

/// Closes `h` without waiting for the result: the cleanup of last resort, when an allocation
/// failure unwinds code before it could await its close. It allocates nothing itself and retries
/// a backend that cannot start the close for lack of memory a few times.
inline void close_detached(backend& b, handle h) noexcept {
  for (int attempt = 0; attempt < 3; ++attempt) {
    try {
      b.close(h, [](result<void>) {});
      return;
    } catch (const std::bad_alloc&) {
    }
  }
}

/// Closes `h` and waits; a close that cannot even start for lack of memory falls back to
/// `close_detached`. For blocking cleanup paths, which must not leak the handle.
inline void close_now(backend& b, handle h) {
  auto r = wait<void>([&](auto done) { b.close(h, std::move(done)); });
  if (!r && r.error().code == std::errc::not_enough_memory) close_detached(b, h);
}

}  // namespace meshckpt::io
