// The commit protocol of a save (write_tensors). Prefix DIR/NAME, a fresh random TOKEN per
// attempt.
//
//   1. Plan: place every distinct slice in data files (pure; no IO).
//   2. Create DIR (and missing parents, each fsynced into its parent); take DIR's writer lock
//      (DIR/meshckpt.lock; process 0 of a multi-process save), held until the save returns.
//   3. For each data file NAME.data-TOKEN-K: create exclusively, write all its slices (the XXH3
//      of every chunk is computed from the bytes written), fsync, close.
//   4. fsync DIR: the data files' directory entries are durable.
//   5. Encode the manifest; write it to NAME.manifest.tmp-TOKEN (created exclusively), fsync,
//      close.
//   6. rename NAME.manifest.tmp-TOKEN -> NAME.manifest (atomically replaces an older one).
//   7. fsync DIR. Only now is success reported: the checkpoint is durable.
//   (5-7 are runtime::durable_replace, the library's one way to publish a file.)
//   8. Clean up (best effort): remove NAME's data files of other tokens (the replaced checkpoint,
//      or leftovers of crashed saves) and NAME's stray temp manifests.
//
// What a crash leaves behind:
//   before 6:  the old NAME.manifest (if any) and its data files, untouched: the old checkpoint
//              is intact; the new files are leftovers (never read as a checkpoint, since only
//              NAME.manifest makes one), removed by step 8 of the next save of NAME.
//   after 6, before 7 completes: either the old or the new manifest is visible; both reference
//              only fsynced data files whose entries are durable (step 4), so either restores.
//   after 7:   the new checkpoint; possibly leftovers of the old one, removed by the next save.
//
// A failure before step 6 removes the files this attempt created. A failure in step 6 or 7
// reports an error and removes nothing: the new manifest may be visible, and its data must stay.
// A failed fsync ends the attempt; it is never retried.

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <random>
#include <stop_token>
#include <type_traits>
#include <unistd.h>

#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>

#include "../coord/await_collective.hpp"
#include "../runtime/durable_replace.hpp"
#include "../pipeline/recyclers.hpp"
#include "save_messages.hpp"
#include "save_state.hpp"
#include "meshckpt/pipeline/tensor_io_async.hpp"
#include "meshckpt/format/checksum.hpp"
#include "meshckpt/format/names.hpp"
#include "meshckpt/io/url.hpp"

namespace meshckpt {

namespace detail {

std::uint64_t fresh_token() {
  static std::atomic<std::uint64_t> counter{0};
  static const std::uint64_t seed = [] {
    std::random_device rd;
    return (std::uint64_t{rd()} << 32) ^ rd();
  }();
  std::uint64_t parts[4] = {seed, static_cast<std::uint64_t>(::getpid()),
                            static_cast<std::uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count()), counter.fetch_add(1)};
  return format::checksum(std::as_bytes(std::span(parts)));
}

namespace {

error at(const save_state& s, error e) { return with_context(std::move(e), "save " + s.prefix); }

result<void> check_options(const save_state& s, const write_options& opt) {
  if (opt.chunk_bytes < 4096 || opt.chunk_bytes > (64u << 20) || (opt.chunk_bytes & (opt.chunk_bytes - 1)))
    return make_error(errc::invalid_argument,
                      "chunk_bytes " + std::to_string(opt.chunk_bytes) + " is not a power of two in [4 KiB, 64 MiB]");
  BOOST_OUTCOME_TRY(format::check_base_name(s.base));
  if (opt.coordinator && (opt.coordinator->size() < 1 || opt.coordinator->size() > max_processes))
    return make_error(errc::invalid_argument, "a save spans at most " + std::to_string(max_processes) + " processes, not " +
                                                  std::to_string(opt.coordinator->size()));
  if (opt.coordination_timeout.count() <= 0) return make_error(errc::invalid_argument, "coordination_timeout must be positive");
  return success();
}

// Steps 1-4: plan, create the directory, write and fsync this process's data files, fsync the
// directory. `rank` < 0: a single-process save; otherwise this process's files are numbered
// from rank * files_per_process and only its devices' slices are written.
task<void> write_local(save_state& s, format::manifest& m, std::span<const named_tensor> tensors, write_options& opt, int rank) {
  auto ex = co_await asio::this_coro::executor;
  // 1. Plan.
  plan::write_plan reuse;
  reuse.skeleton = detail::manifests().take();
  reuse.writes = detail::slice_writes().take();
  BOOST_OUTCOME_CO_TRY(auto p, plan::plan_write(tensors, opt.layout, rank >= 0, std::move(reuse), s.streamed));
  runtime::give_back_at_exit writes_back(detail::slice_writes(), p.writes, [](auto& w) { w.clear(); });
  m = std::move(p.skeleton);
  m.chunk_bytes = opt.chunk_bytes;
  m.created_unix_ms = static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count());
  m.writer = "meshckpt " MESHCKPT_VERSION;
  m.extensions = std::move(opt.extensions);
  if (rank >= 0 && p.writes.empty()) p.file_sizes.clear();  // nothing of ours to store: no file
  if (rank >= 0 && p.file_sizes.size() > files_per_process)
    co_return make_error(errc::limit_exceeded, "a process of a multi-process save writes at most " + std::to_string(files_per_process) +
                                                   " data files; raise layout.max_file_bytes");
  const std::uint32_t first_index = rank >= 0 ? static_cast<std::uint32_t>(rank) * files_per_process : 0;

