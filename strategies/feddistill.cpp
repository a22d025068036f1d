// FedDistill: Federated Distillation (Jeong et al. 2018, "Communication-Efficient On-Device
// Machine Learning: Federated Distillation and Augmentation under Non-IID Private Data").
// Clients never share weights: each keeps a model of its own,
// of any architecture with C outputs, so a run may mix architectures. What travels is, per
// label, the logits the models give their training examples of that label:
//
//   client k, after local training:  s_k[c] = sum of f_k(x) over its examples with label c (C x C),
//                                    n_k[c] = their number (C)
//   server:                          g[c] = sum_k s_k[c] / sum_k n_k[c]   (labels nobody has: none)
//   client k, next round:            loss = CE(f_k(x), y)
//                                      + lambda * T^2 * KL(softmax(g[y] / T) || softmax(f_k(x) / T))
//                                    averaged over the batch's examples whose label has a g[y]
//
// The distillation term is Hinton et al.'s (2015), the global per-label logits as the teacher.
// PFLlib's FD uses the squared error between raw logits instead; with the learning rates our
// runs use (0.05, momentum 0.9) it diverged (the unbounded logits' gradients), where the KL
// term, whose gradient is bounded by 1/T per logit, did not.
//
// The per-label sums are those of the trained model, in one pass over the local data after
// training (the paper accumulates them during training, while the model still changes). The
// server weights each client's logits by its examples of the label (the paper: by client).
// The client's model is its personal state: kept across rounds (and fedclient restarts), never
// sent; federated evaluation measures it, and the server has no global model to evaluate.
#include <torch/torch.h>

#include <stdexcept>

#include "common/engine/strategy.h"
#include "strategies/registry.h"

namespace fl {

namespace {

constexpr const char* kLogits = "logits";   // the tensors' key in tasks and results
constexpr const char* kSums = "sums";       // result: per-label logit sums (C x C)
constexpr const char* kCounts = "counts";   // result: per-label example counts (C, int64)
constexpr const char* kMean = "mean_logits";     // task: the global per-label mean logits (C x C)
constexpr const char* kLabelCounts = "label_counts";  // task: the examples behind each row (C, int64)
constexpr const char* kLambda = "lambda";
constexpr const char* kTemperature = "temperature";

// Per-label sums of the model's logits over `data`, and the examples per label.
ModelState per_label_logits(Model& model, const TensorDataset& data) {
  torch::NoGradGuard no_grad;
  model.train(false);
  at::Tensor sums, counts;
  const int64_t n = data.size();
  for (int64_t start = 0; start < n; start += 1024) {
    const int64_t bs = std::min<int64_t>(1024, n - start);
    auto logits = model.forward(data.x.narrow(0, start, bs)).to(torch::kFloat);
    auto y = data.y.narrow(0, start, bs);
    if (!sums.defined()) {
      sums = torch::zeros({logits.size(1), logits.size(1)}, logits.options());
      counts = torch::zeros({logits.size(1)}, logits.options().dtype(torch::kLong));
    }
    sums.index_add_(0, y, logits);
    counts.index_add_(0, y, torch::ones_like(y, y.options().dtype(torch::kLong)));
  }
  model.train(true);
  if (!sums.defined()) throw std::invalid_argument("feddistill: the client has no training examples");
  return ModelState({{kSums, sums}, {kCounts, counts}});
}

class FedDistillClient : public ClientAlgorithm {
 protected:
  TrainHooks train_hooks(const ClientTask& task, ClientContext& ctx) const override {
    TrainHooks hooks;
    auto it = task.tensors.find(kLogits);
    if (it == task.tensors.end()) return hooks;  // round 1: nothing to distil from yet
    const auto setting = [&](const char* key, double def) {
      auto v = task.config.find(key);
      return v == task.config.end() ? def : v->second;
    };
    const double lambda = setting(kLambda, 1.0), t = setting(kTemperature, 1.0);
    if (!(t > 0)) throw std::invalid_argument("feddistill: temperature must be > 0");
    const auto device = ctx.model.device();
    const at::Tensor mean = it->second.at(kMean).to(device, torch::kFloat);
    const at::Tensor known = it->second.at(kLabelCounts).to(device).gt(0).to(torch::kFloat);
    if (mean.dim() != 2 || mean.size(0) != mean.size(1) || known.size(0) != mean.size(0))
      throw std::invalid_argument("feddistill: the task's mean logits are " + c10::str(mean.sizes()) +
                                  ", not C x C with C label counts");
    // The teacher's distribution for each label, once.
    const at::Tensor teacher_log = torch::log_softmax(mean / t, 1);
    const at::Tensor teacher = teacher_log.exp();
    hooks.output_loss = [teacher, teacher_log, known, lambda, t](const at::Tensor& logits, const at::Tensor& y) {
      if (logits.size(1) != teacher.size(1))
        throw std::invalid_argument("feddistill: the model has " + std::to_string(logits.size(1)) +
                                    " outputs, the federation's logits " + std::to_string(teacher.size(1)));
      // KL per example, over the examples whose label has a global mean (no host sync).
      const auto keep = known.index_select(0, y);
      const auto kl = (teacher.index_select(0, y) *
                       (teacher_log.index_select(0, y) - torch::log_softmax(logits / t, 1))).sum(1);
      return (kl * keep).sum() / keep.sum().clamp_min(1) * (lambda * t * t);
    };
    return hooks;
  }

