// Differential privacy: the RDP accountant against published values and a direct quadrature,
// and the DP-FedAvg wrapper's clipping, noise, equal weights and accounting.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <limits>

#include "common/privacy/rdp_accountant.h"
#include "common/run/run_spec.h"
#include "expect_error.h"
#include "strategies/differential_privacy.h"
#include "strategies/registry.h"

namespace {

using namespace fl;
using fl::testing_util::expect_error_of;

// A_alpha of the sampled Gaussian mechanism by the trapezoid rule over its definition,
// E_{z ~ N(0, s^2)} [((1 - q) + q exp((2z - 1) / (2 s^2)))^alpha] (Mironov et al. 2019, Sec. 3.3).
double rdp_by_quadrature(double q, double s, double alpha) {
  const double h = 1e-3;
  double total = 0;
  for (double z = -40 * s; z < 40 * s + 20; z += h) {
    const double pdf = std::exp(-z * z / (2 * s * s)) / (s * std::sqrt(2 * M_PI));
    total += pdf * std::pow((1 - q) + q * std::exp((2 * z - 1) / (2 * s * s)), alpha) * h;
  }
  return std::log(total) / (alpha - 1);
}

// Google's dp_accounting (rdp_privacy_accountant_test.py, test_compute_rdp_poisson_sampled_gaussian):
// q = 0.01, z = 2.5, 50 steps.
TEST(RdpAccountant, IntegerOrdersMatchTheReferenceAccountant) {
  EXPECT_NEAR(rdp_sampled_gaussian(0.01, 2.5, 5, 50), 2.18075656e-03, 2.18075656e-03 * 1e-6);
  EXPECT_NEAR(rdp_sampled_gaussian(0.01, 2.5, 50, 50), 2.38460375e-02, 2.38460375e-02 * 1e-6);
  EXPECT_NEAR(rdp_sampled_gaussian(0.01, 2.5, 100, 50), 1.67416308e+02, 1.67416308e+02 * 1e-6);
  EXPECT_EQ(rdp_sampled_gaussian(0.01, 2.5, std::numeric_limits<double>::infinity(), 50),
            std::numeric_limits<double>::infinity());
  // No sampling, no privacy loss; no noise, no privacy.
  EXPECT_EQ(rdp_sampled_gaussian(0, 1, 8, 10), 0);
  EXPECT_EQ(rdp_sampled_gaussian(0.1, 0, 8, 10), std::numeric_limits<double>::infinity());
  // q = 1 is the Gaussian mechanism: alpha / (2 z^2) per step.
  EXPECT_DOUBLE_EQ(rdp_sampled_gaussian(1, 2.71828, 3.14159), 3.14159 / (2 * 2.71828 * 2.71828));
}

// Fractional orders take the erfc series; they agree with the defining integral. (The reference
// test lists 6.7058e-4 at order 1.5, an upper bound: the integral gives 6.5007e-4, as do we.)
TEST(RdpAccountant, FractionalOrdersMatchTheDefiningIntegral) {
  for (double alpha : {1.5, 2.5, 3.7}) {
    const double expected = 50 * rdp_by_quadrature(0.01, 2.5, alpha);
    EXPECT_NEAR(rdp_sampled_gaussian(0.01, 2.5, alpha, 50), expected, expected * 1e-4) << alpha;
  }
  const double expected = rdp_by_quadrature(0.1, 1.3, 2.25);
  EXPECT_NEAR(rdp_sampled_gaussian(0.1, 1.3, 2.25), expected, expected * 1e-4);
}

// dp_accounting's conversion tests: pure DP (constant RDP 1.1 over orders 2..32) and the
// Gaussian mechanism whose noise multiplier gives exactly (1, 1e-6)-DP.
TEST(RdpAccountant, EpsilonFromRdpMatchesPublishedConversions) {
  std::vector<double> orders, rdp;
  for (int a = 2; a <= 32; ++a) {
    orders.push_back(a);
    rdp.push_back(1.1);
  }
  auto spent = epsilon_from_rdp(orders, rdp, 1e-5);
  EXPECT_NEAR(spent.epsilon, 1.32783806176, 1e-9);
  EXPECT_EQ(spent.order, 32);

  orders.clear();
  rdp.clear();
  for (int i = 1001; i < 100000; ++i) {
    orders.push_back(0.001 * i);
    rdp.push_back(rdp_sampled_gaussian(1, 4.530877117, 0.001 * i));
  }
  EXPECT_NEAR(epsilon_from_rdp(orders, rdp, 1e-6).epsilon, 1.0, 1e-6);
}

TEST(RdpAccountant, ComposesRoundsAndResumesFromItsState) {
  RdpAccountant a;
  a.compose(0.1, 1.0);
  const double one = a.spent(1e-5).epsilon;
  a.compose(0.1, 1.0, 9);
  const double ten = a.spent(1e-5).epsilon;
  EXPECT_GT(ten, one);
  RdpAccountant same;
  same.compose(0.1, 1.0, 10);
  EXPECT_NEAR(same.spent(1e-5).epsilon, ten, 1e-9);
  // More noise, less spent.
  RdpAccountant quieter;
  quieter.compose(0.1, 2.0, 10);
  EXPECT_LT(quieter.spent(1e-5).epsilon, ten);

  RdpAccountant resumed;
  resumed.load(a.save());
  EXPECT_DOUBLE_EQ(resumed.spent(1e-5).epsilon, ten);
  expect_error_of<std::invalid_argument>([&] { resumed.load("1 2 3"); }, "3 values for");
  expect_error_of<std::invalid_argument>([&] { resumed.load("x"); }, "'x'");
  expect_error_of<std::invalid_argument>([&] { rdp_sampled_gaussian(1.5, 1, 2); }, "sampling rate");
  expect_error_of<std::invalid_argument>([&] { a.spent(0); }, "delta");
}

ModelState vec(std::vector<float> v) { return ModelState({{"w", torch::tensor(v)}}); }

ClientResult result(int id, ModelState m, int64_t examples) {
  ClientResult r;
  r.client_id = id;
  r.model = std::move(m);
  r.num_examples = examples;
  return r;
}

// Without noise the wrapper is exact: each update clipped to C, the mean taken with equal
// weights, whatever the clients' example counts.
TEST(DifferentialPrivacy, ClipsEachUpdateAndWeighsClientsEqually) {
  DpOptions o;
  o.clip = 1.0;
  o.noise_multiplier = 0;
  DifferentialPrivacy dp(create_strategy("fedavg"), o);
  dp.initialize(vec({0, 0}));
  dp.set_num_clients(4);
  dp.configure_fit(1, {0, 1});
  // Client 0: update (3, 4), norm 5 -> (0.6, 0.8). Client 1: (0, 0.5), within the bound.
  auto m = dp.aggregate_fit(1, {result(0, vec({3, 4}), 1000), result(1, vec({0, 0.5}), 1)});
  const auto w = dp.global_model().at("w");
  EXPECT_NEAR(w[0].item<float>(), 0.3, 1e-6);
  EXPECT_NEAR(w[1].item<float>(), (0.8 + 0.5) / 2, 1e-6);
  EXPECT_EQ(m.at("dp_clipped"), 1);
  EXPECT_DOUBLE_EQ(m.at("dp_sampling_rate"), 0.5);
  EXPECT_EQ(m.at("dp_epsilon"), std::numeric_limits<double>::infinity());  // no noise: no guarantee
}

// With noise, the mean moves by N(0, (z C / m)^2) per coordinate, seeded: the same inputs give
// the same model, whatever order the results come in.
TEST(DifferentialPrivacy, AddsGaussianNoiseOfStdZCOverMToTheMean) {
  const int64_t n = 200000;
  const int m = 4;
  DpOptions o;
  o.clip = 2.0;
  o.noise_multiplier = 1.5;
  o.seed = 7;
  auto run = [&](bool reversed) {
    DifferentialPrivacy dp(create_strategy("fedavg"), o);
    dp.initialize(ModelState({{"w", torch::zeros({n})}}));
    dp.set_num_clients(10);
    std::vector<int> ids{0, 1, 2, 3};
    dp.configure_fit(1, ids);
    std::vector<ClientResult> results;
    for (int id : ids) results.push_back(result(id, ModelState({{"w", torch::zeros({n})}}), 10));
    if (reversed) std::reverse(results.begin(), results.end());
    auto metrics = dp.aggregate_fit(1, results);
    return std::make_pair(dp.global_model().clone(), metrics);
  };
  const auto [global, metrics] = run(false);
  const auto w = global.at("w");
  EXPECT_NEAR(w.mean().item<double>(), 0.0, 0.005);
  EXPECT_NEAR(w.std().item<double>(), 1.5 * 2.0 / m, 0.01 * 1.5 * 2.0 / m);
  const auto [again, unused] = run(true);
  EXPECT_TRUE(torch::allclose(again.at("w"), w, 0, 1e-6));
  // One round at q = 4 / 10 with z = 1.5, as the accountant computes it directly.
  RdpAccountant a;
  a.compose(0.4, 1.5);
  EXPECT_DOUBLE_EQ(metrics.at("dp_epsilon"), a.spent(1e-5).epsilon);
  EXPECT_GT(metrics.at("dp_epsilon"), 0);
}

// The accountant is part of the strategy's state: a resumed run goes on spending from where it was.
TEST(DifferentialPrivacy, ItsStateCarriesTheAccountant) {
  DpOptions o;
  o.noise_multiplier = 1.0;
  DifferentialPrivacy dp(create_strategy("fedadam"), o);
  dp.initialize(vec({0, 0}));
  dp.set_num_clients(2);
  double last = 0;
  for (int round = 1; round <= 3; ++round) {
    dp.configure_fit(round, {0, 1});
    last = dp.aggregate_fit(round, {result(0, vec({0.1f, 0}), 5), result(1, vec({0, 0.1f}), 5)}).at("dp_epsilon");
  }
  DifferentialPrivacy resumed(create_strategy("fedadam"), o);
  resumed.initialize(vec({0, 0}));
  resumed.load_state(dp.save_state());
  EXPECT_DOUBLE_EQ(resumed.accountant().spent(1e-5).epsilon, last);
  resumed.set_num_clients(2);
  resumed.configure_fit(4, {0, 1});
  EXPECT_GT(resumed.aggregate_fit(4, {result(0, vec({0.1f, 0}), 5), result(1, vec({0, 0.1f}), 5)}).at("dp_epsilon"), last);
  DifferentialPrivacy fresh(create_strategy("fedadam"), o);
  fresh.load_state("");  // what a run resumed before its first commit holds: nothing spent yet
  EXPECT_EQ(fresh.accountant().spent(1e-5).epsilon, 0);
  expect_error_of<std::invalid_argument>([&] { fresh.load_state("adam moments of a run without dp"); },
                                         "not this wrapper's");
}

TEST(DifferentialPrivacy, TheRunSpecWrapsOnlyMeanAggregatingStrategies) {
  RunSpec spec;
  spec.dp = "central";
  spec.strategy = "fedavgm";
  spec.validate();
  auto s = spec.create_strategy();
  EXPECT_NE(dynamic_cast<DifferentialPrivacy*>(s.get()), nullptr);
  EXPECT_EQ(s->name(), "fedavgm");
  spec.strategy = "fedmedian";
  spec.strategy_params.clear();
  expect_error_of<std::invalid_argument>([&] { spec.validate(); }, std::vector<std::string>{"'dp'", "fedmedian", "fedavg"});
  spec.strategy = "fedavg";
  spec.workflow = "cyclic";
  expect_error_of<std::invalid_argument>([&] { spec.validate(); }, std::vector<std::string>{"'dp'", "scatter-gather"});
  RunSpec plain;
  plain.validate();
  EXPECT_EQ(dynamic_cast<DifferentialPrivacy*>(plain.create_strategy().get()), nullptr);
  expect_error_of<std::invalid_argument>([] { RunSpec::from_json({{"dp_clip", 0}}); }, "dp_clip");
  expect_error_of<std::invalid_argument>([] { RunSpec::from_json({{"dp", "local"}}); }, "'dp'");
}

}  // namespace
