// Prometheus metrics: the registry's text exposition, parsed back by a strict reader of the
// format, and the HTTP endpoint (Boost.Beast) spoken to over a real socket.
#include "common/ops/metrics.h"

#include <gtest/gtest.h>

#include <cmath>
#include <thread>

#include "common/ops/metrics_server.h"
#include "expect_error.h"
#include "metrics_exposition.h"

namespace {

using fl::metrics::Registry;
using fl::testing_util::Exposition;
using fl::testing_util::http_get;
using fl::testing_util::parse_exposition;

TEST(MetricsRegistry, ExpositionParsesBackToTheValuesSet) {
  Registry r;
  r.counter("fl_rounds_completed_total", "Rounds committed", {{"run", "a"}}).inc(3);
  r.counter("fl_rounds_completed_total", "Rounds committed", {{"run", "b"}}).inc();
  r.gauge("fl_global_accuracy", "Accuracy", {{"run", "a"}}).set(0.8125);
  r.gauge("fl_temperature", "Negative and tiny", {}).set(-1.5e-7);
  auto& h = r.histogram("fl_round_duration_seconds", "Round time", {1, 5, 10}, {{"run", "a"}});
  for (double v : {0.5, 1.0, 3.0, 7.0, 100.0}) h.observe(v);
  const Exposition e = parse_exposition(r.exposition());
  EXPECT_EQ(e.types.at("fl_rounds_completed_total"), "counter");
  EXPECT_EQ(e.types.at("fl_global_accuracy"), "gauge");
  EXPECT_EQ(e.types.at("fl_round_duration_seconds"), "histogram");
  EXPECT_EQ(e.help.at("fl_rounds_completed_total"), "Rounds committed");
  EXPECT_EQ(e.value("fl_rounds_completed_total", {{"run", "a"}}), 3);
  EXPECT_EQ(e.value("fl_rounds_completed_total", {{"run", "b"}}), 1);
  EXPECT_EQ(e.value("fl_global_accuracy", {{"run", "a"}}), 0.8125);
  EXPECT_EQ(e.value("fl_temperature", {}), -1.5e-7);
  // le is inclusive and cumulative: 0.5 and 1.0 <= 1; 3 <= 5; 7 <= 10; 100 only in +Inf.
  EXPECT_EQ(e.value("fl_round_duration_seconds_bucket", {{"run", "a"}, {"le", "1"}}), 2);
  EXPECT_EQ(e.value("fl_round_duration_seconds_bucket", {{"run", "a"}, {"le", "5"}}), 3);
  EXPECT_EQ(e.value("fl_round_duration_seconds_bucket", {{"run", "a"}, {"le", "10"}}), 4);
  EXPECT_EQ(e.value("fl_round_duration_seconds_bucket", {{"run", "a"}, {"le", "+Inf"}}), 5);
  EXPECT_EQ(e.value("fl_round_duration_seconds_count", {{"run", "a"}}), 5);
  EXPECT_EQ(e.value("fl_round_duration_seconds_sum", {{"run", "a"}}), 111.5);
}

TEST(MetricsRegistry, LabelValuesAreEscapedAndReadBackExactly) {
  Registry r;
  const std::string nasty = "hospital \"A\"\\wing\nfloor 2";
  r.counter("fl_updates_total", "Updates", {{"client", nasty}}).inc(2);
  const std::string text = r.exposition();
  EXPECT_NE(text.find(R"(client="hospital \"A\"\\wing\nfloor 2")"), std::string::npos) << text;
  EXPECT_EQ(parse_exposition(text).value("fl_updates_total", {{"client", nasty}}), 2);
}

TEST(MetricsRegistry, ValuesRenderAsPrometheusReadsThem) {
  EXPECT_EQ(fl::metrics::format_value(0.1), "0.1");
  EXPECT_EQ(fl::metrics::format_value(3), "3");
  EXPECT_EQ(fl::metrics::format_value(1e21), "1e+21");
  EXPECT_EQ(fl::metrics::format_value(INFINITY), "+Inf");
  EXPECT_EQ(fl::metrics::format_value(-INFINITY), "-Inf");
  EXPECT_EQ(fl::metrics::format_value(NAN), "NaN");
  EXPECT_EQ(std::stod(fl::metrics::format_value(1.0 / 3)), 1.0 / 3);  // round-trips exactly
}

TEST(MetricsRegistry, RefusesBadNamesConflictsAndDecreasingCounters) {
  Registry r;
  fl::testing_util::expect_error_of<std::invalid_argument>([&] { r.counter("9lives", "x"); }, "invalid metric name '9lives'");
  fl::testing_util::expect_error_of<std::invalid_argument>([&] { r.counter("a-b", "x"); }, "invalid metric name 'a-b'");
  fl::testing_util::expect_error_of<std::invalid_argument>([&] { r.gauge("ok", "x", {{"__name", "v"}}); },
                                                           "invalid label name '__name'");
  fl::testing_util::expect_error_of<std::invalid_argument>([&] { r.histogram("h", "x", {1}, {{"le", "2"}}); },
                                                           "invalid label name 'le'");
  fl::testing_util::expect_error_of<std::invalid_argument>([&] { r.histogram("h", "x", {2, 1}); }, "increasing");
  fl::testing_util::expect_error_of<std::invalid_argument>([&] { r.gauge("g", "x", {{"a", "1"}, {"a", "2"}}); },
                                                           "label 'a' given twice");
  r.counter("c", "a counter", {{"run", "x"}});
  fl::testing_util::expect_error_of<std::logic_error>([&] { r.gauge("c", "a counter", {{"run", "x"}}); },
                                                      "metric 'c' is registered already");
  fl::testing_util::expect_error_of<std::logic_error>([&] { r.counter("c", "a counter", {{"client", "x"}}); },
                                                      "metric 'c' is registered already");
  fl::testing_util::expect_error_of<std::invalid_argument>([&] { r.counter("c", "a counter", {{"run", "x"}}).inc(-1); },
                                                           "must be finite and >= 0, not -1");
  EXPECT_EQ(r.counter("c", "a counter", {{"run", "x"}}).value(), 0);
}

TEST(MetricsRegistry, ConcurrentIncrementsAreNotLost) {
  Registry r;
  auto& c = r.counter("fl_bytes_total", "bytes");
  auto& h = r.histogram("fl_h", "h", {0.5});
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&] {
      for (int i = 0; i < 20000; ++i) {
        c.inc(0.5);
        h.observe(1);
      }
    });
  for (auto& t : threads) t.join();
  EXPECT_EQ(c.value(), 40000);
  EXPECT_EQ(h.count(), 80000u);
  EXPECT_EQ(h.sum(), 80000);
}

