#pragma once
// Metrics of a classifier's scores beyond accuracy; no LibTorch, so that anything may use them.
#include <cstdint>
#include <vector>

namespace fl {

// Binary ROC AUC: the probability that a random positive (label 1) scores higher than a random
// negative (label 0), ties counting one half; the Mann-Whitney U statistic over n_pos * n_neg,
// computed from average ranks in O(n log n). Throws std::invalid_argument when the sizes differ,
// a label is neither 0 nor 1, a score is NaN, or either class is absent (no AUC without both).
double roc_auc(const std::vector<float>& scores, const std::vector<int64_t>& labels);

}  // namespace fl
