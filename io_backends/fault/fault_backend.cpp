#include "meshckpt/backends/fault.hpp"

#include <cerrno>
#include <filesystem>
#include <sys/stat.h>

#include <fstream>
#include <iterator>
#include <map>
#include <random>

namespace meshckpt::backends {

namespace fs = std::filesystem;

const char* to_string(fault_op::kind k) noexcept {
  switch (k) {
    case fault_op::open_dir: return "open_dir";
    case fault_op::open: return "open";
    case fault_op::size: return "size";
    case fault_op::read: return "read";
    case fault_op::write: return "write";
    case fault_op::truncate: return "truncate";
    case fault_op::fsync: return "fsync";
    case fault_op::close: return "close";
    case fault_op::rename: return "rename";
    case fault_op::unlink: return "unlink";
    case fault_op::list: return "list";
  }
  return "?";
}

const char* to_string(crash_state s) noexcept {
  switch (s) {
    case crash_state::keep_all: return "keep-all";
    case crash_state::drop_unsynced_data: return "drop-unsynced-data";
    case crash_state::drop_unsynced_entries: return "drop-unsynced-entries";
    case crash_state::power_loss: return "power-loss";
    case crash_state::torn: return "torn";
  }
  return "?";
}

namespace {

// The content of a regular file (what a crash state may restore), or nullopt. Names come from
// the caller unchecked (the inner backend refuses the unsafe ones): "." or "" name the directory
// itself, which must not be read as a file (found by the conformance suite).
std::optional<std::string> read_all(const std::string& path) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) return std::nullopt;
  try {
    std::ifstream f(path, std::ios::binary);
    if (!f) return std::nullopt;
    return std::string(std::istreambuf_iterator<char>(f), {});
  } catch (const std::ios_base::failure&) {
    return std::nullopt;
  }
}

void write_all(const std::string& path, const std::string& content) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(content.data(), static_cast<std::streamsize>(content.size()));
}

}  // namespace

// What is durable, as far as this backend knows.
struct fault_backend::model {
  struct handle_info {
    std::string path;
    bool dir = false;
  };
  std::map<std::int64_t, handle_info> handles;
  // Files this backend created or changed, by current path: the content at their last fsync
  // (nullopt: never fsynced, so nothing of it is durable).
  std::map<std::string, std::optional<std::string>> files;
  struct entry_change {
    enum kind { created, renamed, unlinked } k;
    std::string a, b;                                     // created/unlinked: a; renamed: a -> b
    std::optional<std::string> old_content;               // renamed: what b held; unlinked: what a held
    std::optional<std::optional<std::string>> old_state;  // its entry in `files`, if tracked
  };
  std::map<std::string, std::vector<entry_change>> pending;  // by directory path, since its last fsync
};

fault_backend::fault_backend(std::shared_ptr<io::backend> inner, fault_plan plan)
    : forwarding_backend(std::move(inner)), plan_(std::move(plan)), m_(std::make_unique<model>()) {}

fault_backend::~fault_backend() = default;

void fault_backend::reset(fault_plan plan) {
  std::lock_guard lk(mu_);
  plan_ = std::move(plan);
  next_ = 0;
  injected_ = 0;
  log_.clear();
}

std::uint64_t fault_backend::ops() const {
  std::lock_guard lk(mu_);
  return next_;
}

std::vector<fault_op> fault_backend::log() const {
  std::lock_guard lk(mu_);
  return log_;
}

std::uint64_t fault_backend::injected() const {
  std::lock_guard lk(mu_);
  return injected_;
}

std::string fault_backend::path_of(io::handle h, bool* is_dir) const {
  auto it = m_->handles.find(h.value);
  if (it == m_->handles.end()) return "?";
  if (is_dir) *is_dir = it->second.dir;
  return it->second.path;
}

std::optional<error> fault_backend::admit(fault_op op, bool* short_transfer) {
  // mu_ held by the caller.
  op.index = next_++;
  const bool crashed = plan_.crash_at && op.index >= *plan_.crash_at;
  const bool hit = plan_.fail_at && (op.index == *plan_.fail_at || (plan_.persistent && op.index > *plan_.fail_at));
  std::optional<error> e;
  if (crashed) {
    op.skipped = true;
    e = make_errno_error(EIO, std::string(to_string(op.k)) + " (after the simulated crash)", op.path);
  } else if (hit && op.k != fault_op::close) {
    if (plan_.short_transfer && short_transfer && (op.k == fault_op::write || op.k == fault_op::read) && op.index == *plan_.fail_at) {
      *short_transfer = true;
    } else {
      e = make_errno_error(plan_.err, std::string(to_string(op.k)) + " (injected)", op.path);
    }
    op.injected = true;
  }
  if (op.injected || op.skipped) ++injected_;
  log_.push_back(std::move(op));
  return e;
}

