#include "strategies/fedavg.h"

#include "strategies/registry.h"

#include <torch/torch.h>

#include <stdexcept>

namespace fl {

Metrics FedAvg::aggregate_fit(int round, const std::vector<ClientResult>& results) {
  return aggregate_mean(round, weighted_average_of(results), results);
}

Metrics FedAvg::aggregate_mean(int round, ModelState mean, const std::vector<ClientResult>& results) {
  global_.check_same_layout(mean, name() + " round " + std::to_string(round));
  global_ = std::move(mean);
  return {{"clients", static_cast<double>(results.size())}};
}

// The proximal term (mu/2)||w - w_global||^2 pulls the local weights towards the weights the
// client received this round (snapshotted once, on the training device).
TrainHooks FedProxClient::train_hooks(const ClientTask& task, ClientContext& ctx) const {
  auto it = task.config.find("mu");
  const double mu = it == task.config.end() ? 0.0 : it->second;
  TrainHooks hooks;
  if (mu <= 0) return hooks;
  // Snapshot of the global parameters as loaded (personal tensors included), on the device.
  auto params = ctx.model.parameters();
  std::vector<at::Tensor> anchor;
  anchor.reserve(params.size());
  for (const auto& p : params) anchor.push_back(p.detach().clone());
  hooks.extra_loss = [params, anchor, mu](Model&) {
    auto term = torch::zeros({}, params.front().options());
    for (size_t i = 0; i < params.size(); ++i) term = term + (params[i] - anchor[i]).pow(2).sum();
    return term * (mu / 2);
  };
  return hooks;
}

FedProx::FedProx(double mu) : mu_(mu) {
  if (!(mu >= 0)) throw std::invalid_argument("fedprox: mu must be >= 0");
}

std::vector<ClientTask> FedProx::configure_fit(int round, const std::vector<int>& clients) {
  auto tasks = FedAvg::configure_fit(round, clients);
  for (auto& t : tasks) t.config["mu"] = mu_;
  return tasks;
}


namespace {

const StrategyRegistrar kFedAvg{StrategySpec{"fedavg", "FedAvg (McMahan et al. 2017): the example-weighted average of the clients' models",
                                             {}, [](const StrategyParams&) { return std::make_unique<FedAvg>(); }}
                                    .aggregates_mean()};

const StrategyRegistrar kFedProx{
    StrategySpec{"fedprox", "FedProx (Li et al. 2020): FedAvg with a proximal term (mu/2)||w - w_global||^2 on the clients",
     {ParamSpec::number("mu", 0.01, 0, std::numeric_limits<double>::infinity(), "proximal coefficient").with_flag("mu")},
     [](const StrategyParams& p) { return std::make_unique<FedProx>(p.at("mu")); },
     [] { return std::make_shared<FedProxClient>(); }}
        .aggregates_mean()};

}  // namespace

}  // namespace fl
