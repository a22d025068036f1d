#include "common/core/model_state.h"

#include <torch/torch.h>

#include <stdexcept>
#include <unordered_set>

namespace fl {
namespace {

std::string shape_str(const at::Tensor& t) {
  std::string s = "[";
  for (int64_t i = 0; i < t.dim(); ++i) s += (i ? "," : "") + std::to_string(t.size(i));
  return s + "]";
}

// Integer entries (e.g. num_batches_tracked) are combined in double and rounded back.
at::Tensor combine_int(const at::Tensor& result_double, const at::Tensor& like) {
  return result_double.round().to(like.scalar_type());
}

}  // namespace

ModelState::ModelState(std::vector<Entry> entries) {
  std::unordered_set<std::string> seen;
  at::ScalarType flat_type = at::kFloat;
  c10::Device flat_device = c10::kCPU;
  int64_t flat_numel = 0;
  bool have_float = false, packable = true;
  for (const auto& e : entries) {
    if (!e.tensor.defined()) throw std::invalid_argument("ModelState: entry '" + e.name + "' is undefined");
    if (!seen.insert(e.name).second) throw std::invalid_argument("ModelState: duplicate entry '" + e.name + "'");
    if (!e.tensor.is_floating_point()) continue;
    if (!have_float) {
      flat_type = e.tensor.scalar_type();
      flat_device = e.tensor.device();
      have_float = true;
    } else if (e.tensor.scalar_type() != flat_type || e.tensor.device() != flat_device) {
      packable = false;
    }
    flat_numel += e.tensor.numel();
  }
  entries_.reserve(entries.size());
  if (have_float && packable) {
    flat_ = torch::empty({flat_numel}, torch::TensorOptions().dtype(flat_type).device(flat_device));
    int64_t offset = 0;
    for (auto& e : entries) {
      if (e.tensor.is_floating_point()) {
        auto view = flat_.narrow(0, offset, e.tensor.numel()).view(e.tensor.sizes());
        view.copy_(e.tensor.detach());
        offset += e.tensor.numel();
        entries_.push_back({std::move(e.name), view});
      } else {
        entries_.push_back({std::move(e.name), e.tensor.detach().clone()});
      }
    }
  } else {
    // Mixed floating dtypes: keep per-entry copies; arithmetic goes entry by entry.
    for (auto& e : entries) entries_.push_back({std::move(e.name), e.tensor.detach().clone()});
  }
}

ModelState ModelState::share(std::vector<Entry> entries) {
  const at::Tensor* first = nullptr;
  int64_t next_offset = 0, numel = 0;
  bool packed = true;
  std::unordered_set<std::string> seen;
  for (const auto& e : entries) {
    if (!e.tensor.defined() || !seen.insert(e.name).second) return ModelState(std::move(entries));  // it reports
    if (!e.tensor.is_floating_point()) continue;
    const at::Tensor& t = e.tensor;
    if (!first) {
      first = &t;
      next_offset = t.storage_offset();
    }
    packed = packed && t.is_contiguous() && t.scalar_type() == first->scalar_type() &&
             t.device() == first->device() && t.storage().is_alias_of(first->storage()) &&
             t.storage_offset() == next_offset;
    next_offset += t.numel();
    numel += t.numel();
  }
  if (!first || !packed) return ModelState(std::move(entries));
  ModelState s;
  s.flat_ = first->detach().as_strided({numel}, {1}, first->storage_offset());
  s.entries_.reserve(entries.size());
  for (auto& e : entries) s.entries_.push_back({std::move(e.name), e.tensor.detach()});
  return s;
}

std::vector<std::string> ModelState::names() const {
  std::vector<std::string> out;
  out.reserve(entries_.size());
  for (const auto& e : entries_) out.push_back(e.name);
  return out;
}

bool ModelState::contains(const std::string& name) const {
  for (const auto& e : entries_)
    if (e.name == name) return true;
  return false;
}

const at::Tensor& ModelState::at(const std::string& name) const {
  for (const auto& e : entries_)
    if (e.name == name) return e.tensor;
  throw std::out_of_range("ModelState: no entry named '" + name + "'");
}

int64_t ModelState::numel() const {
  int64_t n = 0;
  for (const auto& e : entries_) n += e.tensor.numel();
  return n;
}

int64_t ModelState::nbytes() const {
  int64_t n = 0;
  for (const auto& e : entries_) n += e.tensor.numel() * static_cast<int64_t>(e.tensor.element_size());
  return n;
}

bool ModelState::same_layout(const ModelState& other) const {
  if (entries_.size() != other.entries_.size()) return false;
  for (size_t i = 0; i < entries_.size(); ++i) {
    const auto& a = entries_[i];
    const auto& b = other.entries_[i];
    if (a.name != b.name || a.tensor.sizes() != b.tensor.sizes() ||
        a.tensor.scalar_type() != b.tensor.scalar_type())
      return false;
  }
  return true;
}

void ModelState::check_same_layout(const ModelState& other, const std::string& what) const {
  check_layout(entries_, other, what);
}

void ModelState::check_layout(const std::vector<Entry>& entries_, const ModelState& other, const std::string& what) {
  if (entries_.size() != other.entries_.size())
    throw std::invalid_argument(what + ": expected " + std::to_string(entries_.size()) + " tensors, got " +
                                std::to_string(other.entries_.size()));
  for (size_t i = 0; i < entries_.size(); ++i) {
    const auto& a = entries_[i];
    const auto& b = other.entries_[i];
    if (a.name != b.name)
      throw std::invalid_argument(what + ": tensor #" + std::to_string(i) + " is named '" + b.name +
                                  "', expected '" + a.name + "'");
    if (a.tensor.sizes() != b.tensor.sizes())
      throw std::invalid_argument(what + ": tensor '" + a.name + "' has shape " + shape_str(b.tensor) +
                                  ", expected " + shape_str(a.tensor));
    if (a.tensor.scalar_type() != b.tensor.scalar_type())
      throw std::invalid_argument(what + ": tensor '" + a.name + "' has dtype " +
                                  std::string(c10::toString(b.tensor.scalar_type())) + ", expected " +
                                  c10::toString(a.tensor.scalar_type()));
  }
}

ModelState ModelState::clone() const { return ModelState(std::vector<Entry>(entries_)); }

ModelState ModelState::to(const c10::Device& device) const {
  std::vector<Entry> out;
  out.reserve(entries_.size());
  for (const auto& e : entries_) out.push_back({e.name, e.tensor.to(device)});
  return ModelState(std::move(out));
}

ModelState ModelState::zeros_like() const {
  ModelState out = clone();
  if (out.flat_.defined()) out.flat_.zero_();
  for (auto& e : out.entries_)
    if (!out.flat_.defined() || !e.tensor.is_floating_point()) e.tensor.zero_();
  return out;
}

ModelState ModelState::select(const std::vector<std::string>& wanted) const {
  std::unordered_set<std::string> set(wanted.begin(), wanted.end());
  for (const auto& n : wanted)
    if (!contains(n)) throw std::out_of_range("ModelState::select: no entry named '" + n + "'");
  std::vector<Entry> out;
  for (const auto& e : entries_)
    if (set.count(e.name)) out.push_back(e);
  return ModelState(std::move(out));
}

ModelState ModelState::select_prefixes(const std::vector<std::string>& prefixes) const {
  std::vector<Entry> out;
  for (const auto& e : entries_)
    for (const auto& p : prefixes)
      if (e.name.compare(0, p.size(), p) == 0) {
        out.push_back(e);
        break;
      }
  return ModelState(std::move(out));
}

void ModelState::assign(const ModelState& other) {
  torch::NoGradGuard no_grad;
  for (const auto& o : other.entries_) {
    const at::Tensor& mine = at(o.name);
    if (mine.sizes() != o.tensor.sizes() || mine.scalar_type() != o.tensor.scalar_type())
      throw std::invalid_argument("ModelState::assign: tensor '" + o.name + "' has shape " + shape_str(o.tensor) +
                                  " " + c10::toString(o.tensor.scalar_type()) + ", expected " + shape_str(mine) +
                                  " " + c10::toString(mine.scalar_type()));
    const_cast<at::Tensor&>(mine).copy_(o.tensor);
  }
}

ModelState& ModelState::add_(const ModelState& other, double alpha) {
  check_same_layout(other, "ModelState::add_");
  torch::NoGradGuard no_grad;
  const bool fast = flat_.defined() && other.flat_.defined();
  if (fast) flat_.add_(other.flat_, alpha);
  for (size_t i = 0; i < entries_.size(); ++i) {
    auto& t = entries_[i].tensor;
    const auto& o = other.entries_[i].tensor;
    if (t.is_floating_point()) {
      if (!fast) t.add_(o, alpha);
    } else {
      t.copy_(combine_int(t.to(at::kDouble) + o.to(at::kDouble) * alpha, t));
    }
  }
  return *this;
}

ModelState& ModelState::scale_(double factor) {
  torch::NoGradGuard no_grad;
  if (flat_.defined()) flat_.mul_(factor);
  for (auto& e : entries_) {
    if (e.tensor.is_floating_point()) {
      if (!flat_.defined()) e.tensor.mul_(factor);
    } else {
      e.tensor.copy_(combine_int(e.tensor.to(at::kDouble) * factor, e.tensor));
    }
  }
  return *this;
}

ModelState ModelState::operator+(const ModelState& other) const { return clone().add_(other, 1.0); }
ModelState ModelState::operator-(const ModelState& other) const { return clone().add_(other, -1.0); }
ModelState ModelState::scaled(double factor) const { return clone().scale_(factor); }

double ModelState::dot(const ModelState& other) const {
  check_same_layout(other, "ModelState::dot");
  torch::NoGradGuard no_grad;
  if (flat_.defined() && other.flat_.defined())
    return flat_.to(at::kDouble).dot(other.flat_.to(at::kDouble)).item<double>();
  double sum = 0;
  for (size_t i = 0; i < entries_.size(); ++i)
    if (entries_[i].tensor.is_floating_point())
      sum += (entries_[i].tensor.to(at::kDouble) * other.entries_[i].tensor.to(at::kDouble)).sum().item<double>();
  return sum;
}

double ModelState::norm() const {
  torch::NoGradGuard no_grad;
  if (flat_.defined()) return flat_.to(at::kDouble).norm().item<double>();
  double sq = 0;
  for (const auto& e : entries_)
    if (e.tensor.is_floating_point()) sq += e.tensor.to(at::kDouble).pow(2).sum().item<double>();
  return std::sqrt(sq);
}

bool ModelState::equal(const ModelState& other) const {
  if (!same_layout(other)) return false;
  for (size_t i = 0; i < entries_.size(); ++i) {
    auto a = entries_[i].tensor.cpu().contiguous();
    auto b = other.entries_[i].tensor.cpu().contiguous();
    if (a.numel() == 0) continue;  // an empty tensor's data_ptr may be null: memcmp must not see it (UBSan)
    if (std::memcmp(a.data_ptr(), b.data_ptr(), a.numel() * a.element_size()) != 0) return false;
  }
  return true;
}

ModelState ModelState::weighted_sum(const std::vector<const ModelState*>& states,
                                    const std::vector<double>& weights) {
  if (states.empty()) throw std::invalid_argument("ModelState::weighted_sum: no states");
  if (states.size() != weights.size())
    throw std::invalid_argument("ModelState::weighted_sum: " + std::to_string(states.size()) + " states but " +
                                std::to_string(weights.size()) + " weights");
  for (size_t i = 1; i < states.size(); ++i)
    states[0]->check_same_layout(*states[i], "ModelState::weighted_sum (state " + std::to_string(i) + ")");
  torch::NoGradGuard no_grad;
  ModelState out = states[0]->clone();
  // Integer entries accumulate in double and are rounded once at the end.
  std::vector<at::Tensor> int_acc(out.entries_.size());
  for (size_t k = 0; k < out.entries_.size(); ++k)
    if (!out.entries_[k].tensor.is_floating_point())
      int_acc[k] = torch::zeros(out.entries_[k].tensor.sizes(), torch::dtype(at::kDouble));
  const bool fast = out.flat_.defined();
  if (fast) out.flat_.zero_();
  for (size_t i = 0; i < states.size(); ++i) {
    const ModelState& s = *states[i];
    const bool s_fast = fast && s.flat_.defined();
    if (s_fast) out.flat_.add_(s.flat_, weights[i]);
    for (size_t k = 0; k < out.entries_.size(); ++k) {
      auto& t = out.entries_[k].tensor;
      const auto& o = s.entries_[k].tensor;
      if (!t.is_floating_point()) {
        int_acc[k].add_(o.to(at::kDouble).cpu(), weights[i]);
      } else if (!s_fast) {
        if (i == 0 && !fast) t.zero_();
        t.add_(o, weights[i]);
      }
    }
  }
  for (size_t k = 0; k < out.entries_.size(); ++k)
    if (int_acc[k].defined()) out.entries_[k].tensor.copy_(combine_int(int_acc[k], out.entries_[k].tensor));
  return out;
}

ModelState ModelState::weighted_average(const std::vector<const ModelState*>& states,
                                        const std::vector<double>& weights) {
  double total = 0;
  for (double w : weights) {
    if (!(w >= 0)) throw std::invalid_argument("ModelState::weighted_average: negative or NaN weight");
    total += w;
  }
  if (!(total > 0)) throw std::invalid_argument("ModelState::weighted_average: weights sum to zero");
  std::vector<double> normalised(weights.size());
  for (size_t i = 0; i < weights.size(); ++i) normalised[i] = weights[i] / total;
  return weighted_sum(states, normalised);
}

namespace {

bool all_finite(const at::Tensor& t) {
  if (t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_contiguous()) {
    const auto* bits = static_cast<const uint32_t*>(t.data_ptr());
    const int64_t n = t.numel();
    uint32_t bad = 0;
    // An exponent of all ones is an Inf or a NaN; no early exit, so that the loop vectorizes.
    for (int64_t i = 0; i < n; ++i) bad |= static_cast<uint32_t>((bits[i] & 0x7f800000u) == 0x7f800000u);
    return bad == 0;
  }
  return torch::isfinite(t).all().item<bool>();
}

}  // namespace

std::string ModelState::non_finite_entry() const {
  if (flat_.defined() && all_finite(flat_)) return "";  // every floating entry lies in it
  for (const auto& e : entries_)
    if (e.tensor.is_floating_point() && !all_finite(e.tensor)) return e.name;
  return "";
}

}  // namespace fl
