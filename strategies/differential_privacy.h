#pragma once
// Client-level differential privacy for FedAvg-family strategies (DP-FedAvg, McMahan et al.,
// "Learning Differentially Private Recurrent Language Models", ICLR 2018), as a wrapper around
// the run's strategy rather than a copy of each one:
//
//   for every result k of the round:  delta_k = w_k - w_global
//                                     delta_k *= min(1, C / ||delta_k||)        (clip to L2 norm C)
//                                     delta_k += N(0, (z C)^2 / m)  per coordinate
//   the inner strategy then takes the mean of w_global + delta_k with equal weights,
//
// so that the mean it sees is (sum_k clipped delta_k + N(0, (z C)^2)) / m: the Gaussian mechanism
// on the sum, whose sensitivity to one client is C. The noise is drawn as m independent shares
// (each client's seeded by the run seed, the round and the client), the form it takes when the
// clients add it themselves under secure aggregation. Every floating tensor (buffers too) is
// clipped and noised. Clients weigh equally: an example count would let one client's influence
// exceed C. Whatever the inner strategy does with the mean (FedAvgM's momentum, FedAdam's
// moments) is post-processing and costs no privacy.
//
// An RDP accountant composes one sampled Gaussian mechanism per round (sampling rate q = the
// round's selected clients / all clients) and every round reports dp_epsilon at the run's
// dp_delta among the strategy's metrics (fedsim reports, fedcoord round records, fedctl rounds show).
#include <memory>

#include "strategies/wrapped_strategy.h"

namespace fl {

struct DpOptions {
  double clip = 1.0;              // C: the L2 bound of one client's update
  double noise_multiplier = 1.0;  // z: the noise's standard deviation on the sum is z * C
  double delta = 1e-5;            // the delta at which epsilon is reported
  uint64_t seed = 0;              // the run's seed (noise shares are drawn from it)
  // Throws std::invalid_argument naming the bad field.
  void validate() const;
};

class DifferentialPrivacy : public WrappedStrategy {
 public:
  DifferentialPrivacy(std::unique_ptr<Strategy> inner, DpOptions options);
  Metrics aggregate_fit(int round, const std::vector<ClientResult>& results) override;

 private:
  DpOptions options_;
};

}  // namespace fl
