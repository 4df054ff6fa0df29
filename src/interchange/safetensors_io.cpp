// Restoring by name from safetensors files (interchange/safetensors_io.hpp). Coroutines over the
// backend like every other read, behind the one blocking bridge: one tensor is read whole, then
// each target shard's box is copied out with the restore planner's strided runs, so any mesh and
// layout can be filled.

#include "meshckpt/interchange/safetensors_io.hpp"

#include <algorithm>
#include <cstring>
#include <map>
#include <optional>

#include "../pipeline/common.hpp"
#include "../pipeline/data_files.hpp"
#include "meshckpt/format/names.hpp"
#include "meshckpt/format/safetensors.hpp"
#include "meshckpt/plan/restore_plan.hpp"

namespace meshckpt {

namespace detail {

namespace {

// A file of the directory, open for reading.
struct open_file {
  io::handle h;
  std::string name;
  std::uint64_t size = 0;
};

task<void> read_exact(io::backend& b, const open_file& f, std::uint64_t offset, std::span<std::byte> out) {
  auto ex = co_await asio::this_coro::executor;
  BOOST_OUTCOME_CO_TRY(auto n, co_await io::async_read(b, ex, f.h, offset, out, use_awaitable));
  if (n != out.size()) co_return make_error(errc::short_read, f.name + " ended before byte " + std::to_string(offset + out.size()));
  co_return success();
}

task<format::safetensors_header> read_header(io::backend& b, const open_file& f) {
  std::vector<std::byte> head(8);
  if (f.size < 8) co_return make_error(errc::short_read, f.name + " is shorter than the 8-byte header length");
  BOOST_OUTCOME_CO_TRY(co_await read_exact(b, f, 0, head));
  std::uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= std::uint64_t{static_cast<std::uint8_t>(head[static_cast<std::size_t>(i)])} << (8 * i);
  if (n <= format::safetensors_max_header && n <= f.size - 8) {
    head.resize(static_cast<std::size_t>(8 + n));
    BOOST_OUTCOME_CO_TRY(co_await read_exact(b, f, 8, std::span(head).subspan(8)));
  }
  auto h = format::decode_safetensors_header(head, f.size);
  if (!h) co_return with_context(h.error(), f.name);
  co_return std::move(*h);
}

// Opens file `name` of `dir`, runs `body(file)` (a coroutine), and closes the file whatever
// happened, an allocation failure included.
template <class T, class Body>
task<T> with_file(io::backend& b, io::handle dir, const std::string& dir_path, const std::string& name, Body body) {
  auto ex = co_await asio::this_coro::executor;
  open_file f{{}, name, 0};  // built before the open: nothing may allocate between it and the guard
  auto h = co_await io::async_open(b, ex, dir, name, io::open_mode::read, use_awaitable);
  if (!h) {
    if (h.error().code == std::errc::no_such_file_or_directory)
      co_return make_error(errc::not_found, "safetensors file " + dir_path + "/" + name + " does not exist");
    co_return h.error();
  }
  f.h = *h;
  on_unwind last_resort([&] { io::close_detached(b, f.h); });
  std::optional<result<T>> r;
  try {
    auto size = co_await io::async_size(b, ex, f.h, use_awaitable);
    if (!size) {
      r = size.error();
    } else {
      f.size = *size;
      auto run = body(f);
      r = co_await std::move(run);
    }
  } catch (const std::bad_alloc&) {
    r = out_of_memory("reading " + name);
  }
  co_await close_quietly(b, f.h);
  last_resort.disarm();
  co_return std::move(*r);
}

// The directory of a safetensors path, and the index when the path is one.
struct source {
  io::handle dir;
  std::string dir_path, name;
  std::optional<format::safetensors_index> index;
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

// Opens the directory of `path`, reads its index when it is one, runs `body(source)`, and
// closes the directory whatever happened.
template <class T, class Body>
task<T> with_source(io::backend& b, std::string_view path, Body body) {
  auto ex = co_await asio::this_coro::executor;
  const auto parts = split_prefix(path);
  source src{{}, parts.first, parts.second, std::nullopt};
  if (!format::is_plain_name(src.name)) co_return make_error(errc::invalid_argument, "\"" + src.name + "\" is not a plain file name");
  auto d = co_await io::async_open_dir(b, ex, src.dir_path, false, use_awaitable);
  if (!d) {
    if (d.error().code == std::errc::no_such_file_or_directory)
      co_return make_error(errc::not_found, "directory " + src.dir_path + " does not exist");
    co_return d.error();
  }
  src.dir = *d;
  on_unwind last_resort([&] { io::close_detached(b, src.dir); });
  auto steps = [&]() -> task<T> {
    if (src.name.ends_with(".json")) {
      auto read_index = [&](const open_file& f) -> task<format::safetensors_index> {
        if (f.size > format::safetensors_max_header) co_return make_error(errc::limit_exceeded, f.name + " is larger than 100 MB");
        std::string text(static_cast<std::size_t>(f.size), '\0');
        BOOST_OUTCOME_CO_TRY(co_await read_exact(b, f, 0, std::as_writable_bytes(std::span(text.data(), text.size()))));
        auto idx = format::decode_safetensors_index(text);
        if (!idx) co_return with_context(idx.error(), f.name);
        co_return std::move(*idx);
      };
      BOOST_OUTCOME_CO_TRY(auto idx, co_await with_file<format::safetensors_index>(b, src.dir, src.dir_path, src.name, read_index));
      src.index = std::move(idx);
    }
    auto run = body(src);
    co_return co_await std::move(run);
  };
  std::optional<result<T>> r;
  try {
    r = co_await steps();
  } catch (const std::bad_alloc&) {
    r = out_of_memory("reading " + std::string(path));
  }
  co_await close_quietly(b, src.dir);
  last_resort.disarm();
  co_return std::move(*r);
}

task<std::vector<safetensors_tensor>> list_coro(io::backend& b, std::string path) {
  auto body = [&b](const source& src) -> task<std::vector<safetensors_tensor>> {
    std::vector<safetensors_tensor> out;
    for (const auto& file : src.files()) {
      auto entries = [&](const open_file& f) -> task<void> {
        BOOST_OUTCOME_CO_TRY(auto h, co_await read_header(b, f));
        for (const auto& e : h.tensors) {
          if (src.index) {
            auto it = src.index->weight_map.find(e.name);
            if (it == src.index->weight_map.end() || it->second != file) continue;  // the index decides
          }
          out.push_back({e.name, e.type, e.dims, file});
        }
        co_return success();
      };
      BOOST_OUTCOME_CO_TRY(co_await with_file<void>(b, src.dir, src.dir_path, file, entries));
    }
    if (src.index && out.size() != src.index->weight_map.size())
      co_return make_error(errc::not_found, src.name + " maps " + std::to_string(src.index->weight_map.size()) +
                                                " tensors, its files hold " + std::to_string(out.size()) + " of them");
    std::sort(out.begin(), out.end(), [](const auto& x, const auto& y) { return x.name < y.name; });
    co_return std::move(out);
  };
  auto r = co_await with_source<std::vector<safetensors_tensor>>(b, path, body);
  if (!r) co_return with_context(r.error(), "list safetensors " + path);
  co_return std::move(*r);
}

// Fills every target shard of `t` from tensor `e` of an open file.
task<void> read_one(io::backend& b, const open_file& f, const format::safetensors_header& h, const format::safetensor_entry& e,
                    const named_tensor& t, read_report& rep) {
  const auto& view = t.tensor;
  if (e.type != view.type())
    co_return make_error(errc::dtype_mismatch, "tensor \"" + t.key + "\" is " + std::string(dtype_name(e.type)) + " in " + f.name +
                                                   ", the target is " + std::string(dtype_name(view.type())));
  if (e.dims != view.global_shape())
    co_return make_error(errc::shape_mismatch, "tensor \"" + t.key + "\" has shape " + to_string(e.dims) + " in " + f.name +
                                                   ", the target " + to_string(view.global_shape()));
  const box all = box::whole(e.dims);
  if (view.shards().size() == 1) {
    // One shard holding the whole tensor (an import, a one-device target): read straight into
    // it, with no second copy in memory.
    const auto& sh = view.shards().front();
    BOOST_OUTCOME_CO_TRY(auto target_box, view.layout().shard_box(e.dims, sh.device));
    if (target_box == all && sh.data.size() == e.end - e.begin) {
      BOOST_OUTCOME_CO_TRY(co_await read_exact(b, f, h.data_start + e.begin, sh.data));
      rep.bytes_read += sh.data.size();
      ++rep.tensors;
      co_return success();
    }
  }
  std::vector<std::byte> whole(static_cast<std::size_t>(e.end - e.begin));
  BOOST_OUTCOME_CO_TRY(co_await read_exact(b, f, h.data_start + e.begin, whole));
  rep.bytes_read += whole.size();
  for (const auto& sh : view.shards()) {
    BOOST_OUTCOME_CO_TRY(auto target_box, view.layout().shard_box(e.dims, sh.device));
    BOOST_OUTCOME_CO_TRY(auto runs, plan::plan_shard_restore(e.dims, dtype_size(e.type), std::span(&all, 1), target_box));
    for (const auto& r : runs)
      for (std::uint64_t j = 0; j < r.count; ++j)
        std::memcpy(sh.data.data() + r.dst_offset + j * r.dst_stride, whole.data() + r.src_offset + j * r.src_stride, r.length);
    if (!(target_box.origin == all.origin && target_box.extent == all.extent)) ++rep.resharded_shards;
  }
  ++rep.tensors;
  co_return success();
}

task<read_report> read_coro(io::backend& b, std::string path, std::span<const named_tensor> targets) {
  if (std::any_of(targets.begin(), targets.end(), [](const named_tensor& t) { return any_on_device(t.tensor.shards()); })) {
    // Device shards: through host staging, a batch at a time (each batch opens the file anew).
    // The round and the call are named first: GCC 12 mishandles non-trivial temporaries inside
    // co_await expressions.
    const staged_round per_batch = [&b, path](std::span<const named_tensor> host) { return read_coro(b, path, host); };
    auto reading = read_through_staging(targets, per_batch);
    co_return co_await std::move(reading);
  }
  auto body = [&b, targets](const source& src) -> task<read_report> {
    std::map<std::string, std::vector<const named_tensor*>> by_file;
    for (const auto& t : targets) {
      if (!src.index) {
        by_file[src.name].push_back(&t);
        continue;
      }
      auto it = src.index->weight_map.find(t.key);
      if (it == src.index->weight_map.end()) co_return make_error(errc::not_found, "tensor \"" + t.key + "\" is not in " + src.name);
      by_file[it->second].push_back(&t);
    }
    read_report rep;
    for (const auto& per_file : by_file) {  // not a structured binding: clang 14 cannot capture those
      const auto& file = per_file.first;
      const auto& wanted = per_file.second;
      auto fill = [&](const open_file& f) -> task<void> {
        BOOST_OUTCOME_CO_TRY(auto h, co_await read_header(b, f));
        std::map<std::string_view, const format::safetensor_entry*> entries;
        for (const auto& e : h.tensors) entries[e.name] = &e;
        for (const auto* t : wanted) {
          auto it = entries.find(t->key);
          if (it == entries.end()) co_return make_error(errc::not_found, "tensor \"" + t->key + "\" is not in " + f.name);
          BOOST_OUTCOME_CO_TRY(co_await read_one(b, f, h, *it->second, *t, rep));
        }
        co_return success();
      };
      BOOST_OUTCOME_CO_TRY(co_await with_file<void>(b, src.dir, src.dir_path, file, fill));
    }
    co_return rep;
  };
  auto r = co_await with_source<read_report>(b, path, body);
  if (!r) co_return with_context(r.error(), "read safetensors " + path);
  co_return std::move(*r);
}

// Import: every file of the source open at once, its header decoded, and each tensor streamed
// by the save from its byte range.
task<write_report> import_coro(io::backend& b, std::string path, std::string to, write_options opt) {
  auto body = [&](const source& src) -> task<write_report> {
    auto ex = co_await asio::this_coro::executor;
    const auto names = src.files();
    std::vector<open_file> files;
    source_files sources(b, names.size());
    auto steps = [&]() -> task<write_report> {
      std::vector<format::safetensors_header> headers;
      for (const auto& name : names) {
        auto opening = sources.open(files.size(), src.dir, name, "safetensors file " + src.dir_path + "/" + name);
        BOOST_OUTCOME_CO_TRY(co_await std::move(opening));
        files.push_back({sources.buffered(files.size()), name, 0});
        BOOST_OUTCOME_CO_TRY(files.back().size, co_await io::async_size(b, ex, files.back().h, use_awaitable));
        BOOST_OUTCOME_CO_TRY(auto hdr, co_await read_header(b, files.back()));
        headers.push_back(std::move(hdr));
      }
      std::vector<plan::streamed_tensor> streamed;
      std::vector<std::pair<std::size_t, const format::safetensor_entry*>> where;  // file, entry
      for (std::size_t i = 0; i < files.size(); ++i)
        for (const auto& e : headers[i].tensors) {
          if (src.index) {
            auto it = src.index->weight_map.find(e.name);
            if (it == src.index->weight_map.end() || it->second != files[i].name) continue;  // the index decides
          }
          streamed.push_back({e.name, e.type, e.dims});
          where.emplace_back(i, &e);
        }
      if (src.index && streamed.size() != src.index->weight_map.size())
        co_return make_error(errc::not_found, src.name + " maps " + std::to_string(src.index->weight_map.size()) +
                                                  " tensors, its files hold " + std::to_string(streamed.size()) + " of them");
      if (!headers.empty() && !headers.front().metadata.empty())
        opt.extensions.push_back({std::string(safetensors_metadata_extension), format::encode_string_map(headers.front().metadata)});
      // Each tensor is read ahead of the save, with O_DIRECT: its range [begin, end) in turn
      // (small ones buffered).
      stream_reader read = [&](std::size_t t, std::uint64_t offset, std::span<std::byte> out) {
        const auto& [fi, e] = where[t];
        const std::uint64_t begin = headers[fi].data_start + e->begin;
        return sources.read(fi, begin + offset, headers[fi].data_start + e->end, out, "tensor \"" + e->name + "\" of " + files[fi].name);
      };
      auto writing = write_streamed(b, to, {}, streamed, std::move(read), std::move(opt));
      co_return co_await std::move(writing);
    };
    std::optional<result<write_report>> r;
    try {
      r = co_await steps();
    } catch (const std::bad_alloc&) {
      r = out_of_memory("importing " + path);
    }
    co_await sources.close();
    co_return std::move(*r);
  };
  auto r = co_await with_source<write_report>(b, path, body);
  if (!r) co_return with_context(r.error(), "import safetensors " + path);
  co_return std::move(*r);
}

}  // namespace

void start_import_safetensors(asio::any_io_executor ex, io::backend& b, std::string path, std::string to, write_options opt,
                              io::completion<write_report> done) {
  spawn<write_report>(ex, import_coro(b, std::move(path), std::move(to), std::move(opt)), std::move(done));
}

}  // namespace detail

result<write_report> import_safetensors(io::backend& b, std::string_view path, std::string_view to, const write_options& opt) {
  return runtime::run_blocking<write_report>("import_safetensors", [&](auto ex, auto done) {
    detail::start_import_safetensors(ex, b, std::string(path), std::string(to), opt, std::move(done));
  });
}

result<std::vector<safetensors_tensor>> list_safetensors(io::backend& b, std::string_view path) {
  return runtime::run_blocking<std::vector<safetensors_tensor>>("list_safetensors", [&](auto ex, auto done) {
    runtime::spawn<std::vector<safetensors_tensor>>(ex, detail::list_coro(b, std::string(path)), std::move(done));
  });
}

result<read_report> read_safetensors(io::backend& b, std::string_view path, std::span<const named_tensor> targets) {
  return runtime::run_blocking<read_report>("read_safetensors", [&](auto ex, auto done) {
    runtime::spawn<read_report>(ex, detail::read_coro(b, std::string(path), targets), std::move(done));
  });
}

}  // namespace meshckpt
