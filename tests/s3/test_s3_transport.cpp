// The S3 transport against the suite's RGW (tests/s3/rgw.sh): TLS, whose certificate is checked
// for its chain and for the name it was issued to, and virtual-hosted addressing
// (BUCKET.HOST), beside the path-style addressing that the other suites use.
#include <catch2/catch.hpp>

#include "s3_support.hpp"

using namespace meshckpt;
using namespace meshckpt::testing::s3;

namespace {

std::string env(const char* name) {
  load_rgw_env();
  const char* v = std::getenv(name);
  REQUIRE(v);
  return v;
}

// A small round trip: create-only PUT, HEAD, ranged GET, list, delete.
void round_trip(backends::s3_backend_interface& b, const std::string& dir) {
  auto d = run<io::handle>([&](auto done) { b.open_dir(dir, true, std::move(done)); }).value();
  auto bytes = pattern(100000, 3);
  REQUIRE(put_file(b, d, "x.bin", bytes));
  CHECK(get_file(b, d, "x.bin") == bytes);
  CHECK(get_file(b, d, "x.bin", 777, 5000) == std::vector<std::byte>(bytes.begin() + 777, bytes.begin() + 5777));
  CHECK(names_in(b, d) == std::vector<std::string>{"x.bin"});
  CHECK(run<void>([&](auto done) { b.unlink(d, "x.bin", std::move(done)); }));
  (void)run<void>([&](auto done) { b.close(d, std::move(done)); });
}

backends::s3_options tls_options() {
  load_rgw_env();
  auto o = backends::s3_options_from_env();
  o.endpoint = env("MESHCKPT_RGW_TLS_ENDPOINT");
  o.max_attempts = 2;
  o.retry_budget = std::chrono::milliseconds(3000);
  return o;
}

}  // namespace

TEST_CASE("s3 tls: https with the server's CA trusted round-trips", "[s3][tls]") {
  auto o = tls_options();
  o.ca_bundle = env("MESHCKPT_RGW_CA");
  auto b = backends::make_s3_backend(o).value();
  round_trip(*b, fresh_prefix("tls"));
}

TEST_CASE("s3 tls: a certificate no trusted CA signed is refused, naming the handshake, unless checking is off", "[s3][tls]") {
  auto b = backends::make_s3_backend(tls_options()).value();
  auto d = run<io::handle>([&](auto done) { b->open_dir(fresh_prefix("tls-untrusted"), true, std::move(done)); });
  REQUIRE_FALSE(d);
  CHECK_THAT(d.error().what(), Catch::Contains("TLS handshake with 127.0.0.1") && Catch::Contains("certificate verify failed"));

  // Unless checking is turned off (AWS's --no-verify-ssl).
  auto o = tls_options();
  o.verify_tls = false;
  auto unchecked = backends::make_s3_backend(o).value();
  round_trip(*unchecked, fresh_prefix("tls-unchecked"));
}

TEST_CASE("s3 tls: a trusted certificate issued to another name is refused", "[s3][tls]") {
  // The certificate names 127.0.0.1 only; reached as "localhost", it must not be accepted.
  auto o = tls_options();
  o.ca_bundle = env("MESHCKPT_RGW_CA");
  o.endpoint = "https://localhost:" + o.endpoint.substr(o.endpoint.rfind(':') + 1);
  auto b = backends::make_s3_backend(o).value();
  auto d = run<io::handle>([&](auto done) { b->open_dir(fresh_prefix("tls-name"), true, std::move(done)); });
  REQUIRE_FALSE(d);
  CHECK_THAT(d.error().what(), Catch::Contains("TLS handshake with localhost") && Catch::Contains("certificate verify failed"));
}

TEST_CASE("s3: virtual-hosted addressing (BUCKET.HOST) round-trips", "[s3][addressing]") {
  // RGW takes the bucket from the Host header under its `rgw dns name` (127.0.0.1 here).
  load_rgw_env();
  auto o = backends::s3_options_from_env();
  o.path_style = false;
  auto b = backends::make_s3_backend(o).value();
  round_trip(*b, fresh_prefix("vhost"));
}
