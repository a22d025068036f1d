#pragma once
// LocalTrainer: trains a Model on a TensorDataset resident on the training device. Batches are
// gathered with index_select from the resident tensors (no per-sample data loader), and
// metrics accumulate on the device so that a step never waits for the host.
#include <cstdint>
#include <functional>
#include <string>

#include "common/core/model_state.h"
#include "common/data/dataset.h"
#include "common/models/model.h"

namespace fl {

struct TrainOptions {
  int64_t epochs = 1;
  int64_t max_steps = 0;  // > 0: stop after this many optimizer steps (across epochs)
  int64_t batch_size = 32;
  std::string optimizer = "sgd";  // sgd | adam
  double lr = 0.01;
  double momentum = 0.0;
  double weight_decay = 0.0;
  double adam_beta1 = 0.9;
  double adam_beta2 = 0.999;
  uint64_t seed = 0;  // shuffling order
  // Validates the options; throws std::invalid_argument naming the bad field.
  void validate() const;
};

struct TrainHooks {
  // Extra loss term added to the batch loss (FedProx proximal term, contrastive terms, ...).
  std::function<at::Tensor(Model&)> extra_loss;
  // Extra loss term on the batch's outputs (logits) and labels: distillation towards per-label
  // targets (FedDistill), ... Like extra_loss, it is not part of the reported training loss.
  std::function<at::Tensor(const at::Tensor& logits, const at::Tensor& labels)> output_loss;
  // Called after each optimizer step (SCAFFOLD's control-variate correction, ...).
  std::function<void(Model&)> after_step;
  // Called with each batch before the step (FedCMD's layer votes, ...).
  std::function<void(Model&, const at::Tensor& x, const at::Tensor& y)> on_batch;
  // Only these parameters are optimised when non-empty (FedRep's head/body phases).
  std::vector<at::Tensor> trainable;
};

struct TrainResult {
  ModelState state;          // the model's state after training
  int64_t num_examples = 0;  // distinct training examples (the dataset size)
  int64_t samples_seen = 0;  // examples processed, counting repeats across epochs
  int64_t steps = 0;
  double loss = 0;           // mean training loss over the samples seen
  double accuracy = 0;       // training accuracy over the samples seen
  double wall_s = 0;
};

struct EvalResult {
  int64_t num_examples = 0;
  double loss = 0;
  double accuracy = 0;
};

class LocalTrainer {
 public:
  explicit LocalTrainer(TrainOptions options);
  const TrainOptions& options() const { return options_; }

  // Trains `model` in place on `data` (moved to the model's device when it is elsewhere).
  // Throws std::runtime_error when training diverged (a non-finite loss or weights).
  TrainResult train(Model& model, const TensorDataset& data, const TrainHooks& hooks = {}) const;
  static EvalResult evaluate(Model& model, const TensorDataset& data, int64_t batch_size = 1024);

 private:
  TrainOptions options_;
};

}  // namespace fl
