#include "common/util/json_text.h"
#include "strategies/registry.h"

#include <cstdio>
#include <cstdlib>
#include <map>
#include <stdexcept>

#include "common/util/text.h"

namespace fl {
namespace {

// Filled during static initialisation (one registrar per strategy file), read-only afterwards.
std::map<std::string, StrategySpec>& table() {
  static std::map<std::string, StrategySpec> t;
  return t;
}

std::string owner(const std::string& strategy) { return "strategy '" + strategy + "'"; }

// Markdown table cells: a literal '|' must be escaped.
std::string escape_pipes(const std::string& text) {
  std::string out;
  for (char c : text) out += c == '|' ? std::string("\\|") : std::string(1, c);
  return out;
}

}  // namespace

const ParamSpec* StrategySpec::param(const std::string& key) const {
  for (const auto& p : params)
    if (p.name == key) return &p;
  return nullptr;
}

StrategyRegistrar::StrategyRegistrar(StrategySpec spec) {
  if (spec.name.empty() || !spec.create || !table().emplace(spec.name, spec).second) {
    std::fprintf(stderr, "strategy registry: '%s' is registered twice or incomplete\n", spec.name.c_str());
    std::abort();
  }
}

std::vector<const StrategySpec*> strategy_specs() {
  std::vector<const StrategySpec*> out;
  for (const auto& kv : table()) out.push_back(&kv.second);
  return out;
}

std::vector<std::string> registered_strategies() {
  std::vector<std::string> names;
  for (const auto& kv : table()) names.push_back(kv.first);
  return names;
}

std::vector<std::string> mean_aggregation_strategies() {
  std::vector<std::string> names;
  for (const auto& kv : table())
    if (kv.second.mean_aggregation) names.push_back(kv.first);
  return names;
}

std::string strategy_names_text() { return join(registered_strategies(), " | "); }

const StrategySpec& strategy_spec(const std::string& name) {
  auto it = table().find(name);
  if (it == table().end())
    throw std::invalid_argument("unknown strategy '" + name + "' (known: " + strategy_names_text() + ")");
  return it->second;
}

StrategyParams complete_strategy_params(const std::string& strategy, const StrategyParams& given) {
  return complete_params(strategy_spec(strategy).params, given, owner(strategy));
}

std::unique_ptr<Strategy> create_strategy(const std::string& name, const StrategyParams& params) {
  const auto& spec = strategy_spec(name);
  return spec.create(complete_params(spec.params, params, owner(name)));
}

std::shared_ptr<const ClientAlgorithm> create_client_algorithm(const std::string& name) {
  const auto& spec = strategy_spec(name);
  return spec.client ? spec.client() : std::make_shared<ClientAlgorithm>();
}

void check_strategy_training(const std::string& name, const StrategyParams& params, const TrainOptions& training) {
  const auto& spec = strategy_spec(name);
  if (spec.check_training) spec.check_training(complete_params(spec.params, params, owner(name)), training);
}

std::string check_client_model(const std::string& name, const ModelDeclaration& run, const ModelDeclaration& client) {
  const auto& spec = strategy_spec(name);
  if (spec.accepts_model) {
    const std::string why = spec.accepts_model(run, client);
    return why.empty() ? why : "strategy '" + name + "' refuses client model " + client.describe() + ": " + why;
  }
  const std::string difference = client.layout_difference(run);
  if (difference.empty()) return {};
  return "strategy '" + name + "' combines the clients' models, so every client must train the run's model " +
         run.describe() + "; the client's model " + client.describe() + " differs (" + difference + ")";
}

std::pair<std::string, std::string> split_strategy_param(const std::string& entry) {
  const auto eq = entry.find('=');
  if (eq == std::string::npos || eq == 0)
    throw std::invalid_argument("--strategy-param '" + entry + "' is not of the form key=value");
  return {entry.substr(0, eq), entry.substr(eq + 1)};
}

StrategyParams parse_strategy_params(const std::string& strategy, const std::vector<std::string>& entries) {
  const auto& spec = strategy_spec(strategy);
  StrategyParams params;
  for (const auto& e : entries) {
    const auto [key, text] = split_strategy_param(e);
    if (!params.emplace(key, find_param(spec.params, key, owner(strategy)).parse(text, owner(strategy))).second)
      throw std::invalid_argument("--strategy-param '" + key + "' is given twice");
  }
  return params;
}

nlohmann::ordered_json strategy_params_to_json(const std::string& strategy, const StrategyParams& params) {
  const auto& spec = strategy_spec(strategy);
  auto j = nlohmann::ordered_json::object();
  for (const auto& [key, value] : params) {
    const ParamSpec* p = spec.param(key);
    j[key] = p ? nlohmann::ordered_json(p->to_json(value)) : nlohmann::ordered_json(value);
  }
  return j;
}

StrategyParams strategy_params_from_json(const std::string& strategy, const nlohmann::json& object) {
  const auto& spec = strategy_spec(strategy);
  if (!object.is_object())
    throw std::invalid_argument(owner(strategy) + ": parameters must be a JSON object, got " + json_for_message(object));
  StrategyParams params;
  for (const auto& [key, value] : object.items())
    params[key] = find_param(spec.params, key, owner(strategy)).from_json(value, owner(strategy));
  return params;
}

std::string strategies_text() {
  std::string out;
  for (const auto& kv : table()) {
    const auto& s = kv.second;
    out += s.name + "\n    " + s.description + "\n";
    for (const auto& p : s.params) {
      out += "    --strategy-param " + p.name + "=...";
      if (!p.flag.empty()) out += " (or --" + p.flag + ")";
      out += ": " + p.doc + " [" + p.describe() + "]\n";
    }
  }
  return out;
}

std::string strategies_markdown() {
  std::string out = "| name | what | parameters (`--strategy-param key=value`) |\n| --- | --- | --- |\n";
  for (const auto& kv : table()) {
    const auto& s = kv.second;
    std::string params;
    for (const auto& p : s.params) {
      if (!params.empty()) params += "; ";
      params += "`" + p.name + "` (" + p.describe() + (p.flag.empty() ? "" : "; also `--" + p.flag + "`") + "): " + p.doc;
    }
    out += "| `" + s.name + "` | " + escape_pipes(s.description) + " | " + escape_pipes(params) + " |\n";
  }
  return out;
}

}  // namespace fl
