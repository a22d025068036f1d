// fedsim's Byzantine clients (which clients, what each attack sends) and the run's bound on
// update norms, which rejects an oversized update before aggregation.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <set>

#include "common/core/device.h"
#include "common/engine/round_engine.h"
#include "expect_error.h"
#include "simulations/byzantine.h"
#include "simulations/in_process_pool.h"
#include "strategies/registry.h"
#include "tiny_federation.h"

namespace {

using namespace fl;
using fl::testing_util::expect_error_of;

ModelSpec small_mlp() { return fl::testing_util::tiny_mlp(); }

std::vector<VirtualClient> clients(int n) {
  std::vector<VirtualClient> out;
  for (int i = 0; i < n; ++i) out.push_back(fl::testing_util::synthetic_client(40, 100 + i));
  return out;
}

TrainOptions training() {
  TrainOptions t;
  t.epochs = 1;
  t.batch_size = 10;
  t.lr = 0.1;
  return t;
}

TEST(Byzantine, TheAttackersAreASeededFractionOfTheClients) {
  ByzantineOptions o;
  o.fraction = 0.2;
  o.seed = 3;
  const auto a = byzantine_clients(50, o);
  EXPECT_EQ(a.size(), 10u);
  EXPECT_TRUE(std::is_sorted(a.begin(), a.end()));
  EXPECT_EQ(std::set<int>(a.begin(), a.end()).size(), 10u);
  EXPECT_EQ(byzantine_clients(50, o), a);
  o.seed = 4;
  EXPECT_NE(byzantine_clients(50, o), a);
  o.fraction = 0;
  EXPECT_TRUE(byzantine_clients(50, o).empty());
  o.fraction = 1.0;
  expect_error_of<std::invalid_argument>([&] { o.validate(); }, "--byzantine-fraction");
  o.fraction = 0.1;
  o.attack = "gaussian";
  expect_error_of<std::invalid_argument>([&] { o.validate(); }, std::vector<std::string>{"'gaussian'", "sign-flip"});
}

// Each update attack sends what its formula says, relative to the client's honest update
// (the same client, seed and task trained honestly).
TEST(Byzantine, UpdateAttacksTransformTheHonestUpdate) {
  seed_everything(1);
  const ModelState sent = build_model(small_mlp())->state();
  ClientTask task;
  task.round = 1;
  task.client_id = 0;
  task.model = sent.clone();
  task.seed = 42;
  auto run_with = [&](std::shared_ptr<const ClientAlgorithm> algorithm) {
    InProcessPool pool(clients(1), small_mlp(), torch::kCPU, std::move(algorithm), training(), {});
    auto r = pool.execute({task});
    EXPECT_TRUE(r[0].ok) << r[0].error;
    return r[0].model;
  };
  const auto honest_algorithm = create_client_algorithm("fedavg");
  const ModelState honest = run_with(honest_algorithm);
  const ModelState delta = honest - sent;
  ASSERT_GT(delta.norm(), 0);
  ByzantineOptions o;
  o.scale = 3;
  o.attack = "sign-flip";
  const ModelState flipped = run_with(byzantine_algorithm(honest_algorithm, o));
  EXPECT_TRUE(torch::allclose((flipped - sent).flat(), delta.flat() * -3, 1e-5, 1e-6));
  o.attack = "scale";
  EXPECT_TRUE(torch::allclose((run_with(byzantine_algorithm(honest_algorithm, o)) - sent).flat(), delta.flat() * 3, 1e-5, 1e-6));
  o.attack = "noise";
  const ModelState noise = run_with(byzantine_algorithm(honest_algorithm, o)) - sent;
  EXPECT_NEAR(noise.norm(), 3 * delta.norm(), 1e-4 * delta.norm());
  EXPECT_LT(std::abs(noise.dot(delta)) / (noise.norm() * delta.norm()), 0.5);  // not the honest direction
  o.attack = "label-flip";
  EXPECT_EQ(byzantine_algorithm(honest_algorithm, o), nullptr);
  TensorDataset d = clients(1)[0].train;
  const auto before = d.y.clone();
  flip_labels(d);
  EXPECT_TRUE(torch::equal(d.y, 2 - before));
}

// A sign-flipping client scaled by 10 drags FedAvg's model far away; with max_update_norm the
// engine refuses its update, names the reason, and the round aggregates the honest ones.
TEST(Byzantine, TheRunsNormBoundRejectsAnOversizedUpdate) {
  seed_everything(2);
  auto cs = clients(4);
  ByzantineOptions o;
  o.scale = 10;
  cs[2].algorithm = byzantine_algorithm(create_client_algorithm("fedavg"), o);
  InProcessPool pool(std::move(cs), small_mlp(), torch::kCPU, create_client_algorithm("fedavg"), training(), {});
  const ModelState initial = build_model(small_mlp())->state();
  auto norms_of_round = [&](double bound) {
    auto strategy = create_strategy("fedavg");
    strategy->initialize(initial);
    EngineOptions eo;
    eo.rounds = 1;
    eo.max_update_norm = bound;
    RoundEngine engine(*strategy, pool, eo);
    auto report = engine.run_round(1);
    return std::make_pair(report, strategy->global_model().clone());
  };
  // The bound: twice the largest honest update's norm (the attacker's is about 10x its own).
  std::vector<ClientTask> tasks(4);
  for (int c = 0; c < 4; ++c) {
    tasks[c].round = 1;
    tasks[c].client_id = c;
    tasks[c].model = initial.clone();
    tasks[c].seed = mix_seed(0, 1, c);
  }
  const auto probe = pool.execute(tasks);
  double honest = 0;
  for (int c : {0, 1, 3}) honest = std::max(honest, (probe[c].model - initial).norm());
  ASSERT_GT((probe[2].model - initial).norm(), 4 * honest);
  const ModelState honest_average = weighted_average_of({probe[0], probe[1], probe[3]});
  const auto [open, open_model] = norms_of_round(0);
  EXPECT_EQ(open.failures, 0);
  const auto [bounded, bounded_model] = norms_of_round(2 * honest);
  EXPECT_EQ(bounded.rejected, 1);
  EXPECT_EQ(bounded.failures, 1);
  EXPECT_EQ(bounded.dropped, std::vector<int>{2});
  EXPECT_NE(bounded.failure_reasons.at(2).find("max_update_norm"), std::string::npos) << bounded.failure_reasons.at(2);
  // Without the bound the attacker drags the model; with it the round is FedAvg of the others.
  EXPECT_GT((open_model - honest_average).norm(), 0.5 * (honest_average - initial).norm());
  EXPECT_LT((bounded_model - honest_average).flat().abs().max().item<double>(), 1e-6);
  EngineOptions bad;
  bad.max_update_norm = -1;
  expect_error_of<std::invalid_argument>([&] { bad.validate(4); }, "max_update_norm");
}

}  // namespace
