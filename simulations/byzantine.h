#pragma once
// Byzantine clients for fedsim: a seeded fraction of the virtual clients attacks the federation,
// to measure what a robust strategy (fedmedian, trimmedmean, multikrum, normclip, a run's
// max_update_norm) withstands. Attacks, with delta = w_k - w_sent the client's honest update:
//   sign-flip   sends w_sent - scale * delta          (Fang et al. 2020's "sign flipping", scaled)
//   scale       sends w_sent + scale * delta          (a boosted update, Bhagoji et al. 2019)
//   noise       sends w_sent + scale * ||delta|| * g / ||g||, g ~ N(0, I)  (a random direction)
//   label-flip  trains honestly on labels y -> C - 1 - y (data poisoning; the update is not touched)
// The update attacks need the strategy to send and receive whole models of one layout.
#include <memory>
#include <string>
#include <vector>

#include "common/data/dataset.h"
#include "common/engine/strategy.h"

namespace fl {

struct ByzantineOptions {
  double fraction = 0;              // of the clients, rounded to the nearest count (0: none)
  std::string attack = "sign-flip";  // byzantine_attack_names()
  double scale = 10;                // sign-flip, scale, noise: the factor above
  uint64_t seed = 0;                // which clients attack, and the noise attack's directions
  // Throws std::invalid_argument naming the bad field.
  void validate() const;
};

const std::vector<std::string>& byzantine_attack_names();

// The attackers among n clients: round(fraction * n) of them, drawn by a seeded shuffle, sorted.
std::vector<int> byzantine_clients(int n, const ByzantineOptions& options);

// The attacker's client half for an update attack: `honest`'s fit, then the update corrupted;
// evaluations and further exchanges are `honest`'s. Null for label-flip (an honest algorithm
// on flipped data: flip_labels).
std::shared_ptr<const ClientAlgorithm> byzantine_algorithm(std::shared_ptr<const ClientAlgorithm> honest,
                                                           const ByzantineOptions& options);

// y -> num_classes - 1 - y, in place.
void flip_labels(TensorDataset& data);

}  // namespace fl
