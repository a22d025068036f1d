// NormClip: FedAvg over updates clipped to a norm bound the round itself sets, in two exchanges
// with each client:
//
//   exchange 1 ("fit"):   the client trains and reports only ||delta_k|| = ||w_k - w_global||,
//                         keeping its update;
//   server:               tau = the q-quantile (nearest rank) of the reported norms;
//   exchange 2 ("fit-2"): the clients that got through exchange 1 send
//                         w_global + delta_k * min(1, tau / ||delta_k||);
//   server:               the example-weighted average of those (FedAvg).
//
// Norm bounding is Sun et al.'s defence against model-replacement backdoors ("Can You Really
// Backdoor Federated Learning?", 2019); taking the bound from a quantile of the round's norms
// follows Andrew et al. ("Differentially Private Learning with Adaptive Clipping", 2021), here
// exact and without their privacy noise. A client that drops out between the exchanges is left
// out of the average; the bound stays what the norms of exchange 1 gave.
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "common/models/model_declaration.h"
#include "strategies/fedavg.h"
#include "strategies/registry.h"

namespace fl {

namespace {

constexpr const char* kNorm = "update_norm";   // exchange 1's metric
constexpr const char* kClipNorm = "clip_norm";  // exchange 2's task setting
// What a client keeps between the exchanges (personal state: it survives a fedclient restart).
constexpr const char* kBase = "normclip_base";
constexpr const char* kTrained = "normclip_trained";
constexpr const char* kExamples = "normclip_examples";

class NormClipClient : public ClientAlgorithm {
 public:
  ClientResult fit(const ClientTask& task, ClientContext& ctx) const override {
    ClientResult r = ClientAlgorithm::fit(task, ctx);
    r.metrics[kNorm] = (r.model - task.model).norm();
    ctx.personal[kBase] = task.model.clone();
    ctx.personal[kTrained] = std::move(r.model);
    ctx.personal[kExamples] = ModelState({{"n", torch::tensor({r.num_examples}, torch::kLong)}});
    r.model = ModelState();  // the update itself goes in exchange 2, clipped
    return r;
  }

  ClientResult exchange(const ClientTask& task, ClientContext& ctx) const override {
    if (task.phase != fit_phase_name(2)) return ClientAlgorithm::exchange(task, ctx);
    auto base = ctx.personal.find(kBase), trained = ctx.personal.find(kTrained), n = ctx.personal.find(kExamples);
    if (base == ctx.personal.end() || trained == ctx.personal.end() || n == ctx.personal.end())
      throw std::invalid_argument("normclip round " + std::to_string(task.round) +
                                  ": no trained update kept from exchange 1 (was the client's state lost?)");
    auto tau = task.config.find(kClipNorm);
    if (tau == task.config.end() || !(tau->second >= 0))
      throw std::invalid_argument("normclip: the task has no valid clip_norm");
    const ModelState delta = trained->second - base->second;
    const double norm = delta.norm();
    const double factor = norm > tau->second ? tau->second / norm : 1.0;
    ClientResult r;
    r.round = task.round;
    r.client_id = task.client_id;
    r.model = base->second.clone();
    r.model.add_(delta, factor);
    r.num_examples = n->second.at("n").item<int64_t>();
    r.metrics["clip_factor"] = factor;
    for (const char* key : {kBase, kTrained, kExamples}) ctx.personal.erase(key);
    return r;
  }
};

class NormClip : public FedAvg {
 public:
  explicit NormClip(double quantile) : quantile_(quantile) {}
  std::string name() const override { return "normclip"; }

  std::vector<ClientTask> configure_fit(int round, const std::vector<int>& clients) override {
    // The layout exchange 2's models must have (set once: check_result reads it from upload threads).
    if (layout_.layout.empty()) layout_ = ModelDeclaration::of_state(name(), global_);
    return FedAvg::configure_fit(round, clients);
  }

  // Exchange 1 sends only its norm; exchange 2 the clipped model, whole (its task carries no model).
  std::string check_result(const ClientTask& task, const ClientResult& result) const override {
    if (task.phase == kFitPhase) {
      if (!result.model.empty()) return "a model in exchange 1 (normclip's clients send only their update norm)";
      auto it = result.metrics.find(kNorm);
      if (it == result.metrics.end() || !(it->second >= 0)) return "no valid update_norm";
      return "";
    }
    const std::string d = layout_.layout_difference(ModelDeclaration::of_state(name(), result.model));
    return d.empty() ? "" : "the clipped model does not have the global model's layout: " + d;
  }

  std::vector<ClientTask> configure_fit_exchange(int round, int exchange,
                                                 const std::vector<ClientResult>& results) override {
    if (exchange != 1) return {};
    std::vector<double> norms;
    for (const auto& r : results) {
      auto it = r.metrics.find(kNorm);
      if (it == r.metrics.end() || !std::isfinite(it->second) || it->second < 0)
        throw std::invalid_argument("normclip round " + std::to_string(round) + ": client " +
                                    std::to_string(r.client_id) + " reported no valid update_norm");
      norms.push_back(it->second);
    }
    std::sort(norms.begin(), norms.end());
    const auto rank = static_cast<size_t>(std::ceil(quantile_ * static_cast<double>(norms.size())));
    bound_ = norms[std::max<size_t>(rank, 1) - 1];
    std::vector<ClientTask> tasks;
    for (const auto& r : results) {
      ClientTask t;
      t.client_id = r.client_id;
      t.config[kClipNorm] = bound_;
      tasks.push_back(std::move(t));
    }
    return tasks;
  }

  Metrics aggregate_mean(int round, ModelState mean, const std::vector<ClientResult>& results) override {
    Metrics m = FedAvg::aggregate_mean(round, std::move(mean), results);
    m[kClipNorm] = bound_;
    double clipped = 0;
    for (const auto& r : results) {
      auto it = r.metrics.find("clip_factor");
      clipped += it != r.metrics.end() && it->second < 1;
    }
    m["clipped"] = clipped;
    return m;
  }

 private:
  double quantile_;
  ModelDeclaration layout_;  // the global model's tensors: names, dtypes, shapes
  double bound_ = 0;  // this round's, from exchange 1 (recomputed when a restarted round replays it)
};

const StrategyRegistrar kNormClip{
    {"normclip",
     "FedAvg over updates clipped to the q-quantile of the round's update norms (two exchanges: norms, then "
     "clipped updates; Sun et al. 2019, Andrew et al. 2021)",
     {ParamSpec::number("quantile", 0.5, 0, 1, "which quantile of the update norms bounds them (1: no clipping)",
                        /*lo_open=*/true)},
     [](const StrategyParams& p) { return std::make_unique<NormClip>(p.at("quantile")); },
     [] { return std::make_shared<NormClipClient>(); }}};

}  // namespace

}  // namespace fl
