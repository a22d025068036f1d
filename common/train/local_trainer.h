#pragma once
// LocalTrainer: trains a Model on a TensorDataset resident on the training device. Batches are
// gathered with index_select from the resident tensors (no per-sample data loader), and
// metrics accumulate on the device so that a step never waits for the host.
#include <cstdint>
#include <functional>
#include <map>
#include <string>

#include "common/core/model_state.h"
#include "common/data/dataset.h"
#include "common/models/model.h"
#include "common/train/adversarial.h"

namespace fl {

// Federated adversarial learning (FAL, Li et al.): every local step first crafts adversarial
// versions of its batch against the current model (the inner maximisation, `attack`), then
// takes the optimizer step on them (the outer minimisation). The strategy aggregates as usual,
// so it combines with any of them.
struct AdversarialTraining {
  bool enabled = false;
  AttackOptions attack;
  // pgd:    (1 - clean_weight) * CE(f(x_adv), y) + clean_weight * CE(f(x), y) (Madry et al. at 0);
  // trades: CE(f(x), y) + beta * KL(f(x) || f(x_adv)), x_adv maximising the KL (Zhang et al. 2019).
  std::string loss = "pgd";
  double clean_weight = 0;
  double beta = 6;
};
const std::vector<std::string>& adversarial_loss_names();

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
  uint64_t seed = 0;  // shuffling order (and the attacks' random starts)
  AdversarialTraining adversarial;
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

// Training metrics are those of the batch the loss trains on: the adversarial examples under
// the pgd loss, the clean ones under trades and without adversarial training.
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
  // Beyond clean accuracy: "robust_accuracy_pgd", "robust_accuracy_fgsm" (EvalOptions::attacks).
  std::map<std::string, double> metrics;
};

class LocalTrainer {
 public:
  explicit LocalTrainer(TrainOptions options);
  const TrainOptions& options() const { return options_; }

  // Trains `model` in place on `data` (moved to the model's device when it is elsewhere).
  // Throws std::runtime_error when training diverged (a non-finite loss or weights).
  TrainResult train(Model& model, const TensorDataset& data, const TrainHooks& hooks = {}) const;
  // batch_size 0: eval_batch_size(the model's device).
  static EvalResult evaluate(Model& model, const TensorDataset& data, int64_t batch_size = 0);
  // Clean accuracy and loss on all of `data`, plus the accuracy under each of options.attacks.
  static EvalResult evaluate(Model& model, const TensorDataset& data, const EvalOptions& options);

 private:
  TrainOptions options_;
};

}  // namespace fl
