// PyTorch distributed checkpoints (DCP) as restorables (interchange/torch_io.hpp): `.metadata`
// read as data (format/dcp.hpp), then each chunk's and item's torch.save zip in its .distcp
// file, read by the torch.save reader (torch_zip.hpp).

#include <map>

#include "torch_zip.hpp"
#include "meshckpt/format/dcp.hpp"
#include "meshckpt/format/describe.hpp"

namespace meshckpt::detail {

namespace {

// The .distcp files of a DCP directory, each opened once and entered in the manifest's files,
// and the windows of them that hold its entries. `close()` closes them; those it did not
// close (an exception skipped it) are closed detached.
class dcp_files {
 public:
  dcp_files(io::backend& b, const opened_prefix& p, std::string dir, format::manifest& m) : b_(b), p_(p), dir_(std::move(dir)), m_(m) {}
  dcp_files(const dcp_files&) = delete;
  dcp_files& operator=(const dcp_files&) = delete;
  ~dcp_files() {
    for (auto& [name, f] : open_) io::close_detached(b_, f.h);
  }

  // The bytes of entry `key` at `at`, checked to lie inside its file.
  task<torch_source> window(format::dcp::location at, std::string key);
  // The manifest's index of `file`. Precondition: a window of it was taken.
  std::uint32_t index(const std::string& file) const { return index_.at(file); }
  asio::awaitable<void> close() {
    while (!open_.empty()) {
      co_await close_quietly(b_, open_.begin()->second.h);
      open_.erase(open_.begin());
    }
  }

 private:
  std::string meta_path() const { return dir_ + "/.metadata"; }

