#include "common/util/json_text.h"
#include "common/engine/param_spec.h"

#include <cmath>
#include <sstream>
#include <stdexcept>

#include "common/util/text.h"

namespace fl {
namespace {

std::string number_text(double v) {
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  std::ostringstream o;
  o.precision(15);
  o << v;
  return o.str();
}

}  // namespace

ParamSpec ParamSpec::number(std::string name, double def, double lo, double hi, std::string doc, bool lo_open,
                            bool hi_open) {
  ParamSpec p;
  p.name = std::move(name);
  p.kind = ParamKind::kNumber;
  p.default_value = def;
  p.min = lo;
  p.max = hi;
  p.min_open = lo_open;
  p.max_open = hi_open;
  p.doc = std::move(doc);
  return p;
}

ParamSpec ParamSpec::integer(std::string name, double def, double lo, double hi, std::string doc) {
  ParamSpec p = number(std::move(name), def, lo, hi, std::move(doc));
  p.kind = ParamKind::kInteger;
  return p;
}

ParamSpec ParamSpec::choice(std::string name, std::vector<std::string> choices, std::string doc, int def) {
  ParamSpec p;
  p.name = std::move(name);
  p.kind = ParamKind::kEnum;
  p.choices = std::move(choices);
  p.default_value = def;
  p.min = 0;
  p.max = static_cast<double>(p.choices.size()) - 1;
  p.doc = std::move(doc);
  return p;
}

ParamSpec ParamSpec::boolean(std::string name, bool def, std::string doc) {
  ParamSpec p;
  p.name = std::move(name);
  p.kind = ParamKind::kBool;
  p.default_value = def ? 1 : 0;
  p.min = 0;
  p.max = 1;
  p.doc = std::move(doc);
  return p;
}

ParamSpec ParamSpec::with_flag(std::string f) const {
  ParamSpec p = *this;
  p.flag = std::move(f);
  return p;
}

std::string ParamSpec::describe() const {
  const std::string def = ", default " + format(default_value);
  switch (kind) {
    case ParamKind::kEnum:
      return join(choices, " | ") + def;
    case ParamKind::kBool:
      return "true | false" + def;
    case ParamKind::kInteger:
    case ParamKind::kNumber: {
      std::string range = std::string(min_open ? "(" : "[") + number_text(min) + ", " + number_text(max) +
                          (max_open || std::isinf(max) ? ")" : "]");
      return std::string(kind == ParamKind::kInteger ? "integer" : "number") + " in " + range + def;
    }
  }
  return def;
}

double ParamSpec::check(double v, const std::string& owner) const {
  auto bad = [&](const std::string& why) {
    throw std::invalid_argument(owner + ": parameter '" + name + "' = " + number_text(v) + ": " + why);
  };
  if (!std::isfinite(v)) bad("must be a finite number");
  switch (kind) {
    case ParamKind::kEnum:
      if (v != std::floor(v) || v < 0 || v >= static_cast<double>(choices.size()))
        bad("must be one of " + join(choices, ", "));
      return v;
    case ParamKind::kBool:
      if (v != 0 && v != 1) bad("must be true or false");
      return v;
    case ParamKind::kInteger:
      if (v != std::floor(v)) bad("must be an integer (" + describe() + ")");
      [[fallthrough]];
    case ParamKind::kNumber:
      if (v < min || v > max || (min_open && v == min) || (max_open && v == max)) bad("must be " + describe());
      return v;
  }
  return v;
}

double ParamSpec::parse(const std::string& text, const std::string& owner) const {
  if (kind == ParamKind::kEnum) {
    for (size_t i = 0; i < choices.size(); ++i)
      if (choices[i] == text) return static_cast<double>(i);
  }
  if (kind == ParamKind::kBool) {
    if (text == "true") return 1;
    if (text == "false") return 0;
  }
  double v = 0;
  if (!parse_number(text, &v)) {
    std::string want = kind == ParamKind::kEnum   ? "one of " + join(choices, ", ")
                       : kind == ParamKind::kBool ? "true or false"
                                                  : "a number";
    throw std::invalid_argument(owner + ": parameter '" + name + "' = '" + text + "': must be " + want);
  }
  return check(v, owner);
}

double ParamSpec::from_json(const nlohmann::json& v, const std::string& owner) const {
  if (v.is_string()) {
    return parse(v.get<std::string>(), owner);  // an enum's name, or text from a command line
  } else if (v.is_boolean()) {
    if (kind == ParamKind::kBool) return v.get<bool>() ? 1 : 0;
  } else if (v.is_number()) {
    return check(v.get<double>(), owner);
  }
  throw std::invalid_argument(owner + ": parameter '" + printable(name) + "' = " + json_for_message(v) + ": must be " +
                              (kind == ParamKind::kEnum   ? "one of " + join(choices, ", ")
                               : kind == ParamKind::kBool ? std::string("true or false")
                                                          : std::string("a number")));
}

nlohmann::json ParamSpec::to_json(double v) const {
  switch (kind) {
    case ParamKind::kEnum: {
      const auto i = static_cast<size_t>(v);
      return i < choices.size() ? nlohmann::json(choices[i]) : nlohmann::json(v);
    }
    case ParamKind::kBool:
      return v != 0;
    case ParamKind::kInteger:
      return static_cast<int64_t>(v);
    case ParamKind::kNumber:
      return v;
  }
  return v;
}

std::string ParamSpec::format(double v) const {
  const auto j = to_json(v);
  return j.is_string() ? j.get<std::string>() : kind == ParamKind::kNumber ? number_text(v) : j.dump();
}

bool parse_number(const std::string& text, double* value) {
  size_t used = 0;
  try {
    *value = std::stod(text, &used);
  } catch (const std::exception&) {
    return false;
  }
  return !text.empty() && used == text.size();
}

const ParamSpec& find_param(const std::vector<ParamSpec>& specs, const std::string& key, const std::string& owner) {
  for (const auto& s : specs)
    if (s.name == key) return s;
  std::vector<std::string> names;
  for (const auto& s : specs) names.push_back(s.name);
  throw std::invalid_argument(owner + " has no parameter '" + key + "' (it takes: " +
                              (names.empty() ? std::string("none") : join(names, ", ")) + ")");
}

ParamValues complete_params(const std::vector<ParamSpec>& specs, const ParamValues& given, const std::string& owner) {
  ParamValues out;
  for (const auto& [key, value] : given) out[key] = find_param(specs, key, owner).check(value, owner);
  for (const auto& s : specs) out.emplace(s.name, s.default_value);
  return out;
}

}  // namespace fl
