#pragma once
// Byzantine-robust aggregation rules: they see every update of the round at once and work on
// the stacked flat buffers (ATen ops over [clients, numel], no per-element loops). Unweighted:
// a client cannot buy influence by claiming many examples.
#include <functional>

#include "common/engine/strategy.h"

namespace fl {

// Applies `rule` ([k, n] stacked values -> [n]) to every coordinate of the results' models
// (floating blocks as they are, integer entries in double, rounded back). Models must share one layout.
ModelState coordinatewise(const std::vector<ClientResult>& results,
                          const std::function<at::Tensor(const at::Tensor&)>& rule);

// Coordinate-wise median (the mean of the two middle values for an even count).
class FedMedian : public Strategy {
 public:
  std::string name() const override { return "fedmedian"; }
  Metrics aggregate_fit(int round, const std::vector<ClientResult>& results) override;
  std::string check_result(const ClientTask& task, const ClientResult& result) const override {
    return result_model_is_whole(task, result);  // the whole model is aggregated
  }
};

// Coordinate-wise trimmed mean: drops the floor(beta * k) largest and smallest values of each
// coordinate, averages the rest (Yin et al. 2018).
class TrimmedMean : public Strategy {
 public:
  explicit TrimmedMean(double beta);
  std::string name() const override { return "trimmedmean"; }
  Metrics aggregate_fit(int round, const std::vector<ClientResult>& results) override;
  std::string check_result(const ClientTask& task, const ClientResult& result) const override {
    return result_model_is_whole(task, result);  // the whole model is aggregated
  }

 private:
  double beta_;
};

// Krum and Multi-Krum (Blanchard et al. 2017): each model's score is the sum of squared
// distances to its k - f - 2 nearest others; the m lowest-scoring models are averaged (Krum:
// m = 1). Needs k > 2f + 2 results. m = 0 means k - f.
class Krum : public Strategy {
 public:
  Krum(int f, int m, bool multi);
  std::string name() const override { return multi_ ? "multikrum" : "krum"; }
  Metrics aggregate_fit(int round, const std::vector<ClientResult>& results) override;
  std::string check_result(const ClientTask& task, const ClientResult& result) const override {
    return result_model_is_whole(task, result);  // the whole model is aggregated
  }
  // Client ids chosen in the last round, best score first.
  const std::vector<int>& last_selected() const { return selected_; }

 private:
  int f_, m_;
  bool multi_;
  std::vector<int> selected_;
};

}  // namespace fl
