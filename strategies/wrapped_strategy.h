#pragma once
// A strategy around the run's strategy (differential privacy, secure aggregation): forwards
// everything to the inner one, learns the round's sampling rate on the way, and keeps an RDP
// accountant whose curve is saved ahead of the inner strategy's state, so that a resumed run
// goes on spending where it stopped.
#include <memory>
#include <string>

#include "common/engine/strategy.h"
#include "common/privacy/rdp_accountant.h"

namespace fl {

class WrappedStrategy : public Strategy {
 public:
  // `what` names the wrapper in errors ("dp", "secagg").
  WrappedStrategy(std::unique_ptr<Strategy> inner, std::string what);
  std::string name() const override { return inner_->name(); }
  void initialize(const ModelState& initial) override { inner_->initialize(initial); }
  void set_total_rounds(int rounds) override { inner_->set_total_rounds(rounds); }
  void set_num_clients(int n) override;
  // Records the sampling rate (selected / all clients), then the inner strategy's tasks.
  std::vector<ClientTask> configure_fit(int round, const std::vector<int>& clients) override;
  std::vector<ClientTask> configure_evaluate(int round, const std::vector<int>& clients) override {
    return inner_->configure_evaluate(round, clients);
  }
  Metrics aggregate_evaluate(int round, const std::vector<ClientResult>& results) override {
    return inner_->aggregate_evaluate(round, results);
  }
  std::string check_result(const ClientTask& task, const ClientResult& result) const override {
    return inner_->check_result(task, result);
  }
  const ModelState& global_model() const override { return inner_->global_model(); }
  bool has_global_model() const override { return inner_->has_global_model(); }
  // "<what>-rdp <curve>\n" + the inner strategy's state. load_state takes that, or nothing (a
  // run resumed before its first commit); anything else throws std::invalid_argument.
  std::string save_state() const override;
  void load_state(const std::string& blob) override;

  const RdpAccountant& accountant() const { return accountant_; }

 protected:
  // One round of the sampled Gaussian mechanism at this round's sampling rate: composes it and
  // returns dp_epsilon (at `delta`), dp_delta and dp_sampling_rate for the round's metrics.
  Metrics account(double noise_multiplier, double delta);

  std::unique_ptr<Strategy> inner_;
  std::string what_;
  RdpAccountant accountant_;
  int num_clients_ = 0;
  double sampling_rate_ = 1;  // this round's
};

}  // namespace fl
