#include "strategies/registry.h"

#include <cmath>

#include <map>
#include <mutex>
#include <stdexcept>

#include "strategies/fedavg.h"
#include "strategies/fedcmd.h"
#include "strategies/library.h"

namespace fl {
namespace {

std::map<std::string, StrategyFactory>& table() {
  static std::map<std::string, StrategyFactory> t;
  return t;
}
std::mutex& table_mutex() {
  static std::mutex m;
  return m;
}

void register_builtins() {
  register_strategy("fedavg", [](const StrategyParams& p) {
    require_known_params("fedavg", p, {});
    return std::make_unique<FedAvg>();
  });
  register_strategy("fedprox", [](const StrategyParams& p) {
    require_known_params("fedprox", p, {"mu"});
    return std::make_unique<FedProx>(param_or(p, "mu", 0.01));
  });
  register_strategy("fedcmd", [](const StrategyParams& p) {
    require_known_params("fedcmd", p, {"rho", "distance", "first_layer", "delta", "head", "body"});
    const double d = param_or(p, "distance", 0), first = param_or(p, "first_layer", -1), delta = param_or(p, "delta", 0),
                 head = param_or(p, "head", 0), body = param_or(p, "body", 0);
    if (d != 0 && d != 1) throw std::invalid_argument("fedcmd: distance must be 0 (w2) or 1 (mean), got " + std::to_string(d));
    if (delta != 0 && delta != 1 && delta != 2)
      throw std::invalid_argument("fedcmd: delta must be 0 (from the shared l*), 1 (this round's steps) or 2 (from "
                                  "the initial l*), got " + std::to_string(delta));
    if (head != 0 && head != 1 && head != 2)
      throw std::invalid_argument("fedcmd: head must be 0 (Phi over the round, the paper), 1 (softmax over all "
                                  "clients, the public code) or 2 (the round's average), got " + std::to_string(head));
    if (body != 0 && body != 1)
      throw std::invalid_argument("fedcmd: body must be 0 (average over the round, the paper) or 1 (over every "
                                  "client's latest upload), got " + std::to_string(body));
    if (first != std::floor(first) || first < -1 || first > 1000)
      throw std::invalid_argument("fedcmd: first_layer must be an integer >= 0 (or -1: after the last convolution), got " +
                                  std::to_string(first));
    return std::make_unique<FedCmd>(param_or(p, "rho", 0.1), d == 0 ? FedCmdDistance::kW2 : FedCmdDistance::kMean,
                                    static_cast<int>(first), static_cast<FedCmdDelta>(static_cast<int>(delta)),
                                    static_cast<FedCmdHead>(static_cast<int>(head)),
                                    body == 0 ? FedCmdBody::kRound : FedCmdBody::kPopulation);
  });
  register_library_strategies();
}

void ensure_builtins() {
  static std::once_flag once;
  std::call_once(once, register_builtins);
}

}  // namespace

void register_strategy(const std::string& name, StrategyFactory factory) {
  std::lock_guard<std::mutex> lock(table_mutex());
  table()[name] = std::move(factory);
}

std::vector<std::string> registered_strategies() {
  ensure_builtins();
  std::lock_guard<std::mutex> lock(table_mutex());
  std::vector<std::string> names;
  for (const auto& kv : table()) names.push_back(kv.first);
  return names;
}

std::unique_ptr<Strategy> create_strategy(const std::string& name, const StrategyParams& params) {
  ensure_builtins();
  StrategyFactory factory;
  {
    std::lock_guard<std::mutex> lock(table_mutex());
    auto it = table().find(name);
    if (it == table().end()) {
      std::string known;
      for (const auto& kv : table()) known += (known.empty() ? "" : ", ") + kv.first;
      throw std::invalid_argument("unknown strategy '" + name + "' (known: " + known + ")");
    }
    factory = it->second;
  }
  return factory(params);
}

double param_or(const StrategyParams& params, const std::string& key, double fallback) {
  auto it = params.find(key);
  return it == params.end() ? fallback : it->second;
}

void require_known_params(const std::string& strategy, const StrategyParams& params,
                          const std::vector<std::string>& known) {
  for (const auto& kv : params) {
    bool ok = false;
    for (const auto& k : known) ok |= kv.first == k;
    if (!ok) {
      std::string list;
      for (const auto& k : known) list += (list.empty() ? "" : ", ") + k;
      throw std::invalid_argument("strategy '" + strategy + "' has no parameter '" + kv.first + "' (it takes: " +
                                  (list.empty() ? "none" : list) + ")");
    }
  }
}

StrategyParams parse_strategy_params(const std::vector<std::string>& entries) {
  StrategyParams params;
  for (const auto& e : entries) {
    const auto eq = e.find('=');
    if (eq == std::string::npos || eq == 0)
      throw std::invalid_argument("--strategy-param '" + e + "' is not of the form key=value");
    const std::string key = e.substr(0, eq), text = e.substr(eq + 1);
    size_t used = 0;
    double value = 0;
    try {
      value = std::stod(text, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (text.empty() || used != text.size() || !std::isfinite(value))
      throw std::invalid_argument("--strategy-param '" + e + "': '" + text + "' is not a finite number");
    if (!params.emplace(key, value).second)
      throw std::invalid_argument("--strategy-param '" + key + "' is given twice");
  }
  return params;
}

StrategyParams strategy_params_from_flags(const std::string& strategy, const std::vector<std::string>& entries,
                                          double mu) {
  auto params = parse_strategy_params(entries);
  if (strategy == "fedprox" && !params.count("mu")) params["mu"] = mu;
  return params;
}

}  // namespace fl
