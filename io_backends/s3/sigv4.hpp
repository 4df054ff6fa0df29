#pragma once
// Private: AWS Signature Version 4 for S3 requests (the canonical request, the string to sign,
// the derived key), with OpenSSL's SHA-256 and HMAC.

#include <chrono>
#include <map>
#include <span>
#include <string>
#include <string_view>

namespace meshckpt::backends::s3 {

std::string sha256_hex(std::span<const std::byte> data);
std::string sha256_hex(std::string_view data);

// RFC 3986 percent-encoding as SigV4 wants it: unreserved characters kept, '/' kept when
// `keep_slash` (a path), everything else %XX with uppercase hex.
std::string uri_encode(std::string_view s, bool keep_slash);

struct credentials {
  std::string access_key, secret_key, session_token, region;
};

// What is signed: method, the path as sent (already encoded), the query parameters (raw, this
// encodes them), and headers whose names are lowercase (host and x-amz-* at least).
struct request_to_sign {
  std::string_view method;
  std::string_view encoded_path;
  const std::map<std::string, std::string>* query = nullptr;
  std::map<std::string, std::string>* headers = nullptr;  // x-amz-date, x-amz-security-token and authorization are added
  std::string_view payload_hash;                          // hex SHA-256 of the body, or "UNSIGNED-PAYLOAD"
};

// The query string of `query`, encoded and sorted as SigV4 wants (and as it is sent).
std::string canonical_query(const std::map<std::string, std::string>& query);

// Adds x-amz-date (from `now`), x-amz-content-sha256, x-amz-security-token when there is a
// session token, and the authorization header. Without an access key the request is left
// unsigned (anonymous access).
void sign(request_to_sign& r, const credentials& c, std::chrono::system_clock::time_point now);

}  // namespace meshckpt::backends::s3