  for (auto sz : p.file_sizes) s.total_bytes += sz;
  s.stop = opt.stop;
  s.progress = opt.progress;
  s.sources_released = std::move(opt.sources_released);
  if (s.stop.stop_requested()) co_return make_error(errc::cancelled, "save cancelled before it started");

  // 2. Directory, and its writer lock.
  BOOST_OUTCOME_CO_TRY(auto dir, co_await io::async_open_dir(s.b, ex, s.dir_path, true, use_awaitable));
  s.dir = dir;
  if (rank <= 0 && (s.b.caps(dir).host_filesystem || io::is_url(s.dir_path))) {  // an s3:// prefix: its lease
    auto locking = detail::lock_dir(s.dir_path, opt.lock_timeout);  // named: GCC 12 destroys a co_await's argument temporaries twice
    BOOST_OUTCOME_CO_TRY(s.lock, co_await std::move(locking));
  }

  // 3. Data files.
  std::size_t begin = 0;
  for (std::uint32_t k = 0; k < p.file_sizes.size(); ++k) {
    std::size_t end = begin;
    while (end < p.writes.size() && m.tensors[p.writes[end].tensor].slices[p.writes[end].slice].file == k) ++end;
    BOOST_OUTCOME_CO_TRY(co_await write_data_file(s, m, first_index + k, std::span(p.writes).subspan(begin, end - begin), p.file_sizes[k],
                                                  opt.chunk_bytes, k + 1 == p.file_sizes.size()));
    m.files.push_back({format::data_file_name(s.base, s.token, first_index + k), p.file_sizes[k]});
    begin = end;
  }

  if (s.sources_released) std::exchange(s.sources_released, nullptr)();  // no data files at all

