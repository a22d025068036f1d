// The strategy library (issue 6): every aggregation rule against hand-computed results on tiny
// tensors (robust rules with planted outliers), the client-side terms, personal tensors that
// never leave a client, and save_state/load_state resuming exactly.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <set>

#include "common/engine/round_engine.h"
#include "common/io/safetensors.h"
#include "common/net/codec.h"
#include "simulations/in_process_pool.h"
#include "strategies/fedavg.h"
#include "strategies/fedopt.h"
#include "strategies/personalized.h"
#include "strategies/registry.h"
#include "strategies/robust.h"
#include "strategies/scaffold.h"
#include "strategies/state_ops.h"

namespace fl {
namespace {

ModelState vec(const std::vector<float>& w) { return ModelState({{"w", torch::tensor(w)}}); }

ClientResult result(int id, ModelState model, int64_t n = 1) {
  ClientResult r;
  r.client_id = id;
  r.model = std::move(model);
  r.num_examples = n;
  return r;
}

std::vector<float> values(const ModelState& s, const std::string& name = "w") {
  auto t = s.at(name).to(torch::kFloat).contiguous();
  return std::vector<float>(t.data_ptr<float>(), t.data_ptr<float>() + t.numel());
}

void expect_near(const std::vector<float>& got, const std::vector<double>& want, double tol = 1e-6) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], want[i], tol) << "coordinate " << i;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

// ---------------------------------------------------------------- server-side optimisers

TEST(StrategiesFedAvgM, MomentumOfPseudoGradientsByHand) {
  FedAvgM s(/*server_lr=*/0.5, /*server_momentum=*/0.5);
  s.initialize(vec({1, 2}));
  // Round 1: avg = (0*1 + 3*2)/3, (0*1 + 6*2)/3 = [2, 4]; pseudo-gradient x - avg = [-1, -2];
  // v = [-1, -2]; x = [1, 2] - 0.5 v = [1.5, 3].
  s.aggregate_fit(1, {result(0, vec({0, 0}), 1), result(1, vec({3, 6}), 2)});
  expect_near(values(s.global_model()), {1.5, 3.0});
  // Round 2: the clients return x itself (zero pseudo-gradient); momentum alone moves on:
  // v = 0.5 [-1, -2] = [-0.5, -1]; x = [1.5, 3] + 0.5 [0.5, 1] = [1.75, 3.5].
  s.aggregate_fit(2, {result(0, vec({1.5, 3})), result(1, vec({1.5, 3}))});
  expect_near(values(s.global_model()), {1.75, 3.5});
}

// Reddi et al.'s Algorithm 2, coordinate by coordinate in double, for comparison.
struct ScalarOpt {
  std::string kind;
  double eta, b1, b2, tau, x, m = 0, v = 0;
  void step(double delta) {
    m = b1 * m + (1 - b1) * delta;
    const double d2 = delta * delta;
    if (kind == "fedadam") v = b2 * v + (1 - b2) * d2;
    if (kind == "fedyogi") v = v - (1 - b2) * d2 * (v - d2 > 0 ? 1 : (v - d2 < 0 ? -1 : 0));
    if (kind == "fedadagrad") v = v + d2;
    x = x + eta * m / (std::sqrt(v) + tau);
  }
};

TEST(StrategiesFedOpt, AdamYogiAdagradByHand) {
  // Two coordinates, three rounds; each round the one client moves x by `deltas`.
  const std::vector<std::vector<float>> deltas{{1, -2}, {1, 0.5}, {-0.25, 0.5}};
  for (const std::string kind : {"fedadam", "fedyogi", "fedadagrad"}) {
    StrategyParams p{{"eta", 0.1}, {"beta1", 0.9}, {"tau", 0.1}};
    if (kind != "fedadagrad") p["beta2"] = 0.99;
    auto s = create_strategy(kind, p);
    s->initialize(vec({0, 0}));
    std::vector<ScalarOpt> ref(2, ScalarOpt{kind, 0.1, 0.9, 0.99, 0.1, 0});
    for (size_t r = 0; r < deltas.size(); ++r) {
      auto x = values(s->global_model());
      s->aggregate_fit(static_cast<int>(r + 1), {result(0, vec({x[0] + deltas[r][0], x[1] + deltas[r][1]}))});
      for (int c = 0; c < 2; ++c) ref[c].step(deltas[r][c]);
      expect_near(values(s->global_model()), {ref[0].x, ref[1].x}, 1e-5);
    }
  }
  // One value worked out on paper: Adam's first round, delta 1: m = 0.1, v = 0.01,
  // x = 0.1 * 0.1 / (sqrt(0.01) + 0.1) = 0.05.
  auto s = create_strategy("fedadam", {{"tau", 0.1}});
  s->initialize(vec({0}));
  s->aggregate_fit(1, {result(0, vec({1}))});
  expect_near(values(s->global_model()), {0.05});
  // Yogi's second round differs from Adam's: v = 0.01 - 0.01 * 1 * sign(0.01 - 1) = 0.02.
  ScalarOpt y{"fedyogi", 0.1, 0.9, 0.99, 0.1, 0};
  y.step(1);
  y.step(1);
  EXPECT_NEAR(y.v, 0.02, 1e-12);
}

