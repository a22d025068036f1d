#include <gtest/gtest.h>
#include <torch/torch.h>

#include "common/core/model_state.h"

namespace fl {
namespace {

ModelState make(std::vector<float> a, std::vector<float> b, int64_t count) {
  return ModelState({{"w", torch::tensor(a).view({2, 2})},
                     {"b", torch::tensor(b)},
                     {"bn.num_batches_tracked", torch::tensor({count}, torch::kLong)}});
}

TEST(ModelState, PacksFloatingEntriesIntoOneFlatBuffer) {
  auto s = make({1, 2, 3, 4}, {5, 6}, 7);
  ASSERT_TRUE(s.flat().defined());
  EXPECT_EQ(s.flat().numel(), 6);
  EXPECT_EQ(s.numel(), 7);
  EXPECT_EQ(s.nbytes(), 6 * 4 + 8);
  // Entries are views: writing through the flat buffer changes them.
  s.flat()[4] = 50.0f;
  EXPECT_FLOAT_EQ(s.at("b")[0].item<float>(), 50.0f);
  EXPECT_EQ(s.names(), (std::vector<std::string>{"w", "b", "bn.num_batches_tracked"}));
  EXPECT_THROW(s.at("nope"), std::out_of_range);
}

TEST(ModelState, ShareAliasesARunOfAFlatBufferAndCopiesOtherwise) {
  auto s = make({1, 2, 3, 4}, {5, 6}, 7);
  // w and b lie back to back in s.flat(): regrouped without a copy.
  auto shared = ModelState::share({{"x", s.at("w")}, {"y", s.at("b")}, {"n", s.at("bn.num_batches_tracked")}});
  EXPECT_EQ(shared.flat().data_ptr(), s.flat().data_ptr());
  EXPECT_EQ(shared.flat().numel(), 6);
  EXPECT_FLOAT_EQ(shared.at("y")[1].item<float>(), 6.0f);
  // Out of order (b before w): not a run of the buffer, so a packed copy.
  auto copied = ModelState::share({{"y", s.at("b")}, {"x", s.at("w")}});
  EXPECT_NE(copied.flat().data_ptr(), s.flat().data_ptr());
  EXPECT_TRUE(torch::equal(copied.flat(), torch::tensor({5.0f, 6.0f, 1.0f, 2.0f, 3.0f, 4.0f})));
  // Only the tail of the buffer (b): still a run, aliased at its offset.
  auto tail = ModelState::share({{"y", s.at("b")}});
  EXPECT_EQ(tail.flat().data_ptr<float>(), s.flat().data_ptr<float>() + 4);
  EXPECT_THROW(ModelState::share({{"a", s.at("w")}, {"a", s.at("b")}}), std::invalid_argument);
}

TEST(ModelState, RejectsDuplicateNames) {
  EXPECT_THROW(ModelState({{"a", torch::zeros({1})}, {"a", torch::zeros({1})}}), std::invalid_argument);
}

TEST(ModelState, ArithmeticMatchesHandComputedValues) {
  auto a = make({1, 2, 3, 4}, {5, 6}, 10);
  auto b = make({4, 3, 2, 1}, {-1, 0.5}, 3);
  auto sum = a + b;
  EXPECT_TRUE(torch::equal(sum.at("w"), torch::tensor({5.f, 5.f, 5.f, 5.f}).view({2, 2})));
  EXPECT_TRUE(torch::equal(sum.at("b"), torch::tensor({4.f, 6.5f})));
  EXPECT_EQ(sum.at("bn.num_batches_tracked").item<int64_t>(), 13);
  auto diff = a - b;
  EXPECT_TRUE(torch::equal(diff.at("w"), torch::tensor({-3.f, -1.f, 1.f, 3.f}).view({2, 2})));
  EXPECT_EQ(diff.at("bn.num_batches_tracked").item<int64_t>(), 7);
  auto half = a.scaled(0.5);
  EXPECT_TRUE(torch::equal(half.at("b"), torch::tensor({2.5f, 3.f})));
  EXPECT_EQ(half.at("bn.num_batches_tracked").item<int64_t>(), 5);
  // dot and norm cover floating entries only: 1*4+2*3+3*2+4*1 + 5*-1 + 6*0.5 = 18.
  EXPECT_DOUBLE_EQ(a.dot(b), 18.0);
  EXPECT_DOUBLE_EQ(a.norm(), std::sqrt(1 + 4 + 9 + 16 + 25 + 36.0));
  // The operands are untouched.
  EXPECT_FLOAT_EQ(a.at("w")[0][0].item<float>(), 1.f);
}

TEST(ModelState, WeightedAverageIsExampleWeighted) {
  auto a = make({0, 0, 0, 0}, {1, 1}, 10);
  auto b = make({4, 8, 12, 16}, {4, -2}, 20);
  // Weights 1:3 -> 0.25 * a + 0.75 * b.
  auto avg = ModelState::weighted_average({&a, &b}, {100, 300});
  EXPECT_TRUE(torch::allclose(avg.at("w"), torch::tensor({3.f, 6.f, 9.f, 12.f}).view({2, 2})));
  EXPECT_TRUE(torch::allclose(avg.at("b"), torch::tensor({3.25f, -1.25f})));
  EXPECT_EQ(avg.at("bn.num_batches_tracked").item<int64_t>(), 18);  // 2.5 + 15 = 17.5 -> 18
  EXPECT_THROW(ModelState::weighted_average({&a, &b}, {0, 0}), std::invalid_argument);
  EXPECT_THROW(ModelState::weighted_average({&a, &b}, {1, -1}), std::invalid_argument);
  EXPECT_THROW(ModelState::weighted_sum({&a, &b}, {1}), std::invalid_argument);
}

TEST(ModelState, LayoutMismatchNamesTheEntry) {
  auto a = make({1, 2, 3, 4}, {5, 6}, 1);
  ModelState other({{"w", torch::zeros({2, 2})}, {"b", torch::zeros({3})}, {"bn.num_batches_tracked", torch::zeros({1}, torch::kLong)}});
  try {
    a.check_same_layout(other, "update");
    FAIL() << "expected a layout error";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("'b'"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("[3]"), std::string::npos) << e.what();
  }
  EXPECT_THROW(a + other, std::invalid_argument);
}

TEST(ModelState, SelectAssignAndEquality) {
  auto a = make({1, 2, 3, 4}, {5, 6}, 1);
  auto only_b = a.select({"b"});
  EXPECT_EQ(only_b.size(), 1u);
  EXPECT_THROW(a.select({"zz"}), std::out_of_range);
  EXPECT_EQ(a.select_prefixes({"bn."}).size(), 1u);
  auto c = a.clone();
  EXPECT_TRUE(c.equal(a));
  c.assign(ModelState({{"b", torch::tensor({9.f, 9.f})}}));
  EXPECT_FALSE(c.equal(a));
  EXPECT_FLOAT_EQ(c.at("b")[1].item<float>(), 9.f);
  EXPECT_FLOAT_EQ(a.at("b")[1].item<float>(), 6.f);  // clone is deep
  EXPECT_THROW(c.assign(ModelState({{"b", torch::zeros({3})}})), std::invalid_argument);
  auto z = a.zeros_like();
  EXPECT_DOUBLE_EQ(z.norm(), 0.0);
  EXPECT_EQ(z.at("bn.num_batches_tracked").item<int64_t>(), 0);
}

TEST(ModelState, MixedFloatingDtypesStillWork) {
  ModelState a({{"h", torch::tensor({1.f, 2.f}).to(torch::kHalf)}, {"f", torch::tensor({3.f})}});
  EXPECT_FALSE(a.flat().defined());
  auto s = a + a;
  EXPECT_EQ(s.at("h").scalar_type(), torch::kHalf);
  EXPECT_FLOAT_EQ(s.at("h")[1].item<float>(), 4.f);
  EXPECT_FLOAT_EQ(s.at("f")[0].item<float>(), 6.f);
  EXPECT_NEAR(a.norm(), std::sqrt(14.0), 1e-6);
}

}  // namespace
}  // namespace fl
