#pragma once
// FaultProxy: a TCP proxy for tests that puts a bad network between a client and a server.
// It listens on 127.0.0.1:<port> and forwards every accepted connection to target host:port,
// on its own io_context thread (Boost.Asio), and injects, per its knobs (changeable at any time
// from any thread; each applies from the next chunk read on):
//   - latency: every chunk is delivered this long after it was read (one way; pipelined, so a
//     stream's throughput does not suffer, only its round trips);
//   - bandwidth: each direction is a link of this many bytes/s, shared by the connections (a
//     chunk leaves once the link has carried the ones before it);
//   - drops: a connection is cut once it has forwarded `drop_after_bytes` bytes (counted in the
//     drop direction: both ways together by default, or only client -> target, as in uploads, or
//     only target -> client, as in downloads; exactly that many are delivered), or on a chunk
//     (of the drop direction) with probability `drop_probability` (a seeded RNG, so one seed
//     gives one sequence of decisions);
//   - the kind of cut: FIN on both sides (kClose) or RST on both sides (kReset: SO_LINGER 0);
//   - blackhole: nothing is read or delivered any more, new connections are held before they
//     reach the target, but every socket stays open (a partition); switched off, everything
//     queued flows on.
// Counters: bytes delivered each way, connections accepted, faults injected (connections cut).
// Header-only; for tests only.
#include <boost/asio.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <future>
#include <list>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace fl::testing_util {

struct FaultProxyOptions {
  int listen_port = 0;               // 0: any free port (port() says which)
  uint64_t seed = 1;                 // of the drop_probability decisions
  size_t chunk_bytes = 16 * 1024;    // the most one read takes
  size_t max_queued_bytes = 1 << 20;  // per direction and connection: reading pauses beyond it
};

class FaultProxy {
 public:
  using Options = FaultProxyOptions;
  using Clock = std::chrono::steady_clock;
  enum class FaultKind { kClose, kReset };
  enum class Direction { kBoth, kToTarget, kToClient };  // what drops count and apply to

  FaultProxy(const std::string& target_host, int target_port, Options options = Options())
      : options_(options), rng_(options.seed), acceptor_(io_), work_(boost::asio::make_work_guard(io_)) {
    namespace ip = boost::asio::ip;
    ip::tcp::resolver resolver(io_);
    const auto found = resolver.resolve(target_host, std::to_string(target_port));
    if (found.empty()) throw std::runtime_error("FaultProxy: cannot resolve " + target_host);
    target_ = *found.begin();
    const ip::tcp::endpoint listen(ip::make_address("127.0.0.1"), static_cast<unsigned short>(options.listen_port));
    acceptor_.open(listen.protocol());
    acceptor_.set_option(ip::tcp::acceptor::reuse_address(true));
    acceptor_.bind(listen);
    acceptor_.listen();
    port_ = acceptor_.local_endpoint().port();
    accept();
    thread_ = std::thread([this] { io_.run(); });
  }

  FaultProxy(const FaultProxy&) = delete;
  FaultProxy& operator=(const FaultProxy&) = delete;

  ~FaultProxy() {
    run_on_io([this] {
      stopping_ = true;
      boost::system::error_code ec;
      acceptor_.close(ec);
      for (auto& w : connections_)
        if (auto c = w.lock()) c->close(FaultKind::kClose, /*now=*/true);
      connections_.clear();
    });
    work_.reset();
    io_.stop();
    thread_.join();
  }

