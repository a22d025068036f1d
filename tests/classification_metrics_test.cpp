// roc_auc (common/train/classification_metrics.h) against hand-computed values and a brute-force
// count over every (positive, negative) pair.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "common/train/classification_metrics.h"
#include "tests/expect_error.h"

namespace fl {
namespace {

using testing_util::expect_error_of;

TEST(RocAuc, HandComputed) {
  // The classic example: positive 0.35 beats one negative of two, 0.8 beats both: 3 of 4 pairs.
  EXPECT_DOUBLE_EQ(roc_auc({0.1f, 0.4f, 0.35f, 0.8f}, {0, 0, 1, 1}), 0.75);
  // Order of the examples does not matter.
  EXPECT_DOUBLE_EQ(roc_auc({0.8f, 0.35f, 0.1f, 0.4f}, {1, 1, 0, 0}), 0.75);
}

TEST(RocAuc, PerfectAndInverted) {
  EXPECT_DOUBLE_EQ(roc_auc({0.1f, 0.2f, 0.8f, 0.9f}, {0, 0, 1, 1}), 1.0);
  EXPECT_DOUBLE_EQ(roc_auc({0.1f, 0.2f, 0.8f, 0.9f}, {1, 1, 0, 0}), 0.0);
  EXPECT_DOUBLE_EQ(roc_auc({-5.f, 7.f}, {0, 1}), 1.0);  // any scale, negative scores too
}

TEST(RocAuc, TiesCountHalf) {
  EXPECT_DOUBLE_EQ(roc_auc({0.5f, 0.5f, 0.5f, 0.5f}, {0, 1, 0, 1}), 0.5);
  // pos 0.5: tie with neg 0.5 (1/2) + beats 0.1 (1); pos 0.9 beats both (2): 3.5 of 4.
  EXPECT_DOUBLE_EQ(roc_auc({0.5f, 0.5f, 0.9f, 0.1f}, {1, 0, 1, 0}), 0.875);
  // Three tied at 0.3 (2 positives, 1 negative) between a low negative and a high positive:
  // pairs: pos 0.3 x2 (vs 0.3: 1/2, vs 0.1: 1) = 3, pos 0.9 (2) = 2; 5 of 6.
  EXPECT_NEAR(roc_auc({0.1f, 0.3f, 0.3f, 0.3f, 0.9f}, {0, 1, 0, 1, 1}), 5.0 / 6.0, 1e-12);
}

TEST(RocAuc, MatchesEveryPairCountedWithTies) {
  std::mt19937 rng(7);
  std::uniform_int_distribution<int> level(0, 9), coin(0, 1);
  for (int trial = 0; trial < 20; ++trial) {
    std::vector<float> s;
    std::vector<int64_t> y;
    for (int i = 0; i < 200; ++i) {
      s.push_back(static_cast<float>(level(rng)) / 10);  // ten levels: many ties
      y.push_back(coin(rng));
    }
    y[0] = 0;
    y[1] = 1;
    double pairs = 0, wins = 0;
    for (size_t i = 0; i < s.size(); ++i)
      for (size_t j = 0; j < s.size(); ++j)
        if (y[i] == 1 && y[j] == 0) {
          pairs += 1;
          wins += s[i] > s[j] ? 1 : s[i] == s[j] ? 0.5 : 0;
        }
    EXPECT_NEAR(roc_auc(s, y), wins / pairs, 1e-12);
  }
}

TEST(RocAuc, RefusesWhatHasNoAuc) {
  expect_error_of<std::invalid_argument>([] { roc_auc({0.1f, 0.9f}, {1, 1}); },
                                         std::vector<std::string>{"needs both classes", "2 positive and 0 negative"});
  expect_error_of<std::invalid_argument>([] { roc_auc({0.1f, 0.9f}, {0, 0}); }, "0 positive and 2 negative");
  expect_error_of<std::invalid_argument>([] { roc_auc({}, {}); }, "needs both classes");
  expect_error_of<std::invalid_argument>([] { roc_auc({0.1f, 0.9f}, {0, 1, 1}); }, "2 scores but 3 labels");
  expect_error_of<std::invalid_argument>([] { roc_auc({0.1f, 0.9f}, {0, 2}); }, "label 2 at 1 is not 0 or 1");
  expect_error_of<std::invalid_argument>([] { roc_auc({NAN, 0.9f}, {0, 1}); }, "score 0 is NaN");
}

}  // namespace
}  // namespace fl
