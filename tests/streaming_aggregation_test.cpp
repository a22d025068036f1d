// Streaming aggregation (issue 20, common/engine/streaming_aggregation.h): the mean folded one
// update at a time is bit-identical to weighted_average_of; the round engine streams a round when
// the strategy aggregates a mean and the pool defers the models, holds one update at a time, and
// a model that cannot be read back is that client's failure, not the round's.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <limits>
#include <map>
#include <optional>
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

// One round of 4 clients in which client 2's model cannot be had: it alone is rejected, for `why`.
void run_round_losing_client_2(Strategy& strategy, DeferringPool& pool, const std::string& why) {
  pool.unreadable = {2};
  RoundEngine engine(strategy, pool, options(1));
  const RoundReport report = engine.run_round(1);
  EXPECT_EQ(report.failures, 1);
  EXPECT_EQ(report.rejected, 1);
  ASSERT_EQ(report.failure_reasons.count(2), 1u);
  EXPECT_NE(report.failure_reasons.at(2).find(why), std::string::npos) << report.failure_reasons.at(2);
}

TEST(StreamingAggregation, AModelThatCannotBeReadBackFailsItsClientAndTheMeanIsFoldedWithoutIt) {
  FedAvg strategy;
  strategy.initialize(random_state(3));
  DeferringPool pool(4);
  run_round_losing_client_2(strategy, pool, "payload file of client 2 is gone");
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

// The contract of ExactWeightedSum (fedsim's all-reduce): however the models are split among
// processes and in whatever order the partial sums are added, the mean has the same bits, integer
// entries exact, within a few fp32 ulps of the fp32 fold.
TEST(StreamingAggregation, ExactPartialSumsGiveTheSameBitsHoweverTheModelsAreSplit) {
  const std::vector<int64_t> examples = {7, 100, 13, 1, 55, 29};
  const double total = 7 + 100 + 13 + 1 + 55 + 29;
  std::vector<ClientResult> results;
  for (size_t i = 0; i < examples.size(); ++i) {
    ClientResult r;
    r.model = random_state(i + 11);
    r.model.flat().mul_(std::pow(4.0, static_cast<double>(i) - 2));  // magnitudes 1/16 .. 64 apart
    r.num_examples = examples[i];
    results.push_back(r);
  }
  const ModelState layout = results[0].model;
  // The mean of `parts` (indices of the models each process holds), their sums added in `order`:
  // what fedsim's ranks do with their MAX and SUM all-reduces.
  auto reduce = [&](const std::vector<std::vector<size_t>>& parts, const std::vector<size_t>& order) {
    std::vector<ExactWeightedSum> sums;
    for (const auto& part : parts) {
      sums.emplace_back(layout, total);
      for (size_t i : part) sums.back().observe(results[i].model);
    }
    at::Tensor largest = torch::zeros_like(sums[0].magnitudes());
    for (auto& p : sums) largest = torch::maximum(largest, p.magnitudes());
    ExactWeightedSum all(layout, total);
    for (size_t p = 0; p < parts.size(); ++p) {
      sums[p].magnitudes().copy_(largest);
      for (size_t i : parts[p]) sums[p].add(results[i].model, static_cast<double>(examples[i]));
    }
    all.magnitudes().copy_(largest);  // a process that adds nothing: the all-reduced sums land in it
    for (size_t p : order) all.sums().add_(sums[p].sums());
    return all.mean();
  };
  const ModelState one = reduce({{0, 1, 2, 3, 4, 5}}, {0});
  EXPECT_TRUE(one.same_layout(layout));
  EXPECT_EQ(one.at("a.weight").scalar_type(), at::kFloat);
  EXPECT_EQ(one.at("bn.num_batches_tracked").scalar_type(), at::kLong);
  for (const auto& [parts, order] : std::vector<std::pair<std::vector<std::vector<size_t>>, std::vector<size_t>>>{
           {{{0, 1, 2}, {3, 4, 5}}, {1, 0}}, {{{0, 3}, {1, 4}, {2, 5}}, {2, 0, 1}}, {{{5}, {}, {0, 1, 2, 3, 4}}, {0, 1, 2}}})
    EXPECT_TRUE(reduce(parts, order).equal(one));
  // Against the mean in double (and the fp32 fold): the largest value is ~64 * 4 = 256, an fp32
  // ulp there 3e-5; the fixed point rounds once to fp32.
  const ModelState fp32_fold = weighted_average_of(results);
  at::Tensor exact = torch::zeros({layout.flat().numel()}, torch::kDouble);
  for (size_t i = 0; i < results.size(); ++i)
    exact.add_(results[i].model.flat().to(at::kDouble), static_cast<double>(examples[i]) / total);
  const at::Tensor ours = one.flat().to(at::kDouble);
  EXPECT_TRUE(ours.equal(exact.to(at::kFloat).to(at::kDouble))) << "the double mean rounded once to fp32";
  EXPECT_LE((fp32_fold.flat().to(at::kDouble) - ours).abs().max().item<double>(), 1e-4);
  // The integer entry: sum w_i * k_i / total rounded once, as the fp32 fold rounds it.
  double k = 0;
  for (size_t i = 0; i < examples.size(); ++i) k += examples[i] * static_cast<double>((i + 11) * 7 + 3);
  EXPECT_EQ(one.at("bn.num_batches_tracked").item<int64_t>(), static_cast<int64_t>(std::llround(k / total)));
  EXPECT_EQ(one.at("bn.num_batches_tracked").item<int64_t>(), fp32_fold.at("bn.num_batches_tracked").item<int64_t>());
  // Exact where fp32 can say it: (1 * 1 + 3 * 3) / 4 = 2.5.
  const ModelState ones({{"w", torch::ones({3})}}), threes({{"w", torch::full({3}, 3.0f)}});
  ExactWeightedSum small(ones, 4);
  small.observe(ones);
  small.observe(threes);
  small.add(ones, 1);
  small.add(threes, 3);
  EXPECT_TRUE(small.mean().at("w").equal(torch::full({3}, 2.5f)));

  ExactWeightedSum bad(layout, total);
  expect_error_of<std::invalid_argument>([&] { bad.observe(random_state(2, /*with_int=*/false)); }, "the weighted sum");
  ModelState infinite = layout.clone();
  infinite.at("a.bias")[3] = std::numeric_limits<float>::infinity();
  expect_error_of<std::invalid_argument>([&] { bad.observe(infinite); }, "entry 'a.bias' has a value that is not finite");
  expect_error_of<std::invalid_argument>([&] { ExactWeightedSum zero(layout, 0); }, "weights sum to zero");
  expect_error_of<std::invalid_argument>([&] { bad.add(layout, -1); }, "outside [0, total weight]");
  expect_error_of<std::invalid_argument>([&] { bad.add(layout, total * 2); }, "outside [0, total weight]");
  bad.observe(layout);
  bad.add(layout, 1);
  expect_error_of<std::logic_error>([&] { bad.observe(layout); }, "observe() after add()");
}

// A pool that sums the models itself (fedsim's ranks): the engine takes its mean, never reads a
// model back, and a result the pool blames is rejected and the mean asked again without it.
struct ReducingPool : DeferringPool {
  using DeferringPool::DeferringPool;
  std::optional<ReducedMean> reduce_mean(const std::vector<ClientResult>& ok) override {
    ++reductions;
    ReducedMean out;
    double total = 0;
    for (const auto& r : ok) total += static_cast<double>(r.num_examples);
    for (size_t i = 0; i < ok.size(); ++i)
      if (unreadable.count(ok[i].client_id)) {
        out.rejected = static_cast<int>(i);
        out.error = "rank 1 could not sum client " + std::to_string(ok[i].client_id);
        return out;
      }
    ExactWeightedSum sum(sent.begin()->second.model, total);
    for (const auto& r : ok) sum.observe(answer(sent.at(r.client_id)).model);
    for (const auto& r : ok) sum.add(answer(sent.at(r.client_id)).model, static_cast<double>(r.num_examples));
    out.mean = sum.mean();
    return out;
  }
  int reductions = 0;
};

TEST(StreamingAggregation, APoolThatReducesTheMeanItselfIsUsedAndTheResultItBlamesIsRejected) {
  FedAvg strategy;
  strategy.initialize(random_state(5));
  ReducingPool pool(4);
  run_round_losing_client_2(strategy, pool, "rank 1 could not sum client 2");
  EXPECT_EQ(pool.reductions, 2);
  EXPECT_TRUE(pool.loads.empty()) << "no model was read back";
  ExactWeightedSum expected(random_state(5), 10 + 20 + 40);
  std::vector<ModelState> answers;
  for (int c : {0, 1, 3}) {
    ClientTask t;
    t.client_id = c;
    t.model = random_state(5);
    answers.push_back(pool.answer(t).model);
    expected.observe(answers.back());
  }
  for (size_t i = 0; i < answers.size(); ++i) expected.add(answers[i], 10.0 * (i == 2 ? 4 : static_cast<double>(i + 1)));
  EXPECT_TRUE(strategy.global_model().equal(expected.mean()));
  EXPECT_FALSE(pool.defer_) << "deferral is switched off when the round is over";
}

}  // namespace
