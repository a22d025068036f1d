#include "common/train/local_trainer.h"

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <stdexcept>

#include "common/util/text.h"

namespace fl {

const std::vector<std::string>& adversarial_loss_names() {
  static const std::vector<std::string> names{"pgd", "trades"};
  return names;
}

void TrainOptions::validate() const {
  auto bad = [](const std::string& field, const std::string& why) {
    throw std::invalid_argument("train options: " + field + " " + why);
  };
  if (epochs < 0) bad("epochs", "must be >= 0");
  if (max_steps < 0) bad("max_steps", "must be >= 0");
  if (epochs == 0 && max_steps == 0) bad("epochs", "and max_steps are both 0: nothing to train");
  if (batch_size <= 0) bad("batch_size", "must be > 0");
  if (optimizer != "sgd" && optimizer != "adam") bad("optimizer", "must be sgd or adam, got '" + optimizer + "'");
  if (!(lr > 0)) bad("lr", "must be > 0");
  if (momentum < 0 || momentum >= 1) bad("momentum", "must be in [0,1)");
  if (weight_decay < 0) bad("weight_decay", "must be >= 0");
  if (adversarial.enabled) {
    adversarial.attack.validate();
    const auto& losses = adversarial_loss_names();
    if (std::find(losses.begin(), losses.end(), adversarial.loss) == losses.end())
      bad("adversarial.loss", "must be one of " + join(losses) + ", got '" + adversarial.loss + "'");
    if (!(adversarial.clean_weight >= 0 && adversarial.clean_weight <= 1))
      bad("adversarial.clean_weight", "must be in [0, 1]");
    if (!(adversarial.beta >= 0) || !std::isfinite(adversarial.beta)) bad("adversarial.beta", "must be >= 0");
  }
}

LocalTrainer::LocalTrainer(TrainOptions options) : options_(std::move(options)) { options_.validate(); }

TrainResult LocalTrainer::train(Model& model, const TensorDataset& data, const TrainHooks& hooks) const {
  const auto t0 = std::chrono::steady_clock::now();
  const auto device = model.device();
  const TensorDataset d = data.x.device() == device ? data : data.to(device);
  const int64_t n = d.size();
  if (n == 0) throw std::invalid_argument("LocalTrainer: empty training set");

  std::vector<at::Tensor> params = hooks.trainable.empty() ? model.parameters() : hooks.trainable;
  std::unique_ptr<torch::optim::Optimizer> opt;
  if (options_.optimizer == "adam") {
    opt = std::make_unique<torch::optim::Adam>(
        params, torch::optim::AdamOptions(options_.lr)
                    .betas({options_.adam_beta1, options_.adam_beta2})
                    .weight_decay(options_.weight_decay));
  } else {
    opt = std::make_unique<torch::optim::SGD>(
        params, torch::optim::SGDOptions(options_.lr).momentum(options_.momentum).weight_decay(options_.weight_decay));
  }

  // Seeded shuffling on the CPU generator (identical across devices), one permutation per
  // epoch moved to the device in one copy.
  auto gen = at::detail::createCPUGenerator(options_.seed);
  model.train(true);
  auto loss_sum = torch::zeros({}, torch::TensorOptions().dtype(torch::kDouble).device(device));
  auto correct = torch::zeros({}, torch::TensorOptions().dtype(torch::kLong).device(device));
  int64_t steps = 0, seen = 0;
  const int64_t epochs = options_.max_steps > 0 && options_.epochs == 0 ? INT64_MAX : options_.epochs;
  bool done = false;
  for (int64_t epoch = 0; epoch < epochs && !done; ++epoch) {
    auto perm = torch::randperm(n, gen, torch::TensorOptions().dtype(torch::kLong)).to(device);
    for (int64_t start = 0; start < n; start += options_.batch_size) {
      const int64_t bs = std::min(options_.batch_size, n - start);
      auto idx = perm.narrow(0, start, bs);
      auto xb = d.x.index_select(0, idx);
      auto yb = d.y.index_select(0, idx);
      if (hooks.on_batch) hooks.on_batch(model, xb, yb);
      // FAL's inner maximisation: the batch's adversarial examples against the current model.
      const auto& adv = options_.adversarial;
      at::Tensor x_adv;
      if (adv.enabled) {
        const uint64_t attack_seed = options_.seed ^ (0x9E3779B97F4A7C15ULL * static_cast<uint64_t>(steps + 1));
        x_adv = craft_adversarial(model, xb, yb, adv.attack, d.domain, attack_seed,
                                  adv.loss == "trades" ? AttackObjective::kKlToClean : AttackObjective::kCrossEntropy);
      }
      opt->zero_grad();
      at::Tensor logits, loss;
      if (!adv.enabled) {
        logits = model.forward(xb);
        loss = torch::nn::functional::cross_entropy(logits, yb);
      } else if (adv.loss == "trades") {
        logits = model.forward(xb);
        loss = torch::nn::functional::cross_entropy(logits, yb);
        auto robust = torch::nn::functional::kl_div(
            torch::log_softmax(model.forward(x_adv), 1), torch::softmax(logits, 1),
            torch::nn::functional::KLDivFuncOptions().reduction(torch::kBatchMean));
        loss = loss + adv.beta * robust;
      } else {
        logits = model.forward(x_adv);
        loss = torch::nn::functional::cross_entropy(logits, yb);
        if (adv.clean_weight > 0)
          loss = (1 - adv.clean_weight) * loss +
                 adv.clean_weight * torch::nn::functional::cross_entropy(model.forward(xb), yb);
      }
      {
        torch::NoGradGuard no_grad;
        loss_sum += loss.detach().to(torch::kDouble) * bs;
        correct += logits.argmax(1).eq(yb).sum();
      }
      if (hooks.extra_loss) loss = loss + hooks.extra_loss(model);
      if (hooks.output_loss) loss = loss + hooks.output_loss(logits, yb);
      loss.backward();
      opt->step();
      if (hooks.after_step) hooks.after_step(model);
      ++steps;
      seen += bs;
      if (options_.max_steps > 0 && steps >= options_.max_steps) {
        done = true;
        break;
      }
    }
  }
  TrainResult r;
  r.state = model.state();
  r.num_examples = n;
  r.samples_seen = seen;
  r.steps = steps;
  r.loss = seen ? loss_sum.item<double>() / seen : 0;
  r.accuracy = seen ? static_cast<double>(correct.item<int64_t>()) / seen : 0;
  r.wall_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  // Diverged weights must not leave the client as an update (one NaN poisons an average).
  const bool finite_state = r.state.non_finite_entry().empty();
  if (!std::isfinite(r.loss) || !finite_state)
    throw std::runtime_error("local training diverged after " + std::to_string(steps) + " steps (" +
                             (finite_state ? "training loss " + std::to_string(r.loss)
                                           : std::string("non-finite weights")) +
                             "): lower the learning rate");
  return r;
}

EvalResult LocalTrainer::evaluate(Model& model, const TensorDataset& data, int64_t batch_size) {
  torch::NoGradGuard no_grad;
  const auto device = model.device();
  if (batch_size <= 0) batch_size = eval_batch_size(device);
  const TensorDataset d = data.x.device() == device ? data : data.to(device);
  model.train(false);
  auto loss_sum = torch::zeros({}, torch::TensorOptions().dtype(torch::kDouble).device(device));
  auto correct = torch::zeros({}, torch::TensorOptions().dtype(torch::kLong).device(device));
  const int64_t n = d.size();
  for (int64_t start = 0; start < n; start += batch_size) {
    const int64_t bs = std::min(batch_size, n - start);
    auto xb = d.x.narrow(0, start, bs);
    auto yb = d.y.narrow(0, start, bs);
    auto logits = model.forward(xb);
    loss_sum += torch::nn::functional::cross_entropy(
                    logits, yb, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum))
                    .to(torch::kDouble);
    correct += logits.argmax(1).eq(yb).sum();
  }
  model.train(true);
  EvalResult r;
  r.num_examples = n;
  if (n > 0) {
    r.loss = loss_sum.item<double>() / n;
    r.accuracy = static_cast<double>(correct.item<int64_t>()) / n;
  }
  return r;
}

EvalResult LocalTrainer::evaluate(Model& model, const TensorDataset& data, const EvalOptions& options) {
  options.validate();
  EvalResult r = evaluate(model, data, options.batch_size);
  for (const auto& attack : options.attacks)
    r.metrics[attack.metric_key()] = robust_accuracy(model, data, attack, options.attack_examples, options.batch_size);
  return r;
}

}  // namespace fl
