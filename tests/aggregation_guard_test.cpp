// No result can crash a round (issue 19): malformed updates (a missing or reordered tensor, a
// SCAFFOLD update without delta_c, NaN/Inf values, an absurd example count or samples metric)
// are rejected before aggregation with their reason, and an aggregation that throws anyway is
// undone: the result it throws on is dropped and named, or, when no single one is to blame, the
// round keeps the model and strategy state it started with.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <filesystem>
#include <functional>
#include <limits>
#include <map>

#include "common/engine/round_engine.h"
#include "expect_error.h"
#include "strategies/fedavg.h"
#include "strategies/registry.h"

namespace {

using namespace fl;

ModelState tiny_model(float v) {
  return ModelState({{"fc.weight", torch::full({2, 3}, v)}, {"fc.bias", torch::full({2}, v)}});
}

// Client c answers with the model it was sent plus (c + 1) / 10 on every value, 10 examples, and
// SCAFFOLD's delta_c when asked for one; `tamper[c]` then spoils its result.
struct ScriptedPool : ClientPool {
  explicit ScriptedPool(int n) : n(n) {}
  int num_clients() const override { return n; }
  std::vector<ClientResult> execute(const std::vector<ClientTask>& tasks) override {
    std::vector<ClientResult> out;
    for (const auto& t : tasks) {
      ClientResult r;
      r.round = t.round;
      r.client_id = t.client_id;
      r.num_examples = 10;
      r.model = t.model.clone();
      for (const auto& e : r.model.entries()) e.tensor.add_(0.1 * (t.client_id + 1));
      if (t.tensors.count("c")) r.tensors["delta_c"] = t.tensors.at("c").zeros_like();
      r.metrics["train_loss"] = 1.0;
      if (tamper.count(t.client_id)) tamper[t.client_id](r);
      out.push_back(std::move(r));
    }
    return out;
  }
  int n;
  std::map<int, std::function<void(ClientResult&)>> tamper;
};

EngineOptions options(int rounds = 1) {
  EngineOptions o;
  o.rounds = rounds;
  o.max_examples = 1000000;
  return o;
}

TEST(AggregationGuard, MalformedUpdatesAreRejectedWithTheirReasonAndTheRoundGoesOn) {
  ScriptedPool pool(7);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  pool.tamper[1] = [](ClientResult& r) { r.model = r.model.select({"fc.weight"}); };
  pool.tamper[2] = [](ClientResult& r) {
    r.model = ModelState({{"fc.bias", r.model.at("fc.bias")}, {"fc.weight", r.model.at("fc.weight")}});
  };
  pool.tamper[3] = [nan](ClientResult& r) { r.model.at("fc.bias")[0] = nan; };
  pool.tamper[4] = [](ClientResult& r) { r.num_examples = int64_t{1} << 62; };
  pool.tamper[5] = [](ClientResult& r) { r.metrics["samples"] = 1e300; };
  pool.tamper[6] = [](ClientResult& r) { r.model.at("fc.weight")[0][0] = std::numeric_limits<float>::infinity(); };
  FedAvg strategy;
  strategy.initialize(tiny_model(1.0f));
  RoundEngine engine(strategy, pool, options());
  const RoundReport report = engine.run_round(1);
  EXPECT_EQ(report.failures, 6);
  EXPECT_EQ(report.rejected, 6);
  const std::map<int, std::string> needles = {
      {1, "model tensor 'fc.bias' is missing"},
      {2, "model tensor 'fc.weight' is out of the model's order"},
      {3, "model tensor 'fc.bias' is not finite"},
      {4, "num_examples 4611686018427387904 exceeds the run's limit of 1000000"},
      {5, "metric 'samples' must be a whole count"},
      {6, "model tensor 'fc.weight' is not finite"}};
  for (const auto& [client, needle] : needles) {
    ASSERT_TRUE(report.failure_reasons.count(client)) << client;
    EXPECT_NE(report.failure_reasons.at(client).find("update rejected: " + needle), std::string::npos)
        << report.failure_reasons.at(client);
  }
  // Only client 0's update counted: 1 + 0.1.
  EXPECT_TRUE(torch::allclose(strategy.global_model().at("fc.weight"), torch::full({2, 3}, 1.1f)));
  EXPECT_TRUE(report.aggregation_error.empty());
}

TEST(AggregationGuard, ScaffoldUpdateWithoutItsDeltaCIsRejected) {
  ScriptedPool pool(3);
  pool.tamper[1] = [](ClientResult& r) { r.tensors.erase("delta_c"); };
  pool.tamper[2] = [](ClientResult& r) { r.tensors["delta_c"] = r.tensors["delta_c"].select({"fc.weight"}); };
  auto strategy = create_strategy("scaffold", {});
  strategy->initialize(tiny_model(1.0f));
  RoundEngine engine(*strategy, pool, options());
  const RoundReport report = engine.run_round(1);
  EXPECT_EQ(report.rejected, 2);
  EXPECT_NE(report.failure_reasons.at(1).find("no 'delta_c'"), std::string::npos) << report.failure_reasons.at(1);
  EXPECT_NE(report.failure_reasons.at(2).find("delta_c: expected 2 tensors, got 1"), std::string::npos)
      << report.failure_reasons.at(2);
}

TEST(AggregationGuard, KrumNeverSortsANanScore) {
  ScriptedPool pool(6);
  pool.tamper[4] = [](ClientResult& r) { r.model.at("fc.weight")[1][1] = std::nanf(""); };
  auto strategy = create_strategy("multikrum", {});
  strategy->initialize(tiny_model(0.0f));
  RoundEngine engine(*strategy, pool, options());
  const RoundReport report = engine.run_round(1);
  EXPECT_EQ(report.rejected, 1);
  EXPECT_TRUE(report.failure_reasons.count(4));
  EXPECT_TRUE(torch::isfinite(strategy->global_model().at("fc.weight")).all().item<bool>());
}

// Aggregates like FedAvg but throws on a result whose metrics say "poison", after it has
// already replaced the global model and counted the call: what the engine must undo.
class Fragile : public FedAvg {
 public:
  Metrics aggregate_mean(int round, ModelState mean, const std::vector<ClientResult>& results) override {
    ++calls_;
    global_ = global_.zeros_like();
    for (const auto& r : results)
      if (r.metrics.count("poison")) throw std::invalid_argument("poisoned by client " + std::to_string(r.client_id));
    return FedAvg::aggregate_mean(round, std::move(mean), results);
  }
  std::string save_state() const override { return std::to_string(calls_); }
  void load_state(const std::string& blob) override { calls_ = blob.empty() ? 0 : std::stoi(blob); }
  int calls() const { return calls_; }

