#include "meshckpt/api/tf_bundle_io.hpp"

#include "common.hpp"

namespace meshckpt {

namespace detail {

namespace {

task<format::tf::bundle_index> read_index_coro(io::backend& b, std::string prefix) {
  if (prefix.ends_with(".index")) prefix.resize(prefix.size() - 6);
  auto p = co_await open_prefix_dir(b, prefix);
  if (!p) co_return p.error();
  on_unwind last_resort([&] { io::close_detached(b, p->dir); });
  const std::string name = p->base + ".index";
  const std::string where = p->dir_path == "." ? name : p->dir_path + "/" + name;
  std::optional<result<format::tf::bundle_index>> out;
  try {
    std::vector<std::byte> bytes;
    auto read = co_await read_small_file(b, *p, name, max_tf_index_bytes, bytes);
    if (!read && read.error().code == std::errc::no_such_file_or_directory)
      out = make_error(errc::not_found, "TensorFlow checkpoint " + prefix + " not found: " + name + " does not exist in " + p->dir_path);
    else if (!read)
      out = read.error();
    else if (auto idx = format::tf::decode_bundle_index(bytes); !idx)
      out = with_context(idx.error(), where);
    else
      out = std::move(*idx);
  } catch (const std::bad_alloc&) {
    out = out_of_memory("reading " + where);
  }
  co_await close_quietly(b, p->dir);
  last_resort.disarm();
  co_return std::move(*out);
}

}  // namespace

void start_read_tf_bundle_index(asio::any_io_executor ex, io::backend& b, std::string prefix, io::completion<format::tf::bundle_index> done) {
  spawn<format::tf::bundle_index>(ex, read_index_coro(b, std::move(prefix)), std::move(done));
}

}  // namespace detail

result<format::tf::bundle_index> read_tf_bundle_index(io::backend& b, std::string_view prefix) {
  return runtime::run_blocking<format::tf::bundle_index>("read_tf_bundle_index", [&](auto ex, auto done) {
    detail::start_read_tf_bundle_index(ex, b, std::string(prefix), std::move(done));
  });
}

}  // namespace meshckpt
