#include "common/data/feature_stats.h"

#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>
#include <stdexcept>

#include "common/data/csv.h"

namespace fl {
namespace {

std::string join(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : ", ") + ("'" + x + "'");
  return s;
}

[[noreturn]] void bad(const std::string& source, const std::string& msg) {
  throw std::invalid_argument(source + ": " + msg);
}

}  // namespace

std::vector<double> FeatureStats::mean() const {
  std::vector<double> m(sum.size());
  for (size_t i = 0; i < sum.size(); ++i) m[i] = sum[i] / static_cast<double>(count);
  return m;
}

std::vector<double> FeatureStats::std() const {
  std::vector<double> s(sum.size());
  const double n = static_cast<double>(count);
  for (size_t i = 0; i < sum.size(); ++i) {
    const double m = sum[i] / n, msq = sum_sq[i] / n;
    const double var = msq - m * m;
    s[i] = var <= 1e-12 * msq ? 0.0 : std::sqrt(var);
  }
  return s;
}

FeatureStats compute_feature_stats(const std::string& csv_path, const std::string& label_column, char delimiter) {
  CsvOptions o;
  o.label_column = label_column;
  o.delimiter = delimiter;
  o.standardize = false;
  const CsvData d = read_csv(csv_path, o);
  FeatureStats s;
  s.names = d.feature_names;
  s.count = d.data.x.size(0);
  const at::Tensor x = d.data.x.to(torch::kFloat64).contiguous();
  const int64_t f = x.size(1);
  s.sum.assign(f, 0.0);
  s.sum_sq.assign(f, 0.0);
  const double* p = x.data_ptr<double>();
  for (int64_t r = 0; r < s.count; ++r)
    for (int64_t c = 0; c < f; ++c, ++p) {
      s.sum[c] += *p;
      s.sum_sq[c] += *p * *p;
    }
  return s;
}

void validate_feature_stats(const FeatureStats& s, const std::string& source) {
  if (s.names.empty()) bad(source, "field 'names' is empty (no features)");
  std::set<std::string> seen;
  for (const auto& n : s.names) {
    if (n.empty()) bad(source, "field 'names' holds an empty name");
    if (!seen.insert(n).second) bad(source, "field 'names' holds '" + n + "' twice");
  }
  if (s.count < 1) bad(source, "field 'count' must be >= 1, got " + std::to_string(s.count));
  for (const auto* field : {"sum", "sum_sq"}) {
    const bool squares = std::string(field) == "sum_sq";
    const auto& v = squares ? s.sum_sq : s.sum;
    if (v.size() != s.names.size())
      bad(source, "field '" + std::string(field) + "' has " + std::to_string(v.size()) + " values, 'names' has " +
                      std::to_string(s.names.size()) + " (sizes must agree)");
    for (size_t i = 0; i < v.size(); ++i) {
      if (!std::isfinite(v[i]))
        bad(source, "field '" + std::string(field) + "' of feature '" + s.names[i] + "' is not a finite number");
      if (squares && v[i] < 0)
        bad(source, "field 'sum_sq' of feature '" + s.names[i] + "' is negative");
    }
  }
}

void write_feature_stats(const std::string& path, const FeatureStats& s) {
  validate_feature_stats(s, path);
  nlohmann::ordered_json j;
  j["kind"] = "feature_stats";
  j["count"] = s.count;
  j["names"] = s.names;
  j["sum"] = s.sum;
  j["sum_sq"] = s.sum_sq;
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::trunc);
    if (!f) throw std::runtime_error(path + ": cannot open for writing");
    f << j.dump(2) << "\n";
    if (!f.flush()) throw std::runtime_error(path + ": write error");
  }
  std::filesystem::rename(tmp, path);
}

FeatureStats read_feature_stats(const std::string& path) {
  std::ifstream f(path);
  if (!f)
    throw std::runtime_error(path + ": " + (std::filesystem::exists(path) ? "cannot open for reading" : "no such file") +
                             " (feature statistics)");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(f);
  } catch (const nlohmann::json::exception& e) {
    throw std::runtime_error(path + ": not JSON (feature statistics): " + e.what());
  }
  if (!j.is_object()) bad(path, "not a JSON object (feature statistics)");
  if (j.contains("kind") && j["kind"] != "feature_stats") bad(path, "field 'kind' is not \"feature_stats\"");
  for (const auto* field : {"count", "names", "sum", "sum_sq"})
    if (!j.contains(field)) bad(path, std::string("field '") + field + "' is missing");
  FeatureStats s;
  const auto& c = j["count"];
  if (!c.is_number_integer()) bad(path, "field 'count' is not an integer");
  s.count = c.get<int64_t>();
  if (!j["names"].is_array()) bad(path, "field 'names' is not an array");
  for (const auto& n : j["names"]) {
    if (!n.is_string()) bad(path, "field 'names' holds a non-string");
    s.names.push_back(n.get<std::string>());
  }
  for (const auto* field : {"sum", "sum_sq"}) {
    const auto& a = j[field];
    if (!a.is_array()) bad(path, std::string("field '") + field + "' is not an array");
    auto& v = std::string(field) == "sum" ? s.sum : s.sum_sq;
    for (size_t i = 0; i < a.size(); ++i) {
      if (!a[i].is_number())
        bad(path, std::string("field '") + field + "' value " + std::to_string(i + 1) + " is not a number (" +
                      a[i].dump() + ")");
      v.push_back(a[i].get<double>());
    }
  }
  validate_feature_stats(s, path);
  return s;
}

FeatureStats pool_feature_stats(const std::vector<FeatureStats>& parts, const std::vector<std::string>& sources) {
  if (parts.empty()) throw std::invalid_argument("pool_feature_stats: no statistics to pool");
  auto name = [&](size_t i) { return i < sources.size() ? sources[i] : "part " + std::to_string(i + 1); };
  FeatureStats out;
  for (size_t i = 0; i < parts.size(); ++i) {
    validate_feature_stats(parts[i], name(i));
    if (i == 0) {
      out = parts[0];
      continue;
    }
    if (parts[i].names != out.names)
      throw std::invalid_argument("feature names of " + name(i) + " (" + join(parts[i].names) + ") differ from " +
                                  name(0) + "'s (" + join(out.names) + "): cannot pool them");
    out.count += parts[i].count;
    for (size_t f = 0; f < out.names.size(); ++f) {
      out.sum[f] += parts[i].sum[f];
      out.sum_sq[f] += parts[i].sum_sq[f];
    }
  }
  validate_feature_stats(out, "pooled statistics");
  return out;
}

void standardize_with(CsvData& d, const FeatureStats& s, const std::string& csv_path, const std::string& stats_source) {
  if (d.feature_names != s.names)
    throw std::runtime_error(csv_path + ": feature columns (" + join(d.feature_names) + ") differ from those of the " +
                             "feature statistics " + stats_source + " (" + join(s.names) + ")");
  const std::vector<double> m = s.mean(), sd = s.std();
  std::vector<float> mf(m.begin(), m.end()), sf(sd.size());
  for (size_t i = 0; i < sd.size(); ++i) sf[i] = sd[i] == 0 ? 1.0f : static_cast<float>(sd[i]);  // constant: centre only
  d.mean = torch::tensor(mf, torch::kFloat32);
  d.std = torch::tensor(sf, torch::kFloat32);
  d.data.x = (d.data.x - d.mean) / d.std;
}

}  // namespace fl