TEST(StrategiesFedOpt, BatchNormStatisticsTakeThePlainAverage) {
  ModelState init({{"bn.weight", torch::zeros({1})},
                   {"bn.running_mean", torch::zeros({1})},
                   {"bn.num_batches_tracked", torch::zeros({}, torch::kLong)}});
  auto s = create_strategy("fedadam", {{"tau", 0.1}});
  s->initialize(init);
  auto client = [](float w, float mean, int64_t nbt) {
    return ModelState({{"bn.weight", torch::full({1}, w)},
                       {"bn.running_mean", torch::full({1}, mean)},
                       {"bn.num_batches_tracked", torch::full({}, nbt, torch::kLong)}});
  };
  s->aggregate_fit(1, {result(0, client(1, 2, 4)), result(1, client(1, 4, 6))});
  expect_near(values(s->global_model(), "bn.weight"), {0.05});       // Adam step, as above
  expect_near(values(s->global_model(), "bn.running_mean"), {3.0});  // the average
  EXPECT_EQ(s->global_model().at("bn.num_batches_tracked").item<int64_t>(), 5);
}

// ---------------------------------------------------------------- robust rules

TEST(StrategiesRobust, MedianIgnoresPlantedOutliers) {
  FedMedian s;
  s.initialize(vec({0, 0}));
  // Odd count: coordinate 0 has an outlier of 1000, coordinate 1 one of -1000.
  s.aggregate_fit(1, {result(0, vec({1, -1000})), result(1, vec({2, 10})), result(2, vec({3, 20})),
                      result(3, vec({4, 30})), result(4, vec({1000, 40}), 1000)});
  expect_near(values(s.global_model()), {3, 20});
  // Even count: the mean of the two middle values.
  s.aggregate_fit(2, {result(0, vec({1, 5})), result(1, vec({2, 6})), result(2, vec({3, 7})),
                      result(3, vec({1000, -1000}))});
  expect_near(values(s.global_model()), {2.5, 5.5});
}

TEST(StrategiesRobust, MedianOfIntegerEntriesIsRounded) {
  auto st = [](float w, int64_t n) {
    return ModelState({{"w", torch::full({1}, w)}, {"bn.num_batches_tracked", torch::full({}, n, torch::kLong)}});
  };
  FedMedian s;
  s.initialize(st(0, 0));
  s.aggregate_fit(1, {result(0, st(1, 1)), result(1, st(2, 2)), result(2, st(3, 5)), result(3, st(9, 100))});
  expect_near(values(s.global_model()), {2.5});
  EXPECT_EQ(s.global_model().at("bn.num_batches_tracked").item<int64_t>(), 4);  // (2 + 5) / 2 = 3.5 -> 4
}

TEST(StrategiesRobust, TrimmedMeanDropsBetaOfEachSide) {
  TrimmedMean s(0.2);
  s.initialize(vec({0, 0}));
  // k = 5, floor(0.2 * 5) = 1 dropped per side: mean(2, 3, 4) = 3 and mean(10, 20, 30) = 20.
  auto m = s.aggregate_fit(1, {result(0, vec({1, -1000})), result(1, vec({2, 10})), result(2, vec({3, 20})),
                               result(3, vec({4, 30})), result(4, vec({1000, 40}))});
  expect_near(values(s.global_model()), {3, 20});
  EXPECT_EQ(m.at("trimmed_per_side"), 1);
  // k = 4: floor(0.8) = 0, nothing dropped: the plain (unweighted) mean.
  s.aggregate_fit(2, {result(0, vec({1, 0})), result(1, vec({2, 0})), result(2, vec({3, 0})),
                      result(3, vec({6, 4}), 100)});
  expect_near(values(s.global_model()), {3, 1});
  TrimmedMean quarter(0.25);  // k = 4: one per side: mean(2, 3) = 2.5
  quarter.initialize(vec({0}));
  quarter.aggregate_fit(1, {result(0, vec({1})), result(1, vec({2})), result(2, vec({3})), result(3, vec({1000}))});
  expect_near(values(quarter.global_model()), {2.5});
}

