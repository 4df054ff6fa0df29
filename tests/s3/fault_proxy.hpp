#pragma once
// A TCP proxy between the S3 backend and the RGW that injects faults per request, for the
// object-store fault tests. Each client connection carries one request: the proxy reads the
// request (head and Content-Length body), asks `rule` what to do with it, and then forwards it
// upstream with "Connection: close" and relays the whole response, or answers in the server's
// place (an error status), or resets the connection, or relays a truncated response.

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace meshckpt::testing {

// lose_response: the server applies the request, the client never hears its answer.
enum class fault { none, status_503, status_412, reset, truncate, lose_response };

class fault_proxy {
 public:
  // `rule(request_line, n)`: what to do with the n-th request (from 1) whose first line is
  // `request_line` ("PUT /bucket/key?partNumber=1&uploadId=... HTTP/1.1").
  using rule_fn = std::function<fault(const std::string& request_line, int n)>;

  explicit fault_proxy(int upstream_port) : upstream_(upstream_port) {
    listen_ = ::socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    ::setsockopt(listen_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ::bind(listen_, reinterpret_cast<sockaddr*>(&a), sizeof a);
    ::listen(listen_, 64);
    socklen_t len = sizeof a;
    ::getsockname(listen_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    acceptor_ = std::thread([this] { accept_loop(); });
  }
  ~fault_proxy() {
    stopping_ = true;
    ::shutdown(listen_, SHUT_RDWR);
    ::close(listen_);
    acceptor_.join();
    std::lock_guard lk(mu_);
    for (auto& t : workers_) t.join();
  }
  int port() const { return port_; }
  void set_rule(rule_fn r) {
    std::lock_guard lk(mu_);
    rule_ = std::move(r);
  }
  int requests() const { return requests_.load(); }
  int injected() const { return injected_.load(); }

 private:
  void accept_loop() {
    for (;;) {
      int c = ::accept(listen_, nullptr, nullptr);
      if (c < 0) {
        if (stopping_) return;
        continue;
      }
      std::lock_guard lk(mu_);
      workers_.emplace_back([this, c] { serve(c); });
    }
  }

  static bool read_request(int fd, std::string& head, std::string& body) {
    std::string buf;
    char tmp[65536];
    std::size_t end;
    while ((end = buf.find("\r\n\r\n")) == std::string::npos) {
      ssize_t n = ::recv(fd, tmp, sizeof tmp, 0);
      if (n <= 0) return false;
      buf.append(tmp, static_cast<std::size_t>(n));
    }
    head = buf.substr(0, end + 4);
    body = buf.substr(end + 4);
    std::size_t length = 0;
    std::string lower = head;
    for (auto& ch : lower) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    if (auto at = lower.find("\r\ncontent-length:"); at != std::string::npos) length = std::stoull(lower.substr(at + 17));
    while (body.size() < length) {
      ssize_t n = ::recv(fd, tmp, sizeof tmp, 0);
      if (n <= 0) return false;
      body.append(tmp, static_cast<std::size_t>(n));
    }
    return true;
  }

  static void send_all(int fd, const std::string& s) {
    for (std::size_t at = 0; at < s.size();) {
      ssize_t n = ::send(fd, s.data() + at, s.size() - at, MSG_NOSIGNAL);
      if (n <= 0) return;
      at += static_cast<std::size_t>(n);
    }
  }

  static void reset(int fd) {
    linger l{1, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
    ::close(fd);
  }

  void serve(int client) {
    std::string head, body;
    if (!read_request(client, head, body)) return (void)::close(client);
    const std::string line = head.substr(0, head.find("\r\n"));
    const int n = ++requests_;
    fault f = fault::none;
    {
      std::lock_guard lk(mu_);
      if (rule_) f = rule_(line, n);
    }
    if (f != fault::none) ++injected_;
    if (f == fault::reset) return reset(client);
    if (f == fault::status_503 || f == fault::status_412) {
      const std::string xml =
          f == fault::status_503
              ? "<?xml version=\"1.0\"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate</Message></Error>"
              : "<?xml version=\"1.0\"?><Error><Code>PreconditionFailed</Code><Message>injected</Message></Error>";
      send_all(client, std::string(f == fault::status_503 ? "HTTP/1.1 503 Slow Down" : "HTTP/1.1 412 Precondition Failed") +
                           "\r\nContent-Type: application/xml\r\nContent-Length: " + std::to_string(xml.size()) +
                           "\r\nConnection: close\r\n\r\n" + xml);
      return (void)::close(client);
    }
    int up = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(static_cast<std::uint16_t>(upstream_));
    if (::connect(up, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
      ::close(up);
      return reset(client);
    }
    // One request per connection: the server closes after its response, which ends the relay.
    std::string h = head;
    h.insert(h.find("\r\n") + 2, "Connection: close\r\n");
    send_all(up, h + body);
    std::string response;
    char tmp[65536];
    for (ssize_t got; (got = ::recv(up, tmp, sizeof tmp, 0)) > 0;) response.append(tmp, static_cast<std::size_t>(got));
    ::close(up);
    if (f == fault::lose_response) return reset(client);
    if (f == fault::truncate) {
      send_all(client, response.substr(0, response.size() / 2));
      return reset(client);
    }
    send_all(client, response);
    ::close(client);
  }

  int upstream_;
  int listen_ = -1;
  int port_ = 0;
  std::atomic<bool> stopping_{false};
  std::atomic<int> requests_{0}, injected_{0};
  std::mutex mu_;
  rule_fn rule_;
  std::thread acceptor_;
  std::vector<std::thread> workers_;
};

}  // namespace meshckpt::testing