  io::backend& b_;
  const opened_prefix& p_;
  std::string dir_;
  format::manifest& m_;
  std::map<std::string, torch_source> open_;
  std::map<std::string, std::uint32_t> index_;
};

task<torch_source> dcp_files::window(format::dcp::location at, std::string key) {
  auto ex = co_await asio::this_coro::executor;
  auto it = open_.find(at.file);
  if (it == open_.end()) {
    auto h = co_await io::async_open(b_, ex, p_.dir, at.file, io::open_mode::read, use_awaitable);
    if (!h) {
      if (h.error().code == std::errc::no_such_file_or_directory)
        co_return make_error(errc::not_found,
                             meta_path() + ": entry \"" + key + "\" is in " + at.file + ", which does not exist in " + dir_);
      co_return with_context(h.error(), dir_ + "/" + at.file);
    }
    it = open_.emplace(at.file, torch_source{*h, dir_ + "/" + at.file, 0, 0}).first;
    BOOST_OUTCOME_CO_TRY(it->second.size, co_await io::async_size(b_, ex, *h, use_awaitable));
    index_.emplace(at.file, static_cast<std::uint32_t>(m_.files.size()));
    m_.files.push_back({at.file, it->second.size});
  }
  torch_source w = it->second;
  if (at.offset > w.size || at.length > w.size - at.offset)
    co_return make_error(errc::corrupt_manifest, meta_path() + ": entry \"" + key + "\" lies at bytes [" + std::to_string(at.offset) +
                                                     ", " + std::to_string(at.offset + at.length) + ") of " + at.file + ", which has " +
                                                     std::to_string(w.size));
  w.path = dir_ + "/" + at.file + " (entry \"" + key + "\")";
  w.base = at.offset;
  w.size = at.length;
  co_return w;
}

// A pickled object: its tensors, keys under the item's, into `m`; its state (JSON) returned.
task<std::string> read_object_item(io::backend& b, dcp_files& files, const format::dcp::item& it, format::manifest& m) {
  auto opening = files.window(it.bytes, it.key);
  BOOST_OUTCOME_CO_TRY(auto w, co_await std::move(opening));
  auto reading = read_zip(b, w, it.key);  // named: GCC 12 mishandles a coroutine's temporary arguments inside co_await
  BOOST_OUTCOME_CO_TRY(auto part, co_await std::move(reading));
  for (auto& t : part.tensors) {
    t.slices[0].file = files.index(it.bytes.file);
    m.tensors.push_back(std::move(t));
  }
  co_return std::move(part.state.state);
}

// A tensor: each chunk one tensor of the chunk's dtype and shape, viewing all of its storage,
// a slice of the whole.
task<format::saved_tensor> read_tensor_item(io::backend& b, dcp_files& files, const format::dcp::item& it) {
  format::saved_tensor t;
  t.key = it.key;
  t.type = it.type;
  t.global = it.size;
  t.axes.assign(it.size.size(), -1);
  for (const auto& c : it.chunks) {
    auto opening = files.window(c.at, it.key);
    BOOST_OUTCOME_CO_TRY(auto w, co_await std::move(opening));
    auto reading = read_zip(b, w);
    BOOST_OUTCOME_CO_TRY(auto part, co_await std::move(reading));
    if (part.tensors.size() != 1 || part.tensors[0].type != it.type || part.tensors[0].global != c.where.extent)
      co_return make_error(errc::corrupt_manifest, w.path + ": the chunk at " + to_string(c.where.origin) + " is not one " +
                                                       std::string(dtype_name(it.type)) + to_string(c.where.extent) + " tensor");
    auto sl = std::move(part.tensors[0].slices[0]);
    sl.where = c.where;
    sl.file = files.index(c.at.file);
    t.slices.push_back(std::move(sl));
  }
  co_return t;
}

// `.metadata`, read and interpreted as data.
task<format::dcp::metadata> read_metadata_file(io::backend& b, const opened_prefix& p, const std::string& meta_path) {
  std::vector<std::byte> bytes;
  const std::string name = ".metadata";  // outlives the coroutine that takes it by reference
  auto reading = read_small_file(b, p, name, max_pickle_bytes, bytes);
  BOOST_OUTCOME_CO_TRY(co_await std::move(reading));
  auto doc = format::pickle::read(bytes, format::dcp::metadata_policy(), meta_path);
  if (!doc) co_return doc.error();
  co_return format::dcp::read_metadata(*doc, meta_path);
}

// The restorable: every item's tensors, and the skeleton meshckpt.torch rebuilds the state
// dict from (each item's key, then its state or its tensor's description).
task<restorable> read_items(io::backend& b, const opened_prefix& p, const std::string& dir, dcp_files& files, format::manifest& m) {
  const std::string meta_path = dir + "/.metadata";
  auto reading = read_metadata_file(b, p, meta_path);
  BOOST_OUTCOME_CO_TRY(auto meta, co_await std::move(reading));
  m = foreign_manifest("PyTorch distributed checkpoint (" + std::to_string(meta.items.size()) + " entries)");
  std::string state = "{\"dict\": [";
  for (const auto& it : meta.items) {
    state += (state.size() > 10 ? ", [\"s\", " : "[\"s\", ") + format::json_string(it.key) + ", ";
    if (!it.tensor) {
      auto object = read_object_item(b, files, it, m);
      BOOST_OUTCOME_CO_TRY(auto s, co_await std::move(object));
      state += s + "]";
      continue;
    }
    auto tensor = read_tensor_item(b, files, it);
    BOOST_OUTCOME_CO_TRY(auto t, co_await std::move(tensor));
    m.tensors.push_back(std::move(t));
    state += "{\"tensor\": " + format::json_string(it.key) + ", \"dtype\": \"" + std::string(format::torch::dtype_name(it.type)) +
             "\", \"shape\": " + to_string(it.size) + "}]";
  }
  BOOST_OUTCOME_CO_TRY(sort_unique(m, dir));
  restorable r;
  r.prefix = meta_path;
  r.manifest = std::move(m);
  r.torch_skeleton = "{\"format\": 2, \"keys\": \"verbatim\", \"state\": " + state + "]}}";
  co_return r;
}

}  // namespace

task<restorable> read_dcp(io::backend& b, std::string dir) {
  auto p = co_await open_prefix_dir(b, dir + "/.metadata");
  if (!p) co_return p.error();
  on_unwind close_dir([&] { io::close_detached(b, p->dir); });
  format::manifest m;
  dcp_files files(b, *p, dir, m);
  std::optional<result<restorable>> r;
  try {
    auto reading = read_items(b, *p, dir, files, m);
    r = co_await std::move(reading);
  } catch (const std::bad_alloc&) {
    r = out_of_memory("reading " + dir);
  }
  co_await files.close();
  co_await close_quietly(b, p->dir);
  close_dir.disarm();
  co_return std::move(*r);
}

}  // namespace meshckpt::detail
