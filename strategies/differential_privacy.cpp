#include "strategies/differential_privacy.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <cmath>
#include <stdexcept>

#include "common/engine/round_engine.h"

namespace fl {

namespace {

// Adds N(0, std^2) to every floating coordinate of `state`, drawn on the CPU from `seed` (the
// same numbers on any device).
void add_gaussian(ModelState& state, double std, uint64_t seed) {
  torch::NoGradGuard no_grad;
  auto gen = at::detail::createCPUGenerator(seed);
  auto noise_like = [&](const at::Tensor& t) {
    return at::normal(0.0, std, t.sizes(), gen, torch::TensorOptions().dtype(t.scalar_type())).to(t.device());
  };
  if (state.flat().defined()) {
    state.flat().add_(noise_like(state.flat()));
    return;
  }
  for (const auto& e : state.entries())
    if (e.tensor.is_floating_point()) e.tensor.add_(noise_like(e.tensor));
}

}  // namespace

void DpOptions::validate() const {
  if (!(clip > 0) || !std::isfinite(clip)) throw std::invalid_argument("dp: the clipping norm must be a positive number");
  if (!(noise_multiplier >= 0) || !std::isfinite(noise_multiplier))
    throw std::invalid_argument("dp: the noise multiplier must be a number >= 0");
  if (!(delta > 0 && delta < 1)) throw std::invalid_argument("dp: delta must be in (0, 1)");
}

DifferentialPrivacy::DifferentialPrivacy(std::unique_ptr<Strategy> inner, DpOptions options)
    : WrappedStrategy(std::move(inner), "dp"), options_(options) {
  options_.validate();
}

Metrics DifferentialPrivacy::aggregate_fit(int round, const std::vector<ClientResult>& results) {
  const std::string where = "dp round " + std::to_string(round);
  if (results.empty()) throw std::invalid_argument(where + ": no results to aggregate");
  const ModelState base = inner_->global_model().clone();
  const double m = static_cast<double>(results.size());
  const double share_std = options_.noise_multiplier * options_.clip / std::sqrt(m);
  std::vector<ClientResult> private_results;
  private_results.reserve(results.size());
  int clipped = 0;
  double norm_sum = 0;
  for (const auto& r : results) {
    base.check_same_layout(r.model, where + ": client " + std::to_string(r.client_id) + "'s model");
    ModelState delta = r.model - base;
    const double norm = delta.norm();
    if (!std::isfinite(norm))
      throw std::invalid_argument(where + ": client " + std::to_string(r.client_id) + "'s update is not finite");
    norm_sum += norm;
    if (norm > options_.clip) {
      delta.scale_(options_.clip / norm);
      ++clipped;
    }
    add_gaussian(delta, share_std, mix_seed(options_.seed ^ 0xd1ffe7e47ULL, static_cast<uint64_t>(round),
                                            static_cast<uint64_t>(r.client_id)));
    ClientResult p = r;
    p.model = delta.add_(base);
    p.num_examples = 1;  // equal weights: the sum's sensitivity to one client is C
    private_results.push_back(std::move(p));
  }
  Metrics metrics = inner_->aggregate_fit(round, private_results);
  for (const auto& kv : account(options_.noise_multiplier, options_.delta)) metrics[kv.first] = kv.second;
  metrics["dp_clipped"] = clipped;
  metrics["dp_mean_update_norm"] = norm_sum / m;
  return metrics;
}

}  // namespace fl
