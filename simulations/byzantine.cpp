#include "simulations/byzantine.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <stdexcept>

#include "common/engine/round_engine.h"
#include "common/util/text.h"

namespace fl {

namespace {

class ByzantineClient : public ClientAlgorithm {
 public:
  ByzantineClient(std::shared_ptr<const ClientAlgorithm> honest, ByzantineOptions options)
      : honest_(std::move(honest)), options_(std::move(options)) {}

  ClientResult fit(const ClientTask& task, ClientContext& ctx) const override {
    ClientResult r = honest_->fit(task, ctx);
    if (!task.model.same_layout(r.model))
      throw std::invalid_argument("byzantine attack '" + options_.attack +
                                  "': the strategy does not exchange whole models of one layout");
    ModelState delta = r.model - task.model;
    if (options_.attack == "sign-flip") {
      delta.scale_(-options_.scale);
    } else if (options_.attack == "scale") {
      delta.scale_(options_.scale);
    } else {  // noise: a random direction with the honest update's norm times scale
      const double norm = delta.norm();
      torch::NoGradGuard no_grad;
      auto gen = at::detail::createCPUGenerator(mix_seed(options_.seed, 0xb12a7, task.seed));
      ModelState g = delta.zeros_like();
      for (const auto& e : g.entries())
        if (e.tensor.is_floating_point())
          e.tensor.copy_(at::normal(0.0, 1.0, e.tensor.sizes(), gen, torch::TensorOptions().dtype(e.tensor.scalar_type())));
      const double gn = g.norm();
      delta = g.scale_(gn > 0 ? options_.scale * norm / gn : 0.0);
    }
    r.model = delta.add_(task.model);
    r.metrics["byzantine"] = 1;
    return r;
  }
  ClientResult evaluate(const ClientTask& task, ClientContext& ctx) const override { return honest_->evaluate(task, ctx); }
  ClientResult exchange(const ClientTask& task, ClientContext& ctx) const override { return honest_->exchange(task, ctx); }

 private:
  std::shared_ptr<const ClientAlgorithm> honest_;
  ByzantineOptions options_;
};

}  // namespace

const std::vector<std::string>& byzantine_attack_names() {
  static const std::vector<std::string> names{"sign-flip", "scale", "noise", "label-flip"};
  return names;
}

void ByzantineOptions::validate() const {
  if (!(fraction >= 0 && fraction < 1)) throw std::invalid_argument("--byzantine-fraction must be in [0, 1)");
  const auto& names = byzantine_attack_names();
  if (std::find(names.begin(), names.end(), attack) == names.end())
    throw std::invalid_argument("--byzantine-attack '" + attack + "' is not one of " + join(names));
  if (!(scale >= 0) || !std::isfinite(scale)) throw std::invalid_argument("--byzantine-scale must be a number >= 0");
}

std::vector<int> byzantine_clients(int n, const ByzantineOptions& options) {
  options.validate();
  const int k = std::min(n, static_cast<int>(std::lround(options.fraction * n)));
  std::vector<int> ids(n);
  std::iota(ids.begin(), ids.end(), 0);
  std::mt19937_64 rng(mix_seed(options.seed, 0xb12a7));
  std::shuffle(ids.begin(), ids.end(), rng);
  ids.resize(k);
  std::sort(ids.begin(), ids.end());
  return ids;
}

std::shared_ptr<const ClientAlgorithm> byzantine_algorithm(std::shared_ptr<const ClientAlgorithm> honest,
                                                           const ByzantineOptions& options) {
  options.validate();
  if (options.attack == "label-flip") return nullptr;
  return std::make_shared<ByzantineClient>(std::move(honest), options);
}

void flip_labels(TensorDataset& data) {
  if (data.size() == 0) return;
  data.y = at::rsub(data.y, data.num_classes - 1);  // (C - 1) - y
}

}  // namespace fl
