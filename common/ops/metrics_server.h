#pragma once
// MetricsServer: Prometheus' scrape endpoint. Serves GET /metrics (the registry's text
// exposition, Content-Type text/plain; version=0.0.4) over plain HTTP/1.1 on its own thread
// (Boost.Beast), so a slow scraper never holds up a round.
//
// Requests from outside are bounded: headers at most 8 KiB, no body, 10 s to send the request
// and to read the reply; other methods get 405, other paths 404, malformed requests 400 and the
// connection is closed. Keep-alive is honoured, as Prometheus reuses its connection.
#include <cstdint>
#include <memory>
#include <string>

#include "common/ops/metrics.h"

namespace fl::metrics {

struct ListenAddress {
  std::string host;  // an IPv4/IPv6 literal or "localhost"
  uint16_t port = 0;  // 0: any free port (MetricsServer::port() says which)
};

// "HOST:PORT" ("[::1]:9464" for IPv6). Throws std::invalid_argument naming `what` and the text
// when it is not a host and a port in [0, 65535].
ListenAddress parse_listen_address(const std::string& text, const std::string& what = "address");

class MetricsServer {
 public:
  // Listens at once; throws std::runtime_error naming the address when it cannot bind.
  MetricsServer(const Registry& registry, const ListenAddress& address);
  ~MetricsServer();  // stops accepting, closes connections, joins the thread
  MetricsServer(const MetricsServer&) = delete;
  MetricsServer& operator=(const MetricsServer&) = delete;

  uint16_t port() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace fl::metrics