void fault_backend::open_dir(std::string path, bool create, io::completion<io::handle> done) {
  {
    std::lock_guard lk(mu_);
    fault_op op;
    op.k = fault_op::open_dir;
    op.path = path;
    if (auto e = admit(op)) return done(*e);
  }
  inner_->open_dir(path, create, [this, path, done = std::move(done)](result<io::handle> r) {
    if (r) {
      std::lock_guard lk(mu_);
      m_->handles[r->value] = {path, true};
    }
    done(std::move(r));
  });
}

void fault_backend::open(io::handle dir, std::string name, io::open_mode mode, io::completion<io::handle> done) {
  std::string dpath, path;
  {
    std::lock_guard lk(mu_);
    dpath = path_of(dir);
    path = dpath + "/" + name;
    fault_op op;
    op.k = fault_op::open;
    op.path = path;
    op.mode = mode;
    if (auto e = admit(op)) return done(*e);
  }
  const bool creates = mode != io::open_mode::read && mode != io::open_mode::read_direct;
  inner_->open(dir, name, mode, [this, dpath, name, path, creates, done = std::move(done)](result<io::handle> r) {
    if (r) {
      std::lock_guard lk(mu_);
      m_->handles[r->value] = {path, false};
      if (creates) {
        m_->files[path] = std::nullopt;
        m_->pending[dpath].push_back({model::entry_change::created, name, {}, {}, {}});
      }
    }
    done(std::move(r));
  });
}

void fault_backend::size(io::handle file, io::completion<std::uint64_t> done) {
  {
    std::lock_guard lk(mu_);
    fault_op op;
    op.k = fault_op::size;
    op.path = path_of(file);
    if (auto e = admit(op)) return done(*e);
  }
  inner_->size(file, std::move(done));
}

void fault_backend::read(io::handle file, std::uint64_t offset, std::span<std::byte> buf, io::completion<std::size_t> done) {
  bool short_read = false;
  {
    std::lock_guard lk(mu_);
    fault_op op;
    op.k = fault_op::read;
    op.path = path_of(file);
    op.offset = offset;
    op.length = buf.size();
    if (auto e = admit(op, &short_read)) return done(*e);
  }
  if (!short_read) return inner_->read(file, offset, buf, std::move(done));
  inner_->read(file, offset, buf, [done = std::move(done)](result<std::size_t> r) {
    if (r) r = *r / 2;  // as if the file ended halfway
    done(std::move(r));
  });
}

void fault_backend::write(io::handle file, std::uint64_t offset, std::span<const std::byte> buf, io::completion<void> done) {
  bool short_write = false;
  std::string path;
  {
    std::lock_guard lk(mu_);
    fault_op op;
    op.k = fault_op::write;
    op.path = path = path_of(file);
    op.offset = offset;
    op.length = buf.size();
    if (auto e = admit(op, &short_write)) return done(*e);
  }
  if (!short_write) return inner_->write(file, offset, buf, std::move(done));
  // Half of it (whole 4 KiB blocks, for O_DIRECT) reaches the file, then the disk is full.
  const std::size_t half = buf.size() / 2 / 4096 * 4096;
  auto fail = [path, done](result<void>) { done(make_errno_error(ENOSPC, "write (injected short write)", path)); };
  if (half == 0) return fail(success());
  inner_->write(file, offset, buf.first(half), fail);
}

void fault_backend::truncate(io::handle file, std::uint64_t size, io::completion<void> done) {
  {
    std::lock_guard lk(mu_);
    fault_op op;
    op.k = fault_op::truncate;
    op.path = path_of(file);
    op.length = size;
    if (auto e = admit(op)) return done(*e);
  }
  inner_->truncate(file, size, std::move(done));
}

void fault_backend::fsync(io::handle file, io::completion<void> done) {
  std::string path;
  bool dir = false;
  {
    std::lock_guard lk(mu_);
    path = path_of(file, &dir);
    fault_op op;
    op.k = fault_op::fsync;
    op.path = path;
    op.on_dir = dir;
    if (auto e = admit(op)) return done(*e);
  }
  inner_->fsync(file, [this, path, dir, done = std::move(done)](result<void> r) {
    if (r) {
      std::lock_guard lk(mu_);
      if (dir)
        m_->pending.erase(path);
      else
        m_->files[path] = read_all(path);  // what a crash from now on keeps of it
    }
    done(std::move(r));
  });
}

void fault_backend::close(io::handle file, io::completion<void> done) {
  std::optional<error> e;
  {
    std::lock_guard lk(mu_);
    bool dir = false;
    fault_op op;
    op.k = fault_op::close;
    op.path = path_of(file, &dir);
    op.on_dir = dir;
    e = admit(op);
    m_->handles.erase(file.value);
  }
  // A close always releases the descriptor (a dead process's descriptors are closed too).
  inner_->close(file, [e, done = std::move(done)](result<void> r) { done(e ? result<void>(*e) : r); });
}

