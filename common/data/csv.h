#pragma once
// Tabular classification data from a CSV file with a header row.
#include <ATen/core/Tensor.h>

#include <string>
#include <vector>

#include "common/data/dataset.h"

namespace fl {

struct CsvOptions {
  std::string label_column;   // header name of the class label column (required)
  char delimiter = ',';
  bool standardize = true;    // (x - mean) / std per feature column
};

struct CsvData {
  TensorDataset data;                     // x float32 [N, F], y int64 [N]
  std::vector<std::string> feature_names; // header order, label column removed
  std::vector<std::string> class_names;   // string labels (sorted); empty for integer labels
  at::Tensor mean, std;                   // float32 [F]; undefined when not standardised
};

// Every column but the label must be numeric. Integer labels are used as class ids
// (num_classes = max + 1); otherwise the distinct label strings, sorted, become the classes.
// With `fit_from` (e.g. the training split), its feature names, mean/std and classes are used,
// so a test split is encoded and scaled exactly like the training split. Fields may be
// quoted with "..." ("" inside quotes is a literal quote). Errors are std::runtime_error
// naming the file, line and column.
CsvData read_csv(const std::string& path, const CsvOptions& options, const CsvData* fit_from = nullptr);

}  // namespace fl
