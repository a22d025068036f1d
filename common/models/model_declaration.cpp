#include "common/models/model_declaration.h"

#include <algorithm>

#include <nlohmann/json.hpp>

#include <set>
#include <stdexcept>

#include "common/models/model.h"
#include "common/util/text.h"

namespace fl {

namespace {

struct DtypeName {
  c10::ScalarType type;
  const char* name;
};
constexpr DtypeName kDtypeNames[] = {
    {c10::ScalarType::Float, "float32"}, {c10::ScalarType::Half, "float16"}, {c10::ScalarType::BFloat16, "bfloat16"},
    {c10::ScalarType::Double, "float64"}, {c10::ScalarType::Long, "int64"}, {c10::ScalarType::Int, "int32"},
    {c10::ScalarType::Char, "int8"},     {c10::ScalarType::Byte, "uint8"}, {c10::ScalarType::Bool, "bool"},
};

std::string shape_text(const std::vector<int64_t>& shape) {
  std::vector<std::string> dims;
  for (int64_t d : shape) dims.push_back(std::to_string(d));
  return "[" + join(dims, ", ") + "]";
}

int64_t numel_of(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

// 50890 -> "50,890"
std::string grouped(int64_t n) {
  std::string s = std::to_string(n), out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (i > 0 && (s.size() - i) % 3 == 0) out += ',';
    out += s[i];
  }
  return out;
}

}  // namespace

std::string layout_dtype_name(c10::ScalarType t) {
  for (const auto& d : kDtypeNames)
    if (d.type == t) return d.name;
  throw std::invalid_argument(std::string("dtype ") + c10::toString(t) + " has no layout name");
}

c10::ScalarType parse_layout_dtype(const std::string& name) {
  std::vector<std::string> names;
  for (const auto& d : kDtypeNames) {
    if (name == d.name) return d.type;
    names.push_back(d.name);
  }
  throw std::invalid_argument("unknown dtype '" + name + "' (one of " + join(names, ", ") + ")");
}

std::string TensorLayout::describe() const {
  return "'" + name + "' " + layout_dtype_name(dtype) + " " + shape_text(shape);
}

std::vector<TensorLayout> ModelDeclaration::layout_of(const ModelState& state) {
  std::vector<TensorLayout> out;
  for (const auto& e : state.entries()) out.push_back({e.name, e.tensor.scalar_type(), e.tensor.sizes().vec()});
  return out;
}

ModelDeclaration ModelDeclaration::of(const Model& model) {
  ModelDeclaration d;
  d.architecture = model.spec().name;
  if (d.architecture == "mlp") d.hidden = model.spec().hidden;
  for (const auto& e : model.tensors())  // the model's own tensors: no copy of the weights (state() is one)
    d.layout.push_back({e.name, e.tensor.scalar_type(), e.tensor.sizes().vec()});
  return d;
}

ModelDeclaration ModelDeclaration::of_state(const std::string& architecture, const ModelState& state) {
  ModelDeclaration d;
  d.architecture = architecture;
  d.layout = layout_of(state);
  return d;
}

std::string tensor_shape_problem(const std::vector<int64_t>& shape) {
  constexpr int64_t kMax = int64_t{1} << 40;
  if (shape.size() > 16) return std::to_string(shape.size()) + " dimensions (at most 16)";
  int64_t span = 1;
  for (int64_t d : shape) {
    if (d < 0) return "a negative dimension";
    if (d > kMax) return "dimension " + std::to_string(d) + " (at most 2^40)";
    if (d > 1 && span > kMax / d) return "too many elements (more than 2^40)";
    span *= std::max<int64_t>(d, 1);
  }
  return "";
}

void ModelDeclaration::validate() const {
  if (architecture.empty()) throw std::invalid_argument("model declaration: no architecture");
  for (int64_t w : hidden)
    if (w <= 0) throw std::invalid_argument("model declaration: hidden width " + std::to_string(w) + " must be > 0");
  if (layout.empty()) throw std::invalid_argument("model declaration '" + architecture + "': no tensors in its layout");
  std::set<std::string> seen;
  for (size_t i = 0; i < layout.size(); ++i) {
    const auto& t = layout[i];
    if (t.name.empty()) throw std::invalid_argument("model declaration: layout entry " + std::to_string(i) + " has no name");
    if (!seen.insert(t.name).second)
      throw std::invalid_argument("model declaration: tensor '" + t.name + "' appears twice in the layout");
    if (auto why = tensor_shape_problem(t.shape); !why.empty())
      throw std::invalid_argument("model declaration: tensor '" + t.name + "' has " + why);
  }
}

std::string ModelDeclaration::layout_difference(const ModelDeclaration& other) const {
  const size_t n = std::min(layout.size(), other.layout.size());
  for (size_t i = 0; i < n; ++i)
    if (!(layout[i] == other.layout[i]))
      return "entry " + std::to_string(i) + ": " + layout[i].describe() + " where the other has " +
             other.layout[i].describe();
  if (layout.size() != other.layout.size())
    return std::to_string(layout.size()) + " tensors where the other has " + std::to_string(other.layout.size());
  return {};
}

const TensorLayout* ModelDeclaration::find(const std::string& name) const {
  for (const auto& t : layout)
    if (t.name == name) return &t;
  return nullptr;
}

std::string ModelDeclaration::describe() const {
  int64_t values = 0;
  for (const auto& t : layout) values += numel_of(t.shape);
  return architecture + (hidden.empty() ? "" : " " + shape_text(hidden)) + " (" + std::to_string(layout.size()) +
         " tensors, " + grouped(values) + " values)";
}

nlohmann::json ModelDeclaration::to_json() const {
  nlohmann::json entries = nlohmann::json::array();
  for (const auto& t : layout) entries.push_back({{"name", t.name}, {"dtype", layout_dtype_name(t.dtype)}, {"shape", t.shape}});
  return {{"architecture", architecture}, {"hidden", hidden}, {"layout", entries}};
}

ModelDeclaration ModelDeclaration::from_json(const nlohmann::json& j) {
  ModelDeclaration d;
  try {
    d.architecture = j.at("architecture").get<std::string>();
    d.hidden = j.value("hidden", std::vector<int64_t>{});
    for (const auto& e : j.at("layout"))
      d.layout.push_back({e.at("name").get<std::string>(), parse_layout_dtype(e.at("dtype").get<std::string>()),
                          e.at("shape").get<std::vector<int64_t>>()});
  } catch (const nlohmann::json::exception& e) {
    throw std::invalid_argument(std::string("model declaration: ") + e.what());
  }
  d.validate();
  return d;
}

}  // namespace fl