TEST(StrategiesRobust, KrumAndMultiKrumByHand) {
  // Five 1-D models 0, 1, 1.5, 3 and an outlier at 100; f = 1: k - f - 2 = 2 neighbours.
  // Scores (sum of the 2 smallest squared distances): 0: 1+2.25 = 3.25; 1: 0.25+1 = 1.25;
  // 1.5: 0.25+2.25 = 2.5; 3: 2.25+4 = 6.25; 100: 97^2+97.5^2.
  auto round = [] {
    return std::vector<ClientResult>{result(10, vec({0})), result(11, vec({1})), result(12, vec({1.5})),
                                     result(13, vec({3})), result(14, vec({100}), 1000)};
  };
  Krum krum(1, 1, false);
  krum.initialize(vec({0}));
  auto m = krum.aggregate_fit(1, round());
  expect_near(values(krum.global_model()), {1});
  EXPECT_EQ(krum.last_selected(), std::vector<int>({11}));
  EXPECT_NEAR(m.at("best_score"), 1.25, 1e-12);
  Krum multi(1, 3, true);  // the 3 best: 1, 1.5, 0 -> 2.5 / 3
  multi.initialize(vec({0}));
  multi.aggregate_fit(1, round());
  expect_near(values(multi.global_model()), {2.5 / 3});
  EXPECT_EQ(multi.last_selected(), std::vector<int>({11, 12, 10}));
  Krum all_but_f(1, 0, true);  // m = k - f = 4: every model but the outlier -> 5.5 / 4
  all_but_f.initialize(vec({0}));
  all_but_f.aggregate_fit(1, round());
  expect_near(values(all_but_f.global_model()), {5.5 / 4});
  // Blanchard et al. need k > 2f + 2.
  Krum too_many(2, 1, false);
  too_many.initialize(vec({0}));
  EXPECT_NE(error_of([&] { too_many.aggregate_fit(1, round()); }).find("2f+2"), std::string::npos);
}

// ---------------------------------------------------------------- SCAFFOLD

TEST(StrategiesScaffold, ServerUpdatesModelAndControlVariateByHand) {
  Scaffold s(0.5);
  s.initialize(ModelState({{"w", torch::zeros({2})}, {"bn.running_mean", torch::zeros({1})}}));
  EXPECT_EQ(s.control_variate().names(), std::vector<std::string>({"w"}));  // parameters only
  s.set_num_clients(4);
  auto tasks = s.configure_fit(1, {0, 1});
  ASSERT_EQ(tasks.size(), 2u);
  ASSERT_TRUE(tasks[0].tensors.count("c"));
  expect_near(values(tasks[0].tensors.at("c")), {0, 0});
  auto r = [](int id, float w, float mean, std::vector<float> dc, int64_t n) {
    ClientResult out = result(id, ModelState({{"w", torch::full({2}, w)}, {"bn.running_mean", torch::full({1}, mean)}}), n);
    out.tensors["delta_c"] = vec(dc);
    return out;
  };
  // avg w = (1*1 + 3*3)/4 = 2.5 -> x = 0 + 0.5 * 2.5 = 1.25; statistics: the average (2*1+6*3)/4 = 5.
  // c = 0 + |S|/N * mean(delta c) = 2/4 * ([1, 2] + [3, 0]) / 2 = [1, 0.5].
  s.aggregate_fit(1, {r(0, 1, 2, {1, 2}, 1), r(1, 3, 6, {3, 0}, 3)});
  expect_near(values(s.global_model()), {1.25, 1.25});
  expect_near(values(s.global_model(), "bn.running_mean"), {5});
  expect_near(values(s.control_variate()), {1, 0.5});
  // A client that does not send delta c is an error naming it.
  auto bad = r(7, 1, 1, {0, 0}, 1);
  bad.tensors.clear();
  EXPECT_NE(error_of([&] { s.aggregate_fit(2, {bad}); }).find("client 7"), std::string::npos);
}

