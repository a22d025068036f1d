#pragma once
// RoundEngine: select -> configure -> execute on clients -> aggregate -> evaluate, one round at
// a time. It talks to clients only through a ClientPool (in-process virtual clients in fedsim,
// gRPC-connected sites in fedcoord), so a strategy works unchanged in both.
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "common/engine/payload.h"
#include "common/engine/strategy.h"
#include "common/train/local_trainer.h"

namespace fl {

class ClientPool {
 public:
  virtual ~ClientPool() = default;
  virtual int num_clients() const = 0;
  // Runs the tasks (concurrently where the pool can) and returns one result per task, in the
  // tasks' order; a client that failed or missed the deadline yields ok == false.
  virtual std::vector<ClientResult> execute(const std::vector<ClientTask>& tasks) = 0;
  // What the pool keeps for its clients between rounds (fedsim: each virtual client's personal
  // tensors), for the run's checkpoints; pools whose clients keep their own state (fedcoord's
  // sites) have none. load_state takes what save_state gave (an empty state: nothing to restore).
  virtual ModelState save_state() const { return {}; }
  virtual void load_state(const ModelState& state) {}
};

// How a round's clients train.
// - kScatterGather (FedAvg's, NVIDIA FLARE's ScatterAndGather): every client starts from the
//   same model, concurrently, and the strategy aggregates all of their results once.
// - kCyclic (cyclic weight transfer, Chang et al. 2018; FLARE's CyclicController): the clients
//   train one after another and the strategy aggregates after each of them, so a client starts
//   from what the previous one sent (its own personal layers, where the strategy keeps any).
//   A client that fails is skipped: the next one gets the model it would have had.
enum class Workflow { kScatterGather, kCyclic };
// "scatter-gather" | "cyclic" (workflow_names(), for flags and settings); anything else throws
// std::invalid_argument naming the value.
Workflow parse_workflow(const std::string& name);
std::string workflow_name(Workflow w);
const std::vector<std::string>& workflow_names();

struct EngineOptions {
  int rounds = 10;
  double fraction = 1.0;  // of all clients, per round
  int min_clients = 1;
  uint64_t seed = 0;
  int eval_every = 1;     // global evaluation every k rounds (and always after the last)
  // The clients' evaluation, before they train, of the model they receive on their own test
  // split (personalized accuracy) in rounds k, 2k, ...; 0: never. Other rounds' fit tasks carry
  // config kLocalEvalKey = 0, which ClientAlgorithm::begin_fit obeys.
  int local_eval_every = 1;
  // Federated evaluation after each round's aggregation: this fraction of all clients (seeded,
  // at least one) evaluates the new global model on its own data (Strategy::configure_evaluate).
  // 0: none.
  double fraction_evaluate = 0;
  // When not empty, round r takes the clients schedule[r - 1] instead of sampling them: a
  // replayed stream (another framework's, to compare on the very same rounds). fraction,
  // min_clients and seed then play no part in the selection.
  std::vector<std::vector<int>> schedule;
  // Cyclic rounds go through the clients in the schedule's order; sampled ones in a seeded
  // shuffle of the selection (RoundReport::selected is that order).
  Workflow workflow = Workflow::kScatterGather;
  // > 0: a result whose model lies farther than this (L2, floating tensors) from the model its
  // client was sent is rejected before aggregation: a failure of that client, with the reason
  // (RoundReport::failure_reasons), counted in RoundReport::rejected. 0: no bound.
  double max_update_norm = 0;
  // > 0: a result claiming more training examples than this (its FedAvg weight) is rejected
  // before aggregation, like an oversized update. 0: no limit beyond result_problem's.
  int64_t max_examples = 0;
  // Throws std::invalid_argument naming the bad field (for the schedule: the round and client).
  void validate(int num_clients) const;
};

struct RoundReport {
  int round = 0;
  std::vector<int> selected;
  int failures = 0;
  std::vector<int> dropped;            // selected clients that delivered nothing (failed, straggled)
  std::map<int, std::string> failure_reasons;  // dropped client -> why (its error, or the pool's)
  int64_t samples = 0;                 // training samples processed by the clients
  double train_loss = 0;               // example-weighted over the clients
  double personalized_accuracy = -1;   // mean over clients of local-test accuracy before training; -1: none
  // The same pooled over the clients' test examples (correct / examples; FL-bench's convention).
  double personalized_accuracy_pooled = -1;
  // Its denominator, so that a window of rounds can be pooled too (sum of accuracy * examples
  // over sum of examples); 0 when no client reported one.
  double personalized_examples = 0;
  double global_accuracy = -1;         // -1 when not evaluated this round
  double global_loss = -1;
  Metrics global_metrics;              // the global evaluation's further metrics (robust_accuracy_pgd, ...)
  double wall_s = 0;                   // select + train + aggregate (evaluation excluded)
  double aggregate_s = 0;              // of which the strategy's aggregation (screening included)
  double eval_s = 0;
  Metrics strategy_metrics;            // a cyclic round's: those of its last aggregation
  int exchanges = 1;                   // fit exchanges in the round (> 1: a multi-exchange strategy)
  // Strategy::aggregate_evaluate's metrics (accuracy, loss, clients) when the round had a
  // federated evaluation; empty otherwise. Clients whose evaluation failed are counted apart.
  Metrics federated_evaluation;
  int evaluate_failures = 0;
  // Results refused before aggregation (result_problem, EngineOptions::max_update_norm) or
  // dropped because aggregating them threw; counted in failures too, each with its reason.
  int rejected = 0;
  // Not empty when aggregation threw and no single result was to blame: the round keeps the
  // model (and strategy state) it started with, and this says why.
  std::string aggregation_error;
};

using GlobalEvaluator = std::function<EvalResult(const ModelState&)>;

// Why a client's result for `task` cannot be aggregated, or "" when it can: the checks every
// result passes whatever the strategy, then Strategy::check_result. num_examples (the result's
// weight) in [1, max_examples] (max_examples 0: no upper limit; evaluate results may report 0),
// finite metrics and a "samples" metric that is a whole count below 2^53, and finite floating
// tensors (an fp32 NaN, an int8 q * scale that overflowed) in the model and every extra state.
std::string result_problem(const Strategy& strategy, const ClientTask& task, const ClientResult& result,
                           int64_t max_examples = 0);
// Marks a result refused before aggregation: not ok, error "update rejected: <why>", metric
// "rejected" = 1 (what RoundReport::rejected counts).
void reject_result(ClientResult& result, const std::string& why);

class RoundEngine {
 public:
  RoundEngine(Strategy& strategy, ClientPool& pool, EngineOptions options, GlobalEvaluator evaluate = {});
  // Seeded client selection: max(min_clients, round(fraction * N)) distinct clients, sorted.
  std::vector<int> select(int round) const;
  RoundReport run_round(int round);
  const EngineOptions& options() const { return options_; }

