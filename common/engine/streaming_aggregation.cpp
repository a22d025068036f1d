#include "common/engine/streaming_aggregation.h"

#include <torch/torch.h>

#include <stdexcept>
#include <string>

namespace fl {

// Mirrors ModelState::weighted_sum step for step (so that the two agree bit for bit): the first
// model's layout zeroed, then each model's packed floats added with its normalised weight in one
// kernel, integer entries summed in double and rounded once at the end.
WeightedMeanAccumulator::WeightedMeanAccumulator(double total_weight) : total_(total_weight) {
  if (!(total_weight > 0)) throw std::invalid_argument("WeightedMeanAccumulator: weights sum to zero");
}

void WeightedMeanAccumulator::add(const ModelState& model, double weight) {
  if (!(weight >= 0)) throw std::invalid_argument("WeightedMeanAccumulator: negative or NaN weight");
  torch::NoGradGuard no_grad;
  if (count_ == 0) {
    mean_ = model.clone();
    int_acc_.assign(mean_.size(), at::Tensor());
    for (size_t k = 0; k < mean_.size(); ++k)
      if (!mean_.entries()[k].tensor.is_floating_point())
        int_acc_[k] = torch::zeros(mean_.entries()[k].tensor.sizes(), torch::dtype(at::kDouble));
    if (mean_.flat().defined()) mean_.flat().zero_();
  } else {
    mean_.check_same_layout(model, "streaming aggregation (model " + std::to_string(count_) + ")");
  }
  const double w = weight / total_;
  const bool fast = mean_.flat().defined();
  const bool s_fast = fast && model.flat().defined();
  if (s_fast) mean_.flat().add_(model.flat(), w);
  for (size_t k = 0; k < mean_.size(); ++k) {
    const auto& t = mean_.entries()[k].tensor;
    const auto& o = model.entries()[k].tensor;
    if (!t.is_floating_point()) {
      int_acc_[k].add_(o.to(at::kDouble).cpu(), w);
    } else if (!s_fast) {
      if (count_ == 0 && !fast) t.zero_();
      t.add_(o, w);
    }
  }
  ++count_;
}

void WeightedMeanAccumulator::begin_model(const ModelState& layout) {
  bool packed_floats = layout.flat().defined() && layout.flat().scalar_type() == at::kFloat;
  for (const auto& e : layout.entries()) packed_floats = packed_floats && e.tensor.is_floating_point();
  if (!packed_floats)
    throw std::invalid_argument("streaming aggregation: a model added piece by piece must be packed fp32 entries only");
  if (count_ == 0) {
    mean_ = layout.zeros_like();  // 0 + w * x: what add() computes for the first model
    int_acc_.assign(mean_.size(), at::Tensor());
  } else {
    mean_.check_same_layout(layout, "streaming aggregation (model " + std::to_string(count_) + ")");
  }
}

void WeightedMeanAccumulator::add_flat_range(int64_t offset, const at::Tensor& values, double weight) {
  if (!(weight >= 0)) throw std::invalid_argument("WeightedMeanAccumulator: negative or NaN weight");
  const at::Tensor& flat = mean_.flat();
  if (!flat.defined() || offset < 0 || offset + values.numel() > flat.numel())
    throw std::invalid_argument("streaming aggregation: range [" + std::to_string(offset) + ", " +
                                std::to_string(offset + values.numel()) + ") outside the model's packed floats");
  torch::NoGradGuard no_grad;
  // Elementwise, so the pieces give the bits add() gives in one kernel over the whole buffer.
  flat.narrow(0, offset, values.numel()).add_(values.reshape({-1}), weight / total_);
}

void WeightedMeanAccumulator::end_model() { ++count_; }

ModelState WeightedMeanAccumulator::take() {
  if (count_ == 0) throw std::logic_error("WeightedMeanAccumulator: no model was added");
  torch::NoGradGuard no_grad;
  for (size_t k = 0; k < mean_.size(); ++k) {
    if (!int_acc_[k].defined()) continue;
    const auto& t = mean_.entries()[k].tensor;
    t.copy_(int_acc_[k].round().to(t.scalar_type()));
  }
  int_acc_.clear();
  count_ = 0;
  return std::move(mean_);
}

}  // namespace fl
