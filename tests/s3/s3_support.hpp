#pragma once
// Support of the object-store suites (test_s3*.cpp): the RGW's environment, fresh prefixes, S3
// backends (direct, routed, through a fault proxy), and blocking file helpers over any backend.

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include <unistd.h>

#include <catch2/catch.hpp>

#include "fault_proxy.hpp"
#include "meshckpt/backends/s3.hpp"
#include "meshckpt/io/make_backend.hpp"

namespace meshckpt::testing::s3 {

inline constexpr const char* bucket = "meshckpt-test";

// Loads the cluster's DIR/env (endpoint and keys) into this process's environment, once.
inline void load_rgw_env() {
  static const bool loaded = [] {
    const char* dir = std::getenv("MESHCKPT_RGW_DIR");
    REQUIRE(dir);
    std::ifstream f(std::string(dir) + "/env");
    REQUIRE(f);
    for (std::string line; std::getline(f, line);) {
      auto eq = line.find('=');
      if (eq != std::string::npos) ::setenv(line.substr(0, eq).c_str(), line.substr(eq + 1).c_str(), 1);
    }
    return true;
  }();
  (void)loaded;
}

// A prefix of its own for each test case (the bucket outlives test cases).
inline std::string fresh_prefix(const std::string& what) {
  static int n = 0;
  auto now = std::chrono::steady_clock::now().time_since_epoch().count();
  return std::string("s3://") + bucket + "/" + what + "-" + std::to_string(::getpid()) + "-" + std::to_string(now) + "-" +
         std::to_string(++n);
}

inline std::unique_ptr<backends::s3_backend_interface> s3() {
  load_rgw_env();
  return backends::make_s3_backend(backends::s3_options_from_env()).value();
}

inline std::vector<std::byte> pattern(std::size_t n, unsigned seed) {
  std::vector<std::byte> v(n);
  std::uint32_t x = seed * 2654435761u + 1;
  for (auto& b : v) {
    x = x * 1664525u + 1013904223u;
    b = static_cast<std::byte>(x >> 24);
  }
  return v;
}

template <class T, class F>
inline result<T> run(F f) {
  return io::wait<T>(f);
}

inline std::vector<std::string> names_in(io::backend& b, io::handle d) {
  auto l = run<std::vector<io::dir_entry>>([&](auto done) { b.list(d, std::move(done)); }).value();
  std::vector<std::string> out;
  for (auto& e : l) out.push_back(e.name);
  return out;
}

inline result<void> put_file(io::backend& b, io::handle d, const std::string& name, std::span<const std::byte> bytes,
                             io::open_mode mode = io::open_mode::create_exclusive, std::size_t piece = 1 << 20) {
  BOOST_OUTCOME_TRY(auto h, run<io::handle>([&](auto done) { b.open(d, name, mode, std::move(done)); }));
  result<void> r = success();
  for (std::size_t at = 0; r && at < bytes.size(); at += piece) {
    auto part = bytes.subspan(at, std::min(piece, bytes.size() - at));
    r = run<void>([&](auto done) { b.write(h, at, part, std::move(done)); });
  }
  if (r) r = run<void>([&](auto done) { b.fsync(h, std::move(done)); });
  (void)run<void>([&](auto done) { b.close(h, std::move(done)); });
  return r;
}

inline std::vector<std::byte> get_file(io::backend& b, io::handle d, const std::string& name, std::uint64_t off = 0,
                                       std::size_t n = SIZE_MAX) {
  auto h = run<io::handle>([&](auto done) { b.open(d, name, io::open_mode::read, std::move(done)); }).value();
  auto size = run<std::uint64_t>([&](auto done) { b.size(h, std::move(done)); }).value();
  std::vector<std::byte> out(std::min<std::uint64_t>(n, size - std::min(size, off)));
  auto got = run<std::size_t>([&](auto done) { b.read(h, off, out, std::move(done)); }).value();
  out.resize(got);
  (void)run<void>([&](auto done) { b.close(h, std::move(done)); });
  return out;
}

// The library's backend (make_backend), which routes s3:// to an S3 backend configured from the environment.
inline std::unique_ptr<io::backend> routed() {
  load_rgw_env();
  return backends::make_backend().value();
}

inline int rgw_port() {
  load_rgw_env();
  std::string url = std::getenv("AWS_ENDPOINT_URL");
  return std::stoi(url.substr(url.rfind(':') + 1));
}

// An S3 backend talking to the RGW through `proxy`.
inline std::unique_ptr<backends::s3_backend_interface> through(const testing::fault_proxy& proxy, int attempts = 4) {
  load_rgw_env();
  auto o = backends::s3_options_from_env();
  o.endpoint = "http://127.0.0.1:" + std::to_string(proxy.port());
  o.max_attempts = attempts;
  o.retry_budget = std::chrono::milliseconds(5000);
  o.part_bytes = 5u << 20;
  return backends::make_s3_backend(o).value();
}

inline bool has(const std::string& line, std::string_view what) { return line.find(what) != std::string::npos; }

}  // namespace meshckpt::testing::s3
