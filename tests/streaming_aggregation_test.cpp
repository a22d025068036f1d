// Streaming aggregation (issue 20, common/engine/streaming_aggregation.h): the mean folded one
// update at a time is bit-identical to weighted_average_of; the round engine streams a round when
// the strategy aggregates a mean and the pool defers the models, holds one update at a time, and
// a model that cannot be read back is that client's failure, not the round's.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <map>
#include <set>
#include <stdexcept>

#include "common/engine/round_engine.h"
#include "common/engine/streaming_aggregation.h"
#include "expect_error.h"
#include "strategies/fedavg.h"
#include "strategies/registry.h"

namespace {

using namespace fl;
using fl::testing_util::expect_error_of;
using WeakTensor = c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl>;

// Layers of odd sizes (so that no kernel splits them evenly) and an integer buffer.
ModelState random_state(uint64_t seed, bool with_int = true) {
  torch::manual_seed(seed);
  std::vector<ModelState::Entry> e = {{"a.weight", torch::randn({37, 53})}, {"a.bias", torch::randn({37})},
                                      {"b.weight", torch::randn({1001})}};
  if (with_int) e.push_back({"bn.num_batches_tracked", torch::tensor(int64_t(seed * 7 + 3))});
  return ModelState(std::move(e));
}

TEST(StreamingAggregation, TheFoldedMeanIsBitIdenticalToTheWeightedAverage) {
  const std::vector<int64_t> examples = {7, 100, 13, 1};
  std::vector<ModelState> states;
  std::vector<ClientResult> results;
  for (size_t i = 0; i < examples.size(); ++i) {
    states.push_back(random_state(i + 1));
    ClientResult r;
    r.model = states.back();
    r.num_examples = examples[i];
    results.push_back(r);
  }
  WeightedMeanAccumulator mean(7 + 100 + 13 + 1);
  for (size_t i = 0; i < states.size(); ++i) mean.add(states[i], static_cast<double>(examples[i]));
  EXPECT_EQ(mean.count(), 4);
  const ModelState folded = mean.take();
  const ModelState reference = weighted_average_of(results);
  EXPECT_TRUE(folded.equal(reference));
  EXPECT_EQ(folded.at("bn.num_batches_tracked").item<int64_t>(), reference.at("bn.num_batches_tracked").item<int64_t>());

  // Mixed floating dtypes (no packed buffer): entry by entry, still bit-identical.
  auto mixed = [](float v) {
    return ModelState({{"x", torch::full({5}, v)}, {"y", torch::full({3}, static_cast<double>(v) / 3, torch::kDouble)}});
  };
  ClientResult r1, r2;
  r1.model = mixed(1.25f);
  r1.num_examples = 3;
  r2.model = mixed(-7.5f);
  r2.num_examples = 11;
  WeightedMeanAccumulator m2(14);
  m2.add(r1.model, 3);
  m2.add(r2.model, 11);
  EXPECT_TRUE(m2.take().equal(weighted_average_of({r1, r2})));
}

TEST(StreamingAggregation, AModelOfAnotherLayoutIsRefusedNamingTheEntry) {
  WeightedMeanAccumulator mean(2);
  mean.add(random_state(1), 1);
  expect_error_of<std::invalid_argument>([&] { mean.add(random_state(2, /*with_int=*/false), 1); },
                                         "streaming aggregation (model 1)");
  expect_error_of<std::invalid_argument>([] { WeightedMeanAccumulator zero(0); }, "weights sum to zero");
  WeightedMeanAccumulator empty(1);
  expect_error_of<std::logic_error>([&] { empty.take(); }, "no model was added");
}

// Client c answers with the model it was sent plus (c + 1) / 8 on every value and 10 * (c + 1)
// examples. Deferring, it returns results without models and hands each over on request, and
// records how many of the models it handed over were still alive at each request.
struct DeferringPool : ClientPool, DeferredResultModels {
  explicit DeferringPool(int n, bool can_defer = true) : n(n), can_defer(can_defer) {}
  int num_clients() const override { return n; }
  ClientResult answer(const ClientTask& t) const {
    ClientResult r;
    r.round = t.round;
    r.client_id = t.client_id;
    r.num_examples = 10 * (t.client_id + 1);
    r.model = t.model.clone();
    r.model.flat().add_(0.125 * (t.client_id + 1));
    r.metrics["train_loss"] = 1.0 + t.client_id;
    return r;
  }
  std::vector<ClientResult> execute(const std::vector<ClientTask>& tasks) override {
    std::vector<ClientResult> out;
    sent.clear();
    for (const auto& t : tasks) {
      sent[t.client_id] = t;
      ClientResult r = answer(t);
      if (defer_) r.model = ModelState();
      out.push_back(std::move(r));
    }
    last_ = defer_;
    return out;
  }
  bool defer_result_models(bool on) override {
    defer_ = on && can_defer;
    if (on) ++deferrals;
    return defer_;
  }
  bool result_models_deferred() const override { return last_; }
  void load_result_model(ClientResult& r) override {
    int alive = 0;
    for (const auto& w : handed_out) alive += !w.expired();
    max_alive = std::max(max_alive, alive);
    loads.push_back(r.client_id);
    if (unreadable.count(r.client_id)) throw std::runtime_error("payload file of client " + std::to_string(r.client_id) + " is gone");
    r.model = answer(sent.at(r.client_id)).model;
    handed_out.emplace_back(r.model.flat().getIntrusivePtr());
  }
  int n;
  bool can_defer;
  bool defer_ = false, last_ = false;
  int deferrals = 0, max_alive = 0;
  std::vector<int> loads;
  std::set<int> unreadable;
  std::map<int, ClientTask> sent;
  std::vector<WeakTensor> handed_out;
};

EngineOptions options(int rounds = 3) {
  EngineOptions o;
  o.rounds = rounds;
  o.max_examples = 1000000;
  return o;
}

TEST(StreamingAggregation, TheEngineStreamsAMeanStrategyOneUpdateAtATimeToTheSameBits) {
  for (const std::string name : {"fedavg", "fedavgm", "fedadam"}) {
    SCOPED_TRACE(name);
    // The same rounds with whole results in memory and streamed.
    auto whole_strategy = create_strategy(name, {});
    auto streamed_strategy = create_strategy(name, {});
    whole_strategy->initialize(random_state(9));
    streamed_strategy->initialize(random_state(9));
    DeferringPool whole_pool(5, /*can_defer=*/false), streamed_pool(5);
    RoundEngine whole(*whole_strategy, whole_pool, options()), streamed(*streamed_strategy, streamed_pool, options());
    for (int round = 1; round <= 3; ++round) {
      const RoundReport a = whole.run_round(round), b = streamed.run_round(round);
      EXPECT_TRUE(streamed_strategy->global_model().equal(whole_strategy->global_model())) << "round " << round;
      EXPECT_EQ(a.samples, b.samples);
      EXPECT_EQ(a.train_loss, b.train_loss);
      EXPECT_EQ(b.failures, 0);
    }
    EXPECT_TRUE(whole_pool.loads.empty());
    // Every selected client's model read back once per round, in task order, one alive at a time.
    ASSERT_EQ(streamed_pool.loads.size(), 15u);
    EXPECT_EQ(std::vector<int>(streamed_pool.loads.begin(), streamed_pool.loads.begin() + 5),
              std::vector<int>({0, 1, 2, 3, 4}));
    EXPECT_EQ(streamed_pool.max_alive, 0);
    EXPECT_FALSE(streamed_pool.defer_) << "deferral is switched off when the round is over";
  }
}

TEST(StreamingAggregation, AModelThatCannotBeReadBackFailsItsClientAndTheMeanIsFoldedWithoutIt) {
  FedAvg strategy;
  strategy.initialize(random_state(3));
  DeferringPool pool(4);
  pool.unreadable = {2};
  RoundEngine engine(strategy, pool, options(1));
  const RoundReport report = engine.run_round(1);
  EXPECT_EQ(report.failures, 1);
  EXPECT_EQ(report.rejected, 1);
  ASSERT_EQ(report.failure_reasons.count(2), 1u);
  EXPECT_NE(report.failure_reasons.at(2).find("payload file of client 2 is gone"), std::string::npos);
  std::vector<ClientResult> others;
  for (int c : {0, 1, 3}) {
    ClientTask t;
    t.client_id = c;
    t.model = random_state(3);
    others.push_back(pool.answer(t));
  }
  EXPECT_TRUE(strategy.global_model().equal(weighted_average_of(others)));
}

TEST(StreamingAggregation, StrategiesThatNeedEveryUpdateAndNormBoundsAreNotStreamed) {
  // Median needs all updates at once; a norm bound needs each update against its task.
  auto median = create_strategy("fedmedian", {});
  median->initialize(random_state(4));
  DeferringPool pool(3);
  RoundEngine engine(*median, pool, options(1));
  engine.run_round(1);
  EXPECT_EQ(pool.deferrals, 0);
  EXPECT_TRUE(pool.loads.empty());

  FedAvg fedavg;
  fedavg.initialize(random_state(4));
  DeferringPool bounded_pool(3);
  EngineOptions bounded = options(1);
  bounded.max_update_norm = 1e9;
  RoundEngine bounded_engine(fedavg, bounded_pool, bounded);
  EXPECT_EQ(bounded_engine.run_round(1).failures, 0);
  EXPECT_EQ(bounded_pool.deferrals, 0);
}

}  // namespace
