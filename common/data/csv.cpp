#include "common/data/csv.h"

#include <torch/torch.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <set>
#include <stdexcept>

namespace fl {
namespace {

struct Record {
  std::vector<std::string> fields;
  int64_t line = 0;  // 1-based line where the record starts
  bool blank = false;
};

[[noreturn]] void fail(const std::string& path, const std::string& msg) {
  throw std::runtime_error(path + ": " + msg);
}

std::string trim(const std::string& s) {
  const auto b = s.find_first_not_of(" \t");
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(" \t") - b + 1);
}

std::vector<Record> parse_records(const std::string& text, char delim, const std::string& path) {
  std::vector<Record> out;
  Record rec;
  std::string field;
  bool quoted = false, in_quotes = false;
  int64_t line = 1, quote_line = 0;
  rec.line = 1;
  auto end_field = [&] {
    rec.fields.push_back(quoted ? field : trim(field));
    field.clear();
    quoted = false;
  };
  auto end_record = [&] {
    end_field();
    rec.blank = rec.fields.size() == 1 && rec.fields[0].empty();
    out.push_back(std::move(rec));
    rec = Record{};
    rec.line = line;
  };
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_quotes) {
      if (c == '"') {
        if (i + 1 < text.size() && text[i + 1] == '"') {
          field += '"';
          ++i;
        } else {
          in_quotes = false;
        }
      } else {
        if (c == '\n') ++line;
        field += c;
      }
    } else if (c == '"' && trim(field).empty() && !quoted) {
      field.clear();  // whitespace before the opening quote is not part of the value
      in_quotes = quoted = true;
      quote_line = line;
    } else if (c == delim) {
      end_field();
    } else if (c == '\n' || (c == '\r' && (i + 1 == text.size() || text[i + 1] != '\n'))) {
      ++line;
      end_record();
    } else if (c != '\r') {
      field += c;
    }
  }
  if (in_quotes) fail(path, "unterminated quoted field starting on line " + std::to_string(quote_line));
  if (!field.empty() || quoted || !rec.fields.empty()) end_record();
  // Empty lines at the end of the file are ignored.
  while (!out.empty() && out.back().blank) out.pop_back();
  return out;
}

bool parse_float(const std::string& s, float* out) {
  const char* b = s.data();
  const char* e = s.data() + s.size();
  if (b != e && *b == '+') ++b;  // from_chars rejects a leading '+'
  if (b == e) return false;
  auto [ptr, ec] = std::from_chars(b, e, *out);
  return ec == std::errc() && ptr == e && std::isfinite(*out);
}

bool parse_int(const std::string& s, int64_t* out) {
  const char* b = s.data();
  const char* e = s.data() + s.size();
  if (b != e && *b == '+') ++b;
  if (b == e) return false;
  auto [ptr, ec] = std::from_chars(b, e, *out);
  return ec == std::errc() && ptr == e;
}

std::string join(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : ", ") + ("'" + x + "'");
  return s;
}

}  // namespace

