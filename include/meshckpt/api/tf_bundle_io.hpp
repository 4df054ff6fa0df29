#pragma once
/// \file
/// TensorFlow tensor bundles on a backend: finding and reading a bundle's index
/// (format/tf_bundle.hpp decodes it). What a prefix names is told by its files: `P.manifest`
/// for a meshckpt checkpoint, `P.index` for a TensorFlow bundle.

#include <string_view>

#include "meshckpt/api/tensor_io.hpp"
#include "meshckpt/format/tf_bundle.hpp"
#include "meshckpt/io/async.hpp"
#include "meshckpt/io/backend.hpp"

namespace meshckpt {

/// The largest `.index` file read (about 4 million tensors' entries).
inline constexpr std::uint64_t max_tf_index_bytes = std::uint64_t{1} << 30;

/// The index of the TensorFlow bundle `prefix` (the file `prefix.index`; a `prefix` that ends
/// in ".index" names it too), decoded and checked. Errors: not_found (naming the file) when
/// it does not exist; those of `format::tf::decode_bundle_index`, naming the file.
result<format::tf::bundle_index> read_tf_bundle_index(io::backend& b, std::string_view prefix);

/// Reads every tensor of the TensorFlow bundle `prefix` and checks it against its CRC-32C (a
/// string tensor against its two checksums), in pieces of at most 8 MiB. Damage is listed in
/// the report (`problems`, each naming the tensor, its data file and offset), not returned as
/// an error; an index that cannot be read is the error. `slices` counts the stored entries.
result<verify_report> verify_tf_bundle(io::backend& b, std::string_view prefix, verify_progress progress = {});

namespace detail {
void start_read_tf_bundle_index(boost::asio::any_io_executor ex, io::backend& b, std::string prefix,
                                io::completion<format::tf::bundle_index> done);
}  // namespace detail

/// Asynchronous `read_tf_bundle_index`.
template <class Token>
auto async_read_tf_bundle_index(boost::asio::any_io_executor ex, io::backend& b, std::string prefix, Token&& token) {
  return io::async_op<format::tf::bundle_index>(
      ex, [ex, &b, prefix = std::move(prefix)](io::completion<format::tf::bundle_index> done) mutable {
        detail::start_read_tf_bundle_index(ex, b, std::move(prefix), std::move(done));
      },
      std::forward<Token>(token));
}

}  // namespace meshckpt
