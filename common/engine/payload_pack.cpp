#include <stdexcept>
#include <vector>

#include "common/engine/payload.h"

namespace fl {
namespace {

void append(std::vector<ModelState::Entry>& out, const std::string& key, const ModelState& s) {
  if (key.empty() || key.find('/') != std::string::npos)
    throw std::invalid_argument("payload key '" + key + "' must be non-empty and contain no '/'");
  for (const auto& e : s.entries()) out.push_back({key + "/" + e.name, e.tensor});
}

}  // namespace

ModelState pack_payload(const ModelState& model, const std::map<std::string, ModelState>& extras) {
  std::vector<ModelState::Entry> entries;
  append(entries, "model", model);
  for (const auto& kv : extras) {
    if (kv.first == "model") throw std::invalid_argument("payload key 'model' is reserved for the model");
    append(entries, kv.first, kv.second);
  }
  return ModelState::share(std::move(entries));
}

// `model` and `extras` share `packed`'s storage where they can (read-only use).
void unpack_payload(const ModelState& packed, ModelState& model, std::map<std::string, ModelState>& extras) {
  std::map<std::string, std::vector<ModelState::Entry>> groups;
  std::vector<std::string> order;
  for (const auto& e : packed.entries()) {
    const auto slash = e.name.find('/');
    if (slash == std::string::npos || slash == 0 || slash + 1 == e.name.size())
      throw std::invalid_argument("payload entry '" + e.name + "' is not of the form <key>/<tensor name>");
    auto key = e.name.substr(0, slash);
    if (!groups.count(key)) order.push_back(key);
    groups[key].push_back({e.name.substr(slash + 1), e.tensor});
  }
  model = ModelState();
  extras.clear();
  for (const auto& key : order) {
    // The groups are runs of the packed buffer: regroup without copying.
    ModelState s = ModelState::share(std::move(groups[key]));
    if (key == "model") model = std::move(s);
    else extras[key] = std::move(s);
  }
}

bool valid_phase_name(const std::string& phase) {
  if (phase.empty() || phase.size() > 32) return false;
  for (char c : phase)
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-')) return false;
  return true;
}

std::string fit_phase_name(int exchange) {
  if (exchange < 1) throw std::invalid_argument("fit exchange numbers start at 1, got " + std::to_string(exchange));
  return exchange == 1 ? std::string(kFitPhase) : std::string(kFitPhase) + "-" + std::to_string(exchange);
}

}  // namespace fl
