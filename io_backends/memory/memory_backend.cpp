// The in-memory backend (memory.hpp). Every operation runs under one mutex and completes on the
// calling thread, after the mutex is released (a completion may start the next operation).

#include "meshckpt/backends/memory.hpp"

#include <cerrno>
#include <cstring>

#include "meshckpt/format/names.hpp"

namespace meshckpt::backends {

namespace {

bool creates(io::open_mode m) { return m == io::open_mode::create_exclusive || m == io::open_mode::create_exclusive_direct; }

error unsafe(const std::string& op, const std::string& name) {
  return make_error(errc::unsafe_path, op + " \"" + name + "\": not a plain file name inside the checkpoint directory");
}

}  // namespace

io::capabilities memory_backend::caps() const {
  io::capabilities c;
  c.alignment = 1;
  c.notes = "in memory";
  c.host_filesystem = false;
  return c;
}

std::string memory_backend::normalize(std::string path) {
  while (path.size() > 1 && path.ends_with('/')) path.pop_back();
  if (path.empty()) path = ".";
  return path;
}

void memory_backend::open_dir(std::string path, bool create, io::completion<io::handle> done) {
  result<io::handle> r = io::handle{};
  {
    std::lock_guard lk(mu_);
    path = normalize(std::move(path));
    if (!dirs_.contains(path)) {
      if (!create) {
        r = make_errno_error(ENOENT, "open directory", path);
      } else {
        // The directory and its parents, as mkdir -p would.
        for (std::size_t at = path.find('/', 1); at != std::string::npos; at = path.find('/', at + 1)) dirs_[path.substr(0, at)];
        dirs_[path];
      }
    }
    if (r) {
      open_[++next_] = open_entry{path, {}, nullptr, false};
      r = io::handle{next_};
    }
  }
  done(std::move(r));
}

void memory_backend::open(io::handle dir, std::string name, io::open_mode mode, io::completion<io::handle> done) {
  result<io::handle> r = io::handle{};
  {
    std::lock_guard lk(mu_);
    auto d = open_.find(dir.value);
    if (!format::is_plain_name(name)) {
      r = unsafe("open", name);
    } else if (d == open_.end() || !d->second.name.empty()) {
      r = make_errno_error(EBADF, "open", name);
    } else {
      const std::string& path = d->second.dir;
      auto& files = dirs_[path].files;
      const std::string sub = path == "/" ? "/" + name : path + "/" + name;
      auto it = files.find(name);
      if (dirs_.contains(sub)) {
        r = creates(mode) ? make_errno_error(EEXIST, "open", name) : unsafe("open", name);  // a directory
      } else if (mode == io::open_mode::replace) {
        r = make_error(errc::unsupported, "open " + name + ": open_mode::replace is for object stores");
      } else if (creates(mode)) {
        if (it != files.end()) {
          r = make_errno_error(EEXIST, "open", name);
        } else {
          auto content = std::make_shared<std::vector<std::byte>>();
          files.emplace(name, content);
          open_[++next_] = open_entry{path, name, content, true};
          r = io::handle{next_};
        }
      } else if (it == files.end()) {
        r = make_errno_error(ENOENT, "open", name);
      } else {
        open_[++next_] = open_entry{path, name, it->second, false};
        r = io::handle{next_};
      }
    }
  }
  done(std::move(r));
}

std::vector<std::byte>* memory_backend::content_of(io::handle h, bool for_write, std::string& why) {
  auto it = open_.find(h.value);
  if (it == open_.end() || !it->second.content) {
    why = "bad handle";
    return nullptr;
  }
  if (for_write && !it->second.writable) {
    why = it->second.name;
    return nullptr;
  }
  return it->second.content.get();
}

void memory_backend::size(io::handle f, io::completion<std::uint64_t> done) {
  result<std::uint64_t> r = std::uint64_t{0};
  {
    std::lock_guard lk(mu_);
    std::string why;
    auto* v = content_of(f, false, why);
    if (!v)
      r = make_errno_error(EBADF, "stat", why);
    else
      r = static_cast<std::uint64_t>(v->size());
  }
  done(std::move(r));
}

void memory_backend::read(io::handle f, std::uint64_t off, std::span<std::byte> buf, io::completion<std::size_t> done) {
  result<std::size_t> r = std::size_t{0};
  {
    std::lock_guard lk(mu_);
    std::string why;
    auto* v = content_of(f, false, why);
    if (!v) {
      r = make_errno_error(EBADF, "read", why);
    } else if (off < v->size()) {
      std::size_t n = std::min<std::size_t>(buf.size(), v->size() - static_cast<std::size_t>(off));
      if (n) std::memcpy(buf.data(), v->data() + off, n);  // (an empty buffer's data() may be null)
      r = n;
    }
  }
  done(std::move(r));
}

void memory_backend::write(io::handle f, std::uint64_t off, std::span<const std::byte> buf, io::completion<void> done) {
  result<void> r = success();
  {
    std::lock_guard lk(mu_);
    std::string why;
    auto* v = content_of(f, true, why);
    if (!v) {
      r = make_errno_error(EBADF, "write", why);
    } else {
      if (off + buf.size() > v->size()) v->resize(static_cast<std::size_t>(off + buf.size()));  // a hole reads as zeros
      if (!buf.empty()) std::memcpy(v->data() + off, buf.data(), buf.size());
    }
  }
  done(std::move(r));
}

void memory_backend::truncate(io::handle f, std::uint64_t n, io::completion<void> done) {
  result<void> r = success();
  {
    std::lock_guard lk(mu_);
    std::string why;
    auto* v = content_of(f, true, why);
    if (!v)
      r = make_errno_error(EBADF, "truncate", why);
    else
      v->resize(static_cast<std::size_t>(n));
  }
  done(std::move(r));
}

void memory_backend::fsync(io::handle h, io::completion<void> done) {
  result<void> r = success();
  {
    std::lock_guard lk(mu_);
    if (!open_.contains(h.value)) r = make_errno_error(EBADF, "fsync", "bad handle");
  }
  done(std::move(r));
}

void memory_backend::close(io::handle h, io::completion<void> done) {
  result<void> r = success();
  {
    std::lock_guard lk(mu_);
    if (!open_.erase(h.value)) r = make_errno_error(EBADF, "close", "bad handle");
  }
  done(std::move(r));
}

void memory_backend::rename(io::handle dir, std::string from, std::string to, io::completion<void> done) {
  result<void> r = success();
  {
    std::lock_guard lk(mu_);
    auto d = open_.find(dir.value);
    if (!format::is_plain_name(from) || !format::is_plain_name(to)) {
      r = unsafe("rename", format::is_plain_name(from) ? to : from);
    } else if (d == open_.end() || !d->second.name.empty()) {
      r = make_errno_error(EBADF, "rename", from);
    } else {
      auto& files = dirs_[d->second.dir].files;
      auto it = files.find(from);
      if (it == files.end()) {
        r = make_errno_error(ENOENT, "rename", from + " -> " + to);
      } else {
        auto content = it->second;
        files.erase(it);
        files[to] = std::move(content);  // atomically replaces `to`
      }
    }
  }
  done(std::move(r));
}

void memory_backend::unlink(io::handle dir, std::string name, io::completion<void> done) {
  result<void> r = success();
  {
    std::lock_guard lk(mu_);
    auto d = open_.find(dir.value);
    if (!format::is_plain_name(name))
      r = unsafe("unlink", name);
    else if (d == open_.end() || !d->second.name.empty())
      r = make_errno_error(EBADF, "unlink", name);
    else if (!dirs_[d->second.dir].files.erase(name))
      r = make_errno_error(ENOENT, "unlink", name);
  }
  done(std::move(r));
}

void memory_backend::list(io::handle dir, io::completion<std::vector<io::dir_entry>> done) {
  result<std::vector<io::dir_entry>> r = std::vector<io::dir_entry>{};
  {
    std::lock_guard lk(mu_);
    auto d = open_.find(dir.value);
    if (d == open_.end() || !d->second.name.empty()) {
      r = make_errno_error(EBADF, "list", "bad handle");
    } else {
      const std::string& path = d->second.dir;
      std::map<std::string, io::dir_entry::kind> entries;
      for (const auto& [n, v] : dirs_[path].files) entries[n] = io::dir_entry::regular;
      const std::string stem = path == "/" ? "/" : path + "/";
      for (const auto& [p, unused] : dirs_)
        if (p.size() > stem.size() && p.starts_with(stem) && p.find('/', stem.size()) == std::string::npos)
          entries[p.substr(stem.size())] = io::dir_entry::directory;
      for (const auto& [n, k] : entries) r->push_back({n, k});
    }
  }
  done(std::move(r));
}

std::vector<std::byte>& memory_backend::file(const std::string& name, const std::string& dir) {
  std::lock_guard lk(mu_);
  const std::string path = normalize(dir);
  for (std::size_t at = path.find('/', 1); at != std::string::npos; at = path.find('/', at + 1)) dirs_[path.substr(0, at)];
  auto& slot = dirs_[path].files[name];
  if (!slot) slot = std::make_shared<std::vector<std::byte>>();
  return *slot;
}

bool memory_backend::has_file(const std::string& name, const std::string& dir) const {
  std::lock_guard lk(mu_);
  auto d = dirs_.find(normalize(dir));
  return d != dirs_.end() && d->second.files.contains(name);
}

std::size_t memory_backend::open_handles() const {
  std::lock_guard lk(mu_);
  return open_.size();
}

std::unique_ptr<memory_backend> make_memory_backend() { return std::make_unique<memory_backend>(); }

}  // namespace meshckpt::backends