  int port() const { return port_; }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }

  // ---- knobs ----
  void set_latency(std::chrono::milliseconds one_way) { latency_ms_ = one_way.count(); }
  void set_bandwidth(double bytes_per_s) { bandwidth_ = bytes_per_s; }  // each direction; 0: unlimited
  void set_drop_after_bytes(uint64_t k) { drop_after_ = k; }            // 0: never
  void set_drop_probability(double p) { drop_probability_ = p; }        // per chunk read
  void set_fault_kind(FaultKind k) { fault_kind_ = k; }
  void set_drop_direction(Direction d) { drop_direction_ = d; }
  void set_blackhole(bool on) { blackhole_ = on; }
  // Every fault off: no latency, no cap, no drops, no blackhole (what is queued flows on).
  void heal() {
    set_latency(std::chrono::milliseconds(0));
    set_bandwidth(0);
    set_drop_after_bytes(0);
    set_drop_probability(0);
    set_blackhole(false);
  }
  // Cuts every open connection now, in the middle of whatever it carries; returns how many.
  int cut_all(FaultKind kind) {
    int n = 0;
    run_on_io([&] {
      for (auto& w : connections_)
        if (auto c = w.lock(); c && !c->closed) {
          c->close(kind);
          ++faults_;
          ++n;
        }
    });
    return n;
  }

  // ---- counters ----
  uint64_t bytes_to_target() const { return bytes_[0]; }  // delivered client -> target
  uint64_t bytes_to_client() const { return bytes_[1]; }  // delivered target -> client
  uint64_t connections() const { return connections_accepted_; }
  uint64_t faults() const { return faults_; }  // connections cut (drops and resets)
  int open_connections() const { return open_; }

 private:
  struct Chunk {
    std::vector<char> data;
    Clock::time_point due;
    enum Kind { kData, kEof, kCut } kind = kData;
  };

  class Connection;
  // One direction of a connection: reads `from`, queues, delivers to `to` when due.
  struct Pipe {
    Pipe(boost::asio::io_context& io, int dir) : dir(dir), read_timer(io), write_timer(io) {}
    int dir;  // 0: client -> target, 1: target -> client
    boost::asio::ip::tcp::socket* from = nullptr;
    boost::asio::ip::tcp::socket* to = nullptr;
    std::deque<Chunk> queue;
    size_t queued = 0;
    std::vector<char> buf;
    bool reading = false, writing = false, paused = false, eof_sent = false, at_cut = false;
    boost::asio::steady_timer read_timer, write_timer;
  };

  class Connection : public std::enable_shared_from_this<Connection> {
   public:
    Connection(FaultProxy& p, boost::asio::ip::tcp::socket s)
        : proxy(p), client(std::move(s)), target(p.io_), pipes{Pipe(p.io_, 0), Pipe(p.io_, 1)}, hold(p.io_) {
      pipes[0].from = &client;
      pipes[0].to = &target;
      pipes[1].from = &target;
      pipes[1].to = &client;
    }

    void start() {
      if (closed || proxy.stopping_) return;
      if (proxy.blackhole_) {  // a partition: the connection does not reach the target yet
        auto self = shared_from_this();
        hold.expires_after(std::chrono::milliseconds(10));
        hold.async_wait([self](const boost::system::error_code& ec) {
          if (!ec) self->start();
        });
        return;
      }
      auto self = shared_from_this();
      target.async_connect(proxy.target_, [self](const boost::system::error_code& ec) {
        if (self->closed) return;
        if (ec) return self->close(FaultKind::kClose);
        boost::system::error_code ignored;
        self->client.set_option(boost::asio::ip::tcp::no_delay(true), ignored);
        self->target.set_option(boost::asio::ip::tcp::no_delay(true), ignored);
        self->read(self->pipes[0]);
        self->read(self->pipes[1]);
      });
    }

    void read(Pipe& p) {
      if (closed || cutting || p.reading) return;
      if (proxy.blackhole_) {
        p.reading = true;
        auto self = shared_from_this();
        p.read_timer.expires_after(std::chrono::milliseconds(10));
        p.read_timer.async_wait([self, &p](const boost::system::error_code& ec) {
          p.reading = false;
          if (!ec) self->read(p);
        });
        return;
      }
      if (p.queued >= proxy.options_.max_queued_bytes) {  // resumed by the writer
        p.paused = true;
        return;
      }
      p.reading = true;
      p.buf.resize(proxy.options_.chunk_bytes);
      auto self = shared_from_this();
      p.from->async_read_some(boost::asio::buffer(p.buf), [self, &p](const boost::system::error_code& ec, size_t n) {
        p.reading = false;
        if (self->closed || self->cutting) return;
        if (ec == boost::asio::error::eof) {  // half-close: passed on once the queue is delivered
          Chunk c;
          c.kind = Chunk::kEof;
          c.due = p.queue.empty() ? Clock::now() : p.queue.back().due;
          p.queue.push_back(std::move(c));
          return self->write(p);
        }
        if (ec) return self->close(FaultKind::kClose);
        self->on_data(p, n);
      });
    }

    void on_data(Pipe& p, size_t n) {
      bool cut = false;
      const Direction d = proxy.drop_direction_;
      const bool counted = d == Direction::kBoth || (d == Direction::kToTarget) == (p.dir == 0);
      const double probability = proxy.drop_probability_;
      const uint64_t k = proxy.drop_after_;
      if (counted && probability > 0 && std::uniform_real_distribution<double>(0, 1)(proxy.rng_) < probability) {
        n = 0;
        cut = true;
      } else if (counted && k > 0 && forwarded + n >= k) {
        n = forwarded < k ? static_cast<size_t>(k - forwarded) : 0;
        cut = true;
      }
      if (counted) forwarded += n;
      const auto now = Clock::now();
      auto depart = now;
      const double rate = proxy.bandwidth_;
      if (rate > 0 && n > 0) {  // the link carries the chunks before this one first
        auto& free_at = proxy.link_free_[p.dir];
        free_at = std::max(free_at, now) +
                  std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(n / rate));
        depart = free_at;
      }
      const auto due = depart + std::chrono::milliseconds(proxy.latency_ms_.load());
      if (n > 0) {
        Chunk c;
        c.data.assign(p.buf.begin(), p.buf.begin() + static_cast<std::ptrdiff_t>(n));
        c.due = due;
        p.queued += n;
        p.queue.push_back(std::move(c));
      }
      if (cut) {  // both directions deliver what they hold, then the connection is cut
        cutting = true;
        for (auto& q : pipes) {
          Chunk c;
          c.kind = Chunk::kCut;
          c.due = std::max(due, q.queue.empty() ? now : q.queue.back().due);
          q.queue.push_back(std::move(c));
          write(q);
        }
        return;
      }
      write(p);
      read(p);
    }

    void write(Pipe& p) {
      if (closed || p.writing || p.queue.empty()) return;
      auto self = shared_from_this();
      const auto wait = [&](Clock::time_point until) {
        p.writing = true;
        p.write_timer.expires_at(until);
        p.write_timer.async_wait([self, &p](const boost::system::error_code& ec) {
          p.writing = false;
          if (!ec) self->write(p);
        });
      };
      if (proxy.blackhole_) return wait(Clock::now() + std::chrono::milliseconds(10));
      Chunk& c = p.queue.front();
      if (Clock::now() < c.due) return wait(c.due);
      if (c.kind == Chunk::kCut) {
        p.at_cut = true;
        if (pipes[0].at_cut && pipes[1].at_cut) {
          ++proxy.faults_;
          close(proxy.fault_kind_);
        }
        return;
      }
      if (c.kind == Chunk::kEof) {
        p.queue.pop_front();
        boost::system::error_code ignored;
        p.to->shutdown(boost::asio::ip::tcp::socket::shutdown_send, ignored);
        p.eof_sent = true;
        if (pipes[0].eof_sent && pipes[1].eof_sent) return close(FaultKind::kClose);
        return write(p);
      }
      p.writing = true;
      boost::asio::async_write(*p.to, boost::asio::buffer(c.data),
                               [self, &p](const boost::system::error_code& ec, size_t n) {
                                 p.writing = false;
                                 if (self->closed) return;
                                 if (ec) return self->close(FaultKind::kClose);
                                 self->proxy.bytes_[p.dir] += n;
                                 p.queued -= n;
                                 p.queue.pop_front();
                                 if (p.paused && p.queued < self->proxy.options_.max_queued_bytes) {
                                   p.paused = false;
                                   self->read(p);
                                 }
                                 self->write(p);
                               });
    }

    // kReset: RST both ways now. kClose: FIN both ways, then whatever still arrives is read and
    // discarded until the peer closes too (at most 2 s), so that the peers see a clean EOF rather
    // than the RST a close with unread data makes. `now`: just close (shutting down).
    void close(FaultKind kind, bool now = false) {
      if (closed) return;
      closed = true;
      --proxy.open_;
      boost::system::error_code ignored;
      hold.cancel();
      for (auto& p : pipes) {
        p.read_timer.cancel();
        p.write_timer.cancel();
      }
      for (auto* s : {&client, &target}) {
        if (!s->is_open()) continue;
        s->cancel(ignored);
        if (kind == FaultKind::kReset) s->set_option(boost::asio::socket_base::linger(true, 0), ignored);
        if (kind == FaultKind::kReset || now) {
          s->close(ignored);
          continue;
        }
        s->shutdown(boost::asio::ip::tcp::socket::shutdown_send, ignored);
        drain(*s);
      }
      if (kind == FaultKind::kClose && !now) {
        auto self = shared_from_this();
        hold.expires_after(std::chrono::seconds(2));
        hold.async_wait([self](const boost::system::error_code&) {
          boost::system::error_code ec;
          self->client.close(ec);
          self->target.close(ec);
        });
      }
    }

    void drain(boost::asio::ip::tcp::socket& s) {
      auto self = shared_from_this();
      s.async_read_some(boost::asio::buffer(drained), [self, &s](const boost::system::error_code& ec, size_t) {
        if (!ec) return self->drain(s);
        if (ec == boost::asio::error::operation_aborted) return;
        boost::system::error_code ignored;
        s.close(ignored);
      });
    }

    FaultProxy& proxy;
    boost::asio::ip::tcp::socket client, target;
    Pipe pipes[2];
    boost::asio::steady_timer hold;
    char drained[4096];
    uint64_t forwarded = 0;  // bytes let through in the drop direction (drop_after_bytes)
    bool cutting = false, closed = false;
  };

  void accept() {
    acceptor_.async_accept([this](const boost::system::error_code& ec, boost::asio::ip::tcp::socket s) {
      if (stopping_ || !acceptor_.is_open()) return;
      if (!ec) {
        ++connections_accepted_;
        ++open_;
        auto c = std::make_shared<Connection>(*this, std::move(s));
        connections_.remove_if([](const std::weak_ptr<Connection>& w) { return w.expired(); });
        connections_.push_back(c);
        c->start();
      }
      accept();
    });
  }

  // Runs f on the io thread and waits for it (at most 10 s).
  template <typename F>
  void run_on_io(F&& f) {
    std::promise<void> done;
    auto fut = done.get_future();
    boost::asio::post(io_, [&] {
      f();
      done.set_value();
    });
    fut.wait_for(std::chrono::seconds(10));
  }

  // Declared first: destroyed last, after the handlers (and the sockets they own) it holds.
  boost::asio::io_context io_;
  Options options_;
  std::mt19937_64 rng_;  // io thread only
  boost::asio::ip::tcp::acceptor acceptor_;
  boost::asio::executor_work_guard<boost::asio::io_context::executor_type> work_;
  boost::asio::ip::tcp::endpoint target_;
  int port_ = 0;
  bool stopping_ = false;                               // io thread only
  std::list<std::weak_ptr<Connection>> connections_;   // io thread only
  Clock::time_point link_free_[2] = {};                 // io thread only: when each link is free again
  std::atomic<int64_t> latency_ms_{0};
  std::atomic<double> bandwidth_{0};
  std::atomic<uint64_t> drop_after_{0};
  std::atomic<double> drop_probability_{0};
  std::atomic<FaultKind> fault_kind_{FaultKind::kClose};
  std::atomic<Direction> drop_direction_{Direction::kBoth};
  std::atomic<bool> blackhole_{false};
  std::atomic<uint64_t> bytes_[2] = {0, 0};
  std::atomic<uint64_t> connections_accepted_{0}, faults_{0};
  std::atomic<int> open_{0};
  std::thread thread_;
};

}  // namespace fl::testing_util
