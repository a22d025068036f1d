// Adversarial examples (PGD, FGSM) and federated adversarial learning (FAL): the attacks stay in
// their L-inf ball and the data's box and raise the loss; adversarial training makes a model
// robust where standard training leaves it at the attacker's mercy; robust accuracy reaches the
// reports through every evaluation path.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "common/models/model.h"
#include "common/run/run_spec.h"
#include "common/train/adversarial.h"
#include "common/train/local_trainer.h"
#include "strategies/fedavg.h"
#include "tests/expect_error.h"

namespace fl {
namespace {

using testing_util::expect_error_of;
using Needles = std::vector<std::string>;

double ce(Model& m, const at::Tensor& x, const at::Tensor& y) {
  torch::NoGradGuard g;
  m.train(false);
  const double v = torch::nn::functional::cross_entropy(m.forward(x), y).item<double>();
  m.train(true);
  return v;
}

std::unique_ptr<Model> small_cnn() {
  ModelSpec spec;
  spec.name = "cnn";
  spec.input_shape = {1, 28, 28};
  spec.num_classes = 10;
  return build_model(spec);
}

// Fashion-MNIST's normalisation: pixels in [0, 1] are features in [-0.81, 2.02].
const FeatureDomain kPixels{-0.2860 / 0.3530, (1 - 0.2860) / 0.3530, 1 / 0.3530};

TEST(Adversarial, PgdStaysInItsBallAndTheBoxAndRaisesTheLoss) {
  torch::manual_seed(1);
  auto model = small_cnn();
  // Pixels spread over [0, 1] (many at the box's edges, where clamping matters).
  auto gen = at::detail::createCPUGenerator(7);
  auto pixels = torch::rand({64, 1, 28, 28}, gen).mul(1.4).sub(0.2).clamp(0, 1);
  auto x = pixels.sub(0.2860).div(0.3530);
  auto y = torch::randint(0, 10, {64}, gen, torch::kLong);
  AttackOptions pgd;
  pgd.epsilon = 0.1;
  pgd.steps = 10;
  auto xa = craft_adversarial(*model, x, y, pgd, kPixels, 3);
  const double radius = 0.1 * kPixels.unit;
  EXPECT_LE((xa - x).abs().max().item<double>(), radius + 1e-5);
  EXPECT_GE(xa.min().item<double>(), kPixels.lo - 1e-6);
  EXPECT_LE(xa.max().item<double>(), kPixels.hi + 1e-6);
  // Back in pixels: within 0.1 of the clean image and inside [0, 1].
  auto back = xa * 0.3530 + 0.2860;
  EXPECT_LE((back - pixels).abs().max().item<double>(), 0.1 + 1e-5);
  EXPECT_GE(back.min().item<double>(), -1e-5);

  // The attack raises the loss, and more than a random point of the same ball does.
  auto u = torch::rand(x.sizes(), gen).mul(2).sub(1).mul(radius);
  const double clean = ce(*model, x, y), noise = ce(*model, (x + u).clamp(kPixels.lo, kPixels.hi), y),
               attacked = ce(*model, xa, y);
  EXPECT_GT(attacked, clean + 0.05) << "clean " << clean << " attacked " << attacked;
  EXPECT_GT(attacked, noise + 0.05) << "noise " << noise << " attacked " << attacked;
  // The model's parameters got no gradient from crafting.
  for (const auto& p : model->parameters()) EXPECT_FALSE(p.grad().defined() && p.grad().abs().sum().item<double>() > 0);

  // Seeded: the same seed gives the same examples; another random start, others.
  EXPECT_TRUE(torch::equal(xa, craft_adversarial(*model, x, y, pgd, kPixels, 3)));
  EXPECT_FALSE(torch::equal(xa, craft_adversarial(*model, x, y, pgd, kPixels, 4)));
}

TEST(Adversarial, FgsmMovesEveryUnclampedFeatureByEpsilon) {
  torch::manual_seed(2);
  auto model = small_cnn();
  auto gen = at::detail::createCPUGenerator(9);
  auto x = torch::rand({8, 1, 28, 28}, gen).mul(0.5).add(0.25).sub(0.2860).div(0.3530);  // pixels in [0.25, 0.75]
  auto y = torch::randint(0, 10, {8}, gen, torch::kLong);
  AttackOptions fgsm;
  fgsm.method = "fgsm";
  fgsm.epsilon = 0.05;
  auto xa = craft_adversarial(*model, x, y, fgsm, kPixels, 0);
  auto moved = (xa - x).abs();
  // Away from the box's edges every feature whose gradient is not zero moves by exactly epsilon.
  const double step = 0.05 * kPixels.unit;
  const auto nonzero = moved.gt(1e-7);
  EXPECT_GT(nonzero.to(torch::kDouble).mean().item<double>(), 0.5);
  EXPECT_NEAR(moved.masked_select(nonzero).min().item<double>(), step, 1e-5);
  EXPECT_NEAR(moved.max().item<double>(), step, 1e-5);
  EXPECT_GT(ce(*model, xa, y), ce(*model, x, y));
}

TEST(Adversarial, BadAttackOptionsAreRefusedNamingTheField) {
  AttackOptions a;
  a.epsilon = 0;
  expect_error_of<std::invalid_argument>([&] { a.validate(); }, "epsilon");
  a = {};
  a.method = "cw";
  expect_error_of<std::invalid_argument>([&] { a.validate(); }, Needles{"method", "pgd, fgsm", "cw"});
  a = {};
  a.steps = 0;
  expect_error_of<std::invalid_argument>([&] { a.validate(); }, "steps");
  TrainOptions t;
  t.adversarial.enabled = true;
  t.adversarial.loss = "mart";
  expect_error_of<std::invalid_argument>([&] { t.validate(); }, Needles{"adversarial.loss", "mart"});
}

// A task with one robust feature (right 90% of the time, margin 1) and 50 weak ones (each
// mean +-0.3, noise 1) that together predict the label almost perfectly (Tsipras et al. 2019).
// An L-inf attack of 0.6 turns every weak feature against the label but cannot flip the robust
// one: a model that leans on the weak features falls to ~0 robust accuracy, one that learned to
// trust the robust feature keeps ~90%.
TensorDataset robust_and_weak_features(int64_t n, uint64_t seed) {
  auto gen = at::detail::createCPUGenerator(seed);
  auto y = torch::randint(0, 2, {n}, gen, torch::kLong);
  auto s = y.to(torch::kFloat).mul(2).sub(1).unsqueeze(1);
  auto agree = torch::rand({n, 1}, gen).lt(0.9).to(torch::kFloat).mul(2).sub(1);
  auto robust = s * agree;
  auto weak = torch::randn({n, 50}, gen) + 0.3 * s;
  return TensorDataset{torch::cat({robust, weak}, 1), y, 2, {}};
}

std::unique_ptr<Model> linear_model() {
  ModelSpec spec;
  spec.name = "mlp";
  spec.input_shape = {51};
  spec.hidden = {};  // logistic regression
  spec.num_classes = 2;
  return build_model(spec);
}

struct Measured {
  double clean, robust;
};

Measured train_and_attack(const AdversarialTraining& adversarial) {
  torch::manual_seed(5);
  auto model = linear_model();
  TrainOptions opt;
  opt.epochs = 15;
  opt.batch_size = 64;
  opt.lr = 0.05;
  opt.momentum = 0.9;
  opt.seed = 11;
  opt.adversarial = adversarial;
  LocalTrainer(opt).train(*model, robust_and_weak_features(2000, 1));
  EvalOptions eval;
  AttackOptions pgd;
  pgd.epsilon = 0.6;
  pgd.steps = 10;
  eval.attacks = {pgd};
  auto ev = LocalTrainer::evaluate(*model, robust_and_weak_features(1000, 2), eval);
  return {ev.accuracy, ev.metrics.at("robust_accuracy_pgd")};
}

TEST(Adversarial, FalTrainingIsRobustWhereStandardTrainingIsNot) {
  const auto standard = train_and_attack(AdversarialTraining());
  AdversarialTraining fal;
  fal.enabled = true;
  fal.attack.epsilon = 0.6;
  fal.attack.steps = 5;
  const auto robust = train_and_attack(fal);
  AdversarialTraining trades = fal;
  trades.loss = "trades";
  const auto tr = train_and_attack(trades);
  std::cout << "standard clean " << standard.clean << " robust " << standard.robust << "; fal clean " << robust.clean
            << " robust " << robust.robust << "; trades clean " << tr.clean << " robust " << tr.robust << "\n";
  EXPECT_GT(standard.clean, 0.95);
  EXPECT_LT(standard.robust, 0.3);
  EXPECT_GT(robust.robust, 0.8);
  EXPECT_GT(robust.clean, 0.8);
  EXPECT_GT(tr.robust, 0.8);
}

TEST(Adversarial, RunSettingsReachTheTrainerAndTheEvaluations) {
  RunSpec s;
  s.apply_json({{"local_training", "fal"}, {"fal_epsilon", 0.2}, {"fal_steps", 4}, {"fal_loss", "trades"},
                {"fal_beta", 3}, {"eval_attack", "all"}, {"eval_pgd_steps", 7}, {"eval_attack_examples", 100}});
  const auto t = s.train_options();
  EXPECT_TRUE(t.adversarial.enabled);
  EXPECT_EQ(t.adversarial.attack.method, "pgd");
  EXPECT_DOUBLE_EQ(t.adversarial.attack.epsilon, 0.2);
  EXPECT_EQ(t.adversarial.attack.steps, 4);
  EXPECT_DOUBLE_EQ(t.adversarial.attack.step_size(), 2.5 * 0.2 / 4);
  EXPECT_EQ(t.adversarial.loss, "trades");
  EXPECT_DOUBLE_EQ(t.adversarial.beta, 3);
  const auto e = s.eval_options();
  ASSERT_EQ(e.attacks.size(), 2u);
  EXPECT_EQ(e.attacks[0].metric_key(), "robust_accuracy_fgsm");
  EXPECT_EQ(e.attacks[1].metric_key(), "robust_accuracy_pgd");
  EXPECT_EQ(e.attacks[1].steps, 7);
  EXPECT_EQ(e.attack_examples, 100);
  EXPECT_FALSE(RunSpec{}.train_options().adversarial.enabled);
  EXPECT_TRUE(RunSpec{}.eval_options().attacks.empty());

  expect_error_of<std::invalid_argument>([] { RunSpec::from_json({{"fal_epsilon", 0}}); }, Needles{"fal_epsilon", "(0"});
  expect_error_of<std::invalid_argument>([] { RunSpec::from_json({{"fal_loss", "mart"}}); }, Needles{"fal_loss", "pgd, trades"});
  expect_error_of<std::invalid_argument>([] { RunSpec::from_json({{"eval_attack", "cw"}}); },
                                         Needles{"eval_attack", "none, fgsm, pgd, all"});
}

// Federated evaluation: the clients' robust accuracies are weighted like their clean ones.
TEST(Adversarial, FederatedEvaluationWeighsRobustAccuracyByExamples) {
  FedAvg strategy;
  std::vector<ClientResult> results(2);
  results[0].num_examples = 100;
  results[0].metrics = {{"accuracy", 0.9}, {"loss", 0.3}, {"robust_accuracy_pgd", 0.5}};
  results[1].num_examples = 300;
  results[1].metrics = {{"accuracy", 0.8}, {"loss", 0.5}, {"robust_accuracy_pgd", 0.7}};
  const auto m = strategy.aggregate_evaluate(1, results);
  EXPECT_DOUBLE_EQ(m.at("robust_accuracy_pgd"), (0.5 * 100 + 0.7 * 300) / 400);
  EXPECT_DOUBLE_EQ(m.at("accuracy"), (0.9 * 100 + 0.8 * 300) / 400);
  EXPECT_EQ(m.count("robust_accuracy_fgsm"), 0u);
}

}  // namespace
}  // namespace fl
