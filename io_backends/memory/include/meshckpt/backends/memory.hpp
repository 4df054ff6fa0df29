#pragma once
/// \file
/// The in-memory backend: a private tree of directories and files held in memory, every
/// operation completed synchronously on the calling thread. For fuzzing the reader (no disk, no
/// threads) and for tests; it passes the backend conformance suite, where the host's special
/// files (symlinks, FIFOs) do not apply. Names are checked as the real backends check them; its
/// directories are not the host's (`caps().host_filesystem` is false, so no directory lock is
/// taken). fsync does nothing: nothing is lost, since nothing survives the process.

#include <cstddef>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "meshckpt/io/backend.hpp"

namespace meshckpt::backends {

class memory_backend final : public io::backend {
 public:
  std::string_view name() const noexcept override { return "memory"; }
  io::capabilities caps() const override;

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

  /// The content of file `name` in directory `dir` ("." by default), created (with its
  /// directories) when absent: how tests and fuzzers put files in place and look at them.
  std::vector<std::byte>& file(const std::string& name, const std::string& dir = ".");
  /// True when `dir/name` is a file.
  bool has_file(const std::string& name, const std::string& dir = ".") const;
  /// Handles still open (files and directories).
  std::size_t open_handles() const;

 private:
  using bytes = std::shared_ptr<std::vector<std::byte>>;
  struct directory {
    std::map<std::string, bytes> files;
  };
  struct open_entry {
    std::string dir;   // normalized directory path
    std::string name;  // empty for a directory handle
    bytes content;     // the file's bytes (kept alive after an unlink, like an open fd)
    bool writable = false;
  };
  static std::string normalize(std::string path);
  std::vector<std::byte>* content_of(io::handle h, bool for_write, std::string& why);

  mutable std::mutex mu_;
  std::map<std::string, directory> dirs_;  // by normalized path; parents exist for every entry
  std::map<std::int64_t, open_entry> open_;
  std::int64_t next_ = 0;
};

/// A new, empty in-memory backend.
std::unique_ptr<memory_backend> make_memory_backend();

}  // namespace meshckpt::backends
