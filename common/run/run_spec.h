#pragma once
// RunSpec: the one definition of a federated run (model, local training, strategy and its
// parameters, workflow, rounds, selection, evaluation, update encoding). Every setting is
// declared once, in run_spec.cpp's field table; from that table come
//   - the command-line flags of fedsim, fedcoord and `fedctl runs create` (--local-epochs ...),
//     and so their YAML keys (local_epochs: 2), with help texts and defaults;
//   - the JSON form (to_json / apply_json) that fedcoord stores with the run, that `fedctl runs
//     create` sends, and that every client receives unchanged when it registers;
//   - the validation, with one error format whatever the source: "run setting 'lr' = -1: ...".
// A new run setting is one line in that table (plus its member here).
//
// SimConfig (fedsim) = simulation options + RunSpec; CoordinatorConfig (fedcoord) = server
// options + RunSpec; fedclient takes its RunSpec from the coordinator.
#include <nlohmann/json.hpp>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/engine/round_engine.h"
#include "common/engine/strategy.h"
#include "common/models/model.h"
#include "common/train/local_trainer.h"

namespace CLI {
class App;
class Option;
}  // namespace CLI

namespace fl {

struct RunSpec {
  // The model every client trains.
  std::string model = "cnn";
  std::vector<int64_t> hidden{200, 200};        // mlp hidden widths
  std::vector<int64_t> input_shape{1, 28, 28};  // deployments: one example's shape, when no evaluation set tells it
  int64_t num_classes = 10;                     // deployments: likewise
  // Local training on every client.
  int64_t local_epochs = 1;
  int64_t local_steps = 0;  // > 0: exactly this many optimizer steps, whatever local_epochs says
  int64_t batch_size = 64;
  std::string optimizer = "sgd";
  double lr = 0.01;
  double momentum = 0.0;
  double weight_decay = 0.0;
  // Federated adversarial learning (FAL): local training on PGD examples (AdversarialTraining).
  std::string local_training = "standard";  // standard | fal
  double fal_epsilon = 0.1;   // L-inf radius in raw input units (pixels in [0, 1])
  int64_t fal_steps = 10;     // PGD steps of the inner maximisation
  double fal_alpha = 0;       // PGD step; 0: 2.5 * fal_epsilon / fal_steps
  std::string fal_loss = "pgd";  // pgd | trades
  double fal_clean_weight = 0;   // pgd loss: weight of the clean examples' loss
  double fal_beta = 6;           // trades loss: weight of the robustness (KL) term
  // Robust evaluation of the global model (server and federated): accuracy under attack.
  std::string eval_attack = "none";  // none | fgsm | pgd | all
  double eval_epsilon = 0.1;
  int64_t eval_pgd_steps = 20;
  int64_t eval_attack_examples = 0;  // attack the first N test examples (0: all)
  // Aggregation: the strategy and its parameters (every one, defaults filled, after validate()).
  std::string strategy = "fedavg";
  StrategyParams strategy_params;
  // Client-level differential privacy (DP-FedAvg) around a FedAvg-family strategy.
  std::string dp = "none";     // none | central | distributed (with secagg)
  double dp_clip = 1.0;        // C: L2 bound of one client's update
  double dp_noise = 1.0;       // z: Gaussian noise std on the sum is z * C
  double dp_delta = 1e-5;      // delta of the reported (epsilon, delta)
  // Secure aggregation around a FedAvg-family strategy: the coordinator sees only the sum.
  std::string secagg = "none";   // none | secagg (complete graph) | secagg+ (sparse graph)
  int64_t secagg_neighbours = 0;  // secagg+: degree k (0: 2 ceil(log2 n))
  double secagg_threshold = 0.6;  // fraction of each neighbourhood needed to unmask (a strict majority at least)
  double secagg_clip_range = 8;   // per-coordinate bound of an update (fixed-point range)
  // Updates whose L2 distance from the model the client was sent exceeds this are rejected (0: no bound).
  double max_update_norm = 0;
  // A client's example count is its update's weight: no client may claim more (at registration
  // or in an update).
  int64_t max_examples_per_client = 1000000000;
  // Rounds and selection.
  std::string workflow = "scatter-gather";
  int rounds = 10;
  double fraction = 1.0;
  int min_clients = 1;
  // Deployments: the run's clients by certificate name, client i being client_names[i] (its seeds,
  // its place in every aggregation), so that one seed gives one run, bit for bit, whatever
  // order the sites register and upload in; a certificate not named here is refused. Empty: any
  // client the CA certified, indexed in the order they first register.
  std::vector<std::string> client_names;
  int eval_every = 1;  // evaluate the global model every k rounds (0: only after the last)
  int local_eval_every = 1;  // clients evaluate what they receive before training every k rounds (0: never)
  double fraction_evaluate = 0;  // federated evaluation after each round by this fraction of clients (0: none)
  uint64_t seed = 0;
  // Deployments: how clients encode their updates.
  std::string update_encoding = "fp32";
  double topk_fraction = 0.01;

