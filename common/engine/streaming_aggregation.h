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
#include <optional>
#include <string>
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

class WeightedMeanAccumulator;

// What DeferredResultModels::reduce_mean gives the engine: the mean, or the result to blame.
struct ReducedMean {
  ModelState mean;    // the example-weighted mean of the results' models (when rejected < 0)
  int rejected = -1;  // else: the index, among the results given, of the first that could not be folded
  std::string error;  // and why
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
  virtual bool add_result_model(const ClientResult& r, WeightedMeanAccumulator& mean, double weight) {
    return false;
  }
  // The example-weighted mean of `ok`'s models (deferred results of the last execute() that the
  // engine kept, in task order; weights their num_examples) when the pool reduces them itself
  // rather than handing them over one at a time: fedsim's ranks each sum the results they trained
  // and all-reduce the sums (ExactWeightedSum). Either the mean or the first result that could
  // not be folded (the engine rejects it and asks again without it). nullopt: the engine folds
  // the models itself with add_result_model / load_result_model.
  virtual std::optional<ReducedMean> reduce_mean(const std::vector<ClientResult>& ok) { return std::nullopt; }
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

// Part of an example-weighted mean, sum_i (w_i / total) * model_i over the models one process
// holds, summed so that the partial sums of several processes add up to the same bits however the
// models are split among them and in whatever order the sums are added (fedsim's all-reduce: the
// result does not depend on the number of ranks). Each term is rounded to a fixed-point grid and
// the terms are added as 64-bit integers, which is associative: per entry the grid is 2^-S with
// S chosen from the largest |value| of every model in the sum (all processes' magnitudes, agreed
// first) so that the sum cannot overflow 2^62; a term's rounding error is at most 2^-(S+1), some
// 2^-60 of the entry's largest value, far below an fp32 ulp. The mean is rounded once to each
// entry's dtype: within a few fp32 ulps of weighted_average_of (which adds in fp32, in order).
// Two phases: observe() every model to be added (and agree on magnitudes() across processes),
// then add() them.
class ExactWeightedSum {
 public:
  // `layout`: the models' entries (names, shapes, dtypes); total_weight: every process's weights summed.
  ExactWeightedSum(const ModelState& layout, double total_weight);
  // Phase 1: a model this process will add. std::invalid_argument naming the entry when its
  // layout differs or a value is not finite.
  void observe(const ModelState& model);
  // Per entry, the largest |value| observed (double): all-reduce with MAX before the first add().
  at::Tensor& magnitudes() { return magnitudes_; }
  // Phase 2: adds (weight / total) * model (a model of the layout, with values within magnitudes()).
  void add(const ModelState& model, double weight);
  // The fixed-point sums (int64, the layout's elements in entry order): all-reduce with SUM.
  // A process that added nothing contributes zeros (and still takes part in both all-reduces).
  at::Tensor& sums() { return sums_; }
  // The mean in the layout's dtypes and shapes (floats rounded once, integers to the nearest).
  ModelState mean() const;

 private:
  // S per entry, fixed from magnitudes() at the first add() or mean(): no observe() after it.
  const std::vector<int>& scale_bits() const;
  ModelState layout_;
  double total_;
  at::Tensor magnitudes_;
  mutable std::vector<int> scale_bits_;
  at::Tensor sums_;
};

}  // namespace fl
