#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <set>

#include "common/engine/round_engine.h"
#include "common/engine/run_loop.h"
#include "expect_error.h"
#include "simulations/in_process_pool.h"
#include "strategies/fedavg.h"
#include "strategies/registry.h"

namespace fl {
namespace {

// A pool that returns fixed states: lets aggregation be checked by hand.
class FixedPool : public ClientPool {
 public:
  explicit FixedPool(int n) : n_(n) {}
  int num_clients() const override { return n_; }
  std::vector<ClientResult> execute(const std::vector<ClientTask>& tasks) override {
    std::vector<ClientResult> out;
    for (const auto& t : tasks) {
      ClientResult r;
      r.round = t.round;
      r.client_id = t.client_id;
      r.model = ModelState({{"w", torch::full({2}, static_cast<float>(t.client_id))}});
      r.num_examples = t.client_id + 1;
      r.metrics["train_loss"] = 1.0;
      r.metrics["personalized_accuracy"] = 0.1 * t.client_id;
      r.metrics["personalized_examples"] = 10.0 * (t.client_id + 1);
      r.ok = t.client_id != failing && !(t.phase == failing_phase && t.client_id == failing_in_phase);
      if (!r.ok) r.error = "client " + std::to_string(t.client_id) + " failed " + t.phase;
      if (t.phase == kEvaluatePhase) {
        r.model = ModelState();
        r.num_examples = 10;
        r.metrics = {{"accuracy", 0.25 * (t.client_id + 1)}, {"loss", 1.0}};
      }
      out.push_back(r);
      seeds.push_back(t.seed);
      phases.push_back(t.phase);
    }
    return out;
  }
  int failing = -1;
  std::string failing_phase;  // with failing_in_phase: a client that fails only that exchange
  int failing_in_phase = -1;
  std::vector<uint64_t> seeds;
  std::vector<std::string> phases;