ModelSpec linear_spec() {  // one Linear(4 -> 2): parameters "classifier.1.weight", ".bias"
  ModelSpec spec;
  spec.name = "mlp";
  spec.input_shape = {4};
  spec.hidden = {};
  spec.num_classes = 2;
  return spec;
}

TensorDataset blobs(int64_t n, uint64_t seed, float shift, std::vector<int64_t> shape = {4}) {
  auto gen = at::detail::createCPUGenerator(seed);
  auto y = torch::randint(0, 2, {n}, gen, torch::kLong);
  std::vector<int64_t> full{n};
  full.insert(full.end(), shape.begin(), shape.end());
  auto bias = (y.to(torch::kFloat) * 4 - 2 + shift);
  for (size_t i = 0; i < shape.size(); ++i) bias = bias.unsqueeze(-1);
  return TensorDataset{torch::randn(full, gen) + bias, y, 2, {}};
}

ModelState filled(const ModelState& like, float v) {
  auto s = like.zeros_like();
  for (auto& b : float_blocks(s)) b.fill_(v);
  return s;
}

struct ScaffoldProbe : ScaffoldClient {
  using ScaffoldClient::finish;
  using ScaffoldClient::train_hooks;
};

TEST(StrategiesScaffold, ClientCorrectionAndOptionTwoUpdateByHand) {
  auto model = build_model(linear_spec());
  const ModelState x = filled(model->state(), 1.0f);
  model->load_state(x);
  auto data = blobs(8, 1, 0);
  std::map<std::string, ModelState> personal;
  TrainOptions opt;
  opt.lr = 0.1;
  ClientContext ctx{*model, data, nullptr, opt, personal};
  ClientTask task;
  task.model = x;
  task.tensors["c"] = filled(x, 0.5f);
  personal["scaffold_c"] = filled(x, 0.25f);
  ScaffoldProbe client;
  // Each step is followed by -lr (c - c_i) = -0.1 * 0.25 on every parameter.
  auto hooks = client.train_hooks(task, ctx);
  ASSERT_TRUE(static_cast<bool>(hooks.after_step));
  hooks.after_step(*model);
  expect_near(values(model->state(), "classifier.1.weight"), std::vector<double>(8, 0.975));
  // Option II after K = 3 steps that moved every weight by -0.3:
  // c_i+ = 0.25 - 0.5 + 0.3 / (3 * 0.1) = 0.75; delta c = 0.5.
  ClientResult r;
  r.model = filled(x, 0.7f);
  r.metrics["steps"] = 3;
  client.finish(task, ctx, r);
  expect_near(values(personal.at("scaffold_c"), "classifier.1.bias"), {0.75, 0.75}, 1e-5);
  expect_near(values(r.tensors.at("delta_c"), "classifier.1.weight"), std::vector<double>(8, 0.5), 1e-5);
  EXPECT_TRUE(r.model.contains("classifier.1.weight"));  // the full new weights go back
  // Adam steps are not what option II assumes.
  ctx.train_options.optimizer = "adam";
  EXPECT_NE(error_of([&] { client.train_hooks(task, ctx); }).find("sgd"), std::string::npos);
  ctx.train_options.optimizer = "sgd";
  // A task without the server's c is refused.
  task.tensors.clear();
  EXPECT_NE(error_of([&] { client.train_hooks(task, ctx); }).find("control variate"), std::string::npos);
}

// ---------------------------------------------------------------- FedProx's client term

struct ProxProbe : FedProxClient {
  using FedProxClient::train_hooks;
};

TEST(StrategiesFedProx, ProximalTermByHand) {
  auto model = build_model(linear_spec());
  const ModelState x = filled(model->state(), 1.0f);
  model->load_state(x);
  auto data = blobs(8, 1, 0);
  std::map<std::string, ModelState> personal;
  ClientContext ctx{*model, data, nullptr, TrainOptions(), personal};
  ClientTask task;
  task.model = x;
  task.config["mu"] = 0.2;
  auto hooks = ProxProbe().train_hooks(task, ctx);
  ASSERT_TRUE(static_cast<bool>(hooks.extra_loss));
  EXPECT_NEAR(hooks.extra_loss(*model).item<float>(), 0.0f, 1e-7);
  // Move all 10 parameters by 0.5: (0.2 / 2) * 10 * 0.25 = 0.25.
  model->load_state(filled(x, 1.5f));
  EXPECT_NEAR(hooks.extra_loss(*model).item<float>(), 0.25f, 1e-6);
}

// ---------------------------------------------------------------- personalisation

