#pragma once
// The strategy registry: the one list of strategies. Each strategy's own file declares it (a
// StrategySpec: name, one-line description, typed parameters, the server factory, the client
// half, and the training settings it refuses) with a StrategyRegistrar; nothing else names the
// strategies. Help texts, `fedsim strategies`, `fedctl strategies`, the README table and every
// validation of strategy parameters come from here.
//
// Adding a strategy is one new file in strategies/: the library is linked whole
// (fl_strategies_all), so a file's registrar runs even though nothing references it.
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "common/engine/param_spec.h"
#include "common/engine/strategy.h"
#include "common/models/model_declaration.h"

namespace fl {

struct StrategySpec {
  std::string name;
  std::string description;  // one line
  std::vector<ParamSpec> params;
  // The server half, from parameters that complete_params has checked and completed.
  std::function<std::unique_ptr<Strategy>(const StrategyParams&)> create;
  // The client half (a client builds only this); null: the default ClientAlgorithm (FedAvg's).
  std::function<std::shared_ptr<const ClientAlgorithm>()> client = nullptr;
  // Refuses training settings the strategy cannot work with, before round 1, by throwing
  // std::invalid_argument with the reason (FedRep: head_epochs must be below the local
  // epochs); null: any settings do.
  std::function<void(const StrategyParams&, const TrainOptions&)> check_training = nullptr;
  // Which client models the strategy can train with, given the run's model: "" accepts, else
  // the reason it refuses. Null (most strategies: they combine the clients' models or parts of
  // them): a client must train the run's model, layout for layout.
  std::function<std::string(const ModelDeclaration& run, const ModelDeclaration& client)> accepts_model = nullptr;
  // Whether the server's new model depends on the clients' results only through the
  // example-weighted mean of their whole models (FedAvg, FedProx, FedAvgM, FedAdam, ...): then
  // the run's differential privacy (--dp) may clip and noise what goes into that mean.
  bool mean_aggregation = false;

  // For a registrar: `StrategySpec{...}.aggregates_mean()`.
  StrategySpec aggregates_mean() && {
    mean_aggregation = true;
    return std::move(*this);
  }

  const ParamSpec* param(const std::string& name) const;
};

// Registers at static-initialisation time; a second strategy of the same name aborts the program.
struct StrategyRegistrar {
  explicit StrategyRegistrar(StrategySpec spec);
};

// Every registered strategy, by name.
std::vector<const StrategySpec*> strategy_specs();
std::vector<std::string> registered_strategies();
// The strategies whose spec says mean_aggregation (those --dp works with).
std::vector<std::string> mean_aggregation_strategies();
// Unknown names throw std::invalid_argument listing the known ones.
const StrategySpec& strategy_spec(const std::string& name);

// Checks `given` against the strategy's parameters and fills in the defaults; unknown keys and
// out-of-range values throw std::invalid_argument naming the strategy, the key and the value.
StrategyParams complete_strategy_params(const std::string& strategy, const StrategyParams& given);
std::unique_ptr<Strategy> create_strategy(const std::string& name, const StrategyParams& params = {});
std::shared_ptr<const ClientAlgorithm> create_client_algorithm(const std::string& name);
// The strategy's check_training (the parameters completed first).
void check_strategy_training(const std::string& name, const StrategyParams& params, const TrainOptions& training);
// Whether a client declaring `client` may join a run of `run`'s model under this strategy: ""
// when it may, else the reason (naming the strategy, both models and their first difference).
std::string check_client_model(const std::string& name, const ModelDeclaration& run, const ModelDeclaration& client);

// One "key=value" entry split in two; a missing '=' or an empty key is an error naming the entry.
std::pair<std::string, std::string> split_strategy_param(const std::string& entry);
// "key=value" entries (--strategy-param, repeatable; a YAML list). The value is parsed by the
// parameter's kind (enum names, true/false, numbers). A missing '=', a repeated key or a bad
// value is an error naming the entry.
StrategyParams parse_strategy_params(const std::string& strategy, const std::vector<std::string>& entries);
// JSON object <-> parameters (enums as their names); from_json checks like complete_strategy_params.
nlohmann::ordered_json strategy_params_to_json(const std::string& strategy, const StrategyParams& params);
StrategyParams strategy_params_from_json(const std::string& strategy, const nlohmann::json& object);

// "fedavg | fedprox | ..." for a --strategy help text.
std::string strategy_names_text();
// Every strategy with its description and parameters, for `fedsim strategies` / `fedctl strategies`.
std::string strategies_text();
// The README's table of strategies (a test keeps the README equal to it).
std::string strategies_markdown();

}  // namespace fl
