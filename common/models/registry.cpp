#include <map>
#include <mutex>
#include <stdexcept>

#include "common/models/torch_model.h"

namespace fl {
namespace {

std::map<std::string, ModelFactory>& registry() {
  static std::map<std::string, ModelFactory> r;
  return r;
}
std::mutex& registry_mutex() {
  static std::mutex m;
  return m;
}
// Built-ins are registered explicitly (not by static initialisers, which a static library
// would drop when nothing references their object file).
void ensure_builtins() {
  static std::once_flag once;
  std::call_once(once, [] { register_builtin_models(); });
}

}  // namespace

void register_model(const std::string& name, ModelFactory factory) {
  std::lock_guard<std::mutex> lock(registry_mutex());
  registry()[name] = std::move(factory);
}

std::vector<std::string> registered_models() {
  ensure_builtins();
  std::lock_guard<std::mutex> lock(registry_mutex());
  std::vector<std::string> names;
  for (const auto& kv : registry()) names.push_back(kv.first);
  return names;
}

std::unique_ptr<Model> build_model(const ModelSpec& spec) {
  ensure_builtins();
  ModelFactory factory;
  {
    std::lock_guard<std::mutex> lock(registry_mutex());
    auto it = registry().find(spec.name);
    if (it == registry().end()) {
      std::string known;
      for (const auto& kv : registry()) known += (known.empty() ? "" : ", ") + kv.first;
      throw std::invalid_argument("unknown model '" + spec.name + "' (known: " + known + ")");
    }
    factory = it->second;
  }
  if (spec.num_classes < 2) throw std::invalid_argument("model: num_classes must be >= 2");
  for (int64_t d : spec.input_shape)
    if (d <= 0) throw std::invalid_argument("model: input_shape dimensions must be positive");
  return factory(spec);
}

ModelState Model::state() const { return ModelState(tensors()); }

void Model::load_state(const ModelState& s) {
  const auto mine = tensors();
  ModelState::check_layout(mine, s, "load_state(" + (spec_.path.empty() ? spec_.name : spec_.path) + ")");
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < mine.size(); ++i) const_cast<at::Tensor&>(mine[i].tensor).copy_(s.entries()[i].tensor);
}

void Model::assign_state(const ModelState& part) {
  const auto mine = tensors();
  std::map<std::string, const at::Tensor*> by_name;
  for (const auto& e : mine) by_name[e.name] = &e.tensor;
  // Every entry is checked before any is copied: a refused part leaves the model as it was.
  std::vector<std::pair<const at::Tensor*, const at::Tensor*>> copies;
  for (const auto& e : part.entries()) {
    const std::string what = "assign_state(" + spec_.name + "): tensor '" + e.name + "'";
    auto it = by_name.find(e.name);
    if (it == by_name.end()) throw std::invalid_argument(what + " is not one of the model's");
    const at::Tensor& to = *it->second;
    if (to.sizes() != e.tensor.sizes() || to.scalar_type() != e.tensor.scalar_type())
      throw std::invalid_argument(what + " has shape " + c10::str(e.tensor.sizes()) + " " +
                                  c10::toString(e.tensor.scalar_type()) + ", expected " + c10::str(to.sizes()) + " " +
                                  c10::toString(to.scalar_type()));
    copies.emplace_back(&to, &e.tensor);
  }
  torch::NoGradGuard no_grad;
  for (const auto& [to, from] : copies) const_cast<at::Tensor&>(*to).copy_(*from);
}

int64_t Model::num_parameters() {
  int64_t n = 0;
  for (const auto& p : parameters()) n += p.numel();
  return n;
}

}  // namespace fl
