#pragma once
// An in-memory backend for fuzzing the reader: one directory level of named byte vectors,
// operations completed synchronously. Enough of io::backend for read_manifest, read_tensors
// and verify (and writes, for generating seeds); refuses what the real backends refuse (names
// that are not plain, missing files).

#include <cerrno>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "meshckpt/format/names.hpp"
#include "meshckpt/io/backend.hpp"

namespace meshckpt::fuzzing {

class mem_backend final : public io::backend {
 public:
  std::map<std::string, std::vector<std::byte>> files;  // by name, in the one directory

  std::string_view name() const noexcept override { return "memory"; }
  io::capabilities caps() const override {
    io::capabilities c;
    c.host_filesystem = false;  // its directories are not the host's: no directory lock
    return c;
  }
  void open_dir(std::string, bool, io::completion<io::handle> done) override { done(io::handle{0}); }
  void open(io::handle, std::string n, io::open_mode m, io::completion<io::handle> done) override {
    std::lock_guard lk(mu_);
    if (!format::is_plain_name(n)) return done(make_error(errc::unsafe_path, "open " + n + ": not a plain name"));
    const bool create = m == io::open_mode::create_exclusive || m == io::open_mode::create_exclusive_direct;
    if (create) {
      if (files.contains(n)) return done(make_errno_error(EEXIST, "open", n));
      files[n];
    } else if (!files.contains(n)) {
      return done(make_errno_error(ENOENT, "open", n));
    }
    open_[++next_] = n;
    done(io::handle{next_});
  }
  void size(io::handle f, io::completion<std::uint64_t> done) override {
    std::lock_guard lk(mu_);
    auto* v = file(f);
    if (!v) return done(make_errno_error(EBADF, "stat", "?"));
    done(static_cast<std::uint64_t>(v->size()));
  }
  void read(io::handle f, std::uint64_t off, std::span<std::byte> buf, io::completion<std::size_t> done) override {
    std::size_t n = 0;
    {
      std::lock_guard lk(mu_);
      auto* v = file(f);
      if (!v) return done(make_errno_error(EBADF, "read", "?"));
      if (off < v->size()) {
        n = std::min<std::size_t>(buf.size(), v->size() - static_cast<std::size_t>(off));
        std::memcpy(buf.data(), v->data() + off, n);
      }
    }
    done(n);
  }
  void write(io::handle f, std::uint64_t off, std::span<const std::byte> buf, io::completion<void> done) override {
    {
      std::lock_guard lk(mu_);
      auto* v = file(f);
      if (!v) return done(make_errno_error(EBADF, "write", "?"));
      if (off + buf.size() > v->size()) v->resize(static_cast<std::size_t>(off + buf.size()));
      if (!buf.empty()) std::memcpy(v->data() + off, buf.data(), buf.size());
    }
    done(success());
  }
  void truncate(io::handle f, std::uint64_t n, io::completion<void> done) override {
    {
      std::lock_guard lk(mu_);
      auto* v = file(f);
      if (!v) return done(make_errno_error(EBADF, "truncate", "?"));
      v->resize(static_cast<std::size_t>(n));
    }
    done(success());
  }
  void fsync(io::handle, io::completion<void> done) override { done(success()); }
  void close(io::handle f, io::completion<void> done) override {
    {
      std::lock_guard lk(mu_);
      open_.erase(f.value);
    }
    done(success());
  }
  void rename(io::handle, std::string a, std::string b, io::completion<void> done) override {
    {
      std::lock_guard lk(mu_);
      auto it = files.find(a);
      if (it == files.end()) return done(make_errno_error(ENOENT, "rename", a));
      auto bytes = std::move(it->second);
      files.erase(it);
      files[b] = std::move(bytes);
    }
    done(success());
  }
  void unlink(io::handle, std::string n, io::completion<void> done) override {
    {
      std::lock_guard lk(mu_);
      if (!files.erase(n)) return done(make_errno_error(ENOENT, "unlink", n));
    }
    done(success());
  }
  void list(io::handle, io::completion<std::vector<io::dir_entry>> done) override {
    std::vector<io::dir_entry> out;
    {
      std::lock_guard lk(mu_);
      for (const auto& [n, v] : files) out.push_back({n, io::dir_entry::regular});
    }
    done(std::move(out));
  }

 private:
  std::vector<std::byte>* file(io::handle f) {
    auto it = open_.find(f.value);
    if (it == open_.end()) return nullptr;
    auto fit = files.find(it->second);
    return fit == files.end() ? nullptr : &fit->second;
  }
  std::mutex mu_;
  std::map<std::int64_t, std::string> open_;
  std::int64_t next_ = 0;
};

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