ModelSpec lenet_spec() {
  ModelSpec spec;
  spec.name = "lenet5";
  spec.input_shape = {1, 28, 28};
  spec.num_classes = 2;
  return spec;
}

struct PersonalCase {
  std::string strategy;
  std::vector<std::string> personal;  // expected personal entries (prefixes)
};

bool starts_with_any(const std::string& s, const std::vector<std::string>& prefixes) {
  for (const auto& p : prefixes)
    if (s.compare(0, p.size(), p) == 0) return true;
  return false;
}

TEST(StrategiesPersonal, PersonalTensorsNeverLeaveTheClient) {
  const std::vector<PersonalCase> cases{
      {"fedper", {"classifier."}},
      {"fedrep", {"classifier."}},
      {"fedbn", {"conv1.1.", "conv2.1."}},  // LeNet-5's two BatchNorm2d modules
      {"local", {""}},
  };
  auto train = blobs(24, 3, 0, {1, 28, 28});
  auto test = blobs(16, 4, 0, {1, 28, 28});
  for (const auto& c : cases) {
    SCOPED_TRACE(c.strategy);
    auto s = create_strategy(c.strategy);
    torch::manual_seed(1);
    auto model = build_model(lenet_spec());
    s->initialize(model->state());
    const auto all = model->state().names();
    std::map<std::string, ModelState> personal;
    TrainOptions opt;
    opt.epochs = 2;
    opt.batch_size = 8;
    ClientContext ctx{*model, train, &test, opt, personal};
    auto algo = create_client_algorithm(s->name());
    auto task = s->configure_fit(1, {0}).front();
    task.seed = 7;
    auto r = algo->fit(task, ctx);
    ASSERT_TRUE(r.ok) << r.error;
    EXPECT_TRUE(r.tensors.empty());
    ASSERT_TRUE(personal.count("model"));
    const ModelState& mine = personal.at("model");
    std::set<std::string> sent, kept;
    for (const auto& n : r.model.names()) sent.insert(n);
    for (const auto& n : mine.names()) kept.insert(n);
    for (const auto& n : all) {
      const bool is_personal = starts_with_any(n, c.personal);
      EXPECT_EQ(kept.count(n), is_personal ? 1u : 0u) << n;
      EXPECT_EQ(sent.count(n), is_personal ? 0u : 1u) << n;
    }
    // The server folds in what was sent; its personal entries keep their initial values.
    const ModelState before = s->global_model().clone();
    s->aggregate_fit(1, {r});
    for (const auto& n : mine.names()) EXPECT_TRUE(before.at(n).equal(s->global_model().at(n))) << n;
    // Next round the client works with its own personal tensors, not the server's.
    auto next = s->configure_fit(2, {0}).front();
    next.phase = "evaluate";
    auto ev = algo->evaluate(next, ctx);
    ASSERT_TRUE(ev.ok) << ev.error;
    const ModelState loaded = model->state();
    for (const auto& n : mine.names()) EXPECT_TRUE(loaded.at(n).equal(mine.at(n))) << n;
    // ... and they survive a restart (fedclient stores them as safetensors).
    std::map<std::string, ModelState> restored{{"model", from_safetensors_bytes(to_safetensors_bytes(mine))}};
    auto fresh = build_model(lenet_spec());
    ClientContext ctx2{*fresh, train, &test, opt, restored};
    auto ev2 = algo->evaluate(next, ctx2);
    EXPECT_EQ(ev2.metrics.at("accuracy"), ev.metrics.at("accuracy"));
    EXPECT_EQ(ev2.metrics.at("loss"), ev.metrics.at("loss"));
  }
}

TEST(StrategiesPersonal, NothingLeaksBetweenClientsSharingAReplica) {
  // A worker's replica trains client A, then client B for the first time: B must get exactly
  // what it gets on a fresh replica (the server's full model, not A's personal head).
  for (const std::string name : {"fedper", "fedbn", "fedrep", "local", "scaffold"}) {
    SCOPED_TRACE(name);
    auto s = create_strategy(name);
    torch::manual_seed(2);
    s->initialize(build_model(lenet_spec())->state());
    s->set_num_clients(2);
    auto algo = create_client_algorithm(s->name());
    auto a_data = blobs(16, 5, 0, {1, 28, 28}), b_data = blobs(16, 6, 1, {1, 28, 28});
    TrainOptions opt;
    opt.epochs = 2;
    opt.batch_size = 8;
    auto tasks = s->configure_fit(1, {0, 1});
    std::map<std::string, ModelState> pa, pb1, pb2;
    auto shared = build_model(lenet_spec());
    ClientContext a{*shared, a_data, nullptr, opt, pa};
    algo->fit(tasks[0], a);
    ClientContext b1{*shared, b_data, nullptr, opt, pb1};
    auto r1 = algo->fit(tasks[1], b1);
    auto fresh = build_model(lenet_spec());
    ClientContext b2{*fresh, b_data, nullptr, opt, pb2};
    auto r2 = algo->fit(tasks[1], b2);
    EXPECT_TRUE(r1.model.equal(r2.model));
    ASSERT_EQ(pb1.size(), pb2.size());
    for (const auto& kv : pb1) EXPECT_TRUE(kv.second.equal(pb2.at(kv.first))) << kv.first;
  }
}

