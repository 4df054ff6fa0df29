// Restoring by name from safetensors files (api/safetensors_io.hpp). Blocking backend calls
// (io::wait): one tensor is read whole, then each target shard's box is copied out with the
// restore planner's strided runs, so any mesh and layout can be filled.

#include "meshckpt/api/safetensors_io.hpp"

#include <algorithm>
#include <cstring>
#include <memory>
#include <map>
#include <optional>

#include "meshckpt/format/names.hpp"
#include "meshckpt/format/safetensors.hpp"
#include "meshckpt/plan/restore_plan.hpp"

namespace meshckpt {

namespace {

// A file of the directory, read whole or by ranges; closed on destruction.
class open_file {
 public:
  static result<open_file> open(io::backend& b, io::handle dir, const std::string& dir_path, const std::string& name) {
    auto h = io::wait<io::handle>([&](auto done) { b.open(dir, name, io::open_mode::read, std::move(done)); });
    if (!h) {
      if (h.error().code == std::errc::no_such_file_or_directory)
        return make_error(errc::not_found, "safetensors file " + dir_path + "/" + name + " does not exist");
      return h.error();
    }
    open_file f(b, *h, name);
    BOOST_OUTCOME_TRY(auto size, io::wait<std::uint64_t>([&](auto done) { b.size(*h, std::move(done)); }));
    f.size_ = size;
    return f;
  }
  open_file(open_file&& o) noexcept : b_(o.b_), h_(std::exchange(o.h_, std::nullopt)), name_(std::move(o.name_)), size_(o.size_) {}
  open_file& operator=(open_file&&) = delete;
  ~open_file() {
    if (h_) io::close_now(b_, *h_);
  }
  std::uint64_t size() const { return size_; }
  const std::string& name() const { return name_; }
  result<void> read(std::uint64_t offset, std::span<std::byte> out) {
    BOOST_OUTCOME_TRY(auto n, io::wait<std::size_t>([&](auto done) { b_.read(*h_, offset, out, std::move(done)); }));
    if (n != out.size()) return make_error(errc::short_read, name_ + " ended before byte " + std::to_string(offset + out.size()));
    return success();
  }

