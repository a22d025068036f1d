#pragma once
// Tabular classification data from a CSV file with a header row.
#include <ATen/core/Tensor.h>

#include <cstdint>
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

// A CSV file as text, parsed as read_csv parses it: the header and the data rows, each with the
// line it starts on. Errors are std::runtime_error naming the file: missing, no header, a column
// name twice, an empty or ragged row, no data rows.
struct CsvTable {
  std::string path;
  std::vector<std::string> header;
  std::vector<std::vector<std::string>> rows;
  std::vector<int64_t> lines;  // 1-based line where each row starts
  // The index of column `name`; else an error naming the file, what the column is for (`role`,
  // e.g. "label") and the columns there are.
  size_t column(const std::string& name, const std::string& role) const;
};
CsvTable read_csv_table(const std::string& path, char delimiter = ',');

// The classes of a labelled data set: class_names empty for integer class ids.
struct ClassEncoding {
  int64_t num_classes = 0;
  std::vector<std::string> class_names;
};
// read_csv's rule for labels (label i read on line lines[i] of `path`): integer labels are class
// ids (>= 0, at most 2^20 - 1; num_classes = max + 1), otherwise the distinct strings, sorted,
// are the classes. With `fit_from` (the training split's encoding) that encoding is used.
// Returns int64 [N] class ids and sets `out`; errors name the file, line and label.
at::Tensor encode_labels(const std::vector<std::string>& labels, const std::vector<int64_t>& lines,
                         const std::string& path, const ClassEncoding* fit_from, ClassEncoding* out);

}  // namespace fl
