#include "strategies/wrapped_strategy.h"

#include <algorithm>
#include <stdexcept>

namespace fl {

WrappedStrategy::WrappedStrategy(std::unique_ptr<Strategy> inner, std::string what)
    : inner_(std::move(inner)), what_(std::move(what)) {
  if (!inner_) throw std::invalid_argument(what_ + ": no strategy to wrap");
}

void WrappedStrategy::set_num_clients(int n) {
  num_clients_ = n;
  inner_->set_num_clients(n);
}

std::vector<ClientTask> WrappedStrategy::configure_fit(int round, const std::vector<int>& clients) {
  sampling_rate_ = num_clients_ > 0 ? std::min(1.0, static_cast<double>(clients.size()) / num_clients_) : 1.0;
  return inner_->configure_fit(round, clients);
}

Metrics WrappedStrategy::account(double noise_multiplier, double delta) {
  accountant_.compose(sampling_rate_, noise_multiplier);
  return {{"dp_epsilon", accountant_.spent(delta).epsilon}, {"dp_delta", delta}, {"dp_sampling_rate", sampling_rate_}};
}

std::string WrappedStrategy::save_state() const {
  return what_ + "-rdp " + accountant_.save() + "\n" + inner_->save_state();
}

void WrappedStrategy::load_state(const std::string& blob) {
  if (blob.empty()) {
    accountant_ = RdpAccountant();
    inner_->load_state(blob);
    return;
  }
  const std::string tag = what_ + "-rdp ";
  const auto newline = blob.find('\n');
  if (blob.rfind(tag, 0) != 0 || newline == std::string::npos)
    throw std::invalid_argument(what_ + ": the saved strategy state is not this wrapper's (was the run started without --" +
                                what_ + "?)");
  accountant_.load(blob.substr(tag.size(), newline - tag.size()));
  inner_->load_state(blob.substr(newline + 1));
}

}  // namespace fl
