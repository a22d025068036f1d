#pragma once
// Server-side optimisers over the clients' average update (the "pseudo-gradient"):
// FedAvgM (Hsu et al. 2019, server momentum) and FedAdam / FedYogi / FedAdagrad (Reddi et al.
// 2021, "Adaptive Federated Optimization", Algorithm 2). Clients run plain local SGD (FedAvg's
// client). BatchNorm statistics are buffers, not parameters: they take the plain average.
#include "common/engine/strategy.h"
#include "common/engine/streaming_aggregation.h"

namespace fl {

class FedAvgM : public Strategy, public MeanAggregation {
 public:
  FedAvgM(double server_lr, double server_momentum);
  std::string name() const override { return "fedavgm"; }
  Metrics aggregate_fit(int round, const std::vector<ClientResult>& results) final;  // aggregate_mean of the average
  Metrics aggregate_mean(int round, ModelState mean, const std::vector<ClientResult>& results) override;
  std::string check_result(const ClientTask& task, const ClientResult& result) const override {
    return result_model_is_whole(task, result);  // the whole model is aggregated
  }
  std::string save_state() const override;
  void load_state(const std::string& blob) override;

 private:
  double lr_, momentum_;
  ModelState velocity_;  // empty before the first round
};

// x <- x + eta * m / (sqrt(v) + tau), with delta = avg - x, m = beta1 m + (1 - beta1) delta and
//   adam:    v = beta2 v + (1 - beta2) delta^2
//   yogi:    v = v - (1 - beta2) delta^2 sign(v - delta^2)
//   adagrad: v = v + delta^2
// m and v start at zero (Flower); no bias correction (Reddi et al.'s Algorithm 2).
class FedOpt : public Strategy, public MeanAggregation {
 public:
  enum class Kind { adam, yogi, adagrad };
  FedOpt(Kind kind, double eta, double beta1, double beta2, double tau);
  std::string name() const override;
  Metrics aggregate_fit(int round, const std::vector<ClientResult>& results) final;  // aggregate_mean of the average
  Metrics aggregate_mean(int round, ModelState mean, const std::vector<ClientResult>& results) override;
  std::string check_result(const ClientTask& task, const ClientResult& result) const override {
    return result_model_is_whole(task, result);  // the whole model is aggregated
  }
  std::string save_state() const override;
  void load_state(const std::string& blob) override;

 private:
  Kind kind_;
  double eta_, beta1_, beta2_, tau_;
  ModelState m_, v_;  // empty before the first round
};

}  // namespace fl
