// FaultProxy (tests/fault_proxy.h) on its own, in front of a plain TCP echo server on loopback:
// it forwards bytes exactly, and its latency, bandwidth cap, drops, resets and blackhole do
// what they say, measured.
#include "fault_proxy.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <mutex>
#include <numeric>
#include <random>
#include <string>
#include <thread>
#include <vector>

namespace {

using namespace std::chrono_literals;
using fl::testing_util::FaultProxy;
using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// A blocking echo server on 127.0.0.1, one thread per connection. Records how each connection
// ended: 0 for a clean EOF, else the errno of the failed read or write.
class EchoServer {
 public:
  EchoServer() {
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    const int one = 1;
    setsockopt(fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || listen(fd_, 64) != 0)
      throw std::runtime_error("echo server: cannot listen");
    socklen_t len = sizeof a;
    getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    acceptor_ = std::thread([this] { accept_loop(); });
  }
  ~EchoServer() {
    stop_ = true;
    acceptor_.join();
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (int fd : open_) shutdown(fd, SHUT_RDWR);
    }
    for (auto& t : workers_) t.join();
    close(fd_);
  }
  int port() const { return port_; }
  // How the connections that ended did: 0 = EOF, else errno.
  std::vector<int> endings() {
    std::lock_guard<std::mutex> lock(mu_);
    return endings_;
  }
  // Waits (at most `timeout`) until `n` connections have ended.
  bool wait_endings(size_t n, std::chrono::milliseconds timeout) {
    const auto until = Clock::now() + timeout;
    while (endings().size() < n && Clock::now() < until) std::this_thread::sleep_for(5ms);
    return endings().size() >= n;
  }

 private:
  void accept_loop() {
    while (!stop_) {
      pollfd p{fd_, POLLIN, 0};
      if (poll(&p, 1, 20) <= 0) continue;
      const int c = accept(fd_, nullptr, nullptr);
      if (c < 0) continue;
      const int one = 1;
      setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      std::lock_guard<std::mutex> lock(mu_);
      open_.push_back(c);
      workers_.emplace_back([this, c] { echo(c); });
    }
  }
  void echo(int c) {
    char buf[65536];
    int ending = 0;
    for (;;) {
      const ssize_t n = recv(c, buf, sizeof buf, 0);
      if (n == 0) break;
      if (n < 0) {
        ending = errno;
        break;
      }
      ssize_t sent = 0;
      while (sent < n) {
        const ssize_t w = send(c, buf + sent, static_cast<size_t>(n - sent), MSG_NOSIGNAL);
        if (w <= 0) {
          ending = errno;
          break;
        }
        sent += w;
      }
      if (ending) break;
    }
    std::lock_guard<std::mutex> lock(mu_);
    endings_.push_back(ending);
    open_.erase(std::find(open_.begin(), open_.end(), c));
    close(c);
  }
  int fd_ = -1, port_ = 0;
  std::atomic<bool> stop_{false};
  std::thread acceptor_;
  std::mutex mu_;
  std::vector<std::thread> workers_;
  std::vector<int> open_, endings_;
};

// A blocking client socket with a receive timeout (every loop here ends).
struct Client {
  explicit Client(int port) {
    fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(static_cast<uint16_t>(port));
    if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) throw std::runtime_error("cannot connect");
    const int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    timeval tv{5, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  }
  ~Client() { close(fd); }
  bool send_all(const std::string& s) const {
    size_t sent = 0;
    while (sent < s.size()) {
      const ssize_t w = send(fd, s.data() + sent, s.size() - sent, MSG_NOSIGNAL);
      if (w <= 0) return false;
      sent += static_cast<size_t>(w);
    }
    return true;
  }
  // Reads until `n` bytes arrived, EOF or an error; `error` gets errno (0: none, EAGAIN: timeout).
  std::string recv_n(size_t n, int* error = nullptr, int* eof = nullptr) const {
    std::string out;
    char buf[65536];
    if (error) *error = 0;
    if (eof) *eof = 0;
    while (out.size() < n) {
      const ssize_t r = recv(fd, buf, std::min(sizeof buf, n - out.size()), 0);
      if (r == 0) {
        if (eof) *eof = 1;
        break;
      }
      if (r < 0) {
        if (error) *error = errno;
        break;
      }
      out.append(buf, static_cast<size_t>(r));
    }
    return out;
  }
  // Whether data can be read within `timeout`.
  bool readable(std::chrono::milliseconds timeout) const {
    pollfd p{fd, POLLIN, 0};
    return poll(&p, 1, static_cast<int>(timeout.count())) > 0;
  }
  int fd = -1;
};

std::string random_bytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (auto& c : s) c = static_cast<char>(rng());
  return s;
}

// One round trip of a small message through the proxy; seconds.
double ping(const Client& c) {
  const auto t0 = Clock::now();
  EXPECT_TRUE(c.send_all("ping"));
  EXPECT_EQ(c.recv_n(4), "ping");
  return seconds_since(t0);
}