TEST(MetricsRegistry, CollectorsRunAtEachScrape) {
  Registry r;
  int calls = 0;
  r.add_collector([&](Registry& reg) { reg.gauge("fl_scrapes", "scrapes").set(++calls); });
  r.exposition();
  EXPECT_EQ(parse_exposition(r.exposition()).value("fl_scrapes", {}), 2);
  fl::metrics::add_process_metrics(r, "fl_tests", "cpu");
  const auto e = parse_exposition(r.exposition());
  EXPECT_GT(e.value("process_resident_memory_bytes", {}), 1 << 20);
  EXPECT_GE(e.value("process_open_fds", {}), 3);
  EXPECT_EQ(e.value("fl_process_info", {{"program", "fl_tests"}, {"device", "cpu"}}), 1);
}

TEST(MetricsListenAddress, ParsesHostPortAndNamesWhatIsWrong) {
  auto a = fl::metrics::parse_listen_address("0.0.0.0:9464");
  EXPECT_EQ(a.host, "0.0.0.0");
  EXPECT_EQ(a.port, 9464);
  a = fl::metrics::parse_listen_address("[::1]:0");
  EXPECT_EQ(a.host, "::1");
  EXPECT_EQ(a.port, 0);
  using fl::metrics::parse_listen_address;
  fl::testing_util::expect_error_of<std::invalid_argument>([] { parse_listen_address("9464", "--metrics-listen"); },
                                                           "--metrics-listen: '9464' is not HOST:PORT (no ':PORT')");
  fl::testing_util::expect_error_of<std::invalid_argument>([] { parse_listen_address("x:65536"); },
                                                           "the port must be a number in [0, 65535]");
  fl::testing_util::expect_error_of<std::invalid_argument>([] { parse_listen_address(":80"); }, "no host");
  fl::testing_util::expect_error_of<std::invalid_argument>([] { parse_listen_address("example.org:80"); },
                                                           "the host must be an IP address or localhost");
}

