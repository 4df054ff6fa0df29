// Publishing files other than checkpoints (an export's files, a safetensors index): through the
// backend and runtime::durable_replace, like a manifest, so the fault backend sees every step and
// a crash leaves the old file or the whole new one. A file copied out of a checkpoint streams
// through the staging pool (copy_tensor, publish_from_checkpoint).

#include <chrono>
#include <random>

#include "../runtime/durable_replace.hpp"
#include "common.hpp"
#include "data_files.hpp"
#include "meshckpt/format/crc32c.hpp"
#include "meshckpt/format/names.hpp"
#include "meshckpt/format/zip.hpp"

namespace meshckpt {

namespace {

using runtime::task;
using runtime::use_awaitable;
namespace asio = boost::asio;

std::string temp_name_for(const std::string& name) {
  static std::atomic<std::uint64_t> counter{0};
  std::uint64_t token = (static_cast<std::uint64_t>(std::random_device{}()) << 32) ^ counter++ ^
                        static_cast<std::uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
  return name + ".tmp-" + format::token_hex(token);
}

}  // namespace

namespace detail {

task<void> publish_file(io::backend& b, std::string path, std::function<task<void>(io::handle)> fill, bool direct) {
  auto ex = co_await asio::this_coro::executor;
  auto [dir, name] = split_prefix(path);
  if (!format::is_plain_name(name)) co_return make_error(errc::invalid_argument, "\"" + path + "\" does not name a file");
  auto d = co_await io::async_open_dir(b, ex, dir, false, use_awaitable);
  if (!d) co_return d.error();
  runtime::on_unwind last_resort([&] { io::close_detached(b, *d); });
  std::optional<result<void>> r;
  try {
    runtime::replace_options opt;
    opt.direct = direct;
    auto op = runtime::durable_replace(b, *d, temp_name_for(name), name, std::move(fill), std::move(opt));
    r = co_await std::move(op);
  } catch (const std::bad_alloc&) {
    r = out_of_memory("writing " + path);
  }
  co_await detail::close_quietly(b, *d);
  last_resort.disarm();
  co_return std::move(*r);
}

task<void> publish_streamed(io::backend& b, std::string path, std::uint64_t size,
                            std::function<task<void>(runtime::staged_writer&)> produce) {
  auto fill = [&b, &path, size, &produce](io::handle h) -> task<void> {
    auto ex = co_await asio::this_coro::executor;
    runtime::staged_writer out(b, ex, h, size);
    result<void> r = success();
    try {
      r = co_await produce(out);
      if (r) out.submit_last();
    } catch (const std::bad_alloc&) {
      r = out_of_memory("writing " + path);
    }
    auto drained = co_await out.drain();  // before `out` goes away, error or not (staged_writer.hpp)
    BOOST_OUTCOME_CO_TRY(std::move(r));
    BOOST_OUTCOME_CO_TRY(std::move(drained));
    co_return co_await io::async_truncate(b, ex, h, size, use_awaitable);  // the last block's padding
  };
  auto op = publish_file(b, path, fill, true);
  co_return co_await std::move(op);
}

task<std::uint32_t> copy_tensor(io::backend& b, const std::string& prefix, std::shared_ptr<const format::manifest> m, data_file_pair& src,
                                const format::saved_tensor& t, runtime::staged_writer& w, std::uint64_t offset,
                                std::vector<std::byte>& block, crc_of want) {
  if (t.slices.size() == 1 && t.slices[0].where == box::whole(t.global)) {
    // Stored whole: its bytes are the row-major tensor, read straight into the staging
    // blocks and checked on the way (a foreign tensor's whole-slice CRC at its last byte).
    auto copied = copy_slice(b, *m, src, t, t.slices[0], w, offset, want);
    co_return co_await std::move(copied);
  }
  // Stored as several slices: assembled in blocks of whole rows of about 8 MiB, each read
  // from the slices that hold it, so memory stays bounded whatever the tensor's size. A
  // foreign tensor's one CRC covers each of its pieces whole: checked once, first.
  read_options block_opt;
  if (format::whole_slice_crc(m->checksum)) {
    auto checking = verify_one_tensor(b, prefix, m, t.key);
    BOOST_OUTCOME_CO_TRY(co_await std::move(checking));
    block_opt.verify_checksums = false;
  }
  const auto es = static_cast<std::uint64_t>(dtype_size(t.type));
  const std::int64_t rows = t.global.empty() ? 1 : t.global[0];
  const std::int64_t row_elems = t.global.empty() ? 1 : num_elements(shape(t.global.begin() + 1, t.global.end())).value_or(0);
  std::uint32_t crc = 0;
  if (row_elems == 0 || rows == 0) co_return crc;
  const auto row_bytes = static_cast<std::uint64_t>(row_elems) * es;
  const std::int64_t per_block = static_cast<std::int64_t>(std::max<std::uint64_t>(1, (8u << 20) / row_bytes));
  for (std::int64_t r0 = 0; r0 < rows; r0 += per_block) {
    box where = box::whole(t.global);
    if (!t.global.empty()) {
      where.origin[0] = r0;
      where.extent[0] = std::min(per_block, rows - r0);
    }
    block.resize(static_cast<std::size_t>(where.volume().value_or(0)) * es);
    auto rd = read_box(b, prefix, m, t.key, where, block, block_opt);
    BOOST_OUTCOME_CO_TRY(co_await std::move(rd));
    if (want == crc_of::crc32)
      crc = format::zip::crc32_extend(crc, block);
    else if (want == crc_of::crc32c)
      crc = format::crc32c::extend(crc, block);
    BOOST_OUTCOME_CO_TRY(co_await w.write(offset, block));
    offset += block.size();
  }
  co_return crc;
}

task<void> publish_from_checkpoint(io::backend& b, std::string prefix, std::shared_ptr<const format::manifest> m, std::string out,
                                   std::uint64_t size, checkpoint_producer produce) {
  auto sp = co_await open_prefix_dir(b, prefix);
  if (!sp) co_return sp.error();
  data_file_pair src(b, *sp, *m);
  runtime::on_unwind last_resort([&] { io::close_detached(b, sp->dir); });
  auto op = publish_streamed(b, out, size, [&](runtime::staged_writer& w) { return produce(w, src); });
  auto r = co_await std::move(op);
  co_await src.close_all();
  co_await close_quietly(b, sp->dir);
  last_resort.disarm();
  co_return r;
}

}  // namespace detail

}  // namespace meshckpt
