#pragma once
// ModelDeclaration: what a client says it trains when it registers: the architecture (a model
// registry name and its widths) and the layout of its state (every entry's name, dtype and
// shape). The coordinator keeps it with the client record. The run's strategy decides whether
// the client may take part (StrategySpec::accepts_model), and the client's uploads are checked
// against it. A run may so mix architectures when its strategy exchanges something every model
// produces (feddistill: per-label logits).
#include <c10/core/ScalarType.h>

#include <nlohmann/json_fwd.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace fl {

class Model;
class ModelState;

// Why a tensor shape from outside (a payload header, a declaration) cannot be built, or "":
// at most 16 dimensions, each in [0, 2^40], and the product of the non-zero ones at most 2^40
// elements (a zero beside huge dimensions still has strides that must not overflow).
std::string tensor_shape_problem(const std::vector<int64_t>& shape);

struct TensorLayout {
  std::string name;
  c10::ScalarType dtype = c10::ScalarType::Float;
  std::vector<int64_t> shape;
  bool operator==(const TensorLayout& o) const { return name == o.name && dtype == o.dtype && shape == o.shape; }
  // "fc1.weight float32 [64, 784]"
  std::string describe() const;
};

struct ModelDeclaration {
  std::string architecture;          // model registry name: cnn, mlp, lenet5, ...
  std::vector<int64_t> hidden;       // mlp's hidden widths (empty for the other architectures)
  std::vector<TensorLayout> layout;  // the model's state entries, in order

  // The declaration of a built model: its spec's name and widths, its state's layout.
  static ModelDeclaration of(const Model& model);
  // A declaration of `architecture` with `state`'s layout (no model built).
  static ModelDeclaration of_state(const std::string& architecture, const ModelState& state);
  static std::vector<TensorLayout> layout_of(const ModelState& state);

  // Throws std::invalid_argument naming what is wrong: no architecture, an empty layout, an
  // entry without a name or named twice, a negative dimension, a hidden width <= 0.
  void validate() const;
  // "" when the two layouts agree entry by entry; else the first difference, e.g.
  // "entry 1: 'fc1.weight' float32 [64, 784] where the other has 'conv1.weight' float32 [32, 1, 5, 5]".
  std::string layout_difference(const ModelDeclaration& other) const;
  // The entry named `name`, or nullptr.
  const TensorLayout* find(const std::string& name) const;
  // "mlp [64] (4 tensors, 50,890 values)"
  std::string describe() const;

  // {"architecture": "mlp", "hidden": [64], "layout": [{"name":..., "dtype": "float32", "shape": [...]}]}
  nlohmann::json to_json() const;
  // Reverses to_json and validates; throws std::invalid_argument naming the bad field.
  static ModelDeclaration from_json(const nlohmann::json& j);
};

// "float32", "int64", ... (the names to_json writes); throws std::invalid_argument for others.
std::string layout_dtype_name(c10::ScalarType t);
c10::ScalarType parse_layout_dtype(const std::string& name);

}  // namespace fl
