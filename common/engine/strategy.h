#pragma once
// Strategy (server side) and ClientAlgorithm (client side): the two halves of a federated
// algorithm. Both are transport-agnostic: fedsim's in-process pool and fedcoord's gRPC pool
// drive the same objects.
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/data/dataset.h"
#include "common/engine/payload.h"
#include "common/models/model.h"
#include "common/train/local_trainer.h"

namespace fl {

using StrategyParams = std::map<std::string, double>;

// Everything a client owns while it runs a task. `personal` survives across rounds (and, in
// fedclient, restarts): tensors that never leave the client.
struct ClientContext {
  Model& model;
  const TensorDataset& train;
  const TensorDataset* test = nullptr;  // the client's own test split, when it has one
  TrainOptions train_options;
  std::map<std::string, ModelState>& personal;
  EvalOptions evaluation = {};  // what evaluations measure beyond clean accuracy (robust accuracy)
};

// A fit task's config key: 0 tells the client not to evaluate before training (begin_fit), set by
// the round engine in the rounds EngineOptions::local_eval_every leaves out.
inline constexpr const char* kLocalEvalKey = "local_eval";

class ClientAlgorithm {
 public:
  virtual ~ClientAlgorithm() = default;
  // Default (FedAvg): load the task's model (keeping personal tensors), report accuracy on the
  // local test split before training ("personalized_accuracy"), train, send the new weights.
  virtual ClientResult fit(const ClientTask& task, ClientContext& ctx) const;
  // Evaluates the task's model (merged with personal tensors) on the local test split.
  virtual ClientResult evaluate(const ClientTask& task, ClientContext& ctx) const;
  // A further exchange of a multi-exchange round (task.phase "fit-2", "fit-3", ...): the client
  // half of Strategy::configure_fit_exchange. None by default: an error naming the phase.
  virtual ClientResult exchange(const ClientTask& task, ClientContext& ctx) const;
  // What a pool or a site calls: fit, evaluate or exchange, by the task's phase.
  ClientResult run(const ClientTask& task, ClientContext& ctx) const;

 protected:
  // Loads the task's (possibly partial) model into ctx.model, then the personal tensors.
  virtual void load_task_model(const ClientTask& task, ClientContext& ctx) const;
  // The start of every fit: load_task_model, then, when the client has a test split and the
  // task does not say kLocalEvalKey = 0, the loaded model's accuracy on it
  // ("personalized_accuracy", "personalized_loss", and the number of test examples,
  // "personalized_examples") before any training.
  ClientResult begin_fit(const ClientTask& task, ClientContext& ctx) const;
  // The local training itself: by default one LocalTrainer run with train_hooks(). FedRep
  // overrides it (head phase, then body phase).
  virtual TrainResult local_train(const ClientTask& task, ClientContext& ctx, const TrainOptions& options) const;
  // Extra loss terms, per-step corrections: none by default.
  virtual TrainHooks train_hooks(const ClientTask& task, ClientContext& ctx) const { return {}; }
  // What is sent back and what is kept: by default the full new state, nothing kept.
  virtual void finish(const ClientTask& task, ClientContext& ctx, ClientResult& result) const {}
};

class Strategy {
 public:
  virtual ~Strategy() = default;
  virtual std::string name() const = 0;

  virtual void initialize(const ModelState& initial) { global_ = initial.clone(); }
  // The run's total number of rounds T (the round engine tells it; FedCMD's selection phase
  // lasts rho * T rounds). Ignored by most strategies.
  virtual void set_total_rounds(int rounds) {}
  // The number of clients in the federation (all of them, not only a round's), told by the
  // RoundEngine before each round; SCAFFOLD scales its control-variate update by |S|/N.
  virtual void set_num_clients(int n) {}
  // One task per selected client; by default every client gets the global model.
  virtual std::vector<ClientTask> configure_fit(int round, const std::vector<int>& clients);
  // Multi-exchange rounds (keys, shares, masked inputs...): after exchange k of a round's fit,
  // the tasks of exchange k + 1 for the clients whose exchange k succeeded (`results`, in task
  // order: clients that dropped out between exchanges are the ones missing). Empty, the default:
  // the exchanges are over and aggregate_fit gets the last exchange's results. The engine names
  // the tasks' phase fit_phase_name(k + 1) and seeds them.
  virtual std::vector<ClientTask> configure_fit_exchange(int round, int exchange,
                                                         const std::vector<ClientResult>& results) {
    return {};
  }
  // Whether `result`, a client's answer to `task` (a fit or a further exchange of one), is
  // something aggregate_fit can take: "" when it is, otherwise why not, naming the tensor.
  // The round engine drops a result with a reason before aggregating (a failure of that client,
  // counted in RoundReport::rejected) and fedcoord asks before it acknowledges an upload, so a
  // malformed update is refused, never stored. Default: every model entry of the result is an
  // entry of the task's model, in its order, with its shape and dtype. Strategies whose
  // aggregation needs more say so (FedAvg's family: the whole model; SCAFFOLD: and delta_c).
  // It reads nothing aggregate_fit changes: fedcoord calls it from upload threads, any time.
  virtual std::string check_result(const ClientTask& task, const ClientResult& result) const;
  // Consumes the round's successful results and updates the global model. Returns metrics.
  // It replaces global_ rather than writing into its tensors, and throws before it has changed
  // anything it cannot undo through save_state/load_state: after a throw the engine restores
  // the model and state it had before the call (RoundEngine: a failed aggregation).
  virtual Metrics aggregate_fit(int round, const std::vector<ClientResult>& results) = 0;
  // Federated evaluation (Flower's configure_evaluate / aggregate_evaluate), after aggregation
  // when the run asks for it (fraction_evaluate > 0): by default every selected client
  // evaluates the new global model (with its personal tensors) on its own test split, and the
  // metrics are the example-weighted accuracy and loss over the clients that reported.
  virtual std::vector<ClientTask> configure_evaluate(int round, const std::vector<int>& clients);
  virtual Metrics aggregate_evaluate(int round, const std::vector<ClientResult>& results);
  virtual const ModelState& global_model() const { return global_; }
  // Whether global_model() is a model of the run's architecture, for the server to evaluate on
  // its test set. False for strategies whose clients keep models of their own and share
  // something else (feddistill's per-label logits): federated evaluation measures those.
  virtual bool has_global_model() const { return true; }
  // The client half is not the server's to build: a client asks the strategy registry
  // (create_client_algorithm), so that a site never constructs a server strategy.

  // Everything needed to resume mid-run after a restart (the global model is saved apart).
  virtual std::string save_state() const { return {}; }
  virtual void load_state(const std::string& blob) {}

 protected:
  ModelState global_;
};

// Example-weighted average of the results' models (FedAvg's rule); results must share a layout.
ModelState weighted_average_of(const std::vector<ClientResult>& results);
// check_result's two usual answers. entries_of_task: Strategy's default (above).
// whole_model: the result's model has exactly the task's layout (names, order, shapes, dtypes).
std::string result_model_entries_of_task(const ClientTask& task, const ClientResult& result);
std::string result_model_is_whole(const ClientTask& task, const ClientResult& result);
// Example-weighted mean of a metric over the results that report it (NaN when none does).
double weighted_metric(const std::vector<ClientResult>& results, const std::string& key);

}  // namespace fl
