#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <limits>

#include "common/core/device.h"
#include "common/data/idx.h"
#include "common/models/model.h"
#include "common/train/local_trainer.h"

namespace fl {
namespace {

// Two Gaussian blobs: a linearly separable toy task.
TensorDataset blobs(int64_t n, uint64_t seed) {
  auto gen = at::detail::createCPUGenerator(seed);
  auto y = torch::randint(0, 2, {n}, gen, torch::kLong);
  auto x = torch::randn({n, 4}, gen) + (y.to(torch::kFloat) * 4 - 2).unsqueeze(1);
  return TensorDataset{x, y, 2, {}};
}

std::unique_ptr<Model> tiny_mlp() {
  ModelSpec spec;
  spec.name = "mlp";
  spec.input_shape = {4};
  spec.hidden = {8};
  spec.num_classes = 2;
  return build_model(spec);
}

TEST(LocalTrainer, LearnsASeparableTaskAndCountsSteps) {
  torch::manual_seed(0);
  auto model = tiny_mlp();
  auto data = blobs(256, 1);
  TrainOptions opt;
  opt.epochs = 3;
  opt.batch_size = 32;
  opt.lr = 0.1;
  opt.momentum = 0.9;
  LocalTrainer trainer(opt);
  auto r = trainer.train(*model, data);
  EXPECT_EQ(r.num_examples, 256);
  EXPECT_EQ(r.steps, 3 * 8);
  EXPECT_EQ(r.samples_seen, 3 * 256);
  EXPECT_TRUE(r.state.equal(model->state()));
  auto ev = LocalTrainer::evaluate(*model, blobs(200, 2));
  EXPECT_EQ(ev.num_examples, 200);
  EXPECT_GT(ev.accuracy, 0.97);
  // max_steps stops early, across epoch boundaries.
  opt.epochs = 0;
  opt.max_steps = 11;
  auto r2 = LocalTrainer(opt).train(*model, data);
  EXPECT_EQ(r2.steps, 11);
}

TEST(LocalTrainer, SameSeedSameResultOnCpu) {
  auto run = [](uint64_t seed) {
    torch::manual_seed(42);
    auto model = tiny_mlp();
    TrainOptions opt;
    opt.epochs = 2;
    opt.batch_size = 16;
    opt.seed = seed;
    opt.optimizer = "adam";
    opt.lr = 0.01;
    return LocalTrainer(opt).train(*model, blobs(100, 3)).state;
  };
  EXPECT_TRUE(run(7).equal(run(7)));
  EXPECT_FALSE(run(7).equal(run(8)));
}

TEST(LocalTrainer, RejectsBadOptionsNamingTheField) {
  TrainOptions opt;
  opt.batch_size = 0;
  try {
    LocalTrainer t(opt);
    FAIL();
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("batch_size"), std::string::npos);
  }
  opt = TrainOptions();
  opt.optimizer = "lbfgs";
  EXPECT_THROW(LocalTrainer{opt}, std::invalid_argument);
  opt = TrainOptions();
  opt.lr = -1;
  EXPECT_THROW(LocalTrainer{opt}, std::invalid_argument);
}

TEST(LocalTrainer, ExtraLossHookIsApplied) {
  torch::manual_seed(0);
  auto a = tiny_mlp();
  auto b = a->clone();
  TrainOptions opt;
  opt.epochs = 1;
  int calls = 0;
  TrainHooks hooks;
  hooks.extra_loss = [&](Model& m) {
    ++calls;
    return m.parameters()[0].pow(2).sum();
  };
  auto data = blobs(64, 4);
  auto ra = LocalTrainer(opt).train(*a, data);
  auto rb = LocalTrainer(opt).train(*b, data, hooks);
  EXPECT_EQ(calls, 2);  // 64 / 32 batches
  EXPECT_FALSE(ra.state.equal(rb.state));
}

// Training that diverges is an error, not an update full of NaN.
TEST(LocalTrainer, DivergedTrainingIsAnErrorNotAnUpdate) {
  torch::manual_seed(0);
  auto m = tiny_mlp();
  TrainOptions opt;
  opt.epochs = 1;
  TrainHooks hooks;
  hooks.output_loss = [](const at::Tensor& logits, const at::Tensor&) {
    return logits.sum() * std::numeric_limits<float>::quiet_NaN();
  };
  try {
    LocalTrainer(opt).train(*m, blobs(64, 4), hooks);
    FAIL() << "no error";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("local training diverged after 2 steps"), std::string::npos) << e.what();
  }
}

// The bar: cnn reaches >= 75% test accuracy on Fashion-MNIST after one epoch on
// 10,000 training images.
TEST(LocalTrainer, FashionMnistCnnOneEpochReaches75Percent) {
  const auto dir = default_fashion_mnist_dir();
  if (!std::filesystem::exists(dir)) GTEST_SKIP() << "Fashion-MNIST not installed at " << dir;
  seed_everything(0);
  auto train = load_fashion_mnist(dir, "train", 10000);
  auto test = load_fashion_mnist(dir, "test");
  ModelSpec spec;
  spec.name = "cnn";
  auto model = build_model(spec);
  TrainOptions opt;
  opt.epochs = 1;
  opt.batch_size = 32;
  opt.lr = 0.05;
  opt.momentum = 0.9;
  auto r = LocalTrainer(opt).train(*model, train);
  EXPECT_EQ(r.num_examples, 10000);
  auto ev = LocalTrainer::evaluate(*model, test);
  EXPECT_EQ(ev.num_examples, 10000);
  EXPECT_GE(ev.accuracy, 0.75) << "loss " << ev.loss;
}

}  // namespace
}  // namespace fl
