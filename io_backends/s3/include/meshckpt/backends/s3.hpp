#pragma once
/// \file
/// The S3 backend: checkpoints on an S3-compatible object store (AWS S3, Ceph RGW, MinIO, R2),
/// addressed as `s3://BUCKET/PREFIX`. A directory is a key prefix, a file an object. The file
/// operations map onto requests (docs/OBJECT_STORES.md):
///
/// - `open(read)` is a HEAD (the size), `read` a ranged GET;
/// - a file opened for writing is buffered in parts of `part_bytes`; full parts are uploaded as
///   the parts of a multipart upload while later bytes arrive, several in flight. Nothing is
///   visible until `fsync`, which publishes the object whole: a single PUT when it fits in one
///   part, else CompleteMultipartUpload. A file closed before its `fsync` leaves nothing (its
///   upload is aborted);
/// - `create_exclusive` publishes with `If-None-Match: *` where the object is one PUT (every
///   manifest and state file): of two writers creating one name, exactly one succeeds and the
///   other gets EEXIST; `open_mode::replace` replaces the object whole;
/// - `list` is ListObjectsV2 with the delimiter '/', `unlink` a DELETE; there is no rename
///   (`caps().atomic_rename` is false): callers publish with `replace` instead.
///
/// Requests are signed with AWS Signature Version 4 and sent over HTTP/1.1 keep-alive
/// connections (Boost.Beast; TLS through OpenSSL for `https`), from a pool. Server errors (5xx,
/// 503 SlowDown), resets and timeouts are retried with exponential backoff and jitter, bounded
/// in count and time; an error that reaches the caller names the bucket, the key, the HTTP
/// status and the S3 error code.

#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "meshckpt/error.hpp"
#include "meshckpt/io/backend.hpp"

namespace meshckpt::backends {

/// How to reach the object store. `s3_options_from_env` fills it from the AWS variables users
/// already have; a field set in code overrides them.
struct s3_options {
  /// "http://HOST:PORT" or "https://HOST[:PORT]" (AWS_ENDPOINT_URL); empty: AWS's regional
  /// endpoint, https://s3.REGION.amazonaws.com.
  std::string endpoint;
  std::string region = "us-east-1";  ///< AWS_REGION (or AWS_DEFAULT_REGION); part of the signature
  std::string access_key;            ///< AWS_ACCESS_KEY_ID; empty with the secret: unsigned requests
  std::string secret_key;            ///< AWS_SECRET_ACCESS_KEY
  std::string session_token;         ///< AWS_SESSION_TOKEN (temporary credentials)
  /// Path-style addressing (ENDPOINT/BUCKET/KEY), what Ceph RGW and MinIO serve by default;
  /// false: virtual-hosted (BUCKET.ENDPOINT/KEY), what AWS prefers. `s3_options_from_env` sets
  /// it when AWS_ENDPOINT_URL is set, or from AWS_S3_ADDRESSING_STYLE ("path", "virtual").
  bool path_style = true;
  std::size_t part_bytes = 8u << 20;                 ///< multipart part size; at least 5 MiB, as S3 requires
  std::size_t connections = 16;                      ///< keep-alive connections kept open at most
  int max_attempts = 6;                              ///< tries per request, the first included
  std::chrono::milliseconds retry_budget{30000};     ///< no retry starts later than this after the first try
  std::chrono::milliseconds request_timeout{60000};  ///< one try (connect, send, receive)
  bool verify_tls = true;                            ///< check the server's certificate (AWS_CA_BUNDLE names extra CAs)
  std::string ca_bundle;                             ///< PEM file of CAs to trust besides the system's (AWS_CA_BUNDLE)
};

/// `s3_options` from AWS_ENDPOINT_URL, AWS_REGION / AWS_DEFAULT_REGION, AWS_ACCESS_KEY_ID,
/// AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_S3_ADDRESSING_STYLE and AWS_CA_BUNDLE.
s3_options s3_options_from_env();

/// Request counts since the backend was made, for benchmarks and cost estimates.
struct s3_request_counts {
  std::uint64_t put = 0;      ///< PUTs: objects, parts, multipart creations (POST) and completions
  std::uint64_t get = 0;      ///< GETs and HEADs of objects
  std::uint64_t list = 0;     ///< ListObjectsV2 and ListMultipartUploads
  std::uint64_t del = 0;      ///< DELETEs (objects, aborted uploads)
  std::uint64_t retries = 0;  ///< tries after a retryable failure
};

/// The S3 backend's own face, beside `io::backend`.
class s3_backend_interface : public io::backend {
 public:
  /// Requests sent so far.
  virtual s3_request_counts counts() const = 0;
  /// Takes the writer lease of directory `path` (`s3://BUCKET/PREFIX`): the object
  /// PREFIX/meshckpt.lease, created with `If-None-Match: *`, holding `holder` (who, for
  /// messages) and its expiry, `ttl` from now. It is renewed every ttl/3 by compare-and-swap
  /// (`If-Match` on its ETag) while the returned token lives, and deleted when the token goes.
  /// A lease held by another writer fails with errc::locked naming its holder and expiry,
  /// unless it has expired or `breakable(its holder)` says its writer is gone (a dead process
  /// on this host): then it is taken over by compare-and-swap, so of two writers breaking one
  /// lease only one wins.
  /// For the end of a process whose backend lives on (a static): waits up to `grace` for the
  /// operations in flight, lease releases included, then stops the backend's thread, so that
  /// nothing runs while the process's statics (OpenSSL's among them) are destroyed. Nothing may
  /// be started afterwards.
  virtual void shutdown(std::chrono::milliseconds grace) = 0;
  virtual void acquire_lease(std::string path, std::string holder, std::chrono::milliseconds ttl,
                             std::function<bool(const std::string&)> breakable, io::completion<std::shared_ptr<const void>> done) = 0;
};

/// An S3 backend. Fails with errc::invalid_argument when the options are unusable (a malformed
/// endpoint, a part size under 5 MiB).
result<std::unique_ptr<s3_backend_interface>> make_s3_backend(s3_options opt);

/// Whether `path` is an `s3://` URL.
bool is_s3_path(std::string_view path);

}  // namespace meshckpt::backends
