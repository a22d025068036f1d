#include "strategies/state_ops.h"

#include <torch/torch.h>

#include <cmath>
#include <set>
#include <stdexcept>

#include "common/engine/payload.h"
#include "common/io/safetensors.h"

namespace fl {
namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

bool is_statistic(const std::string& name) {
  return ends_with(name, ".running_mean") || ends_with(name, ".running_var") ||
         ends_with(name, ".num_batches_tracked") || name == "running_mean" || name == "running_var" ||
         name == "num_batches_tracked";
}

std::vector<std::string> statistic_names(const ModelState& s) {
  std::vector<std::string> out;
  for (const auto& e : s.entries())
    if (is_statistic(e.name)) out.push_back(e.name);
  return out;
}

std::vector<std::string> parameter_names(const ModelState& s) {
  std::vector<std::string> out;
  for (const auto& e : s.entries())
    if (!is_statistic(e.name)) out.push_back(e.name);
  return out;
}

std::vector<std::string> model_parameter_names(Model& model) {
  const ModelState state = model.state();
  const auto names = parameter_names(state);
  const auto params = model.parameters();
  bool ok = names.size() == params.size();
  for (size_t i = 0; ok && i < names.size(); ++i) ok = state.at(names[i]).sizes() == params[i].sizes();
  if (!ok)
    throw std::invalid_argument("model '" + model.spec().name + "': its " + std::to_string(params.size()) +
                                " parameters do not line up with the " + std::to_string(names.size()) +
                                " non-statistic state entries (buffers other than BatchNorm statistics?)");
  return names;
}

std::vector<std::string> batchnorm_names(const ModelState& s) {
  std::set<std::string> modules;
  const std::string key = ".running_mean";
  for (const auto& e : s.entries())
    if (ends_with(e.name, key)) modules.insert(e.name.substr(0, e.name.size() - key.size()));
  std::vector<std::string> out;
  for (const auto& e : s.entries()) {
    const auto dot = e.name.rfind('.');
    if (dot != std::string::npos && modules.count(e.name.substr(0, dot))) out.push_back(e.name);
  }
  return out;
}

std::vector<std::string> names_in_groups(const ModelState& s, const std::vector<std::string>& groups) {
  std::vector<std::string> out;
  for (const auto& e : s.entries())
    for (const auto& g : groups)
      if (e.name.compare(0, g.size() + 1, g + ".") == 0) {
        out.push_back(e.name);
        break;
      }
  return out;
}

std::vector<std::string> names_except(const ModelState& s, const std::vector<std::string>& exclude) {
  const std::set<std::string> ex(exclude.begin(), exclude.end());
  std::vector<std::string> out;
  for (const auto& e : s.entries())
    if (!ex.count(e.name)) out.push_back(e.name);
  return out;
}

std::vector<at::Tensor> float_blocks(const ModelState& s) {
  if (s.flat().defined()) return {s.flat()};
  std::vector<at::Tensor> out;
  for (const auto& e : s.entries())
    if (e.tensor.is_floating_point()) out.push_back(e.tensor);
  return out;
}

c10::Device device_of(const ModelState& s) { return s.empty() ? c10::Device(c10::kCPU) : s.entries().front().tensor.device(); }

std::string save_states(const std::string& strategy, const std::map<std::string, ModelState>& states,
                        const std::map<std::string, double>& numbers) {
  std::map<std::string, std::string> meta{{"strategy", strategy}};
  for (const auto& kv : numbers) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.17g", kv.second);  // exact round trip of a double
    meta["n." + kv.first] = buf;
  }
  std::map<std::string, ModelState> cpu;
  for (const auto& kv : states) cpu[kv.first] = kv.second.to(torch::kCPU);
  return to_safetensors_bytes(pack_payload(ModelState(), cpu), meta);
}

std::map<std::string, ModelState> load_states(const std::string& strategy, const std::string& blob,
                                              std::map<std::string, double>* numbers) {
  std::map<std::string, std::string> meta;
  ModelState packed = from_safetensors_bytes(blob, &meta, strategy + " state");
  auto it = meta.find("strategy");
  if (it == meta.end() || it->second != strategy)
    throw std::invalid_argument("load_state: the saved state belongs to strategy '" +
                                (it == meta.end() ? std::string("?") : it->second) + "', not '" + strategy + "'");
  ModelState model;
  std::map<std::string, ModelState> out;
  unpack_payload(packed, model, out);
  if (numbers)
    for (const auto& kv : meta)
      if (kv.first.rfind("n.", 0) == 0) (*numbers)[kv.first.substr(2)] = std::stod(kv.second);
  return out;
}

}  // namespace fl
