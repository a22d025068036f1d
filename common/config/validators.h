#pragma once
// CLI11 validators with readable messages (CLI::PositiveNumber prints a 300-digit range and
// runs before conversion, so "abc" would be reported as out of range).
#include <CLI/CLI.hpp>

#include <cstdio>
#include <string>

namespace fl {

// The value parses as a number, is > 0 (or >= 0 when zero is allowed) and at most `most`
// (durations and sizes that are converted to integer milliseconds or bytes: a bound keeps the
// conversion from overflowing).
inline CLI::Validator number_above_zero(bool allow_zero, const std::string& name, double most = 1e300) {
  return CLI::Validator(
      [allow_zero, most](std::string& v) -> std::string {
        try {
          size_t used = 0;
          const double d = std::stod(v, &used);
          if (used != v.size()) return "'" + v + "' is not a number";
          if ((allow_zero ? d >= 0 : d > 0) && d <= most) return std::string();
          std::string want = allow_zero ? "must be >= 0" : "must be > 0";
          if (most < 1e300) {
            char buf[32];
            std::snprintf(buf, sizeof buf, "%.10g", most);
            want += std::string(" and <= ") + buf;
          }
          return want + ", got " + v;
        } catch (const std::exception&) {
          return "'" + v + "' is not a number";
        }
      },
      name);
}

inline CLI::Validator positive(double most = 1e300) { return number_above_zero(false, "POSITIVE", most); }
inline CLI::Validator non_negative(double most = 1e300) { return number_above_zero(true, "NON-NEGATIVE", most); }
// Durations in seconds that become milliseconds: up to a year.
constexpr double kMaxSeconds = 366.0 * 24 * 3600;

}  // namespace fl