TEST(StrategiesPersonal, FedRepTrainsTheHeadThenTheBody) {
  auto train = blobs(24, 3, 0, {1, 28, 28});
  FedRep s(2);
  torch::manual_seed(3);
  auto model = build_model(lenet_spec());
  s.initialize(model->state());
  std::map<std::string, ModelState> personal;
  TrainOptions opt;
  opt.epochs = 3;
  opt.batch_size = 8;
  opt.lr = 0.05;
  ClientContext ctx{*model, train, nullptr, opt, personal};
  auto task = s.configure_fit(1, {0}).front();
  task.seed = 11;
  auto r = create_client_algorithm(s.name())->fit(task, ctx);
  ASSERT_TRUE(r.ok) << r.error;
  EXPECT_EQ(r.metrics.at("samples"), 3 * 24);
  EXPECT_EQ(r.metrics.at("steps"), 3 * 3);

  // The same by hand: 2 epochs of the head alone (body frozen), then 1 of the body alone.
  auto ref = build_model(lenet_spec());
  ref->load_state(s.global_model());
  const auto names = model_parameter_names(*ref);
  const auto params = ref->parameters();
  std::vector<at::Tensor> head, body;
  for (size_t i = 0; i < names.size(); ++i) (names[i].rfind("classifier.", 0) == 0 ? head : body).push_back(params[i]);
  TrainOptions h = opt, b = opt;
  h.epochs = 2;
  h.seed = 11;
  b.epochs = 1;
  b.seed = mix_seed(11, 0xb0d7);
  for (auto& p : body) p.requires_grad_(false);
  const ModelState body_before = ref->state().select(names_except(ref->state(), names_in_groups(ref->state(), {"classifier"})));
  TrainHooks hh;
  hh.trainable = head;
  LocalTrainer(h).train(*ref, train, hh);
  for (auto& p : body) p.requires_grad_(true);
  for (auto& p : head) p.requires_grad_(false);
  // Only BatchNorm statistics of the body may move while the head trains.
  for (const auto& n : parameter_names(body_before))
    EXPECT_TRUE(ref->state().at(n).equal(body_before.at(n))) << n;
  TrainHooks bh;
  bh.trainable = body;
  LocalTrainer(b).train(*ref, train, bh);
  for (auto& p : head) p.requires_grad_(true);
  const ModelState want = ref->state();
  EXPECT_TRUE(r.model.equal(want.select(r.model.names())));
  EXPECT_TRUE(personal.at("model").equal(want.select(personal.at("model").names())));
  // head_epochs must leave at least one epoch for the body.
  FedRep greedy(3);
  auto t3 = greedy.configure_fit(1, {0}).front();
  EXPECT_NE(error_of([&] { create_client_algorithm(greedy.name())->fit(t3, ctx); }).find("head_epochs"), std::string::npos);
}

TEST(StrategiesPersonal, FedPerKCountsLayerGroupsFromTheEnd) {
  auto model = build_model(lenet_spec());
  FedPerClient client;
  ClientTask task;
  task.config["k"] = 2;
  const auto names = client.personal_names(task, *model, model->state());
  EXPECT_EQ(names, names_in_groups(model->state(), {"fc2", "classifier"}));
  EXPECT_EQ(names.size(), 4u);
  task.config["k"] = 5;  // every group of LeNet-5: nothing would be shared
  EXPECT_NE(error_of([&] { client.personal_names(task, *model, model->state()); }).find("k=5"), std::string::npos);
}

// ---------------------------------------------------------------- save_state / load_state

