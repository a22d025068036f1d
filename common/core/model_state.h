#pragma once
// ModelState: the ordered (name -> tensor) map that every strategy, codec and store works on.
//
// Floating-point entries that share one dtype and device are packed into a single contiguous
// 1-D buffer (`flat()`), and each entry is a view into it, so that aggregation is a handful of
// ATen kernels over the whole model instead of one per tensor. Integer entries (BatchNorm's
// num_batches_tracked) are kept apart and combined in double precision, then rounded back.
#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <cstdint>
#include <string>
#include <vector>

namespace fl {

class ModelState {
 public:
  struct Entry {
    std::string name;
    at::Tensor tensor;
  };

  ModelState() = default;
  // Takes the entries in order; copies them into a packed buffer (names must be unique).
  explicit ModelState(std::vector<Entry> entries);
  // The same state WITHOUT copying when the floating entries already lie back to back, in
  // order, in one buffer (e.g. a run of entries of another state's flat()); otherwise a copy
  // as the constructor makes. The result may alias the entries' storage: for regrouping states
  // that are not written to afterwards (payload unpacking), not for making independent copies.
  static ModelState share(std::vector<Entry> entries);

  size_t size() const { return entries_.size(); }
  bool empty() const { return entries_.empty(); }
  const std::vector<Entry>& entries() const { return entries_; }
  std::vector<std::string> names() const;
  bool contains(const std::string& name) const;
  // Throws std::out_of_range naming the key when absent.
  const at::Tensor& at(const std::string& name) const;
  int64_t numel() const;  // all entries
  int64_t nbytes() const;

  // The packed floating-point buffer: every floating entry is a view into it, in order.
  // Undefined when the state has no floating entries.
  const at::Tensor& flat() const { return flat_; }
  // True when names, shapes and dtypes agree entry by entry.
  bool same_layout(const ModelState& other) const;
  // Throws std::invalid_argument saying which entry differs (name, shape or dtype).
  void check_same_layout(const ModelState& other, const std::string& what = "state") const;
  // The same check of `got` against entries that need not be a state (a model's own tensors).
  static void check_layout(const std::vector<Entry>& expected, const ModelState& got, const std::string& what);

  ModelState clone() const;
  ModelState to(const c10::Device& device) const;
  ModelState zeros_like() const;
  // Only the named entries, in this state's order (unknown names are an error).
  ModelState select(const std::vector<std::string>& names) const;
  // Entries whose name starts with any of the prefixes.
  ModelState select_prefixes(const std::vector<std::string>& prefixes) const;
  // Copies values of `other` into this state's tensors, entry by entry (layouts must agree
  // for the entries present in `other`; `other` may be a subset).
  void assign(const ModelState& other);

  // Arithmetic. The binary operations require the same layout.
  ModelState operator+(const ModelState& other) const;
  ModelState operator-(const ModelState& other) const;
  ModelState scaled(double factor) const;
  ModelState& add_(const ModelState& other, double alpha = 1.0);  // this += alpha * other
  ModelState& scale_(double factor);
  double dot(const ModelState& other) const;  // over floating entries
  double norm() const;                        // L2 over floating entries
  // Bitwise equality of names, shapes, dtypes and bytes.
  bool equal(const ModelState& other) const;
  // The first floating entry holding a NaN or an Inf, or "" when every value is finite. One
  // read-only pass over the bits of CPU fp32 storage (no temporaries: torch::isfinite made four
  // tensors the model's size, 0.2 s per 147 MB model), torch::isfinite for other dtypes.
  std::string non_finite_entry() const;

  // sum_i weights[i] * states[i]; all states share one layout.
  static ModelState weighted_sum(const std::vector<const ModelState*>& states,
                                 const std::vector<double>& weights);
  // weighted_sum with weights normalised to sum to one (weights must be >= 0, sum > 0).
  static ModelState weighted_average(const std::vector<const ModelState*>& states,
                                     const std::vector<double>& weights);

 private:
  std::vector<Entry> entries_;
  at::Tensor flat_;
};

}  // namespace fl
