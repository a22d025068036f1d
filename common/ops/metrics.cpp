#include "common/ops/metrics.h"

#include "common/util/process_memory.h"

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <cmath>
#include <cstdio>
#include <sstream>
#include <stdexcept>

namespace fl::metrics {
namespace {

bool is_name_char(char c, bool first, bool colon_ok) {
  const bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (colon_ok && c == ':');
  return alpha || (!first && c >= '0' && c <= '9');
}

bool valid_name(const std::string& s, bool colon_ok) {
  if (s.empty()) return false;
  for (size_t i = 0; i < s.size(); ++i)
    if (!is_name_char(s[i], i == 0, colon_ok)) return false;
  return true;
}

void add_to(std::atomic<double>& a, double v) {
  double cur = a.load(std::memory_order_relaxed);
  while (!a.compare_exchange_weak(cur, cur + v, std::memory_order_relaxed)) {
  }
}

const char* type_name(int t) {
  static const char* kNames[] = {"counter", "gauge", "histogram"};
  return kNames[t];
}

std::string render_labels(const Labels& labels, const std::string& extra_name = {}, const std::string& extra = {}) {
  if (labels.empty() && extra_name.empty()) return {};
  std::string out = "{";
  bool first = true;
  for (const auto& [k, v] : labels) {
    out += (first ? "" : ",") + k + "=\"" + escape_label_value(v) + "\"";
    first = false;
  }
  if (!extra_name.empty()) out += (first ? "" : ",") + extra_name + "=\"" + extra + "\"";
  return out + "}";
}

}  // namespace

std::string escape_label_value(const std::string& v) {
  std::string out;
  out.reserve(v.size());
  for (char c : v) {
    if (c == '\\') out += "\\\\";
    else if (c == '"') out += "\\\"";
    else if (c == '\n') out += "\\n";
    else out += c;
  }
  return out;
}

std::string format_value(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  char buf[32];
  if (v == std::floor(v) && std::fabs(v) < 1e15) {  // counts and integral bounds: 10, not 1e+01
    std::snprintf(buf, sizeof buf, "%.0f", v);
    return buf;
  }
  for (int precision = 1; precision <= 17; ++precision) {  // the shortest form that reads back exactly
    std::snprintf(buf, sizeof buf, "%.*g", precision, v);
    if (std::strtod(buf, nullptr) == v) break;
  }
  return buf;
}

void Counter::inc(double v) {
  if (!(v >= 0) || std::isinf(v))
    throw std::invalid_argument("a counter increment must be finite and >= 0, not " + format_value(v));
  add_to(value_, v);
}

void Gauge::add(double v) { add_to(value_, v); }

Histogram::Histogram(std::vector<double> upper_bounds)
    : bounds_(std::move(upper_bounds)), buckets_(new std::atomic<uint64_t>[bounds_.size() + 1]) {
  for (size_t i = 0; i <= bounds_.size(); ++i) buckets_[i] = 0;
}

void Histogram::observe(double v) {
  // le is inclusive: v lands in the first bucket whose bound is >= v.
  const size_t i = std::lower_bound(bounds_.begin(), bounds_.end(), v) - bounds_.begin();
  buckets_[i].fetch_add(1, std::memory_order_relaxed);
  add_to(sum_, v);
  count_.fetch_add(1, std::memory_order_relaxed);
}

std::vector<uint64_t> Histogram::bucket_counts() const {
  std::vector<uint64_t> out(bounds_.size() + 1);
  for (size_t i = 0; i < out.size(); ++i) out[i] = buckets_[i].load(std::memory_order_relaxed);
  return out;
}

Registry::Series& Registry::series(const std::string& name, const std::string& help, Type type, const Labels& labels,
                                   const std::vector<double>& bounds) {
  if (!valid_name(name, /*colon_ok=*/true)) throw std::invalid_argument("invalid metric name '" + name + "'");
  std::vector<std::string> names, values;
  for (const auto& [k, v] : labels) {
    if (!valid_name(k, false) || k.rfind("__", 0) == 0 || (type == Type::kHistogram && k == "le"))
      throw std::invalid_argument("invalid label name '" + k + "' for metric '" + name + "'");
    if (std::find(names.begin(), names.end(), k) != names.end())
      throw std::invalid_argument("label '" + k + "' given twice for metric '" + name + "'");
    names.push_back(k);
    values.push_back(v);
  }
  if (type == Type::kHistogram) {
    for (size_t i = 0; i < bounds.size(); ++i)
      if (!std::isfinite(bounds[i]) || (i > 0 && bounds[i] <= bounds[i - 1]))
        throw std::invalid_argument("histogram '" + name + "': bucket bounds must be finite and increasing");
  }
  std::lock_guard<std::mutex> lock(mu_);
  auto [it, inserted] = families_.try_emplace(name);
  Family& f = it->second;
  if (inserted) {
    f.type = type;
    f.help = help;
    f.label_names = names;
    f.bounds = bounds;
  } else if (f.type != type || f.help != help || f.label_names != names || f.bounds != bounds) {
    throw std::logic_error("metric '" + name + "' is registered already with another type, help, labels or buckets");
  }
  auto [sit, fresh] = f.series.try_emplace(values);
  Series& s = sit->second;
  if (fresh) {
    s.labels = labels;
    if (type == Type::kCounter) s.counter = std::make_unique<Counter>();
    if (type == Type::kGauge) s.gauge = std::make_unique<Gauge>();
    if (type == Type::kHistogram) s.histogram = std::make_unique<Histogram>(bounds);
  }
  return s;
}

Counter& Registry::counter(const std::string& name, const std::string& help, const Labels& labels) {
  return *series(name, help, Type::kCounter, labels, {}).counter;
}

Gauge& Registry::gauge(const std::string& name, const std::string& help, const Labels& labels) {
  return *series(name, help, Type::kGauge, labels, {}).gauge;
}

Histogram& Registry::histogram(const std::string& name, const std::string& help,
                               const std::vector<double>& upper_bounds, const Labels& labels) {
  return *series(name, help, Type::kHistogram, labels, upper_bounds).histogram;
}

void Registry::add_collector(std::function<void(Registry&)> collector) {
  std::lock_guard<std::mutex> lock(collectors_mu_);
  collectors_.push_back(std::move(collector));
}

std::string Registry::exposition() const {
  {
    std::lock_guard<std::mutex> lock(collectors_mu_);
    for (const auto& c : collectors_) c(const_cast<Registry&>(*this));  // they update series, not the set of collectors
  }
  std::ostringstream out;
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& [name, f] : families_) {
    std::string help;  // HELP escapes backslash and newline only
    for (char c : f.help) help += c == '\\' ? "\\\\" : c == '\n' ? "\\n" : std::string(1, c);
    out << "# HELP " << name << ' ' << help << "\n# TYPE " << name << ' ' << type_name(static_cast<int>(f.type))
        << '\n';
    for (const auto& [values, s] : f.series) {
      switch (f.type) {
        case Type::kCounter:
          out << name << render_labels(s.labels) << ' ' << format_value(s.counter->value()) << '\n';
          break;
        case Type::kGauge:
          out << name << render_labels(s.labels) << ' ' << format_value(s.gauge->value()) << '\n';
          break;
        case Type::kHistogram: {
          const auto counts = s.histogram->bucket_counts();
          uint64_t cumulative = 0;
          for (size_t i = 0; i < counts.size(); ++i) {
            cumulative += counts[i];
            const std::string le = i < f.bounds.size() ? format_value(f.bounds[i]) : "+Inf";
            out << name << "_bucket" << render_labels(s.labels, "le", le) << ' ' << cumulative << '\n';
          }
          out << name << "_sum" << render_labels(s.labels) << ' ' << format_value(s.histogram->sum()) << '\n';
          out << name << "_count" << render_labels(s.labels) << ' ' << cumulative << '\n';
          break;
        }
      }
    }
  }
  return out.str();
}

void add_process_metrics(Registry& registry, const std::string& program, const std::string& device) {
  registry.gauge("fl_process_info", "Constant 1; the labels say which program runs on which device",
                 {{"program", program}, {"device", device}})
      .set(1);
  const double start = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  registry.add_collector([start](Registry& r) {
    r.gauge("process_start_time_seconds", "Start time of the process since the Unix epoch in seconds").set(start);
    const ProcessMemory m = process_memory();
    r.gauge("process_resident_memory_bytes", "Resident memory size in bytes").set(static_cast<double>(m.rss_bytes));
    r.gauge("fl_process_peak_resident_memory_bytes", "Peak resident memory size in bytes")
        .set(static_cast<double>(m.peak_bytes));
    std::error_code ec;
    double fds = 0;
    for (auto it = std::filesystem::directory_iterator("/proc/self/fd", ec); !ec && it != std::filesystem::directory_iterator();
         it.increment(ec))
      ++fds;
    r.gauge("process_open_fds", "Number of open file descriptors").set(fds);
  });
}

Registry& global() {
  static Registry* r = new Registry();  // never destroyed: served until the process exits
  return *r;
}

}  // namespace fl::metrics
