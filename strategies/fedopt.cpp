#include "strategies/fedopt.h"

#include "strategies/registry.h"

#include <torch/torch.h>

#include <stdexcept>

#include "strategies/state_ops.h"

namespace fl {
namespace {

// The round's example-weighted average, checked against the global layout; the global model
// follows the results onto their device.
ModelState average_for(const std::string& name, int round, ModelState& global, ModelState avg) {
  global.check_same_layout(avg, name + " round " + std::to_string(round));
  if (device_of(global) != device_of(avg)) global = global.to(device_of(avg));
  return avg;
}

// Moves a server state next to the model it updates, or starts it at zero.
void prepare(ModelState& state, const ModelState& like) {
  if (state.empty()) state = like.zeros_like();
  else if (device_of(state) != device_of(like)) state = state.to(device_of(like));
}

// Restores a saved server state, checked against the global model's layout.
ModelState restored(const std::string& name, const std::map<std::string, ModelState>& saved, const std::string& key,
                    const ModelState& global) {
  auto it = saved.find(key);
  if (it == saved.end()) return {};
  global.check_same_layout(it->second, name + " saved state '" + key + "'");
  return it->second.to(device_of(global));
}

}  // namespace

FedAvgM::FedAvgM(double server_lr, double server_momentum) : lr_(server_lr), momentum_(server_momentum) {
  if (!(server_lr > 0)) throw std::invalid_argument("fedavgm: server_lr must be > 0");
  if (!(server_momentum >= 0 && server_momentum < 1))
    throw std::invalid_argument("fedavgm: server_momentum must be in [0, 1)");
}

Metrics FedAvgM::aggregate_fit(int round, const std::vector<ClientResult>& results) {
  return aggregate_mean(round, weighted_average_of(results), results);
}

Metrics FedAvgM::aggregate_mean(int round, ModelState mean, const std::vector<ClientResult>& results) {
  ModelState avg = average_for(name(), round, global_, std::move(mean));
  prepare(velocity_, avg);
  ModelState next = avg.clone();
  torch::NoGradGuard no_grad;
  auto x = float_blocks(global_), a = float_blocks(avg), v = float_blocks(velocity_), n = float_blocks(next);
  for (size_t i = 0; i < x.size(); ++i) {
    v[i].mul_(momentum_).add_(x[i] - a[i]);  // v = momentum v + (x - avg)
    n[i].copy_(x[i] - lr_ * v[i]);
  }
  next.assign(avg.select(statistic_names(avg)));
  global_ = std::move(next);
  return {{"clients", static_cast<double>(results.size())}};
}

std::string FedAvgM::save_state() const {
  if (velocity_.empty()) return {};
  return save_states(name(), {{"velocity", velocity_}});
}

void FedAvgM::load_state(const std::string& blob) {
  velocity_ = {};
  if (blob.empty()) return;
  velocity_ = restored(name(), load_states(name(), blob), "velocity", global_);
}

FedOpt::FedOpt(Kind kind, double eta, double beta1, double beta2, double tau)
    : kind_(kind), eta_(eta), beta1_(beta1), beta2_(beta2), tau_(tau) {
  const std::string n = name();
  if (!(eta > 0)) throw std::invalid_argument(n + ": eta must be > 0");
  if (!(beta1 >= 0 && beta1 < 1)) throw std::invalid_argument(n + ": beta1 must be in [0, 1)");
  if (!(beta2 >= 0 && beta2 < 1)) throw std::invalid_argument(n + ": beta2 must be in [0, 1)");
  if (!(tau > 0)) throw std::invalid_argument(n + ": tau must be > 0");
}

std::string FedOpt::name() const {
  switch (kind_) {
    case Kind::adam: return "fedadam";
    case Kind::yogi: return "fedyogi";
    default: return "fedadagrad";
  }
}

Metrics FedOpt::aggregate_fit(int round, const std::vector<ClientResult>& results) {
  return aggregate_mean(round, weighted_average_of(results), results);
}

Metrics FedOpt::aggregate_mean(int round, ModelState mean, const std::vector<ClientResult>& results) {
  ModelState avg = average_for(name(), round, global_, std::move(mean));
  prepare(m_, avg);
  prepare(v_, avg);
  ModelState next = avg.clone();
  torch::NoGradGuard no_grad;
  auto x = float_blocks(global_), a = float_blocks(avg), m = float_blocks(m_), v = float_blocks(v_),
       n = float_blocks(next);
  for (size_t i = 0; i < x.size(); ++i) {
    const auto delta = a[i] - x[i];
    const auto d2 = delta * delta;
    m[i].mul_(beta1_).add_(delta, 1 - beta1_);
    switch (kind_) {
      case Kind::adam: v[i].mul_(beta2_).add_(d2, 1 - beta2_); break;
      case Kind::yogi: v[i].sub_(d2 * (v[i] - d2).sign(), 1 - beta2_); break;
      case Kind::adagrad: v[i].add_(d2); break;
    }
    n[i].copy_(x[i] + eta_ * m[i] / (v[i].sqrt() + tau_));
  }
  next.assign(avg.select(statistic_names(avg)));
  global_ = std::move(next);
  return {{"clients", static_cast<double>(results.size())}};
}

std::string FedOpt::save_state() const {
  if (m_.empty()) return {};
  return save_states(name(), {{"m", m_}, {"v", v_}});
}

void FedOpt::load_state(const std::string& blob) {
  m_ = {};
  v_ = {};
  if (blob.empty()) return;
  auto saved = load_states(name(), blob);
  m_ = restored(name(), saved, "m", global_);
  v_ = restored(name(), saved, "v", global_);
  if (m_.empty() != v_.empty()) throw std::invalid_argument(name() + ": saved state has only one of m and v");
}

namespace {

// Defaults follow Flower's (flwr.server.strategy).
std::vector<ParamSpec> fedopt_params(double beta1, bool with_beta2) {
  std::vector<ParamSpec> p{ParamSpec::number("eta", 0.1, 0, std::numeric_limits<double>::infinity(), "server learning rate", true),
                           ParamSpec::number("beta1", beta1, 0, 1, "server momentum", false, true)};
  if (with_beta2) p.push_back(ParamSpec::number("beta2", 0.99, 0, 1, "second-moment decay", false, true));
  p.push_back(ParamSpec::number("tau", 1e-9, 0, std::numeric_limits<double>::infinity(), "adaptivity (added to the root of v)", true));
  return p;
}

const StrategyRegistrar kFedAvgM{
    StrategySpec{"fedavgm", "FedAvgM (Hsu et al. 2019): server momentum on the average update",
     {ParamSpec::number("server_lr", 1.0, 0, std::numeric_limits<double>::infinity(), "server learning rate", true),
      ParamSpec::number("server_momentum", 0.9, 0, 1, "server momentum", false, true)},
     [](const StrategyParams& p) { return std::make_unique<FedAvgM>(p.at("server_lr"), p.at("server_momentum")); }}
        .aggregates_mean()};

const StrategyRegistrar kFedAdam{StrategySpec{"fedadam", "FedAdam (Reddi et al. 2021): Adam on the server over the average update",
                                  fedopt_params(0.9, true), [](const StrategyParams& p) {
                                    return std::make_unique<FedOpt>(FedOpt::Kind::adam, p.at("eta"), p.at("beta1"),
                                                                    p.at("beta2"), p.at("tau"));
                                  }}.aggregates_mean()};

const StrategyRegistrar kFedYogi{StrategySpec{"fedyogi", "FedYogi (Reddi et al. 2021): Yogi on the server over the average update",
                                  fedopt_params(0.9, true), [](const StrategyParams& p) {
                                    return std::make_unique<FedOpt>(FedOpt::Kind::yogi, p.at("eta"), p.at("beta1"),
                                                                    p.at("beta2"), p.at("tau"));
                                  }}.aggregates_mean()};

// Flower's FedAdagrad has no server momentum by default (beta1 = 0); beta2 plays no part in Adagrad.
const StrategyRegistrar kFedAdagrad{
    StrategySpec{"fedadagrad", "FedAdagrad (Reddi et al. 2021): Adagrad on the server over the average update",
     fedopt_params(0.0, false), [](const StrategyParams& p) {
       return std::make_unique<FedOpt>(FedOpt::Kind::adagrad, p.at("eta"), p.at("beta1"), 0.0, p.at("tau"));
     }}.aggregates_mean()};

}  // namespace

}  // namespace fl