 private:
  int n_;
};

TEST(RoundEngine, SelectionIsSeededDistinctAndSized) {
  FixedPool pool(100);
  FedAvg s;
  EngineOptions o;
  o.fraction = 0.1;
  o.seed = 3;
  RoundEngine e(s, pool, o);
  auto a = e.select(1);
  EXPECT_EQ(a.size(), 10u);
  EXPECT_EQ(std::set<int>(a.begin(), a.end()).size(), 10u);
  EXPECT_TRUE(std::is_sorted(a.begin(), a.end()));
  EXPECT_EQ(a, e.select(1));
  EXPECT_NE(a, e.select(2));
  o.min_clients = 15;
  EXPECT_EQ(RoundEngine(s, pool, o).select(1).size(), 15u);
  o.min_clients = 101;
  EXPECT_THROW(RoundEngine(s, pool, o), std::invalid_argument);
}

TEST(RoundEngine, ScheduleReplaysTheGivenClientsAndIsChecked) {
  FixedPool pool(10);
  FedAvg s;
  EngineOptions o;
  o.rounds = 2;
  o.fraction = 0.5;  // ignored: the schedule decides
  o.schedule = {{7, 2, 5}, {0}};
  s.initialize(ModelState({{"w", torch::zeros({2})}}));
  RoundEngine e(s, pool, o);
  EXPECT_EQ(e.select(1), (std::vector<int>{7, 2, 5}));
  EXPECT_EQ(e.select(2), (std::vector<int>{0}));
  EXPECT_THROW(e.select(3), std::out_of_range);
  EXPECT_EQ(e.run_round(1).selected, (std::vector<int>{7, 2, 5}));
  auto refused = [&](std::vector<std::vector<int>> schedule, const std::string& says) {
    EngineOptions b = o;
    b.schedule = std::move(schedule);
    testing_util::expect_error_of<std::invalid_argument>([&] { RoundEngine(s, pool, b); }, {says});
  };
  refused({{1}}, "the selection schedule has 1 rounds, the run 2");
  refused({{1}, {}}, "selection schedule round 2 selects no client");
  refused({{1}, {10}}, "selection schedule round 2: client 10 is not in [0, 10)");
  refused({{3, 1, 3}, {1}}, "selection schedule round 1: client 3 twice");
}

TEST(RoundEngine, FedAvgRoundIsExampleWeightedAndDropsFailures) {
  FixedPool pool(3);
  pool.failing = 2;
  FedAvg s;
  s.initialize(ModelState({{"w", torch::zeros({2})}}));
  EngineOptions o;
  o.rounds = 1;
  RoundEngine e(s, pool, o, [](const ModelState& m) {
    EvalResult r;
    r.accuracy = m.at("w")[0].item<float>();
    return r;
  });
  auto rep = e.run_round(1);
  // Clients 0 (weight 1, value 0) and 1 (weight 2, value 1): (0*1 + 1*2) / 3.
  EXPECT_NEAR(s.global_model().at("w")[0].item<float>(), 2.0 / 3.0, 1e-6);
  EXPECT_EQ(rep.failures, 1);
  EXPECT_NEAR(rep.global_accuracy, 2.0 / 3.0, 1e-6);
  EXPECT_NEAR(rep.personalized_accuracy, 0.05, 1e-12);  // mean of 0.0 and 0.1
  // Pooled over the test examples: (0.0*10 + 0.1*20) / 30.
  EXPECT_NEAR(rep.personalized_accuracy_pooled, 2.0 / 30.0, 1e-12);
  EXPECT_EQ(rep.personalized_examples, 30);
  // Per-client seeds differ and are reproducible.
  ASSERT_EQ(pool.seeds.size(), 3u);
  EXPECT_NE(pool.seeds[0], pool.seeds[1]);
  EXPECT_EQ(pool.seeds[0], mix_seed(0, 1, 0));
}

// A pool whose clients add (id + 1) to the "w" they receive, so a chain of clients shows in
// the numbers; it records what each task received, one execute() call at a time.
class ChainPool : public ClientPool {
 public:
  explicit ChainPool(int n) : n_(n) {}
  int num_clients() const override { return n_; }
  std::vector<ClientResult> execute(const std::vector<ClientTask>& tasks) override {
    calls.push_back(tasks.size());
    std::vector<ClientResult> out;
    for (const auto& t : tasks) {
      received.push_back({t.client_id, t.model.at("w")[0].item<float>()});
      ClientResult r;
      r.round = t.round;
      r.client_id = t.client_id;
      r.model = ModelState({{"w", t.model.at("w") + static_cast<float>(t.client_id + 1)}});
      r.num_examples = 10;
      r.metrics["train_loss"] = t.client_id;
      r.ok = t.client_id != failing;
      out.push_back(r);
    }
    return out;
  }
  int failing = -1;
  std::vector<size_t> calls;
  std::vector<std::pair<int, float>> received;  // (client, its starting w)

