#pragma once
// Small text helpers shared by error messages and help texts.
#include <string>
#include <vector>

namespace fl {

// "a, b, c" (or with another separator: "a | b | c").
inline std::string join(const std::vector<std::string>& items, const std::string& sep = ", ") {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) out += (i == 0 ? "" : sep) + items[i];
  return out;
}

}  // namespace fl
