#pragma once
// CLI11 validators with readable messages (CLI::PositiveNumber prints a 300-digit range and
// runs before conversion, so "abc" would be reported as out of range).
#include <CLI/CLI.hpp>

#include <string>

namespace fl {

// The value parses as a number and is > 0 (or >= 0 for non_negative()).
inline CLI::Validator positive() {
  return CLI::Validator(
      [](std::string& v) -> std::string {
        try {
          size_t used = 0;
          const double d = std::stod(v, &used);
          if (used != v.size()) return "'" + v + "' is not a number";
          return d > 0 ? std::string() : "must be > 0, got " + v;
        } catch (const std::exception&) {
          return "'" + v + "' is not a number";
        }
      },
      "POSITIVE");
}

inline CLI::Validator non_negative() {
  return CLI::Validator(
      [](std::string& v) -> std::string {
        try {
          size_t used = 0;
          const double d = std::stod(v, &used);
          if (used != v.size()) return "'" + v + "' is not a number";
          return d >= 0 ? std::string() : "must be >= 0, got " + v;
        } catch (const std::exception&) {
          return "'" + v + "' is not a number";
        }
      },
      "NON-NEGATIVE");
}

}  // namespace fl
