#pragma once
// TensorDataset: a whole (small) data set held as two tensors, so that training gathers
// batches with index_select instead of going through a per-sample data loader.
#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <cstdint>
#include <vector>

namespace fl {

struct TensorDataset {
  at::Tensor x;             // [N, ...] features
  at::Tensor y;             // [N] int64 class indices
  int64_t num_classes = 0;

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
