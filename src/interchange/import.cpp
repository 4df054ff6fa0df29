// Import: a foreign checkpoint read as a restorable (restorable.hpp), written as a meshckpt
// checkpoint.
//
// Import streams: a tensor stored as row ranges (nearly every one) is read by the save from
// the source's files as it writes it, each piece's CRC computed on the way and checked at its
// last byte; only a tensor partitioned along another dimension is assembled in memory first.

#include <algorithm>
#include <cstring>
#include <deque>
#include <map>

#include "../pipeline/common.hpp"
#include "../pipeline/data_files.hpp"
#include "restorable.hpp"
#include "meshckpt/pipeline/tensor_io_async.hpp"
#include "meshckpt/interchange/tf_bundle_io.hpp"
#include "meshckpt/interchange/torch_io.hpp"
#include "meshckpt/format/safetensors.hpp"
#include "meshckpt/graph/object_graph.hpp"

namespace meshckpt::detail {

namespace {

// A stored piece of a streamed tensor, in the tensor's row-major order.
struct stored_run {
  std::uint32_t file = 0;
  std::uint64_t offset = 0, length = 0;
  std::uint32_t crc = 0;      // the piece's whole-slice CRC, as stored
  std::uint32_t running = 0;  // of the bytes read so far
  std::uint64_t read = 0;
};

// The pieces of `t` in row-major order when each is a range of it: the tensor whole, or a
// partitioned variable cut along its first dimension only (TensorFlow's usual partitioning),
// the partitions tiling it. Otherwise nullopt: the tensor goes through memory.
std::optional<std::vector<stored_run>> row_runs(const format::saved_tensor& t) {
  std::vector<const format::saved_slice*> order;
  for (const auto& sl : t.slices) {
    for (std::size_t d = 1; d < t.global.size(); ++d)
      if (sl.where.origin[d] != 0 || sl.where.extent[d] != t.global[d]) return std::nullopt;
    order.push_back(&sl);
  }
  if (t.global.empty() && order.size() != 1) return std::nullopt;
  std::sort(order.begin(), order.end(), [](auto* x, auto* y) { return x->where.origin < y->where.origin; });
  std::int64_t next = 0;
  std::vector<stored_run> runs;
  for (const auto* sl : order) {
    if (!t.global.empty()) {
      if (sl->where.origin[0] != next) return std::nullopt;
      next += sl->where.extent[0];
    }
    if (sl->checksums.size() != 1) return std::nullopt;
    runs.push_back({sl->file, sl->offset, sl->length, static_cast<std::uint32_t>(sl->checksums[0]), 0, 0});
  }
  if (!t.global.empty() && next != t.global[0]) return std::nullopt;
  return runs;
}

}  // namespace

task<write_report> import_restorable(io::backend& b, restorable found, std::string to, write_options wopt) {
  auto ex = co_await asio::this_coro::executor;
  auto m = std::make_shared<const format::manifest>(std::move(found.manifest));
  std::vector<plan::streamed_tensor> streamed;
  std::vector<std::vector<stored_run>> runs;
  std::vector<bool> needed(m->files.size(), false);
  auto one = mesh::create({{"x", 1}}).value();
  std::deque<dtensor> keep;
  std::vector<named_tensor> in_memory;
  for (const auto& t : m->tensors) {
    if (auto r = row_runs(t)) {
      for (const auto& run : *r) needed[run.file] = true;
      streamed.push_back({t.key, t.type, t.global});
      runs.push_back(std::move(*r));
      continue;
    }
    BOOST_OUTCOME_CO_TRY(auto l, layout::create(std::vector<std::string>(t.global.size(), "unsharded"), one));
    BOOST_OUTCOME_CO_TRY(auto d, dtensor::create(t.type, t.global, l));
    keep.push_back(std::move(d));
    in_memory.push_back({t.key, keep.back().view()});
  }
  if (!in_memory.empty()) {
    auto reading = read_into(b, found.prefix, in_memory, {}, m);
    BOOST_OUTCOME_CO_TRY(co_await std::move(reading));
  }
  // Opaque values (DT_STRING scalars the object graph names, as meshckpt exports them) come
  // back as what they were: blobs of their bytes.
  for (const auto& [key, value] : found.strings) {
    BOOST_OUTCOME_CO_TRY(auto l, layout::create({"unsharded"}, one));
    BOOST_OUTCOME_CO_TRY(auto d, dtensor::create(dtype::blob, {static_cast<std::int64_t>(value.size())}, l));
    if (!value.empty()) std::memcpy(d.view().shards().front().data.data(), value.data(), value.size());
    keep.push_back(std::move(d));
    in_memory.push_back({key, keep.back().view()});
  }
  // What TensorFlow recorded besides the tensors comes along: the object graph (so that a
  // restore of the imported checkpoint matches by structure, and an export writes it back)
  // and the bundle header's version. A torch file's state comes as meshckpt.torch's skeleton.
  if (found.graph) wopt.extensions.push_back({std::string(graph::object_graph_extension), graph::encode_object_graph(*found.graph)});
  if (found.tf_graph) {
    const std::string g = format::tf::encode_trackable_graph(*found.tf_graph);
    wopt.extensions.push_back({std::string(tf_object_graph_extension), std::vector<std::byte>(reinterpret_cast<const std::byte*>(g.data()),
                                                                                              reinterpret_cast<const std::byte*>(g.data()) + g.size())});
  }
  if (!found.tf_dtypes.empty()) {
    std::map<std::string, std::string> d;
    for (const auto& [k, n] : found.tf_dtypes) d[k] = std::to_string(n);
    wopt.extensions.push_back({std::string(tf_dtypes_extension), format::encode_string_map(d)});
  }
  if (found.tensorflow) {
    std::vector<std::byte> hdr(8);
    std::memcpy(hdr.data(), &found.tf_producer, 4);
    std::memcpy(hdr.data() + 4, &found.tf_min_consumer, 4);
    wopt.extensions.push_back({std::string(tf_header_extension), std::move(hdr)});
  }
  if (!found.torch_skeleton.empty()) {
    BOOST_OUTCOME_CO_TRY(auto l, layout::create({"unsharded"}, one));
    BOOST_OUTCOME_CO_TRY(auto d, dtensor::create(dtype::blob, {static_cast<std::int64_t>(found.torch_skeleton.size())}, l));
    std::memcpy(d.view().shards().front().data.data(), found.torch_skeleton.data(), found.torch_skeleton.size());
    keep.push_back(std::move(d));
    in_memory.push_back({std::string(torch_skeleton_key), keep.back().view()});
  }

  const std::string dir_path = split_prefix(found.prefix).first;
  // Each needed data file open twice: buffered for small pieces, O_DIRECT for large ones.
  // Allocated before the opens: nothing may throw between one and the guard.
  std::vector<std::optional<io::handle>> files(m->files.size()), direct(m->files.size());
  source_stream stream(b);  // closed before the files
  BOOST_OUTCOME_CO_TRY(auto dir, co_await io::async_open_dir(b, ex, dir_path, false, use_awaitable));
  on_unwind last_resort([&] {
    for (const auto* v : {&files, &direct})
      for (const auto& h : *v)
        if (h) io::close_detached(b, *h);
    io::close_detached(b, dir);
  });
  auto steps = [&]() -> task<write_report> {
    for (std::size_t k = 0; k < files.size(); ++k) {
      if (!needed[k]) continue;
      for (auto* v : {&files, &direct}) {
        auto h = co_await io::async_open(b, ex, dir, m->files[k].name, v == &files ? io::open_mode::read : io::open_mode::read_direct,
                                         use_awaitable);
        if (!h) {
          if (h.error().code == std::errc::no_such_file_or_directory)
            co_return make_error(errc::not_found, "data file " + dir_path + "/" + m->files[k].name + " of " + found.prefix + " does not exist");
          co_return with_context(h.error(), m->files[k].name);
        }
        (*v)[k] = *h;
      }
    }
    // Each stored piece is read ahead of the save, with O_DIRECT (small ones buffered).
    stream_reader read = [&](std::size_t t, std::uint64_t offset, std::span<std::byte> out) -> task<void> {
      std::uint64_t start = 0;
      for (auto& run : runs[t]) {
        if (out.empty()) break;
        if (offset >= start + run.length) {
          start += run.length;
          continue;
        }
        const std::uint64_t in = offset - start;
        const auto n = static_cast<std::size_t>(std::min<std::uint64_t>(out.size(), run.length - in));
        const auto& fname = m->files[run.file].name;
        if (in != run.read)
          co_return make_error(errc::invalid_argument, "internal: tensor \"" + streamed[t].key + "\" read out of order");
        auto reading = stream.read(*direct[run.file], *files[run.file], run.offset + in, run.offset + run.length, out.first(n),
                                   "tensor \"" + streamed[t].key + "\" in " + fname);
        BOOST_OUTCOME_CO_TRY(co_await std::move(reading));
        run.running = format::extend_crc(m->checksum, run.running, out.first(n));
        run.read += n;
        if (run.read == run.length && run.running != run.crc)
          co_return make_error(errc::checksum_mismatch, std::string(format::crc_name(m->checksum)) + " mismatch in tensor \"" + streamed[t].key + "\" of " + found.prefix + " at " +
                                                            fname + " bytes [" + std::to_string(run.offset) + ", " +
                                                            std::to_string(run.offset + run.length) + ")");
        out = out.subspan(n);
        offset += n;
        start += run.length;
      }
      if (!out.empty()) co_return make_error(errc::invalid_argument, "internal: read past the end of tensor \"" + streamed[t].key + "\"");
      co_return success();
    };
    auto writing = write_streamed(b, to, in_memory, streamed, std::move(read), std::move(wopt));
    co_return co_await std::move(writing);
  };
  std::optional<result<write_report>> r;
  try {
    r = co_await steps();
  } catch (const std::bad_alloc&) {
    r = out_of_memory("importing " + found.prefix);
  }
  co_await stream.close();
  for (const auto* v : {&files, &direct})
    for (const auto& h : *v)
      if (h) co_await close_quietly(b, *h);
  co_await close_quietly(b, dir);
  last_resort.disarm();
  co_return std::move(*r);
}


}  // namespace meshckpt::detail