 private:
  // configure_fit -> seeds -> the pool, then the strategy's further exchanges with the clients
  // that got through each one: one round's training of `clients`. Returns the failures of every
  // exchange and the last exchange's results.
  std::vector<ClientResult> train(int round, const std::vector<int>& clients, int* exchanges);
  // configure_evaluate -> the pool -> aggregate_evaluate, into the report.
  void evaluate_on_clients(int round, RoundReport& report);
  // Marks the results that fail result_problem for their task (by client id) as rejected.
  void screen(const std::vector<ClientTask>& tasks, std::vector<ClientResult>& results) const;
  // aggregate_fit, undone when it throws (the model and state from before are put back). The
  // results it throws on are then found by leaving one out at a time, dropped from `ok` into the
  // report's failures as rejected, and the rest aggregated; when no single one is to blame the
  // round keeps its starting model and report.aggregation_error says why.
  void aggregate_guarded(int round, std::vector<ClientResult>& ok, RoundReport& report);

  Strategy& strategy_;
  ClientPool& pool_;
  EngineOptions options_;
  GlobalEvaluator evaluate_;
};

// Deterministic 64-bit mixing of (seed, a, b) for per-round, per-client seeds.
uint64_t mix_seed(uint64_t seed, uint64_t a, uint64_t b = 0);

}  // namespace fl