 private:
  int n_;
};

TEST(RoundEngine, CyclicRoundChainsTheClientsAndSkipsAFailedOne) {
  EXPECT_EQ(parse_workflow("cyclic"), Workflow::kCyclic);
  EXPECT_EQ(workflow_name(parse_workflow("scatter-gather")), "scatter-gather");
  testing_util::expect_error_of<std::invalid_argument>([] { parse_workflow("ring"); }, "unknown workflow 'ring'");

  // A replayed round keeps the schedule's order: 2 starts from 0, 0 from 2's result, 3 from 0's.
  ChainPool pool(5);
  FedAvg s;
  s.initialize(ModelState({{"w", torch::zeros({1})}}));
  EngineOptions o;
  o.rounds = 2;
  o.workflow = Workflow::kCyclic;
  o.schedule = {{2, 0, 3}, {4, 1}};
  RoundEngine e(s, pool, o);
  auto rep = e.run_round(1);
  EXPECT_EQ(rep.selected, (std::vector<int>{2, 0, 3}));
  EXPECT_EQ(pool.calls, (std::vector<size_t>{1, 1, 1}));
  EXPECT_EQ(pool.received, (std::vector<std::pair<int, float>>{{2, 0.f}, {0, 3.f}, {3, 4.f}}));
  EXPECT_FLOAT_EQ(s.global_model().at("w")[0].item<float>(), 8.f);  // the last client's model, not an average
  EXPECT_NEAR(rep.train_loss, (2 + 0 + 3) / 3.0, 1e-12);

  // A failed client is skipped: the next one starts from the model it would have had.
  pool.failing = 4;
  pool.received.clear();
  rep = e.run_round(2);
  EXPECT_EQ(rep.dropped, std::vector<int>{4});
  EXPECT_EQ(pool.received, (std::vector<std::pair<int, float>>{{4, 8.f}, {1, 8.f}}));
  EXPECT_FLOAT_EQ(s.global_model().at("w")[0].item<float>(), 10.f);

  // Sampled rounds go through the selection in a seeded order, the same for the same seed.
  EngineOptions sampled;
  sampled.rounds = 3;
  sampled.workflow = Workflow::kCyclic;
  sampled.seed = 4;
  std::vector<std::vector<int>> orders;
  for (int run = 0; run < 2; ++run) {
    ChainPool p(6);
    FedAvg f;
    f.initialize(ModelState({{"w", torch::zeros({1})}}));
    RoundEngine engine(f, p, sampled);
    for (int r = 1; r <= 3; ++r) orders.push_back(engine.run_round(r).selected);
    EXPECT_FLOAT_EQ(f.global_model().at("w")[0].item<float>(), 3 * 21.f);  // every client, every round
  }
  EXPECT_EQ(std::vector<std::vector<int>>(orders.begin(), orders.begin() + 3),
            std::vector<std::vector<int>>(orders.begin() + 3, orders.end()));
  for (int r = 0; r < 3; ++r) {
    auto sorted = orders[r];
    std::sort(sorted.begin(), sorted.end());
    EXPECT_EQ(sorted, (std::vector<int>{0, 1, 2, 3, 4, 5}));
  }
  EXPECT_FALSE(std::is_sorted(orders[0].begin(), orders[0].end()) && std::is_sorted(orders[1].begin(), orders[1].end()) &&
               std::is_sorted(orders[2].begin(), orders[2].end()));
}

TEST(Strategies, RegistryRejectsUnknownNamesAndParameters) {
  EXPECT_EQ(create_strategy("fedavg")->name(), "fedavg");
  EXPECT_EQ(create_strategy("fedprox", {{"mu", 0.1}})->name(), "fedprox");
  try {
    create_strategy("fedprox", {{"mue", 0.1}});
    FAIL();
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("mue"), std::string::npos);
  }
  EXPECT_THROW(create_strategy("nosuch"), std::invalid_argument);
  EXPECT_THROW(create_strategy("fedprox", {{"mu", -1}}), std::invalid_argument);
}

TensorDataset blobs(int64_t n, uint64_t seed, float shift) {
  auto gen = at::detail::createCPUGenerator(seed);
  auto y = torch::randint(0, 2, {n}, gen, torch::kLong);
  auto x = torch::randn({n, 4}, gen) + (y.to(torch::kFloat) * 4 - 2 + shift).unsqueeze(1);
  return TensorDataset{x, y, 2, {}};
}

ModelSpec tiny_spec() {
  ModelSpec spec;
  spec.name = "mlp";
  spec.input_shape = {4};
  spec.hidden = {8};
  spec.num_classes = 2;
  return spec;
}

std::vector<RoundReport> simulate(const std::string& strategy, StrategyParams params, int workers,
                                  ModelState* final_state = nullptr, int local_eval_every = 1) {
  std::vector<VirtualClient> clients;
  for (int i = 0; i < 4; ++i) {
    VirtualClient c;
    c.train = blobs(64 + 16 * i, 10 + i, 0.5f * i);
    c.test = blobs(32, 20 + i, 0.5f * i);
    clients.push_back(c);
  }
  auto s = create_strategy(strategy, params);
  torch::manual_seed(5);
  s->initialize(build_model(tiny_spec())->state());
  TrainOptions t;
  t.batch_size = 16;
  t.lr = 0.05;
  InProcessPool pool(clients, tiny_spec(), c10::kCPU, create_client_algorithm(s->name()), t, PoolOptions{workers, 1, {}});
  EngineOptions o;
  o.rounds = 3;
  o.fraction = 0.5;
  o.seed = 9;
  o.local_eval_every = local_eval_every;
  RoundEngine e(*s, pool, o);
  std::vector<RoundReport> out;
  for (int r = 1; r <= o.rounds; ++r) out.push_back(e.run_round(r));
  if (final_state) *final_state = s->global_model().clone();
  return out;
}

TEST(InProcessPool, SameSeedSameNumbersWhateverTheWorkerCount) {
  ModelState a, b;
  auto ra = simulate("fedavg", {}, 1, &a);
  auto rb = simulate("fedavg", {}, 2, &b);
  EXPECT_TRUE(a.equal(b));
  for (size_t i = 0; i < ra.size(); ++i) {
    EXPECT_EQ(ra[i].selected, rb[i].selected);
    EXPECT_EQ(ra[i].train_loss, rb[i].train_loss);
    EXPECT_EQ(ra[i].personalized_accuracy, rb[i].personalized_accuracy);
    EXPECT_EQ(ra[i].samples, rb[i].samples);
  }
  EXPECT_GE(ra[0].personalized_accuracy, 0.0);
}

// local_eval_every k: the clients evaluate what they receive before training in rounds k, 2k, ...
// only (0: never), and leaving it out changes nothing else: the same models come out.
TEST(InProcessPool, ClientsEvaluateBeforeTrainingOnlyInTheRoundsLocalEvalEverySays) {
  ModelState every, second, never;
  const auto r1 = simulate("fedavg", {}, 1, &every, 1);
  const auto r2 = simulate("fedavg", {}, 1, &second, 2);
  const auto r0 = simulate("fedavg", {}, 1, &never, 0);
  ASSERT_EQ(r2.size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_GE(r1[i].personalized_accuracy, 0.0) << i;
    EXPECT_EQ(r0[i].personalized_accuracy, -1) << i;
    EXPECT_EQ(r0[i].personalized_examples, 0) << i;
    EXPECT_EQ(r0[i].train_loss, r1[i].train_loss) << i;
  }
  EXPECT_EQ(r2[0].personalized_accuracy, -1);
  EXPECT_EQ(r2[1].personalized_accuracy, r1[1].personalized_accuracy);
  EXPECT_EQ(r2[2].personalized_accuracy, -1);
  EXPECT_TRUE(every.equal(second));
  EXPECT_TRUE(every.equal(never));
}

TEST(InProcessPool, FedProxStaysCloserToTheGlobalModel) {
  ModelState plain, prox, init;
  simulate("fedavg", {}, 1, &plain);
  simulate("fedprox", {{"mu", 5.0}}, 1, &prox);
  torch::manual_seed(5);
  init = build_model(tiny_spec())->state();
  EXPECT_LT((prox - init).norm(), (plain - init).norm());
}

// The one run loop: each round committed before the next, a failed round retried when the hook
// says so, a stop between rounds, and a resume from the store's checkpoint.
TEST(RunLoop, CommitsRetriesStopsAndResumes) {
  struct MemoryStore : RunStore {
    std::optional<RunCheckpoint> saved;
    std::vector<int> committed;
    std::optional<RunCheckpoint> load() override { return saved; }
    void begin(const ModelState& initial) override { saved = RunCheckpoint{0, initial.clone(), "", {}}; }
    void commit(const RoundReport& report, const RunCheckpoint& state) override {
      committed.push_back(report.round);
      saved = state;
      saved->global = state.global.clone();
    }
  };
  MemoryStore store;
  FixedPool pool(3);
  FedAvg strategy;
  const ModelState init({{"w", torch::zeros({2})}});
  EXPECT_EQ(resume_run(strategy, pool, store, [&] { return init; }), 1);
  ASSERT_TRUE(store.saved.has_value());
  EXPECT_TRUE(store.saved->global.equal(init));

  EngineOptions o;
  o.rounds = 5;
  RoundEngine engine(strategy, pool, o);
  int failures_left = 1, retried = 0;
  RunLoopHooks hooks;
  hooks.may_start = [](int round) { return round < 4; };  // paused before round 4
  hooks.retry = [&](int round, const std::exception& e) {
    ++retried;
    return std::string(e.what()).find("flaky") != std::string::npos;
  };
  auto run_round = [&](int round) {
    if (round == 2 && failures_left-- > 0) throw std::runtime_error("flaky");
    return engine.run_round(round);
  };
  EXPECT_EQ(run_rounds(1, 5, run_round, strategy, pool, store, hooks), 3);
  EXPECT_EQ(store.committed, (std::vector<int>{1, 2, 3}));
  EXPECT_EQ(retried, 1);
  EXPECT_EQ(store.saved->round, 3);
  EXPECT_TRUE(store.saved->global.equal(strategy.global_model()));

  // A restarted process: the strategy comes back from the checkpoint, not from initial().
  FedAvg again;
  EXPECT_EQ(resume_run(again, pool, store, [&]() -> ModelState { throw std::logic_error("not a new run"); }), 4);
  EXPECT_TRUE(again.global_model().equal(strategy.global_model()));
  // An error the hook does not retry leaves the loop.
  hooks.may_start = nullptr;
  hooks.retry = [](int, const std::exception&) { return false; };
  EXPECT_THROW(run_rounds(4, 5, [](int) -> RoundReport { throw std::runtime_error("broken"); }, again, pool, store, hooks),
               std::runtime_error);
  EXPECT_EQ(store.committed.size(), 3u);
}

// A round with two fit exchanges (the strategy asks for the second with the first's results)
// and a federated evaluation after aggregation: the phases reach the pool in order, a client
// that drops out between exchanges is reported with its reason, and aggregate_fit sees the last
// exchange's results.
TEST(RoundEngine, ExchangesAndFederatedEvaluationArePhasesOfTheRound) {
  struct TwoExchanges : FedAvg {
    std::vector<int> second;  // the clients asked for exchange 2
    std::vector<ClientTask> configure_fit_exchange(int round, int exchange, const std::vector<ClientResult>& results) override {
      if (exchange > 1) return {};
      std::vector<int> ids;
      for (const auto& r : results) ids.push_back(r.client_id);
      second = ids;
      return Strategy::configure_fit(round, ids);
    }
    std::vector<int> aggregated;
    Metrics aggregate_mean(int round, ModelState mean, const std::vector<ClientResult>& results) override {
      aggregated.clear();
      for (const auto& r : results) aggregated.push_back(r.client_id);
      return FedAvg::aggregate_mean(round, std::move(mean), results);
    }
  };
  FixedPool pool(4);
  pool.failing_phase = "fit-2";
  pool.failing_in_phase = 2;
  TwoExchanges s;
  s.initialize(ModelState({{"w", torch::zeros({2})}}));
  EngineOptions o;
  o.rounds = 1;
  o.fraction_evaluate = 0.5;
  o.seed = 3;
  RoundEngine e(s, pool, o);
  const auto rep = e.run_round(1);
  EXPECT_EQ(pool.phases, (std::vector<std::string>{"fit", "fit", "fit", "fit", "fit-2", "fit-2", "fit-2", "fit-2",
                                                   "evaluate", "evaluate"}));
  EXPECT_EQ(s.second, (std::vector<int>{0, 1, 2, 3}));
  EXPECT_EQ(s.aggregated, (std::vector<int>{0, 1, 3}));
  EXPECT_EQ(rep.exchanges, 2);
  EXPECT_EQ(rep.dropped, (std::vector<int>{2}));
  EXPECT_EQ(rep.failure_reasons.at(2), "client 2 failed fit-2");
  ASSERT_EQ(rep.federated_evaluation.at("clients"), 2);
  EXPECT_EQ(rep.federated_evaluation.at("examples"), 20);
  EXPECT_GT(rep.federated_evaluation.at("accuracy"), 0);
  EXPECT_EQ(rep.evaluate_failures, 0);
  // The second exchange's seeds differ from the first's (a fresh stream per exchange).
  EXPECT_NE(pool.seeds[0], pool.seeds[4]);
}

}  // namespace
}  // namespace fl