CsvTable read_csv_table(const std::string& path, char delimiter) {
  std::ifstream f(path, std::ios::binary);
  if (!f) fail(path, std::filesystem::exists(path) ? "cannot open for reading" : "no such file");
  const std::string text((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  if (f.bad()) fail(path, "read error");

  std::vector<Record> records = parse_records(text, delimiter, path);
  if (records.empty() || records[0].blank) fail(path, "missing header row");
  CsvTable t;
  t.path = path;
  t.header = std::move(records[0].fields);
  std::set<std::string> seen;
  for (const auto& h : t.header)
    if (!seen.insert(h).second) fail(path, "duplicate column name '" + h + "' in the header");
  if (records.size() == 1) fail(path, "no data rows after the header");
  for (size_t r = 1; r < records.size(); ++r) {
    Record& rec = records[r];
    if (rec.blank) fail(path, "line " + std::to_string(rec.line) + " is empty");
    if (rec.fields.size() != t.header.size())
      fail(path, "line " + std::to_string(rec.line) + " has " + std::to_string(rec.fields.size()) +
                     " fields, expected " + std::to_string(t.header.size()) + " (ragged row)");
    t.rows.push_back(std::move(rec.fields));
    t.lines.push_back(rec.line);
  }
  return t;
}

size_t CsvTable::column(const std::string& name, const std::string& role) const {
  const auto it = std::find(header.begin(), header.end(), name);
  if (it == header.end())
    fail(path, role + " column '" + name + "' not found; available columns: " + join(header));
  return static_cast<size_t>(it - header.begin());
}

at::Tensor encode_labels(const std::vector<std::string>& labels, const std::vector<int64_t>& lines,
                         const std::string& path, const ClassEncoding* fit_from, ClassEncoding* out) {
  if (labels.size() != lines.size()) throw std::invalid_argument("encode_labels: labels and lines differ in length");
  const int64_t n = static_cast<int64_t>(labels.size());
  auto where = [&](int64_t r) { return "line " + std::to_string(lines[r]) + ": label '" + labels[r] + "'"; };
  // Labels: integer class ids, or strings mapped to their index among the sorted distinct values.
  at::Tensor y = at::empty({n}, at::kLong);
  int64_t* yp = y.data_ptr<int64_t>();
  bool integer = true;
  if (fit_from) {
    integer = fit_from->class_names.empty();
  } else {
    for (int64_t r = 0; r < n && integer; ++r) integer = parse_int(labels[r], &yp[r]);
  }
  ClassEncoding enc;
  if (integer) {
    for (int64_t r = 0; r < n; ++r) {
      if (!parse_int(labels[r], &yp[r])) fail(path, where(r) + " is not an integer class id like the fitted data's");
      if (yp[r] < 0) fail(path, where(r) + " is negative; integer class ids must be >= 0");
      // The class count is the largest id + 1, and a model gets that many outputs.
      constexpr int64_t kMaxClassId = (int64_t{1} << 20) - 1;
      if (yp[r] > kMaxClassId)
        fail(path, where(r) + " is too large; integer class ids must be <= " + std::to_string(kMaxClassId) +
                       " (name the classes instead)");
      if (fit_from && yp[r] >= fit_from->num_classes)
        fail(path, where(r) + " is outside the fitted data's " + std::to_string(fit_from->num_classes) + " classes");
    }
    enc.num_classes = fit_from ? fit_from->num_classes : (n > 0 ? y.max().item<int64_t>() + 1 : 0);
  } else {
    if (fit_from) {
      enc.class_names = fit_from->class_names;
    } else {
      std::set<std::string> distinct(labels.begin(), labels.end());
      enc.class_names.assign(distinct.begin(), distinct.end());
    }
    std::map<std::string, int64_t> id;
    for (size_t i = 0; i < enc.class_names.size(); ++i) id[enc.class_names[i]] = static_cast<int64_t>(i);
    for (int64_t r = 0; r < n; ++r) {
      auto it = id.find(labels[r]);
      if (it == id.end()) fail(path, where(r) + " is not one of the fitted data's classes (" + join(enc.class_names) + ")");
      yp[r] = it->second;
    }
    enc.num_classes = static_cast<int64_t>(enc.class_names.size());
  }
  if (out) *out = std::move(enc);
  return y;
}

CsvData read_csv(const std::string& path, const CsvOptions& options, const CsvData* fit_from) {
  if (options.label_column.empty()) throw std::invalid_argument("read_csv: options.label_column is empty");
  const CsvTable table = read_csv_table(path, options.delimiter);
  const std::vector<std::string>& header = table.header;
  const size_t label_col = table.column(options.label_column, "label");
  const size_t ncols = header.size();

  CsvData out;
  for (size_t c = 0; c < ncols; ++c)
    if (c != label_col) out.feature_names.push_back(header[c]);
  const int64_t nfeat = static_cast<int64_t>(out.feature_names.size());
  if (nfeat == 0) fail(path, "no feature columns besides the label column '" + options.label_column + "'");
  if (fit_from && fit_from->feature_names != out.feature_names)
    fail(path, "feature columns (" + join(out.feature_names) + ") differ from the fitted data's (" +
                   join(fit_from->feature_names) + ")");
  const int64_t n = static_cast<int64_t>(table.rows.size());

  at::Tensor x = at::empty({n, nfeat}, at::kFloat);
  float* xp = x.data_ptr<float>();
  std::vector<std::string> labels(n);
  for (int64_t r = 0; r < n; ++r) {
    const auto& fields = table.rows[r];
    for (size_t c = 0; c < ncols; ++c) {
      if (c == label_col) continue;
      if (!parse_float(fields[c], xp++))
        fail(path, "line " + std::to_string(table.lines[r]) + " (data row " + std::to_string(r + 1) + "), column '" +
                       header[c] + "': '" + fields[c] + "' is not a finite number");
    }
    labels[r] = fields[label_col];
    if (labels[r].empty())
      fail(path, "line " + std::to_string(table.lines[r]) + ": empty label in column '" + options.label_column + "'");
  }

  ClassEncoding fitted, enc;
  if (fit_from) {
    fitted.num_classes = fit_from->data.num_classes;
    fitted.class_names = fit_from->class_names;
  }
  at::Tensor y = encode_labels(labels, table.lines, path, fit_from ? &fitted : nullptr, &enc);
  out.data.num_classes = enc.num_classes;
  out.class_names = std::move(enc.class_names);

  if (options.standardize) {
    if (fit_from) {
      if (!fit_from->mean.defined() || !fit_from->std.defined())
        fail(path, "fit_from has no standardisation statistics (it was read with standardize=false)");
      out.mean = fit_from->mean;
      out.std = fit_from->std;
    } else {
      out.mean = x.mean(0);
      out.std = x.std(0, /*unbiased=*/false);
      out.std.masked_fill_(out.std == 0, 1.0);  // constant columns: centre only
    }
    x = (x - out.mean) / out.std;
  }
  out.data.x = x;
  out.data.y = y;
  return out;
}

}  // namespace fl
