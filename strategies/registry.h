#pragma once
// Strategies by name. Built-ins are registered explicitly here (static initialisers in a
// static library are dropped when nothing references their object file).
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "common/engine/strategy.h"

namespace fl {

using StrategyFactory = std::function<std::unique_ptr<Strategy>(const StrategyParams&)>;
void register_strategy(const std::string& name, StrategyFactory factory);
// Unknown names and unknown or out-of-range parameters are errors naming them.
std::unique_ptr<Strategy> create_strategy(const std::string& name, const StrategyParams& params = {});
std::vector<std::string> registered_strategies();

// Reads a parameter with a default; `check` rejects out-of-range values (message names it).
double param_or(const StrategyParams& params, const std::string& key, double fallback);
// Throws when params holds a key not in `known` (e.g. a typo: "mu " or "mue").
void require_known_params(const std::string& strategy, const StrategyParams& params,
                          const std::vector<std::string>& known);
// Parses "key=value" entries (fedsim/fedcoord --strategy-param, repeatable; a YAML list) into
// parameters. A missing '=', an empty key, a repeated key or a non-numeric or non-finite value
// is an error naming the entry.
StrategyParams parse_strategy_params(const std::vector<std::string>& entries);
// What a program's flags give: the --strategy-param entries, with --mu as FedProx's shortcut.
StrategyParams strategy_params_from_flags(const std::string& strategy, const std::vector<std::string>& entries,
                                          double mu);

}  // namespace fl