TEST(FaultProxy, ForwardsBytesExactlyBothWays) {
  EchoServer echo;
  FaultProxy proxy("127.0.0.1", echo.port());
  const std::string data = random_bytes(3 << 20, 7);  // 3 MB: many chunks, the queue's limit passed
  {
    Client c(proxy.port());
    std::thread writer([&] { EXPECT_TRUE(c.send_all(data)); });
    const std::string back = c.recv_n(data.size());
    writer.join();
    ASSERT_EQ(back.size(), data.size());
    EXPECT_TRUE(back == data);
    // A second connection in parallel with the first's end.
    Client d(proxy.port());
    EXPECT_LT(ping(d), 0.1);
  }
  EXPECT_TRUE(echo.wait_endings(2, 5s));  // closing the client closed the echo side (half-close passed on)
  for (int e : echo.endings()) EXPECT_EQ(e, 0);
  EXPECT_EQ(proxy.bytes_to_target(), data.size() + 4);
  EXPECT_EQ(proxy.bytes_to_client(), data.size() + 4);
  EXPECT_EQ(proxy.connections(), 2u);
  EXPECT_EQ(proxy.faults(), 0u);
  const auto until = Clock::now() + 5s;
  while (proxy.open_connections() > 0 && Clock::now() < until) std::this_thread::sleep_for(5ms);
  EXPECT_EQ(proxy.open_connections(), 0);
}

TEST(FaultProxy, AddsLatencyEachWay) {
  EchoServer echo;
  FaultProxy proxy("127.0.0.1", echo.port());
  Client c(proxy.port());
  EXPECT_LT(ping(c), 0.05);
  proxy.set_latency(100ms);
  std::vector<double> rtt;
  for (int i = 0; i < 5; ++i) rtt.push_back(ping(c));
  std::sort(rtt.begin(), rtt.end());
  EXPECT_GE(rtt.front(), 0.200);  // 100 ms there, 100 ms back
  EXPECT_LT(rtt[2], 0.240) << "median round trip";
  proxy.set_latency(0ms);
  EXPECT_LT(ping(c), 0.05);
}

TEST(FaultProxy, CapsBandwidthEachWay) {
  EchoServer echo;
  FaultProxy proxy("127.0.0.1", echo.port());
  proxy.set_bandwidth(2e6);  // 2 MB/s each way: 1 MB there and back (pipelined) in ~0.5 s
  const std::string data = random_bytes(1000000, 3);
  Client c(proxy.port());
  const auto t0 = Clock::now();
  std::thread writer([&] { EXPECT_TRUE(c.send_all(data)); });
  const std::string back = c.recv_n(data.size());
  const double took = seconds_since(t0);
  writer.join();
  EXPECT_TRUE(back == data);
  EXPECT_GT(took, 0.5 * 0.8) << took;
  EXPECT_LT(took, 0.5 * 1.2) << took;
  // Lifted: the same megabyte goes at loopback speed.
  proxy.set_bandwidth(0);
  const auto t1 = Clock::now();
  std::thread again([&] { EXPECT_TRUE(c.send_all(data)); });
  EXPECT_EQ(c.recv_n(data.size()).size(), data.size());
  again.join();
  EXPECT_LT(seconds_since(t1), 0.2);
}

// Exactly K bytes get through (both directions together), then both ends see a clean EOF.
TEST(FaultProxy, DropsEveryConnectionAfterKBytesAndClosesBothSides) {
  EchoServer echo;
  FaultProxy proxy("127.0.0.1", echo.port());
  const uint64_t k = 50000;
  proxy.set_drop_after_bytes(k);
  for (int i = 0; i < 2; ++i) {  // every connection, not just the first
    Client c(proxy.port());
    const std::string data = random_bytes(200000, 11 + i);
    std::thread writer([&] { c.send_all(data); });  // fails part way: the proxy cuts
    int error = 0, eof = 0;
    const std::string back = c.recv_n(data.size(), &error, &eof);
    writer.join();
    EXPECT_EQ(eof, 1) << "errno " << error;
    EXPECT_EQ(error, 0) << std::strerror(error);
    EXPECT_LT(back.size(), k);
    EXPECT_TRUE(back == data.substr(0, back.size())) << "what got through is the stream's start";
    ASSERT_TRUE(echo.wait_endings(static_cast<size_t>(i) + 1, 5s)) << "the server side was not closed";
    EXPECT_EQ(echo.endings()[static_cast<size_t>(i)], 0);
    EXPECT_EQ(proxy.faults(), static_cast<uint64_t>(i) + 1);
  }
  EXPECT_EQ(proxy.bytes_to_target() + proxy.bytes_to_client(), 2 * k);
  // Healed: a connection carries everything again.
  proxy.heal();
  Client c(proxy.port());
  EXPECT_LT(ping(c), 0.1);
  EXPECT_EQ(proxy.faults(), 2u);
}