  // The local-training rule, decided here and nowhere else: local_steps > 0 trains exactly that
  // many optimizer steps (as many epochs as that takes); otherwise local_epochs full passes.
  TrainOptions train_options() const;
  // What evaluations measure beyond clean accuracy (eval_attack: robust accuracy under FGSM, PGD).
  EvalOptions eval_options() const;
  // The round engine's options (rounds, selection, evaluation cadence, workflow).
  EngineOptions engine_options() const;
  // The run's strategy: strategy + strategy_params, wrapped in DifferentialPrivacy when dp is on.
  std::unique_ptr<Strategy> create_strategy() const;
  // Its client half: the strategy's, under secure aggregation when secagg is on.
  std::shared_ptr<const ClientAlgorithm> create_client_algorithm() const;
  // The model to build when no data set tells its shape (deployments: input_shape, num_classes);
  // `path` is this machine's TorchScript file, if any.
  ModelSpec model_spec(const std::string& path = {}) const;

  // Checks every field, completes strategy_params with the strategy's defaults and asks the
  // strategy whether it can work with these settings (FedRep: head_epochs < local epochs).
  // Throws std::invalid_argument naming the setting, or with the strategy's reason.
  void validate();
  // Every setting (strategy parameters by name, enums by their names).
  nlohmann::ordered_json to_json() const;
  // Applies the keys of a JSON object over this spec, then validate(). A changed strategy
  // without strategy_params starts from the new strategy's defaults. Unknown keys, wrong
  // types and out-of-range values throw std::invalid_argument naming the key and the value.
  void apply_json(const nlohmann::json& settings);
  static RunSpec from_json(const nlohmann::json& settings);
};

// Which programs show a setting as a flag (all of them accept it in JSON).
enum RunScope : unsigned { kRunScopeSim = 1u, kRunScopeDeploy = 2u, kRunScopeAll = 3u };

// The run settings' keys, in table order (for help texts and errors).
std::vector<std::string> run_setting_keys();
const std::vector<std::string>& update_encoding_names();

// The RunSpec's flags on a CLI11 app. The flags write into `spec`, whose values are the
// program's defaults; values are checked by the same rules as JSON. Strategy parameters come
// from --strategy-param KEY=VALUE (repeatable) and from the dedicated flags that strategies
// declare (--mu, --fedcmd-distance ...). The app must outlive this object's use.
class RunOptions {
 public:
  RunOptions(CLI::App& app, RunSpec& spec, unsigned scope);
  ~RunOptions();
  // After parsing: the strategy parameters resolved, the spec validated. Throws
  // std::invalid_argument (e.g. "--mu is a parameter of fedprox, not of the run's strategy fedavg").
  RunSpec& finish();
  // Only what the command line (or config file) gave, as JSON: the overrides `fedctl runs
  // create` sends. Strategy parameters go as text when no --strategy names their strategy.
  nlohmann::ordered_json given_json() const;

 private:
  StrategyParams resolved_params() const;

  CLI::App& app_;
  RunSpec& spec_;
  std::vector<std::string> param_entries_;
  std::map<std::string, std::string> param_flags_;  // flag name -> value text
  std::map<std::string, CLI::Option*> options_;      // setting key -> its flag
};

}  // namespace fl
