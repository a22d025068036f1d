#pragma once
// SCAFFOLD (Karimireddy et al. 2020), option II control variates.
//   Server: sends x and its control variate c (task.tensors["c"]); after the round
//           x <- x + server_lr * (avg(y_i) - x)   (example-weighted, FedAvg's average)
//           c <- c + |S|/N * mean(delta c_i)     (unweighted: c estimates the mean over all N clients)
//   Client: keeps c_i (personal "scaffold_c", zero at first), corrects every local SGD step by
//           -lr (c - c_i), then c_i+ = c_i - c + (x - y_i) / (K lr) with K local steps, and sends
//           y_i plus delta c_i = c_i+ - c_i (result.tensors["delta_c"]).
// Control variates cover the parameters only (not BatchNorm statistics), which take the average.
#include "common/engine/strategy.h"

namespace fl {

class Scaffold : public Strategy {
 public:
  explicit Scaffold(double server_lr);
  std::string name() const override { return "scaffold"; }
  void initialize(const ModelState& initial) override;
  void set_num_clients(int n) override;
  std::vector<ClientTask> configure_fit(int round, const std::vector<int>& clients) override;
  Metrics aggregate_fit(int round, const std::vector<ClientResult>& results) override;
  // The whole model and a delta_c of the control variate's layout.
  std::string check_result(const ClientTask& task, const ClientResult& result) const override;
  std::string save_state() const override;
  void load_state(const std::string& blob) override;
  const ModelState& control_variate() const { return c_; }

 private:
  double lr_;
  int num_clients_ = 0;
  ModelState c_;
};

class ScaffoldClient : public ClientAlgorithm {
 protected:
  TrainHooks train_hooks(const ClientTask& task, ClientContext& ctx) const override;
  void finish(const ClientTask& task, ClientContext& ctx, ClientResult& result) const override;
};

}  // namespace fl
