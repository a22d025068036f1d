#include "common/engine/streaming_aggregation.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <limits>
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

ExactWeightedSum::ExactWeightedSum(const ModelState& layout, double total_weight)
    : layout_(layout),
      total_(total_weight),
      magnitudes_(torch::zeros({static_cast<int64_t>(layout.size())}, torch::dtype(at::kDouble))),
      sums_(torch::zeros({layout.numel()}, torch::dtype(at::kLong))) {
  if (!(total_weight > 0)) throw std::invalid_argument("ExactWeightedSum: weights sum to zero");
}

void ExactWeightedSum::observe(const ModelState& model) {
  if (!scale_bits_.empty()) throw std::logic_error("ExactWeightedSum: observe() after add() or mean()");
  layout_.check_same_layout(model, "the weighted sum");
  torch::NoGradGuard no_grad;
  auto m = magnitudes_.accessor<double, 1>();
  for (size_t k = 0; k < model.size(); ++k) {
    const auto& e = model.entries()[k];
    if (e.tensor.numel() == 0) continue;
    double largest = 0;
    if (e.tensor.scalar_type() == at::kFloat && e.tensor.device().is_cpu() && e.tensor.is_contiguous()) {
      const float* x = e.tensor.data_ptr<float>();  // one pass, no temporary (the common case)
      float top = 0;
      bool finite = true;  // NaN and infinity fail a <= max
      for (int64_t i = 0, n = e.tensor.numel(); i < n; ++i) {
        const float a = std::fabs(x[i]);
        finite &= a <= std::numeric_limits<float>::max();
        top = std::max(top, a);
      }
      largest = finite ? top : std::numeric_limits<double>::quiet_NaN();
    } else {
      largest = e.tensor.abs().max().to(at::kDouble).item<double>();
    }
    if (!std::isfinite(largest))
      throw std::invalid_argument("the weighted sum: entry '" + e.name + "' has a value that is not finite");
    m[static_cast<int64_t>(k)] = std::max(m[static_cast<int64_t>(k)], largest);
  }
}

// S = 61 - ceil(log2(largest)): every term is at most largest * 2^S <= 2^61 in magnitude and the
// weights sum to 1, so the sum stays below 2^62 (the terms' roundings add at most one per term).
// Clamped so that 2^S stays a finite double.
const std::vector<int>& ExactWeightedSum::scale_bits() const {
  if (!scale_bits_.empty() || layout_.size() == 0) return scale_bits_;
  auto m = magnitudes_.accessor<double, 1>();
  std::vector<int> bits(layout_.size(), 0);
  for (size_t k = 0; k < layout_.size(); ++k) {
    const double largest = m[static_cast<int64_t>(k)];
    if (!std::isfinite(largest)) throw std::invalid_argument("the weighted sum: magnitudes are not finite");
    int exponent = 0;
    if (largest > 0) std::frexp(largest, &exponent);  // largest < 2^exponent
    bits[k] = std::clamp(61 - exponent, -1000, 1000);
  }
  scale_bits_ = std::move(bits);
  return scale_bits_;
}

namespace {

// t rounded to the nearest integer, ties to even (what llrint does in the default rounding mode),
// without a libm call per element: truncation is one instruction, and t - trunc(t) is exact (a
// |t| >= 2^52 is an integer already). |t| < 2^63.
inline int64_t round_half_even(double t) {
  const int64_t i = static_cast<int64_t>(t);
  const double frac = t - static_cast<double>(i);
  if (frac > 0.5 || (frac == 0.5 && (i & 1))) return i + 1;
  if (frac < -0.5 || (frac == -0.5 && (i & 1))) return i - 1;
  return i;
}

template <class T>
void add_terms(const T* x, int64_t n, double scale, int64_t* sum) {
  for (int64_t i = 0; i < n; ++i) sum[i] += round_half_even(static_cast<double>(x[i]) * scale);
}

}  // namespace

void ExactWeightedSum::add(const ModelState& model, double weight) {
  if (!(weight >= 0) || weight > total_)
    throw std::invalid_argument("ExactWeightedSum: weight " + std::to_string(weight) + " outside [0, total weight]");
  layout_.check_same_layout(model, "the weighted sum");
  const std::vector<int>& bits = scale_bits();
  torch::NoGradGuard no_grad;
  const double w = weight / total_;
  int64_t at = 0;
  for (size_t k = 0; k < model.size(); ++k) {
    const auto& t = model.entries()[k].tensor;
    const int64_t n = t.numel();
    // The term x * (w * 2^S) in double, rounded to the nearest integer (ties to even): one value
    // per term, whichever process adds it. One fused pass over fp32 entries (the common case);
    // other dtypes through a double copy.
    const double scale = std::ldexp(w, bits[k]);
    int64_t* sum = sums_.data_ptr<int64_t>() + at;
    if (t.scalar_type() == at::kFloat && t.device().is_cpu() && t.is_contiguous()) {
      add_terms(t.data_ptr<float>(), n, scale, sum);
    } else {
      const at::Tensor x = t.reshape({-1}).to(torch::kCPU, at::kDouble).contiguous();
      add_terms(x.data_ptr<double>(), n, scale, sum);
    }
    at += n;
  }
}

ModelState ExactWeightedSum::mean() const {
  torch::NoGradGuard no_grad;
  const std::vector<int>& bits = scale_bits();
  ModelState out = layout_.zeros_like();
  int64_t at = 0;
  for (size_t k = 0; k < out.size(); ++k) {
    const auto& t = out.entries()[k].tensor;
    const int64_t n = t.numel();
    at::Tensor part = sums_.narrow(0, at, n).to(at::kDouble).mul(std::ldexp(1.0, -bits[k])).view(t.sizes());
    if (!t.is_floating_point()) part = part.round();
    t.copy_(part.to(t.scalar_type()));
    at += n;
  }
  return out;
}

}  // namespace fl
