#pragma once
// Streaming aggregation (issue 20): a coordinator averaging a round's updates need not hold them
// all in memory. Every update fedcoord accepts is on disk before it is acknowledged, so the round
// engine can fold the updates into one example-weighted mean one at a time, in task order, reading
// each back when its turn comes. Memory: the global model, the mean being built and one update,
// whatever the number of clients; the order, and so every bit of the result, does not depend on
// the order in which the updates arrived.
//
// Two capabilities, each declared by the object that has it (the engine asks with dynamic_cast):
// - a Strategy whose aggregation depends on the results' models only through their
//   example-weighted mean says so with MeanAggregation (FedAvg, FedProx, FedAvgM, FedAdam, ...).
//   Strategies that need every update (median, Krum, FedCMD's similarities, clipping) do not.
// - a ClientPool that can hand the results' models over later, one at a time, implements
//   DeferredResultModels (fedcoord's RemoteClientPool: they are in the StateStore).
// The engine streams a round when it has both, the round is scatter-gather and no update-norm
// bound needs each update against its task (EngineOptions::max_update_norm == 0).
#include <cstdint>
#include <vector>

#include "common/engine/payload.h"

namespace fl {

class MeanAggregation {
 public:
  virtual ~MeanAggregation() = default;
  // The strategy's aggregate_fit(round, results) for results whose models (and extra tensors)
  // were folded into `mean` = weighted_average_of(results): the results come without them.
  // aggregate_fit of such a strategy is aggregate_mean(round, weighted_average_of(results), results)
  // (FedAvg's and FedOpt's aggregate_fit are final: a subclass changes aggregate_mean, or the
  // rounds that stream would bypass it).
  virtual Metrics aggregate_mean(int round, ModelState mean, const std::vector<ClientResult>& results) = 0;
};

class DeferredResultModels {
 public:
  virtual ~DeferredResultModels() = default;
  // From the next execute() on, until switched off: the pool's successful fit results come back
  // without their model and tensors (num_examples and metrics only), after the pool itself has
  // checked each one with the run's result_problem (so that the engine need not screen them).
  // Returns whether deferral is in force: a pool that cannot check results keeps returning whole
  // results (false). Switching it off, after the round's aggregation, releases what the pool kept
  // for reading the models back.
  virtual bool defer_result_models(bool on) = 0;
  // Whether the last execute()'s results were deferred.
  virtual bool result_models_deferred() const = 0;
  // Fills r.model and r.tensors of a deferred result of the last execute() (r.client_id says
  // whose). Throws std::runtime_error when it cannot be read back (its client then counts as
  // failed for the round).
  virtual void load_result_model(ClientResult& r) = 0;
  // The same result folded into `mean` with `weight` piece by piece (WeightedMeanAccumulator's
  // range calls), never whole in memory, when the pool can (a model alone, every tensor verbatim
  // fp32); false, having added nothing, when it cannot: the engine then loads the whole model.
  // Throws like load_result_model, possibly after adding part of it (the engine then folds the
  // round again without it).
  virtual bool add_result_model(const ClientResult& r, class WeightedMeanAccumulator& mean, double weight) {
    return false;
  }
};

// sum_i w_i * model_i / sum_i w_i, folded one model at a time in the order they are added;
// bit-identical to ModelState::weighted_average of the same models and weights (the same
// normalised weights, the same order of fp32 additions, integer entries in double, rounded once).
// The total weight is known before the first model (the results' example counts).
class WeightedMeanAccumulator {
 public:
  explicit WeightedMeanAccumulator(double total_weight);
  // Adds weight * model; the first model sets the layout, the others must match it
  // (std::invalid_argument naming the entry).
  void add(const ModelState& model, double weight);
  int count() const { return count_; }
  // Models added piece by piece (a reader that never holds one whole): begin_model(layout) with
  // the models' layout (every entry floating, packed: ModelState::flat), then add_flat_range for
  // every element of the packed floats, in any pieces, then end_model(). The same bits as add().
  // begin_model throws std::invalid_argument for a layout that is not the mean's or not all
  // packed floats.
  void begin_model(const ModelState& layout);
  void add_flat_range(int64_t offset, const at::Tensor& values, double weight);
  void end_model();
  // The mean (throws std::logic_error when nothing was added). Call once.
  ModelState take();

 private:
  double total_;
  int count_ = 0;
  ModelState mean_;
  std::vector<at::Tensor> int_acc_;  // integer entries, summed in double
};

}  // namespace fl
