#include "meshckpt/interchange/tf_bundle_io.hpp"

#include "../pipeline/common.hpp"
#include "../pipeline/data_files.hpp"

namespace meshckpt {

namespace detail {

task<format::tf::bundle_index> load_tf_index(io::backend& b, const opened_prefix& p, const std::string& prefix) {
  const std::string name = p.base + ".index";
  const std::string where = p.dir_path == "." ? name : p.dir_path + "/" + name;
  std::vector<std::byte> bytes;
  auto read = co_await read_small_file(b, p, name, max_tf_index_bytes, bytes);
  if (!read && read.error().code == std::errc::no_such_file_or_directory)
    co_return make_error(errc::not_found, "TensorFlow checkpoint " + prefix + " not found: " + name + " does not exist in " + p.dir_path);
  if (!read) co_return read.error();
  auto idx = format::tf::decode_bundle_index(bytes);
  if (!idx) co_return with_context(idx.error(), where);
  co_return std::move(*idx);
}

std::string strip_index(std::string prefix) {
  if (prefix.ends_with(".index")) prefix.resize(prefix.size() - 6);
  return prefix;
}

namespace {

task<format::tf::bundle_index> read_index_coro(io::backend& b, std::string prefix) {
  prefix = strip_index(std::move(prefix));
  auto p = co_await open_prefix_dir(b, prefix);
  if (!p) co_return p.error();
  on_unwind last_resort([&] { io::close_detached(b, p->dir); });
  std::optional<result<format::tf::bundle_index>> out;
  try {
    out = co_await load_tf_index(b, *p, prefix);
  } catch (const std::bad_alloc&) {
    out = out_of_memory("reading " + prefix + ".index");
  }
  co_await close_quietly(b, p->dir);
  last_resort.disarm();
  co_return std::move(*out);
}

// Entry `e` of `file` as the one slice of a one-file manifest whose checksum is TensorFlow's
// (crc32c_whole), so that slice_checker checks it as it checks every foreign tensor.
struct entry_as_slice {
  format::manifest m;
  format::saved_tensor t;
  format::saved_slice s;
  entry_as_slice(const std::string& file, const format::tf::bundle_entry& e) {
    m.checksum = format::checksum_kind::crc32c_whole;
    m.chunk_bytes = std::uint64_t{1} << 62;
    m.files.push_back({file, 0});
    t.key = e.key;
    s.where = box::whole(e.global);
    s.offset = e.offset;
    s.length = e.size;
    s.checksums = {e.crc32c};
  }
};

// The bytes of `e`, read in pieces, against its checksum; a problem is appended to `rep`.
task<void> verify_entry(io::backend& b, io::handle h, const std::string& file, const format::tf::bundle_entry& e, verify_report& rep,
                        std::uint64_t total, const verify_progress& progress, std::vector<std::byte>& buf) {
  auto ex = co_await asio::this_coro::executor;
  const std::string where = "tensor \"" + e.key + "\" in " + file + " at offset " + std::to_string(e.offset);
  // A string tensor is checked as lengths and bytes; anything else, whatever its dtype (one
  // meshckpt lacks, or a number TensorFlow does not define), by the CRC-32C of its bytes.
  const bool strings = e.tf_type == format::tf::tf_string;
  const entry_as_slice as_slice(file, e);
  slice_checker check(as_slice.m, as_slice.t, as_slice.s);
  std::vector<std::byte> whole;  // a string tensor is decoded whole
  constexpr std::uint64_t step = 8u << 20;
  if (e.size == 0 && !strings) {  // an empty tensor: its CRC checked once, over no bytes
    if (auto checked = check.update({}); !checked) rep.problems.push_back(checked.error());
    co_return success();
  }
  for (std::uint64_t off = 0; off < e.size; off += step) {
    const std::uint64_t n = std::min(step, e.size - off);
    buf.resize(n);
    auto got = co_await io::async_read(b, ex, h, e.offset + off, buf, use_awaitable);
    if (!got) {
      rep.problems.push_back(with_context(got.error(), where));
      co_return success();
    }
    if (*got != n) {
      rep.problems.push_back(make_error(errc::short_read, where + ": the file ends before its " + std::to_string(e.size) + " bytes"));
      co_return success();
    }
    if (strings) {
      whole.insert(whole.end(), buf.begin(), buf.end());
    } else if (auto checked = check.update(buf); !checked) {
      rep.problems.push_back(checked.error());
      co_return success();
    }
    rep.bytes_checked += n;
    if (progress) progress(rep.bytes_checked, total);
  }
  if (strings) {
    auto n = num_elements(e.global);
    auto d = format::tf::decode_string_tensor(whole, static_cast<std::uint64_t>(n.value_or(0)), e.crc32c);
    if (!d) rep.problems.push_back(with_context(d.error(), where));
  }
  co_return success();
}

// Every stored tensor of the bundle in the open directory `p`; the data files it opens are left
// in `files` for the caller to close.
task<verify_report> verify_files(io::backend& b, const opened_prefix& p, const std::string& prefix,
                                 std::vector<std::optional<io::handle>>& files, const verify_progress& progress,
                                 const std::set<std::string>* only) {
  auto ex = co_await asio::this_coro::executor;
  auto loading = load_tf_index(b, p, prefix);
  BOOST_OUTCOME_CO_TRY(auto idx, co_await std::move(loading));
  files.resize(static_cast<std::size_t>(idx.num_shards));
  verify_report rep;
  rep.files = files.size();
  std::uint64_t total = 0;
  for (const auto& e : idx.entries) {
    ++rep.slices;
    rep.tensors += e.key.empty() || e.key[0] != '\0';  // slice entries' keys start with a 0 byte
    if (e.slices.empty()) total += e.size;
  }
  std::vector<bool> unreadable(files.size(), false);
  std::vector<std::byte> buf;
  for (const auto& e : idx.entries) {
    // A partitioned tensor's slices are entries of their own.
    if (!e.slices.empty() || unreadable[static_cast<std::size_t>(e.shard)] || (only && !only->count(e.key))) continue;
    const std::string name = format::tf::data_file_name(p.base, e.shard, idx.num_shards);
    auto& h = files[static_cast<std::size_t>(e.shard)];
    if (!h) {
      auto opened = co_await io::async_open(b, ex, p.dir, name, io::open_mode::read, use_awaitable);
      if (!opened) {
        rep.problems.push_back(with_context(opened.error(), "data file " + name));
        unreadable[static_cast<std::size_t>(e.shard)] = true;
        continue;
      }
      h = *opened;
    }
    auto checked = verify_entry(b, *h, name, e, rep, total, progress, buf);
    BOOST_OUTCOME_CO_TRY(co_await std::move(checked));
  }
  co_return rep;
}

task<verify_report> verify_coro(io::backend& b, std::string prefix, verify_progress progress, const std::set<std::string>* only) {
  prefix = strip_index(std::move(prefix));
  auto p = co_await open_prefix_dir(b, prefix);
  if (!p) co_return p.error();
  std::vector<std::optional<io::handle>> files;
  on_unwind last_resort([&] {
    for (auto& h : files)
      if (h) io::close_detached(b, *h);
    io::close_detached(b, p->dir);
  });
  std::optional<result<verify_report>> out;
  try {
    out = co_await verify_files(b, *p, prefix, files, progress, only);
  } catch (const std::bad_alloc&) {
    out = out_of_memory("verifying " + prefix);
  }
  for (auto& h : files)
    if (h) {
      co_await close_quietly(b, *h);
      h.reset();
    }
  co_await close_quietly(b, p->dir);
  last_resort.disarm();
  co_return std::move(*out);
}

}  // namespace

void start_read_tf_bundle_index(asio::any_io_executor ex, io::backend& b, std::string prefix,
                                io::completion<format::tf::bundle_index> done) {
  spawn<format::tf::bundle_index>(ex, read_index_coro(b, std::move(prefix)), std::move(done));
}

}  // namespace detail

error no_checkpoint_at(std::string_view path, const error& manifest_missing) {
  const std::string p(path);
  return make_error(errc::not_found, manifest_missing.what() + "; nor is there a TensorFlow checkpoint (" + p +
                                         ".index) or a SavedModel directory (" + p + "/variables/variables.index)");
}

result<verify_report> verify_tf_bundle(io::backend& b, std::string_view prefix, verify_progress progress,
                                       const std::set<std::string>* only) {
  return runtime::run_blocking<verify_report>("verify_tf_bundle", [&](auto ex, auto done) {
    detail::spawn<verify_report>(ex, detail::verify_coro(b, std::string(prefix), std::move(progress), only), std::move(done));
  });
}

result<format::tf::bundle_index> read_tf_bundle_index(io::backend& b, std::string_view prefix) {
  return runtime::run_blocking<format::tf::bundle_index>(
      "read_tf_bundle_index", [&](auto ex, auto done) { detail::start_read_tf_bundle_index(ex, b, std::string(prefix), std::move(done)); });
}

}  // namespace meshckpt
