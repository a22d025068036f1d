#pragma once
// FedAvg (McMahan et al. 2017): the example-weighted average of the clients' new weights.
#include "common/engine/strategy.h"
#include "common/engine/streaming_aggregation.h"

namespace fl {

// The example-weighted mean of the clients' models: aggregated as the updates stream in.
class FedAvg : public Strategy, public MeanAggregation {
 public:
  std::string name() const override { return "fedavg"; }
  // aggregate_mean of the results' average: final, so that a subclass changes the aggregation in
  // aggregate_mean, which streamed rounds call instead (common/engine/streaming_aggregation.h).
  Metrics aggregate_fit(int round, const std::vector<ClientResult>& results) final;
  Metrics aggregate_mean(int round, ModelState mean, const std::vector<ClientResult>& results) override;
  std::string check_result(const ClientTask& task, const ClientResult& result) const override {
    return result_model_is_whole(task, result);  // the whole model is aggregated
  }
};

// FedProx (Li et al. 2020): FedAvg aggregation; clients add (mu/2)||w - w_global||^2 to their loss.
// FedProx's client: adds (mu/2)||w - w_received||^2 (mu from task.config) to every batch loss.
class FedProxClient : public ClientAlgorithm {
 protected:
  TrainHooks train_hooks(const ClientTask& task, ClientContext& ctx) const override;
};

class FedProx : public FedAvg {
 public:
  explicit FedProx(double mu);
  std::string name() const override { return "fedprox"; }
  std::vector<ClientTask> configure_fit(int round, const std::vector<int>& clients) override;
  double mu() const { return mu_; }

 private:
  double mu_;
};

}  // namespace fl
