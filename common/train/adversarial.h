#pragma once
// Adversarial examples against a model: PGD (Madry et al. 2018) and FGSM (Goodfellow et al.
// 2015) under an L-inf radius, for adversarial training (FAL, Li et al., "Federated Adversarial
// Learning: A Framework with Convergence Analysis": each client's inner loop crafts PGD examples
// against its current model, the outer loop trains on them) and for robust evaluation.
//
// Radii and steps are in the data's raw units (pixels in [0, 1] for Fashion-MNIST) and are
// converted with the data set's FeatureDomain; examples are clamped to the domain's box.
// Deterministic: the random start draws from a CPU generator seeded by `seed`, so an attack on
// the same model and batch gives the same examples on any device.
#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "common/data/dataset.h"

namespace fl {

class Model;

struct AttackOptions {
  std::string method = "pgd";  // pgd | fgsm (one step of size epsilon from x, no random start)
  double epsilon = 0.1;        // L-inf radius, raw units
  double alpha = 0;            // PGD step, raw units; 0: 2.5 * epsilon / steps (Madry et al.)
  int64_t steps = 10;          // PGD iterations
  bool random_start = true;    // PGD starts from a uniform point of the ball
  // Throws std::invalid_argument naming the bad field.
  void validate() const;
  double step_size() const { return alpha > 0 ? alpha : 2.5 * epsilon / static_cast<double>(steps); }
  // "pgd-20 (eps 0.1)", "fgsm (eps 0.1)": for metric docs and logs.
  std::string describe() const;
  // The metric key of the accuracy under this attack: "robust_accuracy_pgd", "robust_accuracy_fgsm".
  std::string metric_key() const { return "robust_accuracy_" + method; }
};
const std::vector<std::string>& attack_method_names();

// The objective an attack maximises.
enum class AttackObjective {
  kCrossEntropy,  // CE(f(x_adv), y): PGD / FGSM (y = the labels)
  kKlToClean,     // KL(softmax f(x) || softmax f(x_adv)): TRADES (Zhang et al. 2019); y unused
};

// Adversarial versions of `x` (on x's device, detached): |x_adv - x|_inf <= epsilon * unit and
// x_adv inside [domain.lo, domain.hi]. The model is put in eval mode while crafting and its mode
// restored; parameter gradients are left untouched.
at::Tensor craft_adversarial(Model& model, const at::Tensor& x, const at::Tensor& y, const AttackOptions& attack,
                             const FeatureDomain& domain, uint64_t seed,
                             AttackObjective objective = AttackObjective::kCrossEntropy);

// Accuracy of `model` on the first `limit` examples of `data` (0: all) under `attack`, in
// batches (0: eval_batch_size). Returns the fraction of examples still classified correctly.
double robust_accuracy(Model& model, const TensorDataset& data, const AttackOptions& attack, int64_t limit = 0,
                       int64_t batch_size = 0, uint64_t seed = 0);

// The batch an evaluation uses on `device`: 1024 on a GPU; 64 on a CPU, where a conv net's
// unfolded inputs (im2col: 640 MB per batch of 1024 for the cnn's second convolution) should
// not be much larger than the caches (docs/performance.md: 1.55x faster).
int64_t eval_batch_size(const c10::Device& device);

// What an evaluation measures beyond clean accuracy and loss: accuracy under each attack, on
// the first `attack_examples` test examples (0: all; PGD-20 costs about 21 clean passes).
struct EvalOptions {
  std::vector<AttackOptions> attacks;
  int64_t attack_examples = 0;
  int64_t batch_size = 0;  // 0: eval_batch_size(the model's device)
  void validate() const;
};

}  // namespace fl
