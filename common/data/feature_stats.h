#pragma once
// Federated feature statistics (the way NVIDIA FLARE's federated statistics job does it): each
// site shares only its training rows' count and, per feature, the sum and the sum of squares of
// the raw (unstandardised) values, never a row. Pooled, they give the mean and population std of
// all sites' training data together, so that every site standardises its features alike.
#include <cstdint>
#include <string>
#include <vector>

namespace fl {

struct CsvData;

struct FeatureStats {
  std::vector<std::string> names;  // feature columns, in the CSV header's order (label removed)
  int64_t count = 0;               // rows
  std::vector<double> sum, sum_sq;  // per feature: sum of x and of x^2

  std::vector<double> mean() const;
  // Population std (divided by count, like read_csv's); 0 for a constant column (a variance
  // within rounding, 1e-12 of the mean square, counts as 0).
  std::vector<double> std() const;
};

// The statistics of a CSV's training features, read as read_csv reads them (the same errors)
// but unstandardised; `label_column` is left out.
FeatureStats compute_feature_stats(const std::string& csv_path, const std::string& label_column,
                                   char delimiter = ',');

// std::invalid_argument naming `source` and the field unless: at least one feature, unique
// non-empty names, count >= 1, sum and sum_sq one finite number per name, sum_sq >= 0.
void validate_feature_stats(const FeatureStats& s, const std::string& source);

// JSON: {"kind": "feature_stats", "count": N, "names": [...], "sum": [...], "sum_sq": [...]};
// doubles are written so that they read back exactly. read_feature_stats validates: errors
// (std::runtime_error for a missing or unparsable file, std::invalid_argument for a bad field)
// name the file and the field.
void write_feature_stats(const std::string& path, const FeatureStats& s);
FeatureStats read_feature_stats(const std::string& path);

// The statistics of all parts together (counts and sums added). Every part must have the same
// feature names in the same order, else std::invalid_argument naming both sources (`sources[i]`
// names part i, e.g. its file; default "part i+1").
FeatureStats pool_feature_stats(const std::vector<FeatureStats>& parts, const std::vector<std::string>& sources = {});

// Standardises `d` (read with standardize=false) with the statistics' mean and std (a zero std
// divides by 1, like read_csv: centre only) and sets d.mean and d.std. The CSV's feature names
// must be the statistics' (same order), else std::runtime_error naming `csv_path` and `stats_source`.
void standardize_with(CsvData& d, const FeatureStats& s, const std::string& csv_path, const std::string& stats_source);

}  // namespace fl
