#include "common/ops/metrics_server.h"

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/strand.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include <chrono>
#include <optional>
#include <stdexcept>
#include <thread>

namespace fl::metrics {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

constexpr auto kTimeout = std::chrono::seconds(10);
constexpr std::uint32_t kHeaderLimit = 8 * 1024;

// One connection: read a request, answer it, repeat while the client keeps the connection.
class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(tcp::socket socket, const Registry& registry) : stream_(std::move(socket)), registry_(registry) {}
  void start() { read(); }

 private:
  void read() {
    parser_.emplace();
    parser_->header_limit(kHeaderLimit);
    parser_->body_limit(0);  // a scrape has no body
    stream_.expires_after(kTimeout);
    http::async_read(stream_, buffer_, *parser_, [self = shared_from_this()](beast::error_code ec, std::size_t) {
      self->on_read(ec);
    });
  }

  void on_read(beast::error_code ec) {
    if (ec == http::error::end_of_stream || ec == beast::error::timeout || ec == asio::error::operation_aborted ||
        ec == asio::error::connection_reset)
      return close();
    if (ec) return reply(http::status::bad_request, "bad request: " + ec.message() + "\n", false);
    const auto& req = parser_->get();
    if (req.method() != http::verb::get && req.method() != http::verb::head)
      return reply(http::status::method_not_allowed, "only GET /metrics\n", req.keep_alive());
    const auto target = req.target();
    const auto path = target.substr(0, target.find('?'));
    if (path != "/metrics") return reply(http::status::not_found, "not found: try /metrics\n", req.keep_alive());
    reply(http::status::ok, registry_.exposition(), req.keep_alive(), req.method() == http::verb::head);
  }

  void reply(http::status status, std::string body, bool keep_alive, bool head = false) {
    auto res = std::make_shared<http::response<http::string_body>>(status, 11);
    res->set(http::field::server, "fl-metrics");
    res->set(http::field::content_type,
             status == http::status::ok ? "text/plain; version=0.0.4; charset=utf-8" : "text/plain; charset=utf-8");
    if (status == http::status::method_not_allowed) res->set(http::field::allow, "GET, HEAD");
    res->keep_alive(keep_alive);
    res->body() = std::move(body);
    res->prepare_payload();
    if (head) res->body().clear();  // Content-Length stays the GET's
    stream_.expires_after(kTimeout);
    http::async_write(stream_, *res, [self = shared_from_this(), res](beast::error_code ec, std::size_t) {
      if (ec || !res->keep_alive()) return self->close();
      self->read();
    });
  }

  void close() {
    beast::error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ignored);
  }

  beast::tcp_stream stream_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::empty_body>> parser_;
  const Registry& registry_;
};

}  // namespace

ListenAddress parse_listen_address(const std::string& text, const std::string& what) {
  const auto bad = [&](const std::string& why) {
    return std::invalid_argument(what + ": '" + text + "' is not HOST:PORT (" + why + ")");
  };
  const auto colon = text.rfind(':');
  if (colon == std::string::npos) throw bad("no ':PORT'");
  ListenAddress a;
  a.host = text.substr(0, colon);
  if (a.host.size() >= 2 && a.host.front() == '[' && a.host.back() == ']') a.host = a.host.substr(1, a.host.size() - 2);
  if (a.host.empty()) throw bad("no host; 0.0.0.0 listens on every interface");
  const std::string port = text.substr(colon + 1);
  if (port.empty() || port.size() > 5 || port.find_first_not_of("0123456789") != std::string::npos ||
      std::stoi(port) > 65535)
    throw bad("the port must be a number in [0, 65535]");
  a.port = static_cast<uint16_t>(std::stoi(port));
  if (a.host != "localhost") {
    beast::error_code ec;
    asio::ip::make_address(a.host, ec);
    if (ec) throw bad("the host must be an IP address or localhost");
  }
  return a;
}

struct MetricsServer::Impl {
  asio::io_context io{1};
  tcp::acceptor acceptor{io};
  const Registry& registry;
  std::thread thread;

  explicit Impl(const Registry& r) : registry(r) {}

  void accept() {
    acceptor.async_accept(asio::make_strand(io), [this](beast::error_code ec, tcp::socket socket) {
      if (ec == asio::error::operation_aborted) return;  // shutting down
      if (!ec) std::make_shared<Session>(std::move(socket), registry)->start();
      accept();
    });
  }
};

MetricsServer::MetricsServer(const Registry& registry, const ListenAddress& address)
    : impl_(std::make_unique<Impl>(registry)) {
  const std::string where = address.host + ":" + std::to_string(address.port);
  try {
    const auto ip = asio::ip::make_address(address.host == "localhost" ? "127.0.0.1" : address.host);
    const tcp::endpoint ep(ip, address.port);
    impl_->acceptor.open(ep.protocol());
    impl_->acceptor.set_option(asio::socket_base::reuse_address(true));
    impl_->acceptor.bind(ep);
    impl_->acceptor.listen(asio::socket_base::max_listen_connections);
  } catch (const boost::system::system_error& e) {
    throw std::runtime_error("metrics: cannot listen on " + where + ": " + e.code().message());
  }
  impl_->accept();
  impl_->thread = std::thread([this] { impl_->io.run(); });
}

MetricsServer::~MetricsServer() {
  asio::post(impl_->io, [this] {
    beast::error_code ignored;
    impl_->acceptor.close(ignored);
  });
  impl_->io.stop();
  impl_->thread.join();
}

uint16_t MetricsServer::port() const { return impl_->acceptor.local_endpoint().port(); }

}  // namespace fl::metrics