TEST(FaultProxy, ResetInMidStreamGivesEconnresetToTheClient) {
  EchoServer echo;
  FaultProxy proxy("127.0.0.1", echo.port());
  proxy.set_fault_kind(FaultProxy::FaultKind::kReset);
  proxy.set_drop_after_bytes(100000);
  {
    Client c(proxy.port());
    const std::string data = random_bytes(400000, 5);
    std::thread writer([&] { c.send_all(data); });
    int error = 0, eof = 0;
    c.recv_n(data.size(), &error, &eof);
    writer.join();
    EXPECT_EQ(error, ECONNRESET) << std::strerror(error) << " eof " << eof;
    EXPECT_EQ(proxy.faults(), 1u);
    ASSERT_TRUE(echo.wait_endings(1, 5s));
    const int ending = echo.endings()[0];
    EXPECT_TRUE(ending == ECONNRESET || ending == EPIPE) << "the server side is reset too: " << std::strerror(ending);
  }
  // cut_all: the same, on demand, to a connection that is idle in mid-conversation.
  proxy.heal();
  Client c(proxy.port());
  EXPECT_LT(ping(c), 0.1);
  EXPECT_EQ(proxy.cut_all(FaultProxy::FaultKind::kReset), 1);
  int error = 0;
  c.recv_n(1, &error);
  EXPECT_EQ(error, ECONNRESET) << std::strerror(error);
  EXPECT_EQ(proxy.faults(), 2u);
}

// The same seed cuts the same connections: p = 0.3 per chunk over 30 one-message connections.
TEST(FaultProxy, DropProbabilityIsSeededAndDeterministic) {
  EchoServer echo;
  const auto pattern = [&](uint64_t seed) {
    fl::testing_util::FaultProxyOptions o;
    o.seed = seed;
    FaultProxy proxy("127.0.0.1", echo.port(), o);
    proxy.set_drop_probability(0.3);
    std::string survived;
    for (int i = 0; i < 30; ++i) {
      Client c(proxy.port());
      EXPECT_TRUE(c.send_all("ping"));
      int eof = 0;
      survived += c.recv_n(4, nullptr, &eof) == "ping" ? '1' : '0';
    }
    EXPECT_EQ(proxy.faults(), static_cast<uint64_t>(std::count(survived.begin(), survived.end(), '0')));
    return survived;
  };
  const std::string a = pattern(42), b = pattern(42), c = pattern(43);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  // Each message crosses twice, each crossing survives with 0.7: about half the connections.
  const auto ok = std::count(a.begin(), a.end(), '1');
  EXPECT_GT(ok, 5) << a;
  EXPECT_LT(ok, 25) << a;
}

// Drops counted one way only: exactly K bytes reach the target, then the cut (uploads cut,
// downloads untouched, and the other way round).
TEST(FaultProxy, DropDirectionCountsOnlyThatWay) {
  EchoServer echo;
  FaultProxy proxy("127.0.0.1", echo.port());
  proxy.set_drop_direction(FaultProxy::Direction::kToTarget);
  proxy.set_drop_after_bytes(60000);
  {
    Client c(proxy.port());
    const std::string data = random_bytes(200000, 9);
    std::thread writer([&] { c.send_all(data); });
    int eof = 0;
    const std::string back = c.recv_n(data.size(), nullptr, &eof);
    writer.join();
    EXPECT_EQ(eof, 1);
    EXPECT_TRUE(back == data.substr(0, back.size()));
  }
  EXPECT_EQ(proxy.bytes_to_target(), 60000u);
  EXPECT_EQ(proxy.faults(), 1u);
  // Towards the client only: a small request passes whatever it adds up to, the echo is cut.
  proxy.set_drop_direction(FaultProxy::Direction::kToClient);
  proxy.set_drop_after_bytes(3);
  Client c(proxy.port());
  EXPECT_TRUE(c.send_all("ping"));
  int eof = 0;
  EXPECT_EQ(c.recv_n(4, nullptr, &eof), "pin");
  EXPECT_EQ(eof, 1);
  EXPECT_EQ(proxy.bytes_to_target(), 60004u);
  EXPECT_EQ(proxy.faults(), 2u);
}

// A blackhole holds everything but closes nothing; healed, what was held arrives.
TEST(FaultProxy, BlackholeHoldsTrafficWithoutClosingAndHealsIntact) {
  EchoServer echo;
  FaultProxy proxy("127.0.0.1", echo.port());
  Client c(proxy.port());
  EXPECT_LT(ping(c), 0.1);
  proxy.set_blackhole(true);
  std::this_thread::sleep_for(30ms);  // the proxy's readers notice within 10 ms
  EXPECT_TRUE(c.send_all("held"));
  EXPECT_FALSE(c.readable(300ms));
  Client late(proxy.port());  // accepted, but not connected through
  EXPECT_TRUE(late.send_all("late"));
  EXPECT_FALSE(late.readable(100ms));
  EXPECT_EQ(proxy.open_connections(), 2);
  EXPECT_EQ(proxy.bytes_to_target(), 4u);
  EXPECT_TRUE(echo.endings().empty());
  proxy.set_blackhole(false);
  EXPECT_EQ(c.recv_n(4), "held");
  EXPECT_EQ(late.recv_n(4), "late");
  EXPECT_EQ(proxy.faults(), 0u);
}

}  // namespace