ModelState layout_with_bn() {
  return ModelState({{"fc.weight", torch::zeros({2, 3})},
                     {"fc.bias", torch::zeros({2})},
                     {"bn.running_mean", torch::zeros({2})},
                     {"bn.num_batches_tracked", torch::zeros({}, torch::kLong)}});
}

// Deterministic client results for a round: global + a round-and-client dependent step (plus
// a tenth of the task's control variate, when it carries one, as SCAFFOLD's correction would).
std::vector<ClientResult> synthetic_round(Strategy& s, int round) {
  std::vector<ClientResult> out;
  const auto tasks = s.configure_fit(round, {0, 1, 2, 3, 4});
  for (int c = 0; c < 5; ++c) {
    auto gen = at::detail::createCPUGenerator(mix_seed(17, round, c));
    ModelState m = s.global_model().clone();
    for (auto& b : float_blocks(m)) b.add_(torch::randn(b.sizes(), gen) * (c == 4 ? 5.0 : 0.5));
    auto it = tasks[c].tensors.find("c");
    if (it != tasks[c].tensors.end())
      for (const auto& e : it->second.entries()) m.at(e.name).add_(e.tensor * 0.1);
    ClientResult r = result(c, m, 10 + c);
    ModelState dc({{"fc.weight", torch::randn({2, 3}, gen)}, {"fc.bias", torch::randn({2}, gen)}});
    r.tensors["delta_c"] = dc;
    out.push_back(r);
  }
  return out;
}

TEST(StrategiesState, SaveLoadResumesExactly) {
  for (const std::string name : {"fedavgm", "fedadam", "fedyogi", "fedadagrad", "scaffold"}) {
    SCOPED_TRACE(name);
    auto run = [&](Strategy& s, int from, int to) {
      for (int r = from; r <= to; ++r) {
        s.set_num_clients(20);
        s.aggregate_fit(r, synthetic_round(s, r));
      }
    };
    auto straight = create_strategy(name);
    straight->initialize(layout_with_bn());
    run(*straight, 1, 4);

    auto first = create_strategy(name);
    first->initialize(layout_with_bn());
    run(*first, 1, 2);
    const std::string blob = first->save_state();
    ASSERT_FALSE(blob.empty());
    auto resumed = create_strategy(name);  // a restarted coordinator: global model, then state
    resumed->initialize(first->global_model());
    resumed->load_state(blob);
    run(*resumed, 3, 4);
    EXPECT_TRUE(resumed->global_model().equal(straight->global_model()));

    // Without its state the continuation differs: the test can fail.
    auto amnesic = create_strategy(name);
    amnesic->initialize(first->global_model());
    run(*amnesic, 3, 4);
    EXPECT_FALSE(amnesic->global_model().equal(straight->global_model()));
  }
  // A blob from another strategy is refused, naming both.
  auto adam = create_strategy("fedadam");
  adam->initialize(layout_with_bn());
  adam->aggregate_fit(1, synthetic_round(*adam, 1));
  auto yogi = create_strategy("fedyogi");
  yogi->initialize(layout_with_bn());
  const auto err = error_of([&] { yogi->load_state(adam->save_state()); });
  EXPECT_NE(err.find("fedadam"), std::string::npos);
  EXPECT_NE(err.find("fedyogi"), std::string::npos);
}

// ---------------------------------------------------------------- over the wire

// What fedclient uploads (pack_payload -> chunks) and fedcoord reads back (assembler ->
// unpack_payload): SCAFFOLD's extra tensors and an update with no model tensors at all (local).
ClientResult over_the_wire(const ClientResult& r) {
  auto payload = encode_state(pack_payload(r.model, r.tensors), EncodeOptions{});
  PayloadAssembler assembler(1 << 20);
  for_each_chunk(payload, [&](const v1::PayloadChunk& c) {
    assembler.add(c);
    return true;
  });
  ClientResult out;
  unpack_payload(decode_state(assembler.manifest(), assembler.take_bytes()), out.model, out.tensors);
  return out;
}

