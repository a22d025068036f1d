#include "common/train/classification_metrics.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <stdexcept>
#include <string>

namespace fl {

double roc_auc(const std::vector<float>& scores, const std::vector<int64_t>& labels) {
  if (scores.size() != labels.size())
    throw std::invalid_argument("roc_auc: " + std::to_string(scores.size()) + " scores but " +
                                std::to_string(labels.size()) + " labels");
  double n_pos = 0, n_neg = 0;
  for (size_t i = 0; i < labels.size(); ++i) {
    if (labels[i] != 0 && labels[i] != 1)
      throw std::invalid_argument("roc_auc: label " + std::to_string(labels[i]) + " at " + std::to_string(i) +
                                  " is not 0 or 1");
    if (std::isnan(scores[i])) throw std::invalid_argument("roc_auc: score " + std::to_string(i) + " is NaN");
    (labels[i] == 1 ? n_pos : n_neg) += 1;
  }
  if (n_pos == 0 || n_neg == 0)
    throw std::invalid_argument("roc_auc: needs both classes, got " + std::to_string(static_cast<int64_t>(n_pos)) +
                                " positive and " + std::to_string(static_cast<int64_t>(n_neg)) + " negative examples");
  std::vector<size_t> order(scores.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return scores[a] < scores[b]; });
  // Sum of the positives' ranks (1-based), each run of tied scores sharing its average rank.
  double rank_sum = 0;
  for (size_t i = 0; i < order.size();) {
    size_t j = i;
    while (j + 1 < order.size() && scores[order[j + 1]] == scores[order[i]]) ++j;
    const double rank = (static_cast<double>(i) + static_cast<double>(j)) / 2 + 1;
    for (size_t k = i; k <= j; ++k)
      if (labels[order[k]] == 1) rank_sum += rank;
    i = j + 1;
  }
  return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg);
}

}  // namespace fl
