// NormClip, the two-exchange strategy: exchange 1 reports update norms, exchange 2 sends the
// updates clipped to the round's median norm; a client lost between the exchanges is left out.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>

#include "common/core/device.h"
#include "common/engine/round_engine.h"
#include "simulations/in_process_pool.h"
#include "strategies/registry.h"
#include "tiny_federation.h"

namespace {

using namespace fl;

using fl::testing_util::RecordingPool;
using fl::testing_util::tiny_mlp;

VirtualClient client_with(int64_t n, uint64_t seed) { return fl::testing_util::synthetic_client(n, seed); }

TEST(NormClip, TheSecondExchangeSendsUpdatesClippedToTheMedianNorm) {
  seed_everything(3);
  std::vector<VirtualClient> clients;
  for (int i = 0; i < 3; ++i) clients.push_back(client_with(30 * (i + 1), 10 + i));  // 30, 60, 90 examples
  TrainOptions opt;
  opt.epochs = 2;
  opt.batch_size = 10;
  opt.lr = 0.1;
  InProcessPool inner(std::move(clients), tiny_mlp(), torch::kCPU, create_client_algorithm("normclip"), opt, {});
  RecordingPool pool(inner);
  auto strategy = create_strategy("normclip");
  const ModelState initial = build_model(tiny_mlp())->state();
  strategy->initialize(initial);
  EngineOptions eo;
  eo.rounds = 2;
  RoundEngine engine(*strategy, pool, eo);

  const auto report = engine.run_round(1);
  EXPECT_EQ(report.exchanges, 2);
  EXPECT_EQ(report.failures, 0);
  EXPECT_GT(report.samples, 0);  // exchange 1's training metrics reach the report
  EXPECT_TRUE(std::isfinite(report.train_loss));
  // Exchange 1: norms only, no weights.
  std::vector<double> norms;
  for (const auto& r : pool.seen.at("fit")) {
    EXPECT_TRUE(r.model.empty());
    norms.push_back(r.metrics.at("update_norm"));
  }
  std::sort(norms.begin(), norms.end());
  ASSERT_LT(norms[0], norms[2]);
  const double tau = report.strategy_metrics.at("clip_norm");
  EXPECT_DOUBLE_EQ(tau, norms[1]);
  // Exchange 2: every update within tau, the largest one clipped onto it.
  const auto& clipped = pool.seen.at("fit-2");
  ASSERT_EQ(clipped.size(), 3u);
  std::vector<const ModelState*> models;
  std::vector<double> weights;
  for (const auto& r : clipped) {
    const double n = (r.model - initial).norm();
    EXPECT_LE(n, tau * (1 + 1e-5)) << "client " << r.client_id;
    if (r.metrics.at("clip_factor") < 1) {
      EXPECT_NEAR(n, tau, tau * 1e-5);
    }
    models.push_back(&r.model);
    weights.push_back(static_cast<double>(r.num_examples));
  }
  EXPECT_EQ(report.strategy_metrics.at("clipped"), 1);
  EXPECT_EQ(weights, (std::vector<double>{30, 60, 90}));
  EXPECT_TRUE(strategy->global_model().equal(ModelState::weighted_average(models, weights)));

  // Round 2: client 0 is lost between the exchanges; the bound still comes from all three norms.
  pool.fail_phase = "fit-2";
  pool.fail = {0};
  const ModelState before = strategy->global_model().clone();
  const auto second = engine.run_round(2);
  EXPECT_EQ(second.failures, 1);
  EXPECT_EQ(second.dropped, std::vector<int>{0});
  std::vector<double> norms2;
  for (const auto& r : pool.seen.at("fit")) norms2.push_back(r.metrics.at("update_norm"));
  std::sort(norms2.begin(), norms2.end());
  EXPECT_DOUBLE_EQ(second.strategy_metrics.at("clip_norm"), norms2[1]);
  models.clear();
  weights.clear();
  for (const auto& r : pool.seen.at("fit-2"))
    if (r.ok) {
      models.push_back(&r.model);
      weights.push_back(static_cast<double>(r.num_examples));
    }
  ASSERT_EQ(models.size(), 2u);
  EXPECT_TRUE(strategy->global_model().equal(ModelState::weighted_average(models, weights)));
  EXPECT_FALSE(strategy->global_model().equal(before));
}

}  // namespace
