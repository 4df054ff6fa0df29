#pragma once
// Private helpers shared by the api/ implementation files: opening a prefix's directory, loading
// its manifest, closing quietly. The coroutine machinery they use is the runtime layer's
// (src/runtime/).

#include <functional>
#include <memory>
#include <optional>

#include "../runtime/bridge.hpp"
#include "../runtime/op_window.hpp"
#include "../runtime/staged_writer.hpp"
#include "../runtime/task.hpp"
#include "meshckpt/pipeline/tensor_io.hpp"
#include "meshckpt/format/tf_bundle.hpp"
#include "meshckpt/io/async.hpp"

namespace meshckpt::detail {

namespace asio = boost::asio;
using asio::use_awaitable;
using runtime::on_unwind;
using runtime::op_window;
using runtime::spawn;
using runtime::task;

// The directory handle and base name of a prefix, opened for reading.
struct opened_prefix {
  io::handle dir;
  std::string dir_path;
  std::string base;
};

// Opens the directory of `prefix` (not creating it). not_found when it does not exist.
task<opened_prefix> open_prefix_dir(io::backend& b, std::string_view prefix);

// Reads the whole file `name` of an open directory into `into`, refusing one over `cap` bytes
// (limit_exceeded, naming it). A missing file is std::errc::no_such_file_or_directory.
task<void> read_small_file(io::backend& b, const opened_prefix& p, const std::string& name, std::uint64_t cap,
                           std::vector<std::byte>& into);

// Reads and decodes the manifest of `base` in an open directory.
task<format::manifest> load_manifest(io::backend& b, const opened_prefix& p, std::string_view prefix);

// Reads and decodes `p.base`.index, a TensorFlow bundle's index, in an open directory;
// not_found naming the file when it does not exist.
task<format::tf::bundle_index> load_tf_index(io::backend& b, const opened_prefix& p, const std::string& prefix);

// `prefix` without a trailing ".index" (a TensorFlow bundle may be named by its index file).
std::string strip_index(std::string prefix);

// Opens the directory of `prefix`, loads its manifest, closes the directory.
task<format::manifest> load_manifest_at(io::backend& b, std::string prefix);

// Reads `targets` from checkpoint `prefix` whose manifest `m` is already loaded (a restore of
// the object graph). `targets` must outlive the read.
task<read_report> read_into(io::backend& b, std::string prefix, std::span<const named_tensor> targets, read_options opt,
                            std::shared_ptr<const format::manifest> m);

// read_tensor_box as a coroutine: box `where` of tensor `key` of checkpoint `prefix` (manifest
// `m`) into `out`, row-major.
task<read_report> read_box(io::backend& b, std::string prefix, std::shared_ptr<const format::manifest> m, std::string key, box where,
                           std::span<std::byte> out, read_options opt);

// One round of a restore into host memory: the targets given, read with the restore's manifest,
// files and options.
using staged_round = std::function<task<read_report>(std::span<const named_tensor>)>;

// Restores `targets`, some of whose shards are device memory: those through page-locked
// staging (device_restore.cpp), each batch's copies to the device overlapping the next
// batch's reads; host targets in one round of their own.
task<read_report> read_through_staging(std::span<const named_tensor> targets, const staged_round& round);

// verify_tensor as a coroutine.
task<void> verify_one_tensor(io::backend& b, std::string prefix, std::shared_ptr<const format::manifest> m, std::string key);

// Reads bytes [offset, offset + out.size()) of streamed tensor `tensor` into `out`. A save
// asks for each streamed tensor's bytes once, in order, a staging block at most at a time.
using stream_reader = std::function<task<void>(std::size_t tensor, std::uint64_t offset, std::span<std::byte> out)>;

// write_tensors of `tensors` (in memory) and `streamed` (read through `read` while they are
// written): memory stays bounded by the staging pool whatever the streamed tensors' size. A
// failure of `read` fails the save like a failed write (its files removed). Single process.
task<write_report> write_streamed(io::backend& b, std::string prefix, std::span<const named_tensor> tensors,
                                  std::span<const plan::streamed_tensor> streamed, stream_reader read, write_options opt);

// Work a managed save does after its commit, inside the checkpoint's job (so that the next save
// or restore starts only after it): the state file, retention, cleanup.
struct after_commit {
  std::function<task<void>()> run;
};

// Publishes the file `path` durably (runtime::durable_replace under a temp name in its
// directory), its content written by `fill`.
task<void> publish_file(io::backend& b, std::string path, std::function<task<void>(io::handle)> fill, bool direct = false);

// Publishes a file of `size` bytes streamed front to back: `produce` places them through a
// runtime::staged_writer (O_DIRECT, writes in flight), at increasing offsets, each once at most
// (gaps are zeros). Memory stays bounded by the staging pool whatever the size.
task<void> publish_streamed(io::backend& b, std::string path, std::uint64_t size,
                            std::function<task<void>(runtime::staged_writer&)> produce);

// Closes a handle, ignoring errors (used on paths that already failed or only read).
asio::awaitable<void> close_quietly(io::backend& b, io::handle h);

}  // namespace meshckpt::detail