  // 4. Data file entries durable.
  BOOST_OUTCOME_CO_TRY(co_await io::async_fsync(s.b, ex, dir, use_awaitable));
  co_return success();
}

// Steps 5-8: write the manifest `m` under a temp name, publish it, make it durable, clean up.
task<write_report> publish(save_state& s, const format::manifest& m) {
  auto ex = co_await asio::this_coro::executor;
  io::handle dir = *s.dir;

  // 5-7. The manifest, published durably: temp name, fsync, rename, directory fsync. A stop
  // requested before the rename (the last moment a cancellation can still take effect) ends the
  // save without a trace.
  auto bytes = detail::byte_buffers().take();
  runtime::give_back_at_exit bytes_back(detail::byte_buffers(), bytes);
  BOOST_OUTCOME_CO_TRY(format::encode_into(m, bytes));
  std::string final_name = format::manifest_name(s.base);
  runtime::replace_options how;
  how.renamed = &s.renamed;
  how.create_only = true;  // object stores: of two committers of one checkpoint, one wins
  how.before_rename = [&s]() -> result<void> {
    if (s.stop.stop_requested()) return make_error(errc::cancelled, "save cancelled before its commit");
    return success();
  };
  std::string tmp = format::temp_manifest_name(s.base, s.token);
  s.created.push_back(tmp);  // removed by the save's cleanup too, should this frame unwind
  auto published = runtime::durable_replace(s.b, dir, std::move(tmp), final_name, bytes, how);
  BOOST_OUTCOME_CO_TRY(co_await std::move(published));

  write_report rep;
  rep.manifest_path = (s.dir_path == "." ? std::string() : s.dir_path + "/") + final_name;
  rep.bytes = m.stored_bytes();
  rep.tensors = m.tensors.size();
  for (const auto& t : m.tensors) rep.slices += t.slices.size();
  rep.files = m.files.size();

  // 8. Clean up older files of this checkpoint name. Every process of a multi-process save
  // shares the token, so this never touches the files just committed.
  if (auto entries = co_await io::async_list(s.b, ex, dir, use_awaitable)) {
    for (const auto& e : *entries) {
      if (e.type != io::dir_entry::regular) continue;
      auto kind = format::classify(e.name);
      if (kind.base != s.base || kind.token == s.token) continue;
      if (kind.k != format::name_kind::data && kind.k != format::name_kind::temp_manifest) continue;
      if (co_await io::async_unlink(s.b, ex, dir, e.name, use_awaitable)) ++rep.cleaned_files;
    }
  }
  co_return rep;
}

// a. Every process takes process 0's token (broadcast), so all data files carry the token of
// this save.
task<void> agree_on_token(save_state& s, coord::coordinator& co, coord::milliseconds timeout) {
  std::vector<std::byte> tok(8);
  for (int i = 0; i < 8; ++i) tok[static_cast<std::size_t>(i)] = static_cast<std::byte>(s.token >> (8 * i));
  // Collectives started apart from their co_await: GCC 12 mishandles non-trivial temporaries
  // inside co_await expressions.
  auto token_op = co.start_broadcast(tok, timeout);
  auto got = co_await coord::await_collective(std::move(token_op));
  if (!got) co_return with_context(got.error(), "agreeing on the save's token with process 0");
  if (got->size() != 8) co_return make_error(errc::invalid_argument, "process 0 sent a token of " + std::to_string(got->size()) + " bytes");
  s.token = 0;
  for (int i = 0; i < 8; ++i) s.token |= std::uint64_t{static_cast<std::uint8_t>((*got)[static_cast<std::size_t>(i)])} << (8 * i);
  co_return success();
}

// Process 0: the reports merged into `m` (its own local write's error first among failures),
// then steps 5-8. The outcome to announce; the report when it committed.
task<save_outcome> commit_reports(save_state& s, format::manifest& m, const result<void>& local, const std::vector<coord::bytes>& gathered,
                                  std::optional<write_report>& committed) {
  save_outcome out;
  std::vector<process_report> reports;
  for (std::size_t r = 0; r < gathered.size(); ++r) {
    auto rep = decode_report(gathered[r]);
    if (!rep) {
      out.failure = with_context(rep.error(), "process " + std::to_string(r));
      co_return out;
    }
    reports.push_back(std::move(*rep));
  }
  if (!local) {
    out.failure = with_context(local.error(), "process 0");
    co_return out;
  }
  if (auto mr = merge_reports(m, reports); !mr) {
    out.failure = mr.error();
    co_return out;
  }
  auto pub = co_await publish(s, m);
  if (!pub) {
    out.s = s.renamed ? save_outcome::failed_after_publish : save_outcome::failed;
    out.failure = with_context(pub.error(), "process 0, committing");
    co_return out;
  }
  committed = *pub;
  out.s = save_outcome::committed;
  out.bytes = pub->bytes;
  out.tensors = pub->tensors;
  out.slices = pub->slices;
  out.files = pub->files;
  co_return out;
}

// Another process: process 0's announcement of the outcome. Process 0 may first wait up to
// `timeout` for the slowest report, then commit. Not hearing it leaves the outcome unknown: the
// files might belong to a committed checkpoint, so they stay.
task<save_outcome> hear_outcome(save_state& s, coord::coordinator& co, coord::milliseconds timeout,
                                std::optional<write_report>& committed) {
  auto listen = co.start_broadcast({}, 2 * timeout);
  auto heard = co_await coord::await_collective(std::move(listen));
  if (!heard) {
    s.renamed = true;
    co_return with_context(heard.error(), "waiting for process 0 to announce the save's outcome");
  }
  auto o = decode_outcome(*heard);
  if (!o) co_return with_context(o.error(), "process 0's announcement of the outcome");
  if (o->s == save_outcome::committed) {
    committed.emplace();
    committed->manifest_path = (s.dir_path == "." ? std::string() : s.dir_path + "/") + format::manifest_name(s.base);
    committed->bytes = o->bytes;
    committed->tensors = static_cast<std::size_t>(o->tensors);
    committed->slices = static_cast<std::size_t>(o->slices);
    committed->files = static_cast<std::size_t>(o->files);
  }
  co_return std::move(*o);
}

// The multi-process save (docs/MULTI_PROCESS.md). Every process:
//   a. takes process 0's token (agree_on_token);
//   b. runs steps 1-4 on its own slices (owner-local writes, its own data files);
//   c. sends process 0 a report: its files and slices with their checksums, or its error.
// Process 0 merges the reports into one manifest (every slice reported exactly once, by
// processes that planned the same skeleton), runs steps 5-8, and broadcasts the outcome; the
// others return it. So no manifest is written unless every process succeeded, and every process
// that hears the outcome reports the same error. A process that does not hear it (process 0
// died or is unreachable) fails with timed_out and keeps its files: the outcome is unknown, and
// the next save of this name removes them if they are not part of a checkpoint.
task<write_report> save_multi(save_state& s, coord::coordinator& co, std::span<const named_tensor> tensors, write_options opt) {
  const auto timeout = opt.coordination_timeout;
  const int rank = co.rank();
  auto agreeing = agree_on_token(s, co, timeout);
  BOOST_OUTCOME_CO_TRY(co_await std::move(agreeing));

  format::manifest m;
  runtime::give_back_at_exit m_back(detail::manifests(), m);
  result<void> local = co_await write_local(s, m, tensors, opt, rank);
  process_report mine;
  if (local)
    mine = report_of(m, m.files, skeleton_fingerprint(m));
  else
    mine.failure = local.error();
  auto mine_bytes = encode(mine);
  auto report_op = co.start_gather(mine_bytes, timeout);
  auto gathered = co_await coord::await_collective(std::move(report_op));

  save_outcome out;
  std::optional<write_report> committed;
  if (rank == 0) {
    if (!gathered) {
      out.failure = with_context(gathered.error(), "collecting the processes' reports");
    } else {
      auto committing = commit_reports(s, m, local, *gathered, committed);
      BOOST_OUTCOME_CO_TRY(out, co_await std::move(committing));
    }
    auto said = encode(out);
    // The outcome stands whether or not every process hears it; one that does not times out.
    auto announce = co.start_broadcast(said, timeout);
    (void)co_await coord::await_collective(std::move(announce));
  } else {
    if (!gathered) co_return gathered.error();
    auto hearing = hear_outcome(s, co, timeout, committed);
    BOOST_OUTCOME_CO_TRY(out, co_await std::move(hearing));
  }
  if (out.s == save_outcome::failed_after_publish) s.renamed = true;  // the manifest may be visible: keep its data
  if (!committed) co_return out.failure;
  committed->processes = co.size();
  co_return *committed;
}

task<write_report> save_steps(save_state& s, std::span<const named_tensor> tensors, write_options opt) {
  BOOST_OUTCOME_CO_TRY(check_options(s, opt));
  if (opt.coordinator && opt.coordinator->size() > 1) {
    if (!s.streamed.empty()) co_return make_error(errc::unsupported, "a save that spans processes takes tensors in memory only");
    co_return co_await save_multi(s, *opt.coordinator, tensors, std::move(opt));
  }
  format::manifest m;
  runtime::give_back_at_exit m_back(detail::manifests(), m);
  BOOST_OUTCOME_CO_TRY(co_await write_local(s, m, tensors, opt, -1));
  co_return co_await publish(s, m);
}

task<write_report> save_coro(io::backend& b, std::string prefix, std::span<const named_tensor> tensors, write_options opt,
                             std::span<const plan::streamed_tensor> streamed = {}, stream_reader read = {}) {
  auto ex = co_await asio::this_coro::executor;
  auto [dir_path, base] = split_prefix(prefix);
  save_state s{b, prefix, dir_path, base};
  s.streamed = streamed;
  s.read_stream = std::move(read);
  on_unwind last_resort([&] {
    for (auto h : s.open_files) io::close_detached(b, h);
    if (s.dir) io::close_detached(b, *s.dir);
  });
  // An allocation failure anywhere in the steps must still close and remove what they made.
  std::optional<result<write_report>> r;
  try {
    r = co_await save_steps(s, tensors, std::move(opt));
  } catch (const std::bad_alloc&) {
    r = out_of_memory("saving");
  }
  while (!s.open_files.empty()) {
    co_await close_quietly(b, s.open_files.back());
    s.open_files.pop_back();
  }
  if (!*r && !s.renamed && s.dir)
    for (const auto& name : s.created) (void)co_await io::async_unlink(b, ex, *s.dir, name, use_awaitable);
  if (s.dir) {
    co_await close_quietly(b, *s.dir);
    s.dir.reset();
  }
  if (!*r) co_return at(s, r->error());
  co_return std::move(*r);
}

}  // namespace

task<write_report> write_streamed(io::backend& b, std::string prefix, std::span<const named_tensor> tensors,
                                  std::span<const plan::streamed_tensor> streamed, stream_reader read, write_options opt) {
  return save_coro(b, std::move(prefix), tensors, std::move(opt), streamed, std::move(read));
}

void start_write_tensors(asio::any_io_executor ex, io::backend& b, std::string prefix, std::vector<named_tensor> tensors, write_options opt,
                         io::completion<write_report> done) {
  auto owned = std::make_shared<std::vector<named_tensor>>(std::move(tensors));
  spawn<write_report>(ex, save_coro(b, std::move(prefix), *owned, std::move(opt)),
                      [owned, done = std::move(done)](result<write_report> r) { done(std::move(r)); });
}

}  // namespace detail

result<write_report> write_tensors(io::backend& b, std::string_view prefix, std::span<const named_tensor> tensors,
                                   const write_options& opt) {
  return runtime::run_blocking<write_report>("write_tensors", [&](auto ex, auto done) {
    // The caller's tensors outlive the blocking call: no copy of the list.
    detail::spawn<write_report>(ex, detail::save_coro(b, std::string(prefix), tensors, opt), std::move(done));
  });
}

}  // namespace meshckpt