 private:
  open_file(io::backend& b, io::handle h, std::string name) : b_(b), h_(h), name_(std::move(name)) {}
  io::backend& b_;
  std::optional<io::handle> h_;
  std::string name_;
  std::uint64_t size_ = 0;
};

result<format::safetensors_header> read_header(open_file& f) {
  std::vector<std::byte> head(8);
  if (f.size() < 8) return make_error(errc::short_read, f.name() + " is shorter than the 8-byte header length");
  BOOST_OUTCOME_TRY(f.read(0, head));
  std::uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= std::uint64_t{static_cast<std::uint8_t>(head[static_cast<std::size_t>(i)])} << (8 * i);
  if (n <= format::safetensors_max_header && n <= f.size() - 8) {
    head.resize(static_cast<std::size_t>(8 + n));
    BOOST_OUTCOME_TRY(f.read(8, std::span(head).subspan(8)));
  }
  auto h = format::decode_safetensors_header(head, f.size());
  if (!h) return with_context(h.error(), f.name());
  return h;
}

// The directory of a safetensors path, open, and the index when the path is one.
struct source {
  io::backend& b;
  io::handle dir;
  std::string dir_path, name;
  std::optional<format::safetensors_index> index;
  source(io::backend& be, io::handle d, std::string dp, std::string n) : b(be), dir(d), dir_path(std::move(dp)), name(std::move(n)) {}
  source(const source&) = delete;
  ~source() { io::close_now(b, dir); }
  // The files to read: the file itself, or every shard the index names (sorted, once each).
  std::vector<std::string> files() const {
    if (!index) return {name};
    std::vector<std::string> out;
    for (const auto& [k, f] : index->weight_map) out.push_back(f);
    std::sort(out.begin(), out.end());
    out.erase(std::unique(out.begin(), out.end()), out.end());
    return out;
  }
};

result<std::unique_ptr<source>> open_source(io::backend& b, std::string_view path) {
  // Not a structured binding: clang 14 cannot capture those in lambdas.
  const auto parts = split_prefix(path);
  const std::string& dir_path = parts.first;
  const std::string& name = parts.second;
  if (!format::is_plain_name(name)) return make_error(errc::invalid_argument, "\"" + name + "\" is not a plain file name");
  auto d = io::wait<io::handle>([&](auto done) { b.open_dir(dir_path, false, std::move(done)); });
  if (!d) {
    if (d.error().code == std::errc::no_such_file_or_directory) return make_error(errc::not_found, "directory " + dir_path + " does not exist");
    return d.error();
  }
  auto src = std::make_unique<source>(b, *d, dir_path, name);
  if (name.ends_with(".json")) {
    BOOST_OUTCOME_TRY(auto f, open_file::open(b, *d, dir_path, name));
    if (f.size() > format::safetensors_max_header) return make_error(errc::limit_exceeded, name + " is larger than 100 MB");
    std::string text(static_cast<std::size_t>(f.size()), '\0');
    BOOST_OUTCOME_TRY(f.read(0, std::as_writable_bytes(std::span(text.data(), text.size()))));
    auto idx = format::decode_safetensors_index(text);
    if (!idx) return with_context(idx.error(), name);
    src->index = std::move(*idx);
  }
  return src;
}

}  // namespace

result<std::vector<safetensors_tensor>> list_safetensors(io::backend& b, std::string_view path) {
  auto run = [&]() -> result<std::vector<safetensors_tensor>> {
    BOOST_OUTCOME_TRY(auto src, open_source(b, path));
    std::vector<safetensors_tensor> out;
    for (const auto& file : src->files()) {
      BOOST_OUTCOME_TRY(auto f, open_file::open(b, src->dir, src->dir_path, file));
      BOOST_OUTCOME_TRY(auto h, read_header(f));
      for (const auto& e : h.tensors) {
        if (src->index) {
          auto it = src->index->weight_map.find(e.name);
          if (it == src->index->weight_map.end() || it->second != file) continue;  // the index decides
        }
        out.push_back({e.name, e.type, e.dims, file});
      }
    }
    if (src->index && out.size() != src->index->weight_map.size())
      return make_error(errc::not_found, src->name + " maps " + std::to_string(src->index->weight_map.size()) + " tensors, its files hold " +
                                             std::to_string(out.size()) + " of them");
    std::sort(out.begin(), out.end(), [](const auto& x, const auto& y) { return x.name < y.name; });
    return out;
  };
  auto r = run();
  if (!r) return with_context(r.error(), "list safetensors " + std::string(path));
  return r;
}

result<read_report> read_safetensors(io::backend& b, std::string_view path, std::span<const named_tensor> targets) {
  auto run = [&]() -> result<read_report> {
    BOOST_OUTCOME_TRY(auto src, open_source(b, path));
    const auto& name = src->name;
    const auto& index = src->index;
    std::map<std::string, std::vector<const named_tensor*>> by_file;
    for (const auto& t : targets) {
      if (!index) {
        by_file[name].push_back(&t);
        continue;
      }
      auto it = index->weight_map.find(t.key);
      if (it == index->weight_map.end()) return make_error(errc::not_found, "tensor \"" + t.key + "\" is not in " + name);
      by_file[it->second].push_back(&t);
    }
    read_report rep;
    for (const auto& [file, wanted] : by_file) {
      BOOST_OUTCOME_TRY(auto f, open_file::open(b, src->dir, src->dir_path, file));
      BOOST_OUTCOME_TRY(auto h, read_header(f));
      std::map<std::string_view, const format::safetensor_entry*> entries;
      for (const auto& e : h.tensors) entries[e.name] = &e;
      for (const auto* t : wanted) {
        auto it = entries.find(t->key);
        if (it == entries.end()) return make_error(errc::not_found, "tensor \"" + t->key + "\" is not in " + file);
        const auto& e = *it->second;
        const auto& view = t->tensor;
        if (e.type != view.type())
          return make_error(errc::dtype_mismatch, "tensor \"" + t->key + "\" is " + std::string(dtype_name(e.type)) + " in " + file +
                                                      ", the target is " + std::string(dtype_name(view.type())));
        if (e.dims != view.global_shape())
          return make_error(errc::shape_mismatch, "tensor \"" + t->key + "\" has shape " + to_string(e.dims) + " in " + file +
                                                      ", the target " + to_string(view.global_shape()));
        std::vector<std::byte> whole(static_cast<std::size_t>(e.end - e.begin));
        BOOST_OUTCOME_TRY(f.read(h.data_start + e.begin, whole));
        rep.bytes_read += whole.size();
        const box all = box::whole(e.dims);
        for (const auto& sh : view.shards()) {
          BOOST_OUTCOME_TRY(auto target_box, view.layout().shard_box(e.dims, sh.device));
          BOOST_OUTCOME_TRY(auto runs, plan::plan_shard_restore(e.dims, dtype_size(e.type), std::span(&all, 1), target_box));
          for (const auto& r : runs)
            for (std::uint64_t j = 0; j < r.count; ++j)
              std::memcpy(sh.data.data() + r.dst_offset + j * r.dst_stride, whole.data() + r.src_offset + j * r.src_stride, r.length);
          if (!(target_box.origin == all.origin && target_box.extent == all.extent)) ++rep.resharded_shards;
        }
        ++rep.tensors;
      }
    }
    return rep;
  };
  auto r = run();
  if (!r) return with_context(r.error(), "read safetensors " + std::string(path));
  return r;
}

}  // namespace meshckpt
