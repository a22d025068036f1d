#include "strategies/personalized.h"

#include "strategies/registry.h"

#include <torch/torch.h>

#include <cmath>
#include <set>
#include <stdexcept>

#include "common/engine/round_engine.h"
#include "strategies/state_ops.h"

namespace fl {
namespace {

// A whole-number task parameter (it came over the wire: validated again here).
int task_int(const ClientTask& task, const std::string& strategy, const std::string& key, int lo) {
  auto it = task.config.find(key);
  if (it == task.config.end()) throw std::invalid_argument(strategy + " task has no '" + key + "' parameter");
  const double v = it->second;
  if (!(v == std::floor(v)) || v < lo || v > 1e6)
    throw std::invalid_argument(strategy + " task: " + key + " must be a whole number >= " + std::to_string(lo) +
                                ", got " + std::to_string(v));
  return static_cast<int>(v);
}

// Freezes a set of parameters for one training phase (no gradient flows into them, so the
// backward pass also stops early) and unfreezes them afterwards.
struct Freeze {
  explicit Freeze(std::vector<at::Tensor> params) : params_(std::move(params)) {
    for (auto& p : params_) p.requires_grad_(false);
  }
  ~Freeze() {
    for (auto& p : params_) p.requires_grad_(true);
  }
  std::vector<at::Tensor> params_;
};

}  // namespace

Metrics PartialFedAvg::aggregate_fit(int round, const std::vector<ClientResult>& results) {
  ModelState avg = weighted_average_of(results);
  if (!avg.empty()) {
    // Shared entries only; their names and shapes must be the global model's.
    ModelState next = global_.to(device_of(avg)).clone();
    try {
      next.assign(avg);
    } catch (const std::exception& e) {
      throw std::invalid_argument(name() + " round " + std::to_string(round) + ": " + e.what());
    }
    global_ = std::move(next);
  }
  return {{"clients", static_cast<double>(results.size())}, {"shared_tensors", static_cast<double>(avg.size())}};
}

void PersonalClient::finish(const ClientTask& task, ClientContext& ctx, ClientResult& result) const {
  const auto personal = personal_names(task, ctx.model, result.model);
  ctx.personal["model"] = result.model.select(personal);
  result.model = result.model.select(names_except(result.model, personal));
}


std::vector<std::string> FedBNClient::personal_names(const ClientTask&, Model&, const ModelState& s) const {
  return batchnorm_names(s);
}

FedPer::FedPer(int k) : k_(k) {
  if (k < 1) throw std::invalid_argument("fedper: k must be >= 1");
}

std::vector<ClientTask> FedPer::configure_fit(int round, const std::vector<int>& clients) {
  auto tasks = Strategy::configure_fit(round, clients);
  for (auto& t : tasks) t.config["k"] = k_;
  return tasks;
}


std::vector<std::string> FedPerClient::personal_names(const ClientTask& task, Model& model, const ModelState& s) const {
  const int k = task_int(task, "fedper", "k", 1);
  const auto groups = model.layer_groups();
  if (k >= static_cast<int>(groups.size()))
    throw std::invalid_argument("fedper: k=" + std::to_string(k) + " would keep every layer group local (model '" +
                                model.spec().name + "' has " + std::to_string(groups.size()) + ")");
  return names_in_groups(s, std::vector<std::string>(groups.end() - k, groups.end()));
}

FedRep::FedRep(int head_epochs) : head_epochs_(head_epochs) {
  if (head_epochs < 1) throw std::invalid_argument("fedrep: head_epochs must be >= 1");
}

std::vector<ClientTask> FedRep::configure_fit(int round, const std::vector<int>& clients) {
  auto tasks = Strategy::configure_fit(round, clients);
  for (auto& t : tasks) t.config["head_epochs"] = head_epochs_;
  return tasks;
}


std::vector<std::string> FedRepClient::personal_names(const ClientTask&, Model& model, const ModelState& s) const {
  const auto groups = model.layer_groups();
  if (groups.size() < 2)
    throw std::invalid_argument("fedrep: model '" + model.spec().name + "' has a single layer group (no body)");
  return names_in_groups(s, {groups.back()});
}

void check_fedrep_epochs(int head_epochs, const TrainOptions& options) {
  if (options.max_steps > 0)
    throw std::invalid_argument("fedrep counts epochs (head_epochs): use local epochs, not local steps");
  if (head_epochs >= options.epochs)
    throw std::invalid_argument("fedrep: head_epochs=" + std::to_string(head_epochs) +
                                " leaves no epoch for the body (local epochs: " + std::to_string(options.epochs) +
                                "); use more local epochs or --strategy-param head_epochs=N with N below them");
}

TrainResult FedRepClient::local_train(const ClientTask& task, ClientContext& ctx, const TrainOptions& options) const {
  const int head_epochs = task_int(task, "fedrep", "head_epochs", 1);
  check_fedrep_epochs(head_epochs, options);
  const auto names = model_parameter_names(ctx.model);
  const auto params = ctx.model.parameters();
  const auto head_prefix = ctx.model.layer_groups().back() + ".";
  std::vector<at::Tensor> head, body;
  for (size_t i = 0; i < names.size(); ++i)
    (names[i].compare(0, head_prefix.size(), head_prefix) == 0 ? head : body).push_back(params[i]);
  if (head.empty() || body.empty()) throw std::invalid_argument("fedrep: the model has no head or no body parameters");

  TrainOptions head_opt = options, body_opt = options;
  head_opt.epochs = head_epochs;
  body_opt.epochs = options.epochs - head_epochs;
  body_opt.seed = mix_seed(options.seed, 0xb0d7);  // the body phase shuffles differently
  TrainResult h, b;
  {
    Freeze frozen(body);
    TrainHooks hooks = train_hooks(task, ctx);
    hooks.trainable = head;
    h = LocalTrainer(head_opt).train(ctx.model, ctx.train, hooks);
  }
  {
    Freeze frozen(head);
    TrainHooks hooks = train_hooks(task, ctx);
    hooks.trainable = body;
    b = LocalTrainer(body_opt).train(ctx.model, ctx.train, hooks);
  }
  TrainResult r = std::move(b);
  const int64_t seen = h.samples_seen + r.samples_seen;
  r.loss = seen ? (h.loss * h.samples_seen + r.loss * r.samples_seen) / seen : 0;
  r.accuracy = seen ? (h.accuracy * h.samples_seen + r.accuracy * r.samples_seen) / seen : 0;
  r.samples_seen = seen;
  r.steps += h.steps;
  r.wall_s += h.wall_s;
  return r;
}

Metrics LocalOnly::aggregate_fit(int round, const std::vector<ClientResult>& results) {
  for (const auto& r : results)
    if (!r.model.empty())
      throw std::invalid_argument("local round " + std::to_string(round) + ": client " + std::to_string(r.client_id) +
                                  " sent model tensors (nothing is shared under 'local')");
  return {{"clients", static_cast<double>(results.size())}};
}


std::vector<std::string> LocalClient::personal_names(const ClientTask&, Model&, const ModelState& s) const {
  return s.names();
}

namespace {

const StrategyRegistrar kFedBN{{"fedbn", "FedBN (Li et al. 2021): BatchNorm layers stay on each client", {},
                                [](const StrategyParams&) { return std::make_unique<FedBN>(); },
                                [] { return std::make_shared<FedBNClient>(); }}};

const StrategyRegistrar kFedPer{{"fedper", "FedPer (Arivazhagan et al. 2019): the last k layer groups stay on each client",
                                 {ParamSpec::integer("k", 1, 1, 1 << 20, "personal layer groups, counted from the end")},
                                 [](const StrategyParams& p) { return std::make_unique<FedPer>(static_cast<int>(p.at("k"))); },
                                 [] { return std::make_shared<FedPerClient>(); }}};

const StrategyRegistrar kFedRep{
    {"fedrep", "FedRep (Collins et al. 2021): a personal head trained first, then the shared body",
     {ParamSpec::integer("head_epochs", 1, 1, 1 << 20, "epochs of the head phase (the body gets the rest)")},
     [](const StrategyParams& p) { return std::make_unique<FedRep>(static_cast<int>(p.at("head_epochs"))); },
     [] { return std::make_shared<FedRepClient>(); },
     [](const StrategyParams& p, const TrainOptions& t) { check_fedrep_epochs(static_cast<int>(p.at("head_epochs")), t); }}};

const StrategyRegistrar kLocal{{"local", "no federation: each client trains alone (the personalised floor)", {},
                                [](const StrategyParams&) { return std::make_unique<LocalOnly>(); },
                                [] { return std::make_shared<LocalClient>(); }}};

}  // namespace

}  // namespace fl