TEST(MetricsServer, ServesTheExpositionOverHttpAndRefusesTheRest) {
  Registry r;
  r.counter("fl_rounds_completed_total", "Rounds committed", {{"run", "x"}}).inc(2);
  fl::metrics::MetricsServer server(r, fl::metrics::parse_listen_address("127.0.0.1:0"));
  ASSERT_GT(server.port(), 0);
  auto res = http_get(server.port(), "GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
  EXPECT_EQ(res.status, 200) << res.raw;
  EXPECT_NE(res.headers.find("text/plain; version=0.0.4"), std::string::npos) << res.headers;
  EXPECT_EQ(parse_exposition(res.body).value("fl_rounds_completed_total", {{"run", "x"}}), 2);
  // Values change between scrapes.
  r.counter("fl_rounds_completed_total", "Rounds committed", {{"run", "x"}}).inc();
  res = http_get(server.port(), "GET /metrics?x=1 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
  EXPECT_EQ(parse_exposition(res.body).value("fl_rounds_completed_total", {{"run", "x"}}), 3);
  EXPECT_EQ(http_get(server.port(), "GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").status, 404);
  res = http_get(server.port(), "POST /metrics HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
  EXPECT_EQ(res.status, 405);
  EXPECT_NE(res.headers.find("Allow: GET, HEAD"), std::string::npos) << res.headers;
  EXPECT_EQ(http_get(server.port(), "NONSENSE\r\n\r\n").status, 400);
  // Headers past 8 KiB: refused, not buffered.
  res = http_get(server.port(), "GET /metrics HTTP/1.1\r\nX-Big: " + std::string(10000, 'a') + "\r\n\r\n");
  EXPECT_EQ(res.status, 400) << res.raw.substr(0, 200);
  // A body on a scrape: refused.
  res = http_get(server.port(), "GET /metrics HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello");
  EXPECT_EQ(res.status, 400);
  // Still serving after all that.
  EXPECT_EQ(http_get(server.port(), "GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").status, 200);
}

TEST(MetricsServer, KeepAliveServesSeveralScrapesOnOneConnection) {
  Registry r;
  r.gauge("g", "g").set(1);
  fl::metrics::MetricsServer server(r, fl::metrics::parse_listen_address("127.0.0.1:0"));
  const std::string one = "GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n";
  const std::string last = "GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
  const auto res = http_get(server.port(), one + one + last);
  // Three responses on one connection.
  size_t n = 0;
  for (size_t p = res.raw.find("HTTP/1.1 200 OK"); p != std::string::npos; p = res.raw.find("HTTP/1.1 200 OK", p + 1)) ++n;
  EXPECT_EQ(n, 3u) << res.raw;
}

TEST(MetricsServer, ABusyPortIsAClearError) {
  Registry r;
  fl::metrics::MetricsServer first(r, fl::metrics::parse_listen_address("127.0.0.1:0"));
  fl::testing_util::expect_error_of<std::runtime_error>(
      [&] {
        fl::metrics::MetricsServer second(r, fl::metrics::parse_listen_address("127.0.0.1:" + std::to_string(first.port())));
      },
      "metrics: cannot listen on 127.0.0.1:" + std::to_string(first.port()));
}

}  // namespace
