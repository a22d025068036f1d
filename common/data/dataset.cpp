#include "common/data/dataset.h"

#include <torch/torch.h>

#include <stdexcept>
#include <string>

namespace fl {

int64_t TensorDataset::size() const { return x.defined() ? x.size(0) : 0; }

TensorDataset TensorDataset::subset(const at::Tensor& indices) const {
  if (!x.defined() || !y.defined()) throw std::invalid_argument("TensorDataset::subset: empty data set");
  if (indices.dim() != 1)
    throw std::invalid_argument("TensorDataset::subset: indices must be 1-D, got " +
                                std::to_string(indices.dim()) + "-D");
  if (at::isFloatingType(indices.scalar_type()) || indices.scalar_type() == at::kBool)
    throw std::invalid_argument("TensorDataset::subset: indices must be an integer tensor");
  auto idx = indices.to(x.device(), at::kLong);
  return TensorDataset{x.index_select(0, idx), y.index_select(0, idx.to(y.device())), num_classes};
}

TensorDataset TensorDataset::to(const c10::Device& device) const {
  return TensorDataset{x.defined() ? x.to(device) : x, y.defined() ? y.to(device) : y, num_classes};
}

}  // namespace fl