 private:
  int calls_ = 0;
};

TEST(AggregationGuard, TheResultAggregationThrowsOnIsDroppedAndNamed) {
  ScriptedPool pool(4);
  pool.tamper[2] = [](ClientResult& r) { r.metrics["poison"] = 1; };
  Fragile strategy;
  strategy.initialize(tiny_model(1.0f));
  RoundEngine engine(strategy, pool, options());
  const RoundReport report = engine.run_round(1);
  EXPECT_TRUE(report.aggregation_error.empty());
  EXPECT_EQ(report.rejected, 1);
  EXPECT_EQ(report.dropped, std::vector<int>{2});
  EXPECT_NE(report.failure_reasons.at(2).find("aggregation failed on it: poisoned by client 2"), std::string::npos)
      << report.failure_reasons.at(2);
  // Clients 0, 1, 3 (equal weights): 1 + (0.1 + 0.2 + 0.4) / 3.
  EXPECT_TRUE(torch::allclose(strategy.global_model().at("fc.bias"), torch::full({2}, 1.0f + 0.7f / 3)));
  // The failed calls were undone: the state counts the one that stood.
  EXPECT_EQ(strategy.calls(), 1);
}

TEST(AggregationGuard, WhenNoSingleResultIsToBlameTheRoundKeepsItsModel) {
  ScriptedPool pool(4);
  pool.tamper[0] = pool.tamper[3] = [](ClientResult& r) { r.metrics["poison"] = 1; };
  Fragile strategy;
  strategy.initialize(tiny_model(1.0f));
  strategy.load_state("5");
  RoundEngine engine(strategy, pool, options());
  const RoundReport report = engine.run_round(1);
  EXPECT_NE(report.aggregation_error.find("poisoned by client 0"), std::string::npos) << report.aggregation_error;
  EXPECT_EQ(report.strategy_metrics.at("aggregation_failed"), 1);
  EXPECT_TRUE(strategy.global_model().equal(tiny_model(1.0f)));
  EXPECT_EQ(strategy.calls(), 5);
  // The next round runs as usual once the poison is gone.
  pool.tamper.clear();
  const RoundReport next = engine.run_round(2);
  EXPECT_TRUE(next.aggregation_error.empty());
  EXPECT_EQ(strategy.calls(), 6);
}

TEST(AggregationGuard, ACyclicRoundSkipsTheClientItCannotAggregate) {
  ScriptedPool pool(3);
  pool.tamper[1] = [](ClientResult& r) { r.metrics["poison"] = 1; };
  Fragile strategy;
  strategy.initialize(tiny_model(1.0f));
  EngineOptions o = options();
  o.workflow = Workflow::kCyclic;
  o.schedule = {{0, 1, 2}};
  RoundEngine engine(strategy, pool, o);
  const RoundReport report = engine.run_round(1);
  EXPECT_EQ(report.rejected, 1);
  EXPECT_EQ(report.dropped, std::vector<int>{1});
  EXPECT_TRUE(report.aggregation_error.empty());
  // 1 -> client 0 adds 0.1 -> client 2 adds 0.3: 1.4.
  EXPECT_TRUE(torch::allclose(strategy.global_model().at("fc.bias"), torch::full({2}, 1.4f)));
  EXPECT_EQ(strategy.calls(), 2);
}

TEST(AggregationGuard, EvaluationResultsMayReportNoExamplesButNothingNonFinite) {
  FedAvg strategy;
  ClientTask t;
  t.phase = kEvaluatePhase;
  ClientResult r;
  r.num_examples = 0;
  r.metrics["accuracy"] = 0.5;
  EXPECT_EQ(result_problem(strategy, t, r), "");
  r.metrics["accuracy"] = std::numeric_limits<double>::infinity();
  EXPECT_EQ(result_problem(strategy, t, r), "metric 'accuracy' is not finite");
  t.phase = kFitPhase;
  r.metrics.clear();
  EXPECT_EQ(result_problem(strategy, t, r), "num_examples must be > 0, got 0");
}

// The finiteness check reads fp32 bits: every Inf and NaN anywhere in an update (the first and
// the last value too, past any vector width), and nothing finite, however large or small; other
// dtypes go through torch::isfinite.
TEST(AggregationGuard, EveryNonFiniteValueIsFoundAndNoFiniteOne) {
  FedAvg strategy;
  ClientTask t;
  t.model = ModelState({{"w", torch::zeros({1001})}, {"b", torch::zeros({3})}});
  auto problem_with = [&](int64_t at, float value) {
    ClientResult r;
    r.num_examples = 1;
    r.model = t.model.clone();
    r.model.at("w")[at] = value;
    return result_problem(strategy, t, r);
  };
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  for (int64_t at : {int64_t{0}, int64_t{517}, int64_t{1000}}) {
    for (float bad : {inf, -inf, nan, -nan})
      EXPECT_EQ(problem_with(at, bad), "model tensor 'w' is not finite") << at << " " << bad;
    for (float fine : {std::numeric_limits<float>::max(), -std::numeric_limits<float>::max(),
                       std::numeric_limits<float>::denorm_min(), -0.0f})
      EXPECT_EQ(problem_with(at, fine), "") << at << " " << fine;
  }
  ClientResult r;
  r.num_examples = 1;
  r.model = t.model.clone();
  r.tensors["extra"] = ModelState({{"h", torch::tensor({1.0f, 2.0f}).to(torch::kHalf)}});
  EXPECT_EQ(result_problem(strategy, t, r), "");
  r.tensors["extra"] = ModelState({{"h", torch::tensor({1.0f, inf}).to(torch::kHalf)}});
  EXPECT_EQ(result_problem(strategy, t, r), "tensor 'extra/h' is not finite");
}

}  // namespace
