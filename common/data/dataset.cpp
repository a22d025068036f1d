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
  return TensorDataset{x.index_select(0, idx), y.index_select(0, idx.to(y.device())), num_classes, domain};
}

TensorDataset TensorDataset::to(const c10::Device& device) const {
  return TensorDataset{x.defined() ? x.to(device) : x, y.defined() ? y.to(device) : y, num_classes, domain};
}

TensorDataset concat(const std::vector<TensorDataset>& parts) {
  std::vector<at::Tensor> xs, ys;
  const TensorDataset* first = nullptr;
  for (size_t i = 0; i < parts.size(); ++i) {
    const auto& p = parts[i];
    if (p.size() == 0) continue;
    if (!first) first = &p;
    const auto part = "concat: part " + std::to_string(i);
    if (p.x.sizes().slice(1) != first->x.sizes().slice(1))
      throw std::invalid_argument(part + " has examples of shape " + c10::str(p.x.sizes().slice(1)) +
                                  ", the first part " + c10::str(first->x.sizes().slice(1)));
    if (p.x.scalar_type() != first->x.scalar_type())
      throw std::invalid_argument(part + " has features of dtype " + std::string(c10::toString(p.x.scalar_type())) +
                                  ", the first part " + c10::toString(first->x.scalar_type()));
    if (p.num_classes != first->num_classes)
      throw std::invalid_argument(part + " has " + std::to_string(p.num_classes) + " classes, the first part " +
                                  std::to_string(first->num_classes));
    xs.push_back(p.x.to(first->x.device()));
    ys.push_back(p.y.to(first->y.device()));
  }
  if (!first) return TensorDataset{};
  return TensorDataset{at::cat(xs), at::cat(ys), first->num_classes, first->domain};
}

}  // namespace fl
