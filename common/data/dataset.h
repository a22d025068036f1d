#pragma once
// TensorDataset: a whole (small) data set held as two tensors, so that training gathers
// batches with index_select instead of going through a per-sample data loader.
#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <cstdint>
#include <limits>
#include <vector>

namespace fl {

// Where the features live relative to the raw data: the box a valid input stays in and the size
// of one raw unit in feature space. Fashion-MNIST's features are (pixel - 0.286) / 0.353, so a
// pixel in [0, 1] is a feature in [-0.81, 2.02] and a perturbation of 0.1 in pixels is 0.283 in
// features. Adversarial attacks (common/train/adversarial.h) state their radius in raw units and
// clamp to this box. Unbounded with unit 1 when the source does not say (CSV features).
struct FeatureDomain {
  double lo = -std::numeric_limits<double>::infinity();
  double hi = std::numeric_limits<double>::infinity();
  double unit = 1.0;  // feature-space size of one raw unit (1 / the normalisation's std)
  bool bounded() const { return lo > -std::numeric_limits<double>::infinity() || hi < std::numeric_limits<double>::infinity(); }
};

struct TensorDataset {
  at::Tensor x;             // [N, ...] features
  at::Tensor y;             // [N] int64 class indices
  int64_t num_classes = 0;
  FeatureDomain domain;     // kept by subset, to and concat (the first part's)

  // Number of examples (0 when x is undefined).
  int64_t size() const;
  // The examples at `indices` (1-D integer tensor), in that order.
  TensorDataset subset(const at::Tensor& indices) const;
  // Both tensors on `device` (no copy when already there).
  TensorDataset to(const c10::Device& device) const;
};

// The examples of `parts`, in order, as one data set. Throws std::invalid_argument when the
// parts disagree on the example shape, dtype or number of classes (the message says which).
TensorDataset concat(const std::vector<TensorDataset>& parts);

}  // namespace fl
