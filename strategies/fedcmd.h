#pragma once
// FedCMD (Chen et al., "Towards Optimal Customized Architecture for Heterogeneous Federated
// Learning with Contrastive Cloud-Edge Model Decoupling", IEEE TC 2024).
//
// Selection phase (the first phi = rho * T rounds): every client votes, on every local
// mini-batch, for the layer after the feature extractor whose output moves most towards the
// labels and least away from the input (Wasserstein distances between 1-D Gaussians fitted
// to min-max normalised tensors); the coordinator tallies each round's majority layer and
// then fixes the most-voted layer l*. Meanwhile FedAvg on every shared layer.
//
// Afterwards: layers before l* are averaged (FedAvg), l* is personal (never leaves a client;
// only its delta does), and the layers after l* are personalised per client, weighted by the
// similarity Phi_ij = max(0, mean row cosine of the l* deltas of clients i and j).
// BatchNorm statistics always stay on the clients.
#include <ATen/core/Tensor.h>

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "common/engine/strategy.h"

namespace fl {

enum class FedCmdDistance { kW2 = 0, kMean = 1 };  // kMean: the public code's variant (no sigma term)
// What l*'s delta (the input of Phi) is measured from. kShared: the shared copy of l* that every
// personal copy started from (the global l* when it was fixed; the server keeps sending it), so
// Phi compares where the clients' personal layers have gone. kRound: the client's own l* at the
// start of this round's training, i.e. only this round's SGD steps. kInit (the public code's
// reference): the model's initial l*, i.e. everything l* has learnt, the shared selection
// phase included; the client sends its kShared delta and the server adds l*(fixed) - l*(initial).
enum class FedCmdDelta { kShared = 0, kRound = 1, kInit = 2 };
// How client i's layers after l* are built. kPhi (the paper): sum_j Phi_ij w_j / sum_j Phi_ij
// over the participants j of i's round (Phi_ii = 1). kSoftmaxAll (the public code's variant):
// softmax_j(Phi_ij) over every client's latest upload, computed when i is next sent a task.
// kShared: the round's example-weighted average, the same for every client (FedAvg on them),
// which is what the public code's softmax computes in effect (see docs/results.md).
enum class FedCmdHead { kPhi = 0, kSoftmaxAll = 1, kShared = 2 };
// How the layers before l* are averaged. kRound (the paper): over the round's participants.
// kPopulation (the public code's intent): over every client's latest upload since the phase
// ended, example-weighted, so the shared body moves by a tenth of the population a round and
// the personal layers a client trained rounds ago still fit it.
enum class FedCmdBody { kRound = 0, kPopulation = 1 };

// ---- the layer-selection maths (exposed for tests) ----
struct Gaussian1d {
  double mean = 0, std = 0;
};
// Min-max normalises the whole tensor, then fits a Gaussian (mean, unbiased std). A constant
// tensor gives NaN (a degenerate batch).
Gaussian1d fit_gaussian(const at::Tensor& t);
// 2-Wasserstein distance between two 1-D Gaussians: sqrt(dmu^2 + dsigma^2); kMean: |dmu|.
double gaussian_distance(const Gaussian1d& a, const Gaussian1d& b, FedCmdDistance mode);
// outs = {o_0, o_1, ..., o_L}: o_0 the feature extractor's output, o_l candidate l's output.
// Returns score_l for l = 1..L (L entries): | |dy_l - dy_(l-1)| - |dx_l - dx_(l-1)| | with
// dx_l = d(o_l, x), dy_l = d(o_l, y) (y: the labels as floats).
std::vector<double> fedcmd_layer_scores(const std::vector<at::Tensor>& outs, const at::Tensor& x,
                                        const at::Tensor& y, FedCmdDistance mode);
// argmin of the scores (0-based candidate index, first on ties); -1 when any score is NaN.
int fedcmd_vote(const std::vector<double>& scores);
// Mean over rows of the cosine between a's and b's rows, clamped at 0 (Phi_ij). Row k of a
// layer is output unit k: the entries with the same first dimension (weight and bias) are
// concatenated along the row. a and b share one layout.
double fedcmd_similarity(const ModelState& a, const ModelState& b);
// Top-level groups of a state in order of first appearance ("fc1.weight" -> "fc1").
std::vector<std::string> state_groups(const ModelState& state);
// Index of the first candidate group: the group after the last one holding a 4-D weight
// (a convolution), 0 when there is none.
int default_first_candidate(const ModelState& state, const std::vector<std::string>& groups);

constexpr const char* kFedCmdVotePrefix = "fedcmd_vote_";  // + candidate group name: a count
constexpr const char* kFedCmdDeltaKey = "fedcmd_delta";     // ClientResult.tensors: l*'s delta

class FedCmd : public Strategy {
 public:
  // rho in (0, 1]; first_candidate < 0: after the last convolution.
  FedCmd(double rho, FedCmdDistance distance, int first_candidate = -1, FedCmdDelta delta = FedCmdDelta::kShared,
         FedCmdHead head = FedCmdHead::kPhi, FedCmdBody body = FedCmdBody::kRound);
  std::string name() const override { return "fedcmd"; }

  void initialize(const ModelState& initial) override;
  void set_total_rounds(int rounds) override;
  std::vector<ClientTask> configure_fit(int round, const std::vector<int>& clients) override;
  Metrics aggregate_fit(int round, const std::vector<ClientResult>& results) override;
  std::string save_state() const override;
  void load_state(const std::string& blob) override;

  int selection_rounds() const;  // phi = max(1, round(rho * T))
  const std::vector<std::string>& candidates() const { return candidates_; }
  const std::string& selected_layer() const { return selected_; }  // empty while selecting
  const std::map<std::string, int64_t>& tally() const { return tally_; }
  // Phi_ij (1 on the diagonal, 0 for pairs never seen together).
  double similarity(int i, int j) const;
  // Client i's personalised layers after l*, once it has participated after the phase.
  const ModelState* personalized(int client) const;

 private:
  bool is_selected_entry(const std::string& name) const;  // belongs to l*
  bool is_after_selected(const std::string& name) const;  // belongs to a group after l*
  // The entries of groups before l* (body) and after it (post), in model order.
  void split_around_selected(std::vector<std::string>& body, std::vector<std::string>& post) const;
  ModelState softmax_head(int client) const;               // kSoftmaxAll: client's layers after l*
  std::vector<std::string> candidate_names() const;        // the candidates' parameters (what a delta holds)

  double rho_;
  FedCmdDistance distance_;
  int first_override_;
  FedCmdDelta delta_;
  FedCmdHead head_;
  FedCmdBody body_;
  int total_rounds_ = 0;
  std::vector<std::string> groups_, candidates_;
  int first_ = 0;
  std::map<std::string, int64_t> tally_;       // candidate -> rounds it was the majority
  std::string selected_;                       // l*
  std::map<std::pair<int, int>, double> phi_;  // (i < j) -> Phi_ij
  std::map<int, ModelState> post_;             // client -> its layers after l* (kPhi)
  std::map<int, ModelState> latest_;           // client -> its last upload of them (kSoftmaxAll)
  ModelState initial_candidates_;              // the candidates' initial parameters (kInit)
  struct Body {
    ModelState layers;  // the client's last upload of the layers before l*
    int64_t examples = 0;
  };
  std::map<int, Body> bodies_;  // client -> its body (kPopulation)
};

}  // namespace fl
