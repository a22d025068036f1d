#pragma once
// Small text helpers shared by error messages and help texts.
#include <cstdio>
#include <map>
#include <string>
#include <vector>

namespace fl {

// "a, b, c" (or with another separator: "a | b | c").
inline std::string join(const std::vector<std::string>& items, const std::string& sep = ", ") {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) out += (i == 0 ? "" : sep) + items[i];
  return out;
}

// " key 0.6123 key2 0.5000" (a leading space per entry; empty for no entries): metrics appended to
// a log line.
inline std::string metrics_text(const std::map<std::string, double>& metrics) {
  std::string out;
  char buf[32];
  for (const auto& [key, value] : metrics) {
    std::snprintf(buf, sizeof buf, "%.4f", value);
    out += " " + key + " " + buf;
  }
  return out;
}

}  // namespace fl
