// Secure aggregation as four exchanges of a round around FedAvg: the same model as plain FedAvg
// (up to fixed point), masked inputs that look random, dropouts recovered down to the
// threshold, a clean failed round below it, and distributed DP's accounting.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "common/core/device.h"
#include "common/engine/round_engine.h"
#include "common/run/run_spec.h"
#include "common/secagg/secagg.h"
#include "expect_error.h"
#include "simulations/in_process_pool.h"
#include "strategies/registry.h"
#include "strategies/secure_aggregation.h"
#include "tiny_federation.h"

namespace {

using namespace fl;
using fl::testing_util::expect_error_of;

// 515 values: enough for the masked inputs' statistics.
ModelSpec small_mlp() { return fl::testing_util::tiny_mlp({64}); }

std::vector<VirtualClient> clients(int n) {
  std::vector<VirtualClient> out;
  for (int i = 0; i < n; ++i) out.push_back(fl::testing_util::synthetic_client(20 + 10 * i, 200 + i));  // unequal weights
  return out;
}

TrainOptions training() {
  TrainOptions t;
  t.epochs = 1;
  t.batch_size = 10;
  t.lr = 0.1;
  return t;
}

using fl::testing_util::RecordingPool;

struct Round {
  RoundReport report;
  ModelState global;
  std::map<std::string, std::vector<ClientResult>> seen;
};

// One round of `spec`'s strategy over n clients; `fail` drop out in `phase`.
Round run_round(const RunSpec& spec, int n, const std::string& phase = "", std::set<int> fail = {},
                const ModelState* start = nullptr) {
  seed_everything(5);
  const ModelState initial = start ? start->clone() : build_model(small_mlp())->state();
  InProcessPool inner(clients(n), small_mlp(), torch::kCPU, spec.create_client_algorithm(), training(), {});
  RecordingPool pool(inner);
  pool.fail_phase = phase;
  pool.fail = std::move(fail);
  auto strategy = spec.create_strategy();
  strategy->initialize(initial);
  EngineOptions eo = spec.engine_options();
  eo.rounds = 1;
  RoundEngine engine(*strategy, pool, eo);
  Round r;
  r.report = engine.run_round(1);
  r.global = strategy->global_model().clone();
  r.seen = pool.seen;
  return r;
}

RunSpec with_secagg(const std::string& mode) {
  RunSpec s;
  s.secagg = mode;
  s.seed = 11;
  s.validate();
  return s;
}

double max_diff(const ModelState& a, const ModelState& b) { return (a - b).flat().abs().max().item<double>(); }

TEST(SecureAggregation, GivesFedAvgsModelWithoutSeeingAnUpdate) {
  RunSpec plain;
  plain.seed = 11;
  const auto fedavg = run_round(plain, 6);
  const auto secure = run_round(with_secagg("secagg"), 6);
  EXPECT_EQ(secure.report.exchanges, 4);
  EXPECT_EQ(secure.report.failures, 0);
  EXPECT_EQ(secure.report.strategy_metrics.at("secagg_failed"), 0);
  EXPECT_EQ(secure.report.strategy_metrics.at("secagg_survivors"), 6);
  EXPECT_GT(max_diff(fedavg.global, build_model(small_mlp())->state()), 1e-3);  // it trained
  EXPECT_LT(max_diff(secure.global, fedavg.global), 1e-5);
  EXPECT_GT(secure.report.samples, 0);
  // What the coordinator received: keys, sealed shares, masked vectors, shares; never a model.
  for (const auto& [phase, results] : secure.seen)
    for (const auto& r : results) EXPECT_TRUE(r.model.empty()) << phase;
  // A masked input is uniform in Z_(2^32): its mean is near 2^31 and every bit is set about half
  // the time, though the update under it is a few hundredths around 0 (fixed point near 0 or 2^32).
  for (const auto& r : secure.seen.at("fit-3")) {
    const auto bytes = r.tensors.at("secagg").at("message");
    const auto m = secagg::MaskedInput::parse(secagg::Bytes(bytes.data_ptr<uint8_t>(), bytes.data_ptr<uint8_t>() + bytes.numel()));
    ASSERT_EQ(m.masked.size(), static_cast<size_t>(secure.global.numel() + 1));
    double mean = 0;
    std::vector<int> bits(32, 0);
    for (uint32_t v : m.masked) {
      mean += v / static_cast<double>(m.masked.size());
      for (int b = 0; b < 32; ++b) bits[b] += (v >> b) & 1u;
    }
    EXPECT_NEAR(mean / 4294967296.0, 0.5, 0.06) << "client " << r.client_id;
    for (int b = 0; b < 32; ++b)
      EXPECT_NEAR(bits[b] / static_cast<double>(m.masked.size()), 0.5, 0.12) << "client " << r.client_id << " bit " << b;
  }
}

// SecAgg+ (a sparse graph) gives the same sum; a client lost after sharing its keys has its
// masks removed through its neighbours' shares, and the mean is that of the other clients.
TEST(SecureAggregation, SparseGraphAndDropoutsAfterSharing) {
  RunSpec plain;
  plain.seed = 11;
  auto sparse = with_secagg("secagg+");
  sparse.secagg_neighbours = 4;
  EXPECT_LT(max_diff(run_round(sparse, 10).global, run_round(plain, 10).global), 1e-5);

  const auto dropped = run_round(with_secagg("secagg"), 6, "fit-3", {2});
  EXPECT_EQ(dropped.report.strategy_metrics.at("secagg_failed"), 0);
  EXPECT_EQ(dropped.report.strategy_metrics.at("secagg_survivors"), 5);
  EXPECT_EQ(dropped.report.dropped, std::vector<int>{2});
  // FedAvg over the five that stayed (client 2 left out from the start: same seeds, same training).
  auto five = plain;
  five.validate();
  seed_everything(5);
  const ModelState initial = build_model(small_mlp())->state();
  InProcessPool pool(clients(6), small_mlp(), torch::kCPU, five.create_client_algorithm(), training(), {});
  std::vector<ClientTask> tasks;
  for (int c : {0, 1, 3, 4, 5}) {
    ClientTask t;
    t.round = 1;
    t.client_id = c;
    t.model = initial.clone();
    t.seed = mix_seed(11, 1, c);
    tasks.push_back(std::move(t));
  }
  const auto results = pool.execute(tasks);
  EXPECT_LT(max_diff(dropped.global, weighted_average_of(results)), 1e-5);
}

// Below the threshold nothing can be unmasked: the round fails cleanly (the model stays, the
// metrics say why) and the next round works.
TEST(SecureAggregation, BelowTheThresholdTheRoundFailsCleanly) {
  const auto spec = with_secagg("secagg");
  seed_everything(5);
  const ModelState initial = build_model(small_mlp())->state();
  const auto failed = run_round(spec, 6, "fit-2", {0, 1, 2, 3});  // 2 of 6 share keys; t = 4
  EXPECT_EQ(failed.report.strategy_metrics.at("secagg_failed"), 1);
  EXPECT_TRUE(failed.global.equal(initial));
  const auto next = run_round(spec, 6, "", {}, &failed.global);
  EXPECT_EQ(next.report.strategy_metrics.at("secagg_failed"), 0);
  EXPECT_FALSE(next.global.equal(initial));
  EXPECT_EQ(secagg_threshold(6, 0.6), 4);
  EXPECT_EQ(secagg_threshold(10, 0.5), 6);  // a strict majority at least
}

TEST(SecureAggregation, DistributedDpIsAccountedAndTheSettingsAreChecked) {
  auto spec = with_secagg("secagg");
  spec.dp = "distributed";
  spec.dp_clip = 1;
  spec.dp_noise = 0.5;
  spec.validate();
  const auto r = run_round(spec, 6);
  RdpAccountant a;
  a.compose(1.0, 0.5);
  EXPECT_DOUBLE_EQ(r.report.strategy_metrics.at("dp_epsilon"), a.spent(1e-5).epsilon);

  RunSpec bad;
  bad.secagg = "secagg";
  bad.strategy = "krum";
  expect_error_of<std::invalid_argument>([&] { bad.validate(); }, std::vector<std::string>{"'secagg'", "krum"});
  bad.strategy = "fedavg";
  bad.strategy_params.clear();
  bad.dp = "central";
  expect_error_of<std::invalid_argument>([&] { bad.validate(); }, "dp distributed");
  bad.secagg = "none";
  bad.dp = "distributed";
  expect_error_of<std::invalid_argument>([&] { bad.validate(); }, "needs secagg");
}

}  // namespace