TEST(StrategiesWire, ScaffoldAndLocalResultsSurviveTheCodec) {
  ClientResult scaffold = result(0, vec({1, 2}));
  scaffold.tensors["delta_c"] = vec({0.5, -0.5});
  auto back = over_the_wire(scaffold);
  EXPECT_TRUE(back.model.equal(scaffold.model));
  ASSERT_TRUE(back.tensors.count("delta_c"));
  EXPECT_TRUE(back.tensors.at("delta_c").equal(scaffold.tensors.at("delta_c")));
  ClientResult local = result(1, ModelState());
  auto empty = over_the_wire(local);
  EXPECT_TRUE(empty.model.empty());
  EXPECT_TRUE(empty.tensors.empty());
  LocalOnly s;
  s.initialize(vec({3}));
  empty.client_id = 1;
  empty.num_examples = 4;
  s.aggregate_fit(1, {empty});
  expect_near(values(s.global_model()), {3});
  // A local client that did send its model is refused (it would leak what is personal).
  EXPECT_NE(error_of([&] { s.aggregate_fit(2, {result(1, vec({4}))}); }).find("client 1"), std::string::npos);
}

// ---------------------------------------------------------------- registry and end to end

TEST(StrategiesRegistry, EveryStrategyByNameWithValidatedParameters) {
  const std::vector<std::string> names{"fedavg",    "fedprox",     "fedavgm", "fedadam",   "fedyogi",
                                       "fedadagrad", "fedmedian",  "trimmedmean", "krum", "multikrum",
                                       "scaffold",  "fedbn",       "fedper",  "fedrep",    "local"};
  const auto known = registered_strategies();
  for (const auto& n : names) {
    EXPECT_NE(std::find(known.begin(), known.end(), n), known.end()) << n;
    EXPECT_EQ(create_strategy(n)->name(), n);
  }
  const std::vector<std::pair<std::string, StrategyParams>> bad{
      {"trimmedmean", {{"beta", 0.5}}}, {"krum", {{"f", 1.5}}},          {"multikrum", {{"m", -1}}},
      {"fedper", {{"k", 0}}},           {"fedrep", {{"head_epochs", 0}}}, {"fedadam", {{"eta", 0}}},
      {"fedyogi", {{"beta2", 1}}},      {"fedavgm", {{"server_momentum", 1}}}, {"scaffold", {{"server_lr", -1}}},
      {"fedadagrad", {{"beta2", 0.9}}}, {"fedadam", {{"tau", 0}}}};
  for (const auto& [name, params] : bad) {
    const auto err = error_of([&] { create_strategy(name, params); });
    const auto& key = params.begin()->first;
    EXPECT_TRUE(err.find(" " + key + " ") != std::string::npos || err.find("'" + key + "'") != std::string::npos)
        << name << ": '" << err << "'";
  }
}

std::vector<RoundReport> simulate(const std::string& strategy, int workers, ModelState* final_state) {
  std::vector<VirtualClient> clients;
  for (int i = 0; i < 6; ++i) {
    VirtualClient c;
    c.train = blobs(48 + 8 * i, 10 + i, 0.5f * i);
    c.test = blobs(24, 20 + i, 0.5f * i);
    clients.push_back(c);
  }
  ModelSpec spec;
  spec.name = "mlp";
  spec.input_shape = {4};
  spec.hidden = {8};
  spec.num_classes = 2;
  auto s = create_strategy(strategy);
  torch::manual_seed(5);
  s->initialize(build_model(spec)->state());
  TrainOptions t;
  t.epochs = 2;
  t.batch_size = 16;
  t.lr = 0.05;
  InProcessPool pool(clients, spec, c10::kCPU, create_client_algorithm(s->name()), t, PoolOptions{workers, 1, {}});
  EngineOptions o;
  o.rounds = 4;
  o.fraction = 0.5;
  o.seed = 9;
  RoundEngine e(*s, pool, o);
  std::vector<RoundReport> out;
  for (int r = 1; r <= o.rounds; ++r) out.push_back(e.run_round(r));
  *final_state = s->global_model().clone();
  return out;
}

TEST(StrategiesEndToEnd, EveryStrategyRunsAndIsDeterministicAcrossWorkers) {
  for (const std::string name : {"fedavgm", "fedadam", "fedyogi", "fedadagrad", "fedmedian", "trimmedmean", "krum",
                                 "multikrum", "scaffold", "fedbn", "fedper", "fedrep", "local"}) {
    SCOPED_TRACE(name);
    ModelState a, b;
    auto ra = simulate(name, 1, &a);
    auto rb = simulate(name, 2, &b);
    EXPECT_TRUE(a.equal(b));
    for (size_t i = 0; i < ra.size(); ++i) {
      EXPECT_EQ(ra[i].failures, 0);
      EXPECT_EQ(ra[i].personalized_accuracy, rb[i].personalized_accuracy);
      EXPECT_EQ(ra[i].train_loss, rb[i].train_loss);
    }
  }
}

}  // namespace
}  // namespace fl
