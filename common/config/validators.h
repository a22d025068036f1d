#pragma once
// CLI11 validators with readable messages (CLI::PositiveNumber prints a 300-digit range and
// runs before conversion, so "abc" would be reported as out of range).
#include <CLI/CLI.hpp>

#include <string>

namespace fl {

// The value parses as a number and is > 0 (or >= 0 when zero is allowed).
inline CLI::Validator number_above_zero(bool allow_zero, const std::string& name) {
  return CLI::Validator(
      [allow_zero](std::string& v) -> std::string {
        try {
          size_t used = 0;
          const double d = std::stod(v, &used);
          if (used != v.size()) return "'" + v + "' is not a number";
          if (allow_zero ? d >= 0 : d > 0) return std::string();
          return std::string(allow_zero ? "must be >= 0" : "must be > 0") + ", got " + v;
        } catch (const std::exception&) {
          return "'" + v + "' is not a number";
        }
      },
      name);
}

inline CLI::Validator positive() { return number_above_zero(false, "POSITIVE"); }
inline CLI::Validator non_negative() { return number_above_zero(true, "NON-NEGATIVE"); }

}  // namespace fl
