#include "strategies/robust.h"

#include "strategies/registry.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <stdexcept>

#include "strategies/state_ops.h"

namespace fl {
namespace {

void check_layouts(const std::string& name, int round, const ModelState& global,
                   const std::vector<ClientResult>& results) {
  if (results.empty()) throw std::invalid_argument(name + ": no results to aggregate");
  for (const auto& r : results)
    global.check_same_layout(r.model, name + " round " + std::to_string(round) + " (client " +
                                          std::to_string(r.client_id) + ")");
}

at::Tensor sorted_rows(const at::Tensor& stacked) { return std::get<0>(stacked.sort(0)); }

}  // namespace

ModelState coordinatewise(const std::vector<ClientResult>& results,
                          const std::function<at::Tensor(const at::Tensor&)>& rule) {
  if (results.empty()) throw std::invalid_argument("coordinatewise: no results");
  const ModelState& first = results.front().model;
  for (size_t i = 1; i < results.size(); ++i) first.check_same_layout(results[i].model, "coordinatewise");
  torch::NoGradGuard no_grad;
  ModelState out = first.clone();
  std::vector<std::vector<at::Tensor>> blocks;
  for (const auto& r : results) blocks.push_back(float_blocks(r.model));
  auto out_blocks = float_blocks(out);
  for (size_t b = 0; b < out_blocks.size(); ++b) {
    std::vector<at::Tensor> rows;
    for (const auto& bl : blocks) rows.push_back(bl[b].reshape({-1}));
    out_blocks[b].copy_(rule(at::stack(rows)).view_as(out_blocks[b]));
  }
  for (size_t k = 0; k < out.size(); ++k) {
    at::Tensor t = out.entries()[k].tensor;
    if (t.is_floating_point()) continue;
    std::vector<at::Tensor> rows;
    for (const auto& r : results) rows.push_back(r.model.entries()[k].tensor.reshape({-1}).to(at::kDouble));
    t.copy_(rule(at::stack(rows)).round().to(t.scalar_type()).view_as(t));
  }
  return out;
}

Metrics FedMedian::aggregate_fit(int round, const std::vector<ClientResult>& results) {
  check_layouts(name(), round, global_, results);
  global_ = coordinatewise(results, [](const at::Tensor& x) {
    const int64_t k = x.size(0);
    auto s = sorted_rows(x);
    return k % 2 ? s[k / 2] : (s[k / 2 - 1] + s[k / 2]) / 2;
  });
  return {{"clients", static_cast<double>(results.size())}};
}

TrimmedMean::TrimmedMean(double beta) : beta_(beta) {
  if (!(beta >= 0 && beta < 0.5)) throw std::invalid_argument("trimmedmean: beta must be in [0, 0.5)");
}

Metrics TrimmedMean::aggregate_fit(int round, const std::vector<ClientResult>& results) {
  check_layouts(name(), round, global_, results);
  const int64_t k = static_cast<int64_t>(results.size());
  const int64_t cut = static_cast<int64_t>(std::floor(beta_ * k));  // beta < 0.5 keeps >= 1 value
  global_ = coordinatewise(results, [&](const at::Tensor& x) { return sorted_rows(x).narrow(0, cut, k - 2 * cut).mean(0); });
  return {{"clients", static_cast<double>(results.size())}, {"trimmed_per_side", static_cast<double>(cut)}};
}

Krum::Krum(int f, int m, bool multi) : f_(f), m_(multi ? m : 1), multi_(multi) {
  if (f < 0) throw std::invalid_argument(name() + ": f must be >= 0");
  if (multi && m < 0) throw std::invalid_argument("multikrum: m must be >= 0 (0: the number of results minus f)");
}

Metrics Krum::aggregate_fit(int round, const std::vector<ClientResult>& results) {
  check_layouts(name(), round, global_, results);
  const int k = static_cast<int>(results.size());
  // Blanchard et al.'s condition; the coordinator retries a round that fails (runtime_error).
  if (k <= 2 * f_ + 2)
    throw std::runtime_error(name() + " round " + std::to_string(round) + ": f=" + std::to_string(f_) +
                             " needs more than 2f+2 = " + std::to_string(2 * f_ + 2) + " results, got " +
                             std::to_string(k));
  const int m = m_ == 0 ? k - f_ : m_;
  if (m > k)
    throw std::runtime_error(name() + " round " + std::to_string(round) + ": m=" + std::to_string(m) +
                             " exceeds the " + std::to_string(k) + " results");
  torch::NoGradGuard no_grad;
  // One row per model: every floating value, in double so that distances do not lose digits.
  std::vector<at::Tensor> rows;
  for (const auto& r : results) {
    std::vector<at::Tensor> parts;
    for (const auto& b : float_blocks(r.model)) parts.push_back(b.reshape({-1}).to(at::kDouble));
    rows.push_back(at::cat(parts));
  }
  const auto X = at::stack(rows);
  std::vector<at::Tensor> d2rows;
  for (int i = 0; i < k; ++i) d2rows.push_back((X - X[i]).pow(2).sum(1));
  auto d2 = at::stack(d2rows);                               // [k, k] squared distances
  d2.fill_diagonal_(std::numeric_limits<double>::infinity());  // a model is not its own neighbour
  const int neighbours = k - f_ - 2;
  const auto scores = std::get<0>(d2.topk(neighbours, 1, /*largest=*/false)).sum(1).cpu();
  std::vector<int> order(k);
  std::iota(order.begin(), order.end(), 0);
  auto sc = scores.accessor<double, 1>();
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return sc[a] < sc[b]; });
  std::vector<const ModelState*> chosen;
  selected_.clear();
  for (int i = 0; i < m; ++i) {
    chosen.push_back(&results[order[i]].model);
    selected_.push_back(results[order[i]].client_id);
  }
  global_ = ModelState::weighted_average(chosen, std::vector<double>(chosen.size(), 1.0));
  return {{"clients", static_cast<double>(k)},
          {"selected", static_cast<double>(m)},
          {"best_client", static_cast<double>(selected_.front())},
          {"best_score", sc[order.front()]}};
}

namespace {

const StrategyRegistrar kFedMedian{{"fedmedian", "coordinate-wise median of the clients' models (Yin et al. 2018)", {},
                                    [](const StrategyParams&) { return std::make_unique<FedMedian>(); }}};

const StrategyRegistrar kTrimmedMean{
    {"trimmedmean", "coordinate-wise trimmed mean (Yin et al. 2018)",
     {ParamSpec::number("beta", 0.2, 0, 0.5, "fraction trimmed on each side", false, true)},
     [](const StrategyParams& p) { return std::make_unique<TrimmedMean>(p.at("beta")); }}};

const StrategyRegistrar kKrum{{"krum", "Krum (Blanchard et al. 2017): the update closest to its neighbours",
                               {ParamSpec::integer("f", 0, 0, 1 << 20, "clients assumed Byzantine")},
                               [](const StrategyParams& p) {
                                 return std::make_unique<Krum>(static_cast<int>(p.at("f")), 1, false);
                               }}};

const StrategyRegistrar kMultiKrum{
    {"multikrum", "Multi-Krum (Blanchard et al. 2017): the average of the m best-scored updates",
     {ParamSpec::integer("f", 0, 0, 1 << 20, "clients assumed Byzantine"),
      ParamSpec::integer("m", 0, 0, 1 << 20, "updates averaged (0: the number of results minus f)")},
     [](const StrategyParams& p) {
       return std::make_unique<Krum>(static_cast<int>(p.at("f")), static_cast<int>(p.at("m")), true);
     }}};

}  // namespace

}  // namespace fl
