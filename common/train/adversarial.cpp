#include "common/train/adversarial.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <sstream>
#include <stdexcept>

#include "common/models/model.h"
#include "common/util/text.h"

namespace fl {

const std::vector<std::string>& attack_method_names() {
  static const std::vector<std::string> names{"pgd", "fgsm"};
  return names;
}

void AttackOptions::validate() const {
  auto bad = [](const std::string& field, const std::string& why) {
    throw std::invalid_argument("attack options: " + field + " " + why);
  };
  const auto& methods = attack_method_names();
  if (std::find(methods.begin(), methods.end(), method) == methods.end())
    bad("method", "must be one of " + join(methods) + ", got '" + method + "'");
  if (!(epsilon > 0) || !std::isfinite(epsilon)) bad("epsilon", "must be > 0");
  if (!(alpha >= 0) || !std::isfinite(alpha)) bad("alpha", "must be >= 0 (0: 2.5 * epsilon / steps)");
  if (steps < 1) bad("steps", "must be >= 1");
}

std::string AttackOptions::describe() const {
  std::ostringstream o;
  o << method;
  if (method == "pgd") o << "-" << steps;
  o << " (eps " << epsilon;
  if (method == "pgd") o << ", step " << step_size() << (random_start ? ", random start" : "");
  o << ")";
  return o.str();
}

void EvalOptions::validate() const {
  for (const auto& a : attacks) a.validate();
  if (attack_examples < 0) throw std::invalid_argument("evaluation options: attack_examples must be >= 0");
  if (batch_size < 0) throw std::invalid_argument("evaluation options: batch_size must be >= 0");
}

namespace {

at::Tensor clamp_to(const at::Tensor& x, const FeatureDomain& d) {
  if (!d.bounded()) return x;
  return x.clamp(d.lo, d.hi);
}

}  // namespace

at::Tensor craft_adversarial(Model& model, const at::Tensor& x, const at::Tensor& y, const AttackOptions& attack,
                             const FeatureDomain& domain, uint64_t seed, AttackObjective objective) {
  attack.validate();
  const bool fgsm = attack.method == "fgsm";
  const double radius = attack.epsilon * domain.unit;
  const double step = (fgsm ? attack.epsilon : attack.step_size()) * domain.unit;
  const int64_t steps = fgsm ? 1 : attack.steps;

  model.train(false);
  const at::Tensor x0 = x.detach();
  at::Tensor clean_prob;
  if (objective == AttackObjective::kKlToClean) {
    torch::NoGradGuard no_grad;
    clean_prob = torch::softmax(model.forward(x0), 1);
  }
  at::Tensor xa = x0;
  if (!fgsm && attack.random_start) {
    auto gen = at::detail::createCPUGenerator(seed);
    auto u = torch::rand(x0.sizes(), gen, torch::TensorOptions().dtype(torch::kFloat));
    xa = clamp_to(x0 + (u.mul_(2).sub_(1).mul_(radius)).to(x0.device(), x0.scalar_type()), domain);
  }
  for (int64_t k = 0; k < steps; ++k) {
    xa = xa.detach().requires_grad_(true);
    auto logits = model.forward(xa);
    at::Tensor loss;
    if (objective == AttackObjective::kCrossEntropy) {
      loss = torch::nn::functional::cross_entropy(
          logits, y, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum));
    } else {
      loss = torch::nn::functional::kl_div(torch::log_softmax(logits, 1), clean_prob,
                                           torch::nn::functional::KLDivFuncOptions().reduction(torch::kSum));
    }
    // Only the input's gradient: the engine skips the parameters' (none accumulates in .grad).
    auto g = torch::autograd::grad({loss}, {xa})[0];
    torch::NoGradGuard no_grad;
    xa = xa.detach() + step * g.sign();
    xa = clamp_to(torch::min(torch::max(xa, x0 - radius), x0 + radius), domain);
  }
  model.train(true);
  return xa.detach();
}

int64_t eval_batch_size(const c10::Device& device) { return device.is_cpu() ? 64 : 1024; }

double robust_accuracy(Model& model, const TensorDataset& data, const AttackOptions& attack, int64_t limit,
                       int64_t batch_size, uint64_t seed) {
  const auto device = model.device();
  if (batch_size <= 0) batch_size = eval_batch_size(device);
  const int64_t n = limit > 0 ? std::min(limit, data.size()) : data.size();
  if (n == 0) return 0;
  int64_t correct = 0;
  for (int64_t start = 0; start < n; start += batch_size) {
    const int64_t bs = std::min(batch_size, n - start);
    auto xb = data.x.narrow(0, start, bs).to(device);
    auto yb = data.y.narrow(0, start, bs).to(device);
    auto xa = craft_adversarial(model, xb, yb, attack, data.domain, seed + static_cast<uint64_t>(start));
    torch::NoGradGuard no_grad;
    model.train(false);
    correct += model.forward(xa).argmax(1).eq(yb).sum().item<int64_t>();
  }
  model.train(true);
  return static_cast<double>(correct) / static_cast<double>(n);
}

}  // namespace fl
