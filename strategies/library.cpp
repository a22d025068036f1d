#include "strategies/library.h"

#include <memory>

#include "strategies/fedopt.h"
#include "strategies/personalized.h"
#include "strategies/registry.h"
#include "strategies/robust.h"
#include "strategies/scaffold.h"
#include "strategies/state_ops.h"

namespace fl {

// Defaults follow Flower's (flwr.server.strategy) where it has the strategy.
void register_library_strategies() {
  register_strategy("fedavgm", [](const StrategyParams& p) {
    require_known_params("fedavgm", p, {"server_lr", "server_momentum"});
    return std::make_unique<FedAvgM>(param_or(p, "server_lr", 1.0), param_or(p, "server_momentum", 0.9));
  });
  register_strategy("fedadam", [](const StrategyParams& p) {
    require_known_params("fedadam", p, {"eta", "beta1", "beta2", "tau"});
    return std::make_unique<FedOpt>(FedOpt::Kind::adam, param_or(p, "eta", 0.1), param_or(p, "beta1", 0.9),
                                    param_or(p, "beta2", 0.99), param_or(p, "tau", 1e-9));
  });
  register_strategy("fedyogi", [](const StrategyParams& p) {
    require_known_params("fedyogi", p, {"eta", "beta1", "beta2", "tau"});
    return std::make_unique<FedOpt>(FedOpt::Kind::yogi, param_or(p, "eta", 0.1), param_or(p, "beta1", 0.9),
                                    param_or(p, "beta2", 0.99), param_or(p, "tau", 1e-9));
  });
  // Flower's FedAdagrad has no server momentum (beta1 = 0); beta2 plays no part in Adagrad.
  register_strategy("fedadagrad", [](const StrategyParams& p) {
    require_known_params("fedadagrad", p, {"eta", "beta1", "tau"});
    return std::make_unique<FedOpt>(FedOpt::Kind::adagrad, param_or(p, "eta", 0.1), param_or(p, "beta1", 0.0), 0.0,
                                    param_or(p, "tau", 1e-9));
  });
  register_strategy("fedmedian", [](const StrategyParams& p) {
    require_known_params("fedmedian", p, {});
    return std::make_unique<FedMedian>();
  });
  register_strategy("trimmedmean", [](const StrategyParams& p) {
    require_known_params("trimmedmean", p, {"beta"});
    return std::make_unique<TrimmedMean>(param_or(p, "beta", 0.2));
  });
  register_strategy("krum", [](const StrategyParams& p) {
    require_known_params("krum", p, {"f"});
    return std::make_unique<Krum>(int_param("krum", p, "f", 0, 0, 1 << 20), 1, false);
  });
  register_strategy("multikrum", [](const StrategyParams& p) {
    require_known_params("multikrum", p, {"f", "m"});
    return std::make_unique<Krum>(int_param("multikrum", p, "f", 0, 0, 1 << 20),
                                  int_param("multikrum", p, "m", 0, 0, 1 << 20), true);
  });
  register_strategy("scaffold", [](const StrategyParams& p) {
    require_known_params("scaffold", p, {"server_lr"});
    return std::make_unique<Scaffold>(param_or(p, "server_lr", 1.0));
  });
  register_strategy("fedbn", [](const StrategyParams& p) {
    require_known_params("fedbn", p, {});
    return std::make_unique<FedBN>();
  });
  register_strategy("fedper", [](const StrategyParams& p) {
    require_known_params("fedper", p, {"k"});
    return std::make_unique<FedPer>(int_param("fedper", p, "k", 1, 1, 1 << 20));
  });
  register_strategy("fedrep", [](const StrategyParams& p) {
    require_known_params("fedrep", p, {"head_epochs"});
    return std::make_unique<FedRep>(int_param("fedrep", p, "head_epochs", 1, 1, 1 << 20));
  });
  register_strategy("local", [](const StrategyParams& p) {
    require_known_params("local", p, {});
    return std::make_unique<LocalOnly>();
  });
}

}  // namespace fl
