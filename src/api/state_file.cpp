// The directory's `checkpoint` state file (TensorFlow's CheckpointState text format), checkpoint
// deletion, and latest_checkpoint. The state file is hostile input like any other: bounded in
// size, parsed strictly, paths must be plain names (relative to the directory).

#include "state_file.hpp"

#include <set>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstdio>
#include <random>

#include "../pipeline/dir_lock.hpp"
#include "../runtime/durable_replace.hpp"
#include "meshckpt/io/url.hpp"
#include "meshckpt/pipeline/tensor_io_async.hpp"
#include "meshckpt/interchange/tf_bundle_io.hpp"
#include "meshckpt/backends/posix.hpp"
#include "meshckpt/format/names.hpp"

namespace meshckpt {

using detail::close_quietly;
using runtime::on_unwind;
using runtime::spawn;
using runtime::task;
using runtime::use_awaitable;
namespace asio = boost::asio;

namespace {

constexpr std::uint64_t max_state_bytes = 16u << 20;
constexpr std::string_view state_name = "checkpoint";

std::string quote(std::string_view s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

std::string number(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.6f", v);
  return buf;
}

// Runs `body(dir)` on directory `dir_path` opened (and created, with `create`), and closes it
// whatever happens, an allocation failure included.
template <class T, class Body>
task<T> in_directory(io::backend& b, std::string dir_path, bool create, std::string during, Body body) {
  auto ex = co_await asio::this_coro::executor;
  auto d = co_await io::async_open_dir(b, ex, dir_path, create, use_awaitable);
  if (!d) {
    if (d.error().code == std::errc::no_such_file_or_directory)
      co_return make_error(errc::not_found, "directory " + dir_path + " does not exist");
    co_return d.error();
  }
  on_unwind last_resort([&] { io::close_detached(b, *d); });
  std::optional<result<T>> r;
  try {
    r = co_await body(*d);
  } catch (const std::bad_alloc&) {
    r = out_of_memory(during);
  }
  co_await close_quietly(b, *d);
  last_resort.disarm();
  co_return std::move(*r);
}

// Takes the directory's writer lock for a deletion or cleanup (shared with this process's own
// writers; refused while another process writes there).
task<detail::dir_lock> lock_for_cleanup(io::backend& b, const std::string& dir) {
  if (!b.caps().host_filesystem && !io::is_url(dir)) co_return detail::dir_lock();  // a private namespace (in memory)
  auto locking = detail::try_lock_dir_async(dir);                                   // an s3:// prefix: its lease
  co_return co_await std::move(locking);
}

}  // namespace

std::string format_checkpoint_state(const checkpoint_state& s) {
  std::string out = "model_checkpoint_path: " + quote(s.model_checkpoint_path) + "\n";
  for (const auto& p : s.all_model_checkpoint_paths) out += "all_model_checkpoint_paths: " + quote(p) + "\n";
  for (double t : s.all_model_checkpoint_timestamps) out += "all_model_checkpoint_timestamps: " + number(t) + "\n";
  out += "last_preserved_timestamp: " + number(s.last_preserved_timestamp) + "\n";
  return out;
}

result<checkpoint_state> parse_checkpoint_state(std::string_view text) {
  checkpoint_state s;
  bool have_model = false;
  std::size_t line_no = 0;
  while (!text.empty()) {
    ++line_no;
    auto nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    text = nl == std::string_view::npos ? std::string_view{} : text.substr(nl + 1);
    while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.remove_suffix(1);
    if (line.empty() || line.front() == '#') continue;
    auto bad = [&](std::string why) {
      return make_error(errc::corrupt_manifest, "checkpoint state file line " + std::to_string(line_no) + ": " + why);
    };
    auto colon = line.find(':');
    if (colon == std::string_view::npos) return bad("expected \"field: value\"");
    std::string_view field = line.substr(0, colon), value = line.substr(colon + 1);
    while (!value.empty() && value.front() == ' ') value.remove_prefix(1);
    auto parse_string = [&](std::string& out) -> result<void> {
      if (value.size() < 2 || value.front() != '"' || value.back() != '"') return bad("expected a quoted string");
      for (std::size_t i = 1; i + 1 < value.size(); ++i) {
        char c = value[i];
        if (c == '\\') {
          if (i + 2 >= value.size()) return bad("dangling escape");
          c = value[++i];
        }
        out += c;
      }
      // An absolute path (TensorFlow writes them; the directory may have been copied from
      // another machine) stands for its base name in this directory, as TensorFlow resolves it.
      if (out.starts_with('/')) out.erase(0, out.rfind('/') + 1);
      if (!format::is_plain_name(out)) return bad("path \"" + out + "\" is not a plain name inside the directory");
      return success();
    };
    auto parse_number = [&](double& out) -> result<void> {
      std::string v(value);
      char* end = nullptr;
      out = std::strtod(v.c_str(), &end);
      if (v.empty() || *end != '\0') return bad("expected a number");
      return success();
    };
    if (field == "model_checkpoint_path") {
      s.model_checkpoint_path.clear();
      BOOST_OUTCOME_TRY(parse_string(s.model_checkpoint_path));
      have_model = true;
    } else if (field == "all_model_checkpoint_paths") {
      std::string p;
      BOOST_OUTCOME_TRY(parse_string(p));
      s.all_model_checkpoint_paths.push_back(std::move(p));
    } else if (field == "all_model_checkpoint_timestamps") {
      double t;
      BOOST_OUTCOME_TRY(parse_number(t));
      s.all_model_checkpoint_timestamps.push_back(t);
    } else if (field == "last_preserved_timestamp") {
      BOOST_OUTCOME_TRY(parse_number(s.last_preserved_timestamp));
    } else {
      return bad("unknown field \"" + std::string(field) + "\"");
    }
    if (s.all_model_checkpoint_paths.size() > 1000000) return bad("too many paths");
  }
  if (!have_model) return make_error(errc::corrupt_manifest, "checkpoint state file has no model_checkpoint_path");
  if (!s.all_model_checkpoint_timestamps.empty() && s.all_model_checkpoint_timestamps.size() != s.all_model_checkpoint_paths.size())
    return make_error(errc::corrupt_manifest, "checkpoint state file has " + std::to_string(s.all_model_checkpoint_paths.size()) +
                                                  " paths but " + std::to_string(s.all_model_checkpoint_timestamps.size()) + " timestamps");
  return s;
}

namespace detail {

task<void> make_directory(io::backend& b, std::string dir) {
  auto op = in_directory<void>(b, std::move(dir), true, "creating a directory", [](io::handle) -> task<void> { co_return success(); });
  co_return co_await std::move(op);
}

namespace {

// The state file of open directory `d` (named `dir` in messages).
task<checkpoint_state> read_state_in(io::backend& b, io::handle d, const std::string& dir, std::string* version) {
  auto ex = co_await asio::this_coro::executor;
  const std::string file(state_name);
  auto h = co_await io::async_open(b, ex, d, file, io::open_mode::read, use_awaitable);
  if (!h) {
    if (version) version->clear();
    if (h.error().code == std::errc::no_such_file_or_directory) co_return make_error(errc::not_found, "no checkpoint state file in " + dir);
    co_return h.error();
  }
  on_unwind last_resort([&] { io::close_detached(b, *h); });
  if (version) *version = b.version(*h);
  std::optional<result<checkpoint_state>> out;
  try {
    auto size = co_await io::async_size(b, ex, *h, use_awaitable);
    if (!size) {
      out = size.error();
    } else if (*size > max_state_bytes) {
      out = make_error(errc::limit_exceeded, dir + "/checkpoint is larger than 16 MiB");
    } else {
      std::string text(*size, '\0');
      auto n = co_await io::async_read(b, ex, *h, 0, std::as_writable_bytes(std::span(text.data(), text.size())), use_awaitable);
      if (!n) {
        out = n.error();
      } else {
        text.resize(*n);
        auto st = parse_checkpoint_state(text);
        out = st ? std::move(st) : result<checkpoint_state>(with_context(st.error(), dir + "/checkpoint"));
      }
    }
  } catch (const std::bad_alloc&) {
    out = out_of_memory("reading the checkpoint state file");
  }
  co_await close_quietly(b, *h);
  last_resort.disarm();
  co_return std::move(*out);
}

}  // namespace

task<checkpoint_state> read_state(io::backend& b, std::string dir, std::string* version) {
  if (dir.empty()) dir = ".";
  auto op = in_directory<checkpoint_state>(b, dir, false, "reading the checkpoint state file", [&](io::handle d) -> task<checkpoint_state> {
    auto read = read_state_in(b, d, dir, version);
    co_return co_await std::move(read);
  });
  auto r = co_await std::move(op);
  co_return r;
}

task<void> write_state(io::backend& b, std::string dir, checkpoint_state st, state_cas* cas, state_merge merge) {
  if (dir.empty()) dir = ".";
  static std::atomic<std::uint64_t> counter{0};
  std::uint64_t token = (static_cast<std::uint64_t>(std::random_device{}()) << 32) ^ counter++ ^
                        static_cast<std::uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
  std::string tmp = std::string(state_name) + ".tmp-" + format::token_hex(token);
  auto op = in_directory<void>(b, dir, true, "updating the checkpoint state file", [&](io::handle d) -> task<void> {
    auto ex = co_await asio::this_coro::executor;
    const std::string file(state_name);
    if (!b.caps(d).atomic_rename) {
      std::optional<std::string> expected = cas ? cas->version : std::nullopt;
      constexpr int max_tries = 8;
      for (int attempt = 1;; ++attempt) {
        if (!expected) {
          std::string v;
          auto read = read_state_in(b, d, dir, &v);
          auto theirs = co_await std::move(read);
          if (!theirs && theirs.error().code != errc::not_found && v.empty()) co_return theirs.error();
          expected = v;  // a damaged state file is replaced like any other
        }
        const std::string text = format_checkpoint_state(st);
        std::string published;
        runtime::replace_options o;
        o.if_version = expected;
        o.new_version = &published;
        auto replaced = runtime::durable_replace(b, d, tmp, file, std::as_bytes(std::span(text.data(), text.size())), o);
        auto r = co_await std::move(replaced);
        if (r) {
          if (cas) cas->version = published;
          co_return success();
        }
        const bool conflict = r.error().code == std::errc::file_exists || r.error().code == std::error_code(ESTALE, std::system_category());
        if (!conflict) co_return r.error();
        if (attempt == max_tries)
          co_return with_context(r.error(), "another writer replaced it " + std::to_string(max_tries) + " times in a row");
        // Another writer replaced it since `expected`: read theirs, fold this update in, retry.
        std::string v;
        auto read = read_state_in(b, d, dir, &v);
        auto theirs = co_await std::move(read);
        if (!theirs && theirs.error().code != errc::not_found && v.empty()) co_return theirs.error();
        if (theirs && merge) st = merge(std::move(st), *theirs);
        expected = v;
      }
    }
    std::string text = format_checkpoint_state(st);
    auto replaced = runtime::durable_replace(b, d, tmp, file, std::as_bytes(std::span(text.data(), text.size())));
    BOOST_OUTCOME_CO_TRY(co_await std::move(replaced));
    // Best effort: temp state files of updates that died before their rename (the exact
    // pattern "checkpoint.tmp-<16 hex>" is only ever written here).
    if (auto entries = co_await io::async_list(b, ex, d, use_awaitable)) {
      const std::string stem = std::string(state_name) + ".tmp-";
      for (const auto& e : *entries)
        if (e.type == io::dir_entry::regular && e.name.size() == stem.size() + 16 && e.name.starts_with(stem) &&
            e.name.find_first_not_of("0123456789abcdef", stem.size()) == std::string::npos)
          (void)co_await io::async_unlink(b, ex, d, e.name, use_awaitable);
    }
    co_return success();
  });
  auto r = co_await std::move(op);
  if (!r) co_return with_context(r.error(), "update " + dir + "/checkpoint");
  co_return r;
}

task<void> delete_checkpoint(io::backend& b, std::string prefix) {
  // Not a structured binding: clang 14 cannot capture those in lambdas.
  const auto parts = split_prefix(prefix);
  const std::string& dir = parts.first;
  const std::string& base = parts.second;
  BOOST_OUTCOME_CO_TRY(format::check_base_name(base));
  auto op = in_directory<void>(b, dir, false, "deleting a checkpoint", [&](io::handle d) -> task<void> {
    auto ex = co_await asio::this_coro::executor;
    // Deleting is writing: never while another process writes here.
    auto locking = lock_for_cleanup(b, dir);
    BOOST_OUTCOME_CO_TRY(auto lock, co_await std::move(locking));
    const std::string manifest = format::manifest_name(base);
    auto rm = co_await io::async_unlink(b, ex, d, manifest, use_awaitable);
    if (!rm && rm.error().code != std::errc::no_such_file_or_directory) co_return rm;
    BOOST_OUTCOME_CO_TRY(co_await io::async_fsync(b, ex, d, use_awaitable));
    // Only files this library writes for this name: its data files and temp manifests, found by
    // their exact name patterns (never mistaken for another checkpoint's or a foreign file).
    BOOST_OUTCOME_CO_TRY(auto entries, co_await io::async_list(b, ex, d, use_awaitable));
    for (const auto& e : entries) {
      auto k = format::classify(e.name);
      if (k.base != base || (k.k != format::name_kind::data && k.k != format::name_kind::temp_manifest)) continue;
      auto u = co_await io::async_unlink(b, ex, d, e.name, use_awaitable);
      if (!u && u.error().code != std::errc::no_such_file_or_directory) co_return u;
    }
    co_return success();
  });
  auto r = co_await std::move(op);
  if (!r) co_return with_context(r.error(), "delete checkpoint " + prefix);
  co_return r;
}

task<std::size_t> remove_orphans(io::backend& b, std::string dir, std::string name) {
  auto op = in_directory<std::size_t>(b, dir, false, "removing leftovers", [&](io::handle d) -> task<std::size_t> {
    auto ex = co_await asio::this_coro::executor;
    // Files of a save in progress look like leftovers: only under the lock.
    auto locking = lock_for_cleanup(b, dir);
    BOOST_OUTCOME_CO_TRY(auto lock, co_await std::move(locking));
    BOOST_OUTCOME_CO_TRY(auto entries, co_await io::async_list(b, ex, d, use_awaitable));
    auto numbered = [&](const std::string& base) {
      if (base.size() <= name.size() + 1 || !base.starts_with(name) || base[name.size()] != '-') return false;
      return base.find_first_not_of("0123456789", name.size() + 1) == std::string::npos;
    };
    std::set<std::string> committed;
    for (const auto& e : entries) {
      auto k = format::classify(e.name);
      if (k.k == format::name_kind::manifest) committed.insert(k.base);
    }
    std::size_t removed = 0;
    for (const auto& e : entries) {
      if (e.type != io::dir_entry::regular) continue;
      auto k = format::classify(e.name);
      if (k.k != format::name_kind::data && k.k != format::name_kind::temp_manifest) continue;
      if (!numbered(k.base) || committed.contains(k.base)) continue;
      auto u = co_await io::async_unlink(b, ex, d, e.name, use_awaitable);
      if (!u && u.error().code != std::errc::no_such_file_or_directory) co_return u.error();
      if (u) ++removed;
    }
    // An object store's multipart uploads of writers that died before publishing.
    auto discarded = io::async_op<std::size_t>(
        ex, [&](io::completion<std::size_t> c) { b.discard_unpublished(d, std::move(c)); }, use_awaitable);
    BOOST_OUTCOME_CO_TRY(auto uploads, co_await std::move(discarded));
    co_return removed + uploads;
  });
  auto r = co_await std::move(op);
  if (!r) co_return with_context(r.error(), "remove leftovers in " + dir);
  co_return r;
}

task<std::optional<std::string>> latest_checkpoint(io::backend& b, std::string dir) {
  if (dir.empty()) dir = ".";
  while (dir.size() > 1 && dir.ends_with('/')) dir.pop_back();
  auto op = read_state(b, dir);
  auto s = co_await std::move(op);
  if (!s) co_return std::optional<std::string>();
  std::string prefix = dir + "/" + s->model_checkpoint_path;
  auto ex = co_await asio::this_coro::executor;
  auto m = co_await async_read_manifest(ex, b, prefix, use_awaitable);
  if (m) co_return std::optional<std::string>(prefix);
  if (m.error().code != errc::not_found) co_return std::optional<std::string>();
  // A TensorFlow checkpoint (written by TensorFlow into this directory): its index is there.
  auto tf = co_await async_read_tf_bundle_index(ex, b, prefix, use_awaitable);
  if (!tf) co_return std::optional<std::string>();
  co_return std::optional<std::string>(prefix);
}

void start_latest_checkpoint(asio::any_io_executor ex, std::string dir, io::completion<std::optional<std::string>> done) {
  std::shared_ptr<io::backend> b = backends::make_posix_backend();
  auto& be = *b;
  spawn<std::optional<std::string>>(ex, latest_checkpoint(be, std::move(dir)),
                                    [b, done = std::move(done)](result<std::optional<std::string>> r) { done(std::move(r)); });
}

}  // namespace detail

result<checkpoint_state> read_checkpoint_state(io::backend& b, std::string_view dir) {
  return runtime::run_blocking<checkpoint_state>("read_checkpoint_state", [&](auto ex, auto done) {
    spawn<checkpoint_state>(ex, detail::read_state(b, std::string(dir)), std::move(done));
  });
}

result<checkpoint_state> read_checkpoint_state(std::string_view dir) {
  auto b = backends::make_posix_backend();
  return read_checkpoint_state(*b, dir);
}

result<void> write_checkpoint_state(io::backend& b, std::string_view dir, const checkpoint_state& s) {
  return runtime::run_blocking<void>(
      "write_checkpoint_state", [&](auto ex, auto done) { spawn<void>(ex, detail::write_state(b, std::string(dir), s), std::move(done)); });
}

std::optional<std::string> latest_checkpoint(std::string_view dir) {
  auto b = backends::make_posix_backend();
  auto r = runtime::run_blocking<std::optional<std::string>>("latest_checkpoint", [&](auto ex, auto done) {
    spawn<std::optional<std::string>>(ex, detail::latest_checkpoint(*b, std::string(dir)), std::move(done));
  });
  return r ? *r : std::nullopt;
}

result<void> delete_checkpoint(io::backend& b, std::string_view prefix) {
  return runtime::run_blocking<void>("delete_checkpoint", [&](auto ex, auto done) {
    spawn<void>(ex, detail::delete_checkpoint(b, std::string(prefix)), std::move(done));
  });
}

result<std::size_t> remove_orphans(io::backend& b, std::string_view dir, std::string_view name) {
  return runtime::run_blocking<std::size_t>("remove_orphans", [&](auto ex, auto done) {
    spawn<std::size_t>(ex, detail::remove_orphans(b, std::string(dir), std::string(name)), std::move(done));
  });
}

}  // namespace meshckpt
