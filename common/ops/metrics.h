#pragma once
// Prometheus metrics: counters, gauges and histograms in a Registry that renders the text
// exposition format (version 0.0.4), served over HTTP by MetricsServer (metrics_server.h).
//
// A metric family is a name, a help text and a type; each distinct set of label values is one
// series of it. Series live as long as their registry (a run's series stay after the run, as
// Prometheus expects of counters). Updates are lock-free (atomics); looking a series up takes
// the registry's lock, so hot paths keep the reference they got.
//
// Names follow Prometheus' rules: metric names [a-zA-Z_:][a-zA-Z0-9_:]*, label names
// [a-zA-Z_][a-zA-Z0-9_]* and not starting with "__"; anything else throws std::invalid_argument
// naming it. Label values may be any text: they are escaped (\\, \", \n) on output. Asking for
// an existing name with another type, help text or label names throws std::logic_error.
#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace fl::metrics {

using Labels = std::vector<std::pair<std::string, std::string>>;  // name -> value, in output order

class Counter {
 public:
  // Adds `v` (>= 0; a negative or non-finite increment throws std::invalid_argument: a counter
  // only goes up).
  void inc(double v = 1);
  double value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0};
};

class Gauge {
 public:
  void set(double v) { value_.store(v, std::memory_order_relaxed); }
  void add(double v);
  double value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0};
};

// Cumulative buckets (le = upper bound) plus +Inf, _sum and _count.
class Histogram {
 public:
  explicit Histogram(std::vector<double> upper_bounds);
  void observe(double v);
  const std::vector<double>& upper_bounds() const { return bounds_; }
  // Per bucket (not cumulative), the last one being +Inf.
  std::vector<uint64_t> bucket_counts() const;
  double sum() const { return sum_.load(std::memory_order_relaxed); }
  uint64_t count() const { return count_.load(std::memory_order_relaxed); }

 private:
  std::vector<double> bounds_;
  std::unique_ptr<std::atomic<uint64_t>[]> buckets_;  // bounds_.size() + 1
  std::atomic<double> sum_{0};
  std::atomic<uint64_t> count_{0};
};

class Registry {
 public:
  Counter& counter(const std::string& name, const std::string& help, const Labels& labels = {});
  Gauge& gauge(const std::string& name, const std::string& help, const Labels& labels = {});
  // `upper_bounds`: strictly increasing and finite (else std::invalid_argument); a series of an
  // existing family must give the family's bounds.
  Histogram& histogram(const std::string& name, const std::string& help, const std::vector<double>& upper_bounds,
                       const Labels& labels = {});
  // The whole registry in the text exposition format: families in name order, each with its
  // # HELP and # TYPE lines, series in label order.
  // Runs collector(*this) before each exposition(): for values read at scrape time (memory,
  // open files). Collectors must not call add_collector.
  void add_collector(std::function<void(Registry&)> collector);
  std::string exposition() const;

 private:
  enum class Type { kCounter, kGauge, kHistogram };
  struct Series {
    Labels labels;
    std::unique_ptr<Counter> counter;
    std::unique_ptr<Gauge> gauge;
    std::unique_ptr<Histogram> histogram;
  };
  struct Family {
    Type type;
    std::string help;
    std::vector<std::string> label_names;
    std::vector<double> bounds;                      // histograms
    std::map<std::vector<std::string>, Series> series;  // by label values
  };
  Series& series(const std::string& name, const std::string& help, Type type, const Labels& labels,
                 const std::vector<double>& bounds);

  mutable std::mutex mu_;
  std::map<std::string, Family> families_;
  std::vector<std::function<void(Registry&)>> collectors_;  // guarded by collectors_mu_
  mutable std::mutex collectors_mu_;
};

// The process's registry: what fedcoord's and fedclient's MetricsServer serve.
Registry& global();

// Standard process metrics (process_resident_memory_bytes, process_open_fds,
// process_start_time_seconds) as a collector of `registry`, plus fl_process_info{program,device}.
void add_process_metrics(Registry& registry, const std::string& program, const std::string& device);

// The text format's escaping of a label value (\\, \", \n) and its rendering of a sample value
// (+Inf, -Inf, NaN, otherwise the shortest decimal that reads back to the same double).
std::string escape_label_value(const std::string& v);
std::string format_value(double v);

}  // namespace fl::metrics
