#include "sigv4.hpp"

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <array>
#include <cstdio>
#include <ctime>

namespace meshckpt::backends::s3 {

namespace {

std::string hex(const unsigned char* p, std::size_t n) {
  static constexpr char digits[] = "0123456789abcdef";
  std::string out(2 * n, '0');
  for (std::size_t i = 0; i < n; ++i) {
    out[2 * i] = digits[p[i] >> 4];
    out[2 * i + 1] = digits[p[i] & 15];
  }
  return out;
}

using mac = std::array<unsigned char, 32>;

mac hmac(std::string_view key, std::string_view data) {
  mac out{};
  unsigned int len = 0;
  HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()), reinterpret_cast<const unsigned char*>(data.data()), data.size(), out.data(),
       &len);
  return out;
}

std::string_view view(const mac& m) { return {reinterpret_cast<const char*>(m.data()), m.size()}; }

}  // namespace

std::string sha256_hex(std::span<const std::byte> data) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(data.data(), data.size(), md, &len, EVP_sha256(), nullptr);
  return hex(md, len);
}

std::string sha256_hex(std::string_view data) { return sha256_hex(std::as_bytes(std::span(data.data(), data.size()))); }

std::string uri_encode(std::string_view s, bool keep_slash) {
  static constexpr char digits[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(s.size());
  for (char ch : s) {
    auto c = static_cast<unsigned char>(ch);
    if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.' || c == '~' ||
        (c == '/' && keep_slash)) {
      out += ch;
    } else {
      out += '%';
      out += digits[c >> 4];
      out += digits[c & 15];
    }
  }
  return out;
}

std::string canonical_query(const std::map<std::string, std::string>& query) {
  // Sorted by encoded name; the names used here are all unreserved, so the map's order is it.
  std::string out;
  for (const auto& [k, v] : query) {
    if (!out.empty()) out += '&';
    out += uri_encode(k, false) + "=" + uri_encode(v, false);
  }
  return out;
}

void sign(request_to_sign& r, const credentials& c, std::chrono::system_clock::time_point now) {
  auto& h = *r.headers;
  h["x-amz-content-sha256"] = std::string(r.payload_hash);
  std::time_t t = std::chrono::system_clock::to_time_t(now);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char stamp[17];
  std::strftime(stamp, sizeof stamp, "%Y%m%dT%H%M%SZ", &tm);
  const std::string amz_date = stamp, date = amz_date.substr(0, 8);
  h["x-amz-date"] = amz_date;
  if (c.access_key.empty()) return;  // anonymous
  if (!c.session_token.empty()) h["x-amz-security-token"] = c.session_token;

  std::string signed_headers, canonical_headers;
  for (const auto& [k, v] : h) {
    if (k != "host" && !k.starts_with("x-amz-")) continue;
    if (!signed_headers.empty()) signed_headers += ';';
    signed_headers += k;
    canonical_headers += k + ":" + v + "\n";
  }
  std::string canonical = std::string(r.method) + "\n" + std::string(r.encoded_path) + "\n" + (r.query ? canonical_query(*r.query) : "") +
                          "\n" + canonical_headers + "\n" + signed_headers + "\n" + std::string(r.payload_hash);
  const std::string scope = date + "/" + c.region + "/s3/aws4_request";
  const std::string to_sign = "AWS4-HMAC-SHA256\n" + amz_date + "\n" + scope + "\n" + sha256_hex(canonical);
  mac k = hmac("AWS4" + c.secret_key, date);
  k = hmac(view(k), c.region);
  k = hmac(view(k), "s3");
  k = hmac(view(k), "aws4_request");
  mac sig = hmac(view(k), to_sign);
  h["authorization"] = "AWS4-HMAC-SHA256 Credential=" + c.access_key + "/" + scope + ", SignedHeaders=" + signed_headers +
                       ", Signature=" + hex(sig.data(), sig.size());
}

}  // namespace meshckpt::backends::s3
