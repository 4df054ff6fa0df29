// The directory's `checkpoint` state file (TensorFlow's CheckpointState text format), checkpoint
// deletion, and latest_checkpoint. The state file is hostile input like any other: bounded in
// size, parsed strictly, paths must be plain names (relative to the directory).

#include <set>
#include <charconv>
#include <chrono>
#include <cstdio>
#include <random>

#include "meshckpt/api/checkpoint.hpp"
#include "meshckpt/backends/posix.hpp"
#include "meshckpt/format/names.hpp"

namespace meshckpt {

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

// Runs `f`, the steps between opening and closing a handle, turning an allocation failure into
// an error so that the handle is still closed.
template <class F>
auto closing_safely(F&& f, std::string_view during) -> decltype(f()) {
  try {
    return f();
  } catch (const std::bad_alloc&) {
    return out_of_memory(during);
  }
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

result<checkpoint_state> read_checkpoint_state(io::backend& b, std::string_view dir_path) {
  std::string dir(dir_path.empty() ? "." : dir_path);
  auto d = io::wait<io::handle>([&](auto done) { b.open_dir(dir, false, std::move(done)); });
  if (!d) {
    if (d.error().code == std::errc::no_such_file_or_directory) return make_error(errc::not_found, "directory " + dir + " does not exist");
    return d.error();
  }
  auto h = io::wait<io::handle>([&](auto done) { b.open(*d, std::string(state_name), io::open_mode::read, std::move(done)); });
  io::close_now(b, *d);
  if (!h) {
    if (h.error().code == std::errc::no_such_file_or_directory) return make_error(errc::not_found, "no checkpoint state file in " + dir);
    return h.error();
  }
  auto body = [&]() -> result<checkpoint_state> {
    BOOST_OUTCOME_TRY(auto size, io::wait<std::uint64_t>([&](auto done) { b.size(*h, std::move(done)); }));
    if (size > max_state_bytes) return make_error(errc::limit_exceeded, dir + "/checkpoint is larger than 16 MiB");
    std::string text(size, '\0');
    BOOST_OUTCOME_TRY(auto n, io::wait<std::size_t>([&](auto done) {
      b.read(*h, 0, std::as_writable_bytes(std::span(text.data(), text.size())), std::move(done));
    }));
    text.resize(n);
    auto s = parse_checkpoint_state(text);
    if (!s) return with_context(s.error(), dir + "/checkpoint");
    return s;
  };
  auto r = closing_safely(body, "reading the checkpoint state file");
  io::close_now(b, *h);
  return r;
}

result<void> write_checkpoint_state(io::backend& b, std::string_view dir_path, const checkpoint_state& s) {
  std::string dir(dir_path.empty() ? "." : dir_path);
  std::string text = format_checkpoint_state(s);
  static std::atomic<std::uint64_t> counter{0};
  std::uint64_t token = (static_cast<std::uint64_t>(std::random_device{}()) << 32) ^ counter++ ^
                        static_cast<std::uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
  std::string tmp = std::string(state_name) + ".tmp-" + format::token_hex(token);
  BOOST_OUTCOME_TRY(auto d, io::wait<io::handle>([&](auto done) { b.open_dir(dir, true, std::move(done)); }));
  auto steps = [&]() -> result<void> {
    BOOST_OUTCOME_TRY(auto h, io::wait<io::handle>([&](auto done) { b.open(d, tmp, io::open_mode::create_exclusive, std::move(done)); }));
    auto w = io::wait<void>([&](auto done) { b.write(h, 0, std::as_bytes(std::span(text.data(), text.size())), std::move(done)); });
    auto f = w ? io::wait<void>([&](auto done) { b.fsync(h, std::move(done)); }) : w;
    auto c = io::wait<void>([&](auto done) { b.close(h, std::move(done)); });
    if (!c && c.error().code == std::errc::not_enough_memory) io::close_detached(b, h);  // it never started
    if (!f || !c) {
      (void)io::wait<void>([&](auto done) { b.unlink(d, tmp, std::move(done)); });
      return !f ? f : c;
    }
    auto rn = io::wait<void>([&](auto done) { b.rename(d, tmp, std::string(state_name), std::move(done)); });
    if (!rn) {
      (void)io::wait<void>([&](auto done) { b.unlink(d, tmp, std::move(done)); });
      return rn;
    }
    BOOST_OUTCOME_TRY(io::wait<void>([&](auto done) { b.fsync(d, std::move(done)); }));
    // Best effort: temp state files of updates that died before their rename (the exact
    // pattern "checkpoint.tmp-<16 hex>" is only ever written here).
    if (auto entries = io::wait<std::vector<io::dir_entry>>([&](auto done) { b.list(d, std::move(done)); })) {
      const std::string stem = std::string(state_name) + ".tmp-";
      for (const auto& e : *entries)
        if (e.type == io::dir_entry::regular && e.name.size() == stem.size() + 16 && e.name.starts_with(stem) &&
            e.name.find_first_not_of("0123456789abcdef", stem.size()) == std::string::npos)
          (void)io::wait<void>([&](auto done) { b.unlink(d, e.name, std::move(done)); });
    }
    return success();
  };
  auto r = closing_safely(steps, "updating the checkpoint state file");
  io::close_now(b, d);
  if (!r) return with_context(r.error(), "update " + dir + "/checkpoint");
  return r;
}

std::optional<std::string> latest_checkpoint(std::string_view dir_path) {
  auto b = backends::make_posix_backend({1});
  std::string dir(dir_path.empty() ? "." : dir_path);
  while (dir.size() > 1 && dir.ends_with('/')) dir.pop_back();
  auto s = read_checkpoint_state(*b, dir);
  if (!s) return std::nullopt;
  std::string prefix = dir + "/" + s->model_checkpoint_path;
  if (!read_manifest(*b, prefix)) return std::nullopt;
  return prefix;
}

result<void> delete_checkpoint(io::backend& b, std::string_view prefix) {
  // Not a structured binding: clang 14 cannot capture those in lambdas.
  const auto parts = split_prefix(prefix);
  const std::string& dir = parts.first;
  const std::string& base = parts.second;
  BOOST_OUTCOME_TRY(format::check_base_name(base));
  BOOST_OUTCOME_TRY(auto d, io::wait<io::handle>([&](auto done) { b.open_dir(dir, false, std::move(done)); }));
  auto steps = [&]() -> result<void> {
    auto rm = io::wait<void>([&](auto done) { b.unlink(d, format::manifest_name(base), std::move(done)); });
    if (!rm && rm.error().code != std::errc::no_such_file_or_directory) return rm;
    BOOST_OUTCOME_TRY(io::wait<void>([&](auto done) { b.fsync(d, std::move(done)); }));
    // Only files this library writes for this name: its data files and temp manifests, found by
    // their exact name patterns (never mistaken for another checkpoint's or a foreign file).
    BOOST_OUTCOME_TRY(auto entries, io::wait<std::vector<io::dir_entry>>([&](auto done) { b.list(d, std::move(done)); }));
    for (const auto& e : entries) {
      auto k = format::classify(e.name);
      if (k.base != base || (k.k != format::name_kind::data && k.k != format::name_kind::temp_manifest)) continue;
      auto u = io::wait<void>([&](auto done) { b.unlink(d, e.name, std::move(done)); });
      if (!u && u.error().code != std::errc::no_such_file_or_directory) return u;
    }
    return success();
  };
  auto r = closing_safely(steps, "deleting a checkpoint");
  io::close_now(b, d);
  if (!r) return with_context(r.error(), "delete checkpoint " + std::string(prefix));
  return r;
}

result<std::size_t> remove_orphans(io::backend& b, std::string_view dir, std::string_view name) {
  BOOST_OUTCOME_TRY(auto d, io::wait<io::handle>([&](auto done) { b.open_dir(std::string(dir), false, std::move(done)); }));
  auto steps = [&]() -> result<std::size_t> {
    BOOST_OUTCOME_TRY(auto entries, io::wait<std::vector<io::dir_entry>>([&](auto done) { b.list(d, std::move(done)); }));
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
      auto u = io::wait<void>([&](auto done) { b.unlink(d, e.name, std::move(done)); });
      if (!u && u.error().code != std::errc::no_such_file_or_directory) return u.error();
      if (u) ++removed;
    }
    return removed;
  };
  auto r = closing_safely(steps, "removing leftovers");
  io::close_now(b, d);
  if (!r) return with_context(r.error(), "remove leftovers in " + std::string(dir));
  return r;
}

}  // namespace meshckpt