  // The trained model stays here as the client's own (the next round starts from it); what is
  // sent is its per-label logits.
  void finish(const ClientTask& task, ClientContext& ctx, ClientResult& result) const override {
    result.tensors[kLogits] = per_label_logits(ctx.model, ctx.train);
    if (!torch::isfinite(result.tensors[kLogits].at(kSums)).all().item<bool>())
      throw std::runtime_error("feddistill: the trained model's logits are not finite");  // its last model stays
    ctx.personal["model"] = std::move(result.model);
    result.model = ModelState();
  }
};

class FedDistill : public Strategy {
 public:
  FedDistill(double lambda, double temperature) : lambda_(lambda), temperature_(temperature) {}
  std::string name() const override { return "feddistill"; }
  bool has_global_model() const override { return false; }

  // A new run hands over the run's initial model, which is nobody's: nothing global yet. A
  // resumed one hands back the per-label logits it saved.
  void initialize(const ModelState& initial) override {
    global_ = initial.contains(kMean) ? initial.clone() : ModelState();
  }

  std::vector<ClientTask> configure_fit(int round, const std::vector<int>& clients) override {
    auto tasks = Strategy::configure_fit(round, clients);
    for (auto& t : tasks) {
      t.model = ModelState();
      if (!global_.empty()) t.tensors[kLogits] = global_;
      t.config[kLambda] = lambda_;
      t.config[kTemperature] = temperature_;
      t.encoding = "fp32";  // C x C sums: small, and worth sending exactly whatever the run's encoding
    }
    return tasks;
  }

  // Every client evaluates its own model.
  std::vector<ClientTask> configure_evaluate(int round, const std::vector<int>& clients) override {
    auto tasks = Strategy::configure_evaluate(round, clients);
    for (auto& t : tasks) t.model = ModelState();
    return tasks;
  }

  // Per-label logits: C x C finite sums and C non-negative counts (that all clients share C is
  // aggregation's to find: check_result reads no state aggregate_fit changes).
  std::string check_result(const ClientTask&, const ClientResult& r) const override {
    if (!r.model.empty()) return "a model (feddistill clients keep theirs and send per-label logits)";
    auto it = r.tensors.find(kLogits);
    if (it == r.tensors.end() || !it->second.contains(kSums) || !it->second.contains(kCounts))
      return "no per-label logits ('logits/sums', 'logits/counts')";
    const at::Tensor& s = it->second.at(kSums);
    const at::Tensor& n = it->second.at(kCounts);
    if (s.dim() != 2 || s.size(0) != s.size(1) || n.dim() != 1 || n.size(0) != s.size(0))
      return "logit sums " + c10::str(s.sizes()) + " and counts " + c10::str(n.sizes()) + " (want C x C and C)";
    if (!torch::isfinite(s).all().item<bool>() || (n < 0).any().item<bool>())
      return "non-finite logits or negative counts";
    return "";
  }

  Metrics aggregate_fit(int round, const std::vector<ClientResult>& results) override {
    at::Tensor sums, counts;
    for (const auto& r : results) {
      const std::string who = "feddistill round " + std::to_string(round) + ": client " + std::to_string(r.client_id);
      if (const std::string why = check_result({}, r); !why.empty()) throw std::invalid_argument(who + " sent " + why);
      const at::Tensor s = r.tensors.at(kLogits).at(kSums).to(torch::kCPU, torch::kDouble);
      const at::Tensor n = r.tensors.at(kLogits).at(kCounts).to(torch::kCPU, torch::kDouble);
      if (sums.defined() && s.size(0) != sums.size(0))
        throw std::invalid_argument(who + "'s model has " + std::to_string(s.size(0)) + " outputs, the others " +
                                    std::to_string(sums.size(0)));
      sums = sums.defined() ? sums + s : s.clone();
      counts = counts.defined() ? counts + n : n.clone();
    }
    if (!sums.defined()) throw std::invalid_argument("feddistill: no results to aggregate");
    const at::Tensor mean = (sums / counts.clamp_min(1).unsqueeze(1)).to(torch::kFloat);
    global_ = ModelState({{kMean, mean}, {kLabelCounts, counts.to(torch::kLong)}});
    return {{"clients", static_cast<double>(results.size())},
            {"labels", static_cast<double>(counts.gt(0).sum().item<int64_t>())}};
  }

 private:
  double lambda_, temperature_;
};

StrategySpec feddistill_spec() {
  StrategySpec s{"feddistill",
                 "Federated Distillation (Jeong et al. 2018): clients keep their own models, of any "
                 "architecture, and share per-label mean logits",
                 {ParamSpec::number(kLambda, 1.0, 0, 1000, "weight of the distillation term"),
                  ParamSpec::number(kTemperature, 1.0, 0, 100, "softmax temperature of the distillation", true)},
                 [](const StrategyParams& p) {
                   return std::make_unique<FedDistill>(p.at(kLambda), p.at(kTemperature));
                 },
                 [] { return std::make_shared<FedDistillClient>(); }};
  // Any model: only its C logits travel (a client with another C is named at aggregation).
  s.accepts_model = [](const ModelDeclaration&, const ModelDeclaration&) { return std::string(); };
  return s;
}

const StrategyRegistrar kFedDistill{feddistill_spec()};

}  // namespace

}  // namespace fl
