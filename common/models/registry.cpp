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

int64_t Model::num_parameters() {
  int64_t n = 0;
  for (const auto& p : parameters()) n += p.numel();
  return n;
}

}  // namespace fl
