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
#include <memory>

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

// A stored piece of a streamed tensor, in the tensor's row-major order, checked as it is read.
struct stored_run {
  const format::saved_tensor* t = nullptr;
  const format::saved_slice* s = nullptr;
  std::unique_ptr<slice_checker> check;  // from its first byte on
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
    runs.push_back({&t, sl, nullptr, 0});
  }
  if (!t.global.empty() && next != t.global[0]) return std::nullopt;
  return runs;
}

// What an import writes: the tensors streamed from the source's files (their pieces in
// `runs`, the files they need in `needed`), and those held in memory (`keep`).
struct import_plan {
  std::vector<plan::streamed_tensor> streamed;
  std::vector<std::vector<stored_run>> runs;
  std::vector<bool> needed;
  std::deque<dtensor> keep;
  std::vector<named_tensor> in_memory;
};

// A value held in memory, whole on one device.
result<void> hold(import_plan& p, std::string key, dtype type, const shape& global) {
  BOOST_OUTCOME_TRY(auto l, layout::create(std::vector<std::string>(global.size(), "unsharded"), mesh::create({{"x", 1}}).value()));
  BOOST_OUTCOME_TRY(auto d, dtensor::create(type, global, l));
  p.keep.push_back(std::move(d));
  p.in_memory.push_back({std::move(key), p.keep.back().view()});
  return success();
}

result<void> hold_bytes(import_plan& p, std::string key, std::string_view bytes) {
  BOOST_OUTCOME_TRY(hold(p, std::move(key), dtype::blob, {static_cast<std::int64_t>(bytes.size())}));
  if (!bytes.empty()) std::memcpy(p.keep.back().view().shards().front().data.data(), bytes.data(), bytes.size());
  return success();
}

// Every tensor streamed when its pieces are row ranges, else read into memory (verified).
task<import_plan> plan_import(io::backend& b, const std::string& prefix, std::shared_ptr<const format::manifest> m) {
  import_plan p;
  p.needed.assign(m->files.size(), false);
  for (const auto& t : m->tensors) {
    if (auto r = row_runs(t)) {
      for (const auto& run : *r) p.needed[run.s->file] = true;
      p.streamed.push_back({t.key, t.type, t.global});
      p.runs.push_back(std::move(*r));
      continue;
    }
    BOOST_OUTCOME_CO_TRY(hold(p, t.key, t.type, t.global));
  }
  if (!p.in_memory.empty()) {
    auto reading = read_into(b, prefix, p.in_memory, {}, m);
    BOOST_OUTCOME_CO_TRY(co_await std::move(reading));
  }
  co_return p;
}

// What the source recorded besides the tensors comes along: opaque values (DT_STRING scalars
// the object graph names, as meshckpt exports them) as the blobs they were; the object graph
// (so that a restore of the imported checkpoint matches by structure, and an export writes it
// back) and the bundle header's version; a torch file's state as meshckpt.torch's skeleton.
result<void> carry_along(const restorable& found, import_plan& p, write_options& wopt) {
  for (const auto& [key, value] : found.strings) {
    BOOST_OUTCOME_TRY(hold_bytes(p, key, value));
  }
  if (found.graph) wopt.extensions.push_back({std::string(graph::object_graph_extension), graph::encode_object_graph(*found.graph)});
  if (found.tf_graph) {
    const std::string g = format::tf::encode_trackable_graph(*found.tf_graph);
    const auto* bytes = reinterpret_cast<const std::byte*>(g.data());
    wopt.extensions.push_back({std::string(tf_object_graph_extension), std::vector<std::byte>(bytes, bytes + g.size())});
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
    const std::string_view sk(reinterpret_cast<const char*>(found.torch_skeleton.data()), found.torch_skeleton.size());
    BOOST_OUTCOME_TRY(hold_bytes(p, std::string(torch_skeleton_key), sk));
  }
  return success();
}

// Bytes [offset, offset + out.size()) of streamed tensor `t`, from its pieces in turn, each
// checked at its last byte (slice_checker). The save asks for them in order.
task<void> read_runs(const format::manifest& m, source_files& files, std::vector<stored_run>& runs, std::uint64_t offset,
                     std::span<std::byte> out) {
  std::uint64_t start = 0;
  for (auto& run : runs) {
    if (out.empty()) break;
    const auto& sl = *run.s;
    if (offset >= start + sl.length) {
      start += sl.length;
      continue;
    }
    const std::uint64_t in = offset - start;
    const auto n = static_cast<std::size_t>(std::min<std::uint64_t>(out.size(), sl.length - in));
    if (in != run.read) co_return make_error(errc::invalid_argument, "internal: tensor \"" + run.t->key + "\" read out of order");
    if (!run.check) run.check = std::make_unique<slice_checker>(m, *run.t, sl);
    auto reading = files.read(sl.file, sl.offset + in, sl.offset + sl.length, out.first(n),
                              "tensor \"" + run.t->key + "\" in " + m.files[sl.file].name);
    BOOST_OUTCOME_CO_TRY(co_await std::move(reading));
    BOOST_OUTCOME_CO_TRY(run.check->update(out.first(n)));
    run.read += n;
    out = out.subspan(n);
    offset += n;
    start += sl.length;
  }
  if (!out.empty() && !runs.empty())
    co_return make_error(errc::invalid_argument, "internal: read past the end of tensor \"" + runs.front().t->key + "\"");
  co_return success();
}

// The save, reading each stored piece ahead of it from the source's files (source_files).
task<write_report> stream_import(io::backend& b, const std::string& prefix, const format::manifest& m, import_plan& p, std::string to,
                                 write_options wopt) {
  auto ex = co_await asio::this_coro::executor;
  const std::string dir_path = split_prefix(prefix).first;
  source_files files(b, m.files.size());
  BOOST_OUTCOME_CO_TRY(auto dir, co_await io::async_open_dir(b, ex, dir_path, false, use_awaitable));
  on_unwind last_resort([&] { io::close_detached(b, dir); });
  auto steps = [&]() -> task<write_report> {
    for (std::size_t k = 0; k < m.files.size(); ++k) {
      if (!p.needed[k]) continue;
      auto opening = files.open(k, dir, m.files[k].name, "data file " + dir_path + "/" + m.files[k].name + " of " + prefix);
      BOOST_OUTCOME_CO_TRY(co_await std::move(opening));
    }
    stream_reader read = [&](std::size_t t, std::uint64_t offset, std::span<std::byte> out) {
      return read_runs(m, files, p.runs[t], offset, out);
    };
    auto writing = write_streamed(b, to, p.in_memory, p.streamed, std::move(read), std::move(wopt));
    co_return co_await std::move(writing);
  };
  std::optional<result<write_report>> r;
  try {
    r = co_await steps();
  } catch (const std::bad_alloc&) {
    r = out_of_memory("importing " + prefix);
  }
  co_await files.close();
  co_await close_quietly(b, dir);
  last_resort.disarm();
  co_return std::move(*r);
}

}  // namespace

task<write_report> import_restorable(io::backend& b, restorable found, std::string to, write_options wopt) {
  auto m = std::make_shared<const format::manifest>(std::move(found.manifest));
  auto planning = plan_import(b, found.prefix, m);
  BOOST_OUTCOME_CO_TRY(auto p, co_await std::move(planning));
  BOOST_OUTCOME_CO_TRY(carry_along(found, p, wopt));
  auto streaming = stream_import(b, found.prefix, *m, p, std::move(to), std::move(wopt));
  co_return co_await std::move(streaming);
}

}  // namespace meshckpt::detail
