#pragma once
// Secure aggregation around a FedAvg-family strategy (RunSpec secagg = secagg | secagg+): the
// coordinator learns the example-weighted mean update of the round's surviving clients and
// never one client's update. The protocol is common/secagg's (Bonawitz et al. 2017, SecAgg+
// graph of Bell et al. 2020); here it runs as the four exchanges of one round:
//
//   "fit"   client trains, keeps its update, advertises its two public keys   (+ num_examples)
//   "fit-2" server sends the key directory and the round's total weight; the client Shamir-
//           shares its secrets and returns them sealed for each neighbour
//   "fit-3" server forwards the sealed shares; the client returns its masked input
//   "fit-4" server names the survivors; the client returns the shares that unmask the sum
//
// The input of client k is its update delta_k = w_k - w_sent, clamped to [-R, R] per
// coordinate, times its weight n_k / N (N: the examples of every client that advertised),
// followed by that weight, fixed-point in Z_(2^32) at scale 2^30 / R. The sum of the
// survivors' inputs can then not wrap (|sum| <= R), and the server divides it by the summed
// weight: the example-weighted mean update, exact up to 2^-30 R per coordinate and per client.
// The inner strategy gets w_sent + mean update as one result, so FedAvg, FedProx, FedAvgM,
// FedAdam... aggregate unchanged.
//
// Dropouts: a client that drops after advertising is left out; one that drops after sharing
// has its pairwise masks removed from its neighbours' shares. If fewer than the threshold
// remain at any stage, the round fails cleanly: the global model stays as it was, the round's
// metrics say secagg_failed = 1 with the reason, and the run goes on with the next round.
//
// Distributed DP (RunSpec dp = distributed): each client clips its update to L2 norm C and
// adds its share N(0, (z C)^2 / n) of the noise (n: the clients that advertised) before
// masking; weights are then equal (1 / n). The sum carries N(0, (z C)^2) as central DP would
// (less by the share of clients that drop after advertising) and the server accounts for it
// with the same RDP accountant.
#include <memory>
#include <optional>

#include "common/secagg/secagg.h"
#include "strategies/wrapped_strategy.h"

namespace fl {

struct SecAggOptions {
  bool sparse = false;           // SecAgg+: a graph of degree k, not the complete graph
  int neighbours = 0;            // SecAgg+'s k; 0: 2 * ceil(log2 n) for the round's n clients (Bell et al.)
  double threshold = 0.6;        // fraction of each neighbourhood's share holders needed (a strict majority at least)
  double clip_range = 8;         // R: the per-coordinate bound of an update
  uint64_t graph_seed = 0;       // the run's seed: every party derives the same graph
  // Distributed DP (0 clip: off).
  double dp_clip = 0;
  double dp_noise = 0;
  double dp_delta = 1e-5;
  void validate() const;
};

// The threshold t for neighbourhoods of `holders` share holders (k neighbours + the client):
// max(floor(holders / 2) + 1, ceil(fraction * holders)), at least 2.
int secagg_threshold(int holders, double fraction);

class SecureAggregation : public WrappedStrategy {
 public:
  SecureAggregation(std::unique_ptr<Strategy> inner, SecAggOptions options);
  std::vector<ClientTask> configure_fit(int round, const std::vector<int>& clients) override;
  std::vector<ClientTask> configure_fit_exchange(int round, int exchange, const std::vector<ClientResult>& results) override;
  Metrics aggregate_fit(int round, const std::vector<ClientResult>& results) override;
  // Every exchange's result is one protocol message and no model (the update travels masked).
  std::string check_result(const ClientTask& task, const ClientResult& result) const override;

  // What the coordinator held of the last round: the masked inputs' running sum, never one input.
  const std::optional<secagg::Server>& server() const { return server_; }

 private:
  std::vector<ClientTask> fail(int round, const std::string& why);

  SecAggOptions options_;
  std::optional<secagg::Server> server_;  // this round's
  std::string failure_;                   // why this round's protocol stopped, if it did
  int advertised_ = 0;
  std::map<int, double> weights_;  // advertiser -> n_k / N
};

// The client half: `inner`'s training, then the protocol's exchanges over its update.
std::shared_ptr<const ClientAlgorithm> secure_aggregation_client(std::shared_ptr<const ClientAlgorithm> inner);

}  // namespace fl
