#pragma once
// ParamSpec: one typed, documented parameter of a component (a strategy today). The component
// declares its parameters once, next to its factory; parsing (flags, YAML, JSON), validation,
// defaults and help text all come from that declaration.
//
// Values are held as doubles (StrategyParams): an integer is a whole number, an enum the index
// of its choice, a bool 0 or 1. Text and JSON use the readable form: an enum travels as its
// choice's name ("w2"), a bool as true/false; an enum's index is still accepted on input, so
// settings stored before the names existed keep working.
#include <nlohmann/json.hpp>

#include <limits>
#include <map>
#include <string>
#include <vector>

namespace fl {

enum class ParamKind { kNumber, kInteger, kEnum, kBool };

struct ParamSpec {
  std::string name;
  ParamKind kind = ParamKind::kNumber;
  double default_value = 0;
  // Range [min, max] for numbers and integers; min_open / max_open exclude an end.
  double min = -std::numeric_limits<double>::infinity();
  double max = std::numeric_limits<double>::infinity();
  bool min_open = false, max_open = false;
  std::vector<std::string> choices;  // enum: the names, index = value; the first is usually the default
  std::string doc;
  // A dedicated command-line flag (and YAML key) besides --strategy-param NAME=VALUE, e.g.
  // "mu" for FedProx's --mu or "fedcmd-distance"; empty for none.
  std::string flag;

  // Builders, so that a declaration reads as one line.
  static ParamSpec number(std::string name, double def, double lo, double hi, std::string doc, bool lo_open = false,
                          bool hi_open = false);
  static ParamSpec integer(std::string name, double def, double lo, double hi, std::string doc);
  static ParamSpec choice(std::string name, std::vector<std::string> choices, std::string doc, int def = 0);
  static ParamSpec boolean(std::string name, bool def, std::string doc);
  ParamSpec with_flag(std::string f) const;

  // Checks a value; throws std::invalid_argument "<owner>: parameter '<name>' = <v>: <why>".
  double check(double v, const std::string& owner) const;
  // "3", "0.5", an enum's name (or index), "true"/"false" -> the checked value.
  double parse(const std::string& text, const std::string& owner) const;
  double from_json(const nlohmann::json& v, const std::string& owner) const;
  nlohmann::json to_json(double v) const;
  std::string format(double v) const;  // the text form of to_json (names unquoted)
  // "integer in [1, 1048576], default 1" / "w2 | mean, default w2" ...
  std::string describe() const;
};

using ParamValues = std::map<std::string, double>;

// The whole text as one number ("1e-3", "inf"); false for "", "3x", "abc".
bool parse_number(const std::string& text, double* value);

// The spec named `key`; a key no spec declares throws std::invalid_argument naming it and
// listing the known ones.
const ParamSpec& find_param(const std::vector<ParamSpec>& specs, const std::string& key, const std::string& owner);

// The given values checked against `specs`, with every missing one set to its default. A key
// that no spec declares is an error naming it and listing the known ones.
ParamValues complete_params(const std::vector<ParamSpec>& specs, const ParamValues& given, const std::string& owner);

}  // namespace fl