void fault_backend::rename(io::handle dir, std::string from, std::string to, io::completion<void> done) {
  std::string dpath;
  std::optional<std::string> replaced;
  {
    std::lock_guard lk(mu_);
    dpath = path_of(dir);
    fault_op op;
    op.k = fault_op::rename;
    op.path = dpath + "/" + from;
    op.path2 = dpath + "/" + to;
    if (auto e = admit(op)) return done(*e);
    replaced = read_all(dpath + "/" + to);
  }
  inner_->rename(dir, from, to, [this, dpath, from, to, replaced, done = std::move(done)](result<void> r) {
    if (r) {
      std::lock_guard lk(mu_);
      const std::string a = dpath + "/" + from, b = dpath + "/" + to;
      model::entry_change c{model::entry_change::renamed, from, to, replaced, {}};
      if (auto it = m_->files.find(b); it != m_->files.end()) c.old_state = it->second;
      m_->pending[dpath].push_back(std::move(c));
      if (auto it = m_->files.find(a); it != m_->files.end()) {
        m_->files[b] = it->second;
        m_->files.erase(a);
      } else {
        m_->files.erase(b);
      }
    }
    done(std::move(r));
  });
}

void fault_backend::unlink(io::handle dir, std::string name, io::completion<void> done) {
  std::string dpath;
  std::optional<std::string> content;
  {
    std::lock_guard lk(mu_);
    dpath = path_of(dir);
    fault_op op;
    op.k = fault_op::unlink;
    op.path = dpath + "/" + name;
    if (auto e = admit(op)) return done(*e);
    content = read_all(dpath + "/" + name);
  }
  inner_->unlink(dir, name, [this, dpath, name, content, done = std::move(done)](result<void> r) {
    if (r) {
      std::lock_guard lk(mu_);
      const std::string p = dpath + "/" + name;
      model::entry_change c{model::entry_change::unlinked, name, {}, content, {}};
      if (auto it = m_->files.find(p); it != m_->files.end()) {
        c.old_state = it->second;
        m_->files.erase(it);
      }
      m_->pending[dpath].push_back(std::move(c));
    }
    done(std::move(r));
  });
}

void fault_backend::list(io::handle dir, io::completion<std::vector<io::dir_entry>> done) {
  {
    std::lock_guard lk(mu_);
    fault_op op;
    op.k = fault_op::list;
    op.path = path_of(dir);
    if (auto e = admit(op)) return done(*e);
  }
  inner_->list(dir, std::move(done));
}

void fault_backend::mark_durable() {
  std::lock_guard lk(mu_);
  m_->files.clear();
  m_->pending.clear();
}

std::size_t fault_backend::materialize(crash_state s, std::uint64_t seed) {
  std::lock_guard lk(mu_);
  std::size_t changed = 0;
  std::error_code ec;
  if (s == crash_state::drop_unsynced_entries || s == crash_state::power_loss) {
    for (auto& [dir, changes] : m_->pending) {
      for (auto it = changes.rbegin(); it != changes.rend(); ++it) {
        const std::string a = dir + "/" + it->a, b = dir + "/" + it->b;
        switch (it->k) {
          case model::entry_change::created:
            fs::remove(a, ec);
            m_->files.erase(a);
            break;
          case model::entry_change::renamed: {
            fs::rename(b, a, ec);
            if (auto f = m_->files.find(b); f != m_->files.end()) {
              m_->files[a] = f->second;
              m_->files.erase(b);
            }
            if (it->old_content) write_all(b, *it->old_content);
            if (it->old_state) m_->files[b] = *it->old_state;
            break;
          }
          case model::entry_change::unlinked:
            if (it->old_content) write_all(a, *it->old_content);
            if (it->old_state) m_->files[a] = *it->old_state;
            break;
        }
        ++changed;
      }
    }
  }
  if (s == crash_state::drop_unsynced_data || s == crash_state::power_loss || s == crash_state::torn) {
    std::mt19937_64 rng(seed);
    for (const auto& [path, synced] : m_->files) {
      auto now = read_all(path);
      if (!now) continue;
      const std::string& kept = synced ? *synced : std::string();
      if (*now == kept) continue;
      if (s == crash_state::torn) {
        // A prefix of the unsynced writes made it: a random whole number of 4 KiB blocks.
        std::uint64_t lo = (kept.size() + 4095) / 4096, hi = (now->size() + 4095) / 4096;
        std::uint64_t blocks = lo + (hi > lo ? rng() % (hi - lo + 1) : 0);
        write_all(path, now->substr(0, std::min<std::size_t>(now->size(), blocks * 4096)));
      } else {
        write_all(path, kept);
      }
      ++changed;
    }
  }
  m_->files.clear();
  m_->pending.clear();
  return changed;
}

}  // namespace meshckpt::backends
