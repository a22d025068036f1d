// FedCMD: the layer-selection maths on hand-made tensors, the tally and the fixing of l*, the
// aggregation formulas on tiny states, state persistence, and the client half on LeNet-5.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "common/data/idx.h"
#include "common/engine/round_engine.h"
#include "common/io/safetensors.h"
#include "common/net/codec.h"
#include "coordinator/store/state_store.h"
#include "process_util.h"
#include "simulations/in_process_pool.h"
#include "strategies/fedavg.h"
#include "strategies/fedcmd.h"
#include "strategies/registry.h"

namespace fl {
namespace {

const double kSx = std::sqrt(5.0 / 27.0);  // unbiased std of {0, 1/3, 2/3, 1}
const double kSy = std::sqrt(1.0 / 3.0);   // unbiased std of {0, 0, 1, 1}

TEST(FedCmdMaths, GaussianOfMinMaxNormalisedBatch) {
  auto g = fit_gaussian(torch::tensor({0.f, 1.f, 2.f, 3.f}));
  EXPECT_NEAR(g.mean, 0.5, 1e-12);
  EXPECT_NEAR(g.std, kSx, 1e-12);
  // Over the whole tensor, whatever its shape: {2,4,6,10} -> {0, .25, .5, 1}.
  g = fit_gaussian(torch::tensor({2.f, 4.f, 6.f, 10.f}).reshape({2, 2}));
  EXPECT_NEAR(g.mean, 0.4375, 1e-12);
  EXPECT_NEAR(g.std, std::sqrt(0.546875 / 3), 1e-12);
  // A constant batch is degenerate.
  g = fit_gaussian(torch::full({3, 2}, 7.f));
  EXPECT_TRUE(std::isnan(g.mean));
  EXPECT_THROW(fit_gaussian(torch::zeros({0})), std::invalid_argument);
}

TEST(FedCmdMaths, WassersteinAndMeanDistance) {
  const Gaussian1d a{0.5, 0.2}, b{0.2, 0.6};
  EXPECT_NEAR(gaussian_distance(a, b, FedCmdDistance::kW2), 0.5, 1e-12);  // sqrt(.09 + .16)
  EXPECT_NEAR(gaussian_distance(a, b, FedCmdDistance::kMean), 0.3, 1e-12);
  EXPECT_EQ(gaussian_distance(a, a, FedCmdDistance::kW2), 0.0);
}

TEST(FedCmdMaths, ScoresAndVoteOnHandMadeOutputs) {
  const auto x = torch::tensor({0.f, 1.f, 2.f, 3.f}).reshape({4, 1});  // N(0.5, kSx)
  const auto y = torch::tensor({0, 0, 1, 1}, torch::kLong);            // N(0.5, kSy)
  const auto o1 = torch::tensor({0.f, 0.f, 0.f, 1.f});                 // N(0.25, 0.5)
  const auto o2 = torch::tensor({0.f, 0.f, 5.f, 5.f});                 // N(0.5, kSy): like y
  const std::vector<at::Tensor> outs{x, o1, o2};                       // o_0 = x
  // dx = {0, sqrt(.0625 + (.5-kSx)^2), kSy-kSx}, dy = {kSy-kSx, sqrt(.0625 + (.5-kSy)^2), 0}
  const double dx1 = std::sqrt(0.0625 + (0.5 - kSx) * (0.5 - kSx)), dy1 = std::sqrt(0.0625 + (0.5 - kSy) * (0.5 - kSy));
  const double dx2 = kSy - kSx, dy0 = kSy - kSx;
  auto s = fedcmd_layer_scores(outs, x, y, FedCmdDistance::kW2);
  ASSERT_EQ(s.size(), 2u);
  EXPECT_NEAR(s[0], std::abs(std::abs(dy1 - dy0) - dx1), 1e-12);  // 0.14485
  EXPECT_NEAR(s[1], std::abs(dy1 - std::abs(dx2 - dx1)), 1e-12);  // 0.14919
  EXPECT_NEAR(s[0], 0.144852, 1e-6);
  EXPECT_NEAR(s[1], 0.149186, 1e-6);
  EXPECT_EQ(fedcmd_vote(s), 0);
  // The public code's variant sees only means: 0.25 apart everywhere, so no layer stands out.
  s = fedcmd_layer_scores(outs, x, y, FedCmdDistance::kMean);
  EXPECT_NEAR(s[0], 0.0, 1e-12);
  EXPECT_NEAR(s[1], 0.0, 1e-12);
  // A batch of one class is degenerate: no vote.
  s = fedcmd_layer_scores(outs, x, torch::tensor({3, 3, 3, 3}, torch::kLong), FedCmdDistance::kW2);
  EXPECT_EQ(fedcmd_vote(s), -1);
  EXPECT_THROW(fedcmd_layer_scores({x}, x, y, FedCmdDistance::kW2), std::invalid_argument);
}

TEST(FedCmdMaths, VoteIsArgminFirstOnTiesNoneOnNaN) {
  EXPECT_EQ(fedcmd_vote({0.3, 0.1, 0.2}), 1);
  EXPECT_EQ(fedcmd_vote({0.2, 0.2, 0.5}), 0);
  EXPECT_EQ(fedcmd_vote({0.1, std::nan("")}), -1);
  EXPECT_EQ(fedcmd_vote({}), -1);
}

ModelState delta_state(std::vector<float> w, std::vector<float> b) {
  return ModelState({{"fc2.weight", torch::tensor(w).reshape({2, 3})}, {"fc2.bias", torch::tensor(b)}});
}

TEST(FedCmdMaths, SimilarityIsMeanRowCosineClampedAtZero) {
  // Rows are output units: [weight row, bias].
  const auto a = delta_state({1, 0, 0, 0, 1, 0}, {0, 0});  // rows (1,0,0,0), (0,1,0,0)
  const auto b = delta_state({1, 0, 0, 1, 0, 0}, {0, 1});  // rows (1,0,0,0), (1,0,0,1)
  EXPECT_NEAR(fedcmd_similarity(a, b), 0.5, 1e-12);       // cos 1 and 0
  const auto c = delta_state({2, 0, 0, 0, 1, 1}, {0, 0});  // rows (2,0,0,0), (0,1,1,0)
  EXPECT_NEAR(fedcmd_similarity(a, c), (1 + 1 / std::sqrt(2.0)) / 2, 1e-12);
  EXPECT_EQ(fedcmd_similarity(a, a.scaled(-1)), 0.0);  // mean cos -1, clamped
  EXPECT_NEAR(fedcmd_similarity(a, a), 1.0, 1e-12);
  EXPECT_THROW(fedcmd_similarity(a, ModelState({{"fc2.weight", torch::zeros({2, 3})}})), std::invalid_argument);
}

// A tiny "model": a convolution, then candidates fc1, fc2, head.
ModelState tiny_model(float v = 0) {
  return ModelState({{"conv.weight", torch::full({2, 1, 3, 3}, v)},
                     {"conv.bias", torch::full({2}, v)},
                     {"fc1.weight", torch::full({3, 2}, v)},
                     {"fc1.bias", torch::full({3}, v)},
                     {"fc2.weight", torch::full({2, 3}, v)},
                     {"fc2.bias", torch::full({2}, v)},
                     {"head.weight", torch::full({2, 2}, v)},
                     {"head.bias", torch::full({2}, v)}});
}

ClientResult vote_result(int client, float v, int64_t n, std::map<std::string, double> votes) {
  ClientResult r;
  r.client_id = client;
  r.model = tiny_model(v);
  r.num_examples = n;
  for (const auto& kv : votes) r.metrics[std::string(kFedCmdVotePrefix) + kv.first] = kv.second;
  return r;
}

TEST(FedCmdStrategy, CandidatesFollowTheLastConvolution) {
  EXPECT_EQ(state_groups(tiny_model()), (std::vector<std::string>{"conv", "fc1", "fc2", "head"}));
  EXPECT_EQ(default_first_candidate(tiny_model(), state_groups(tiny_model())), 1);
  FedCmd s(0.1, FedCmdDistance::kW2);
  s.initialize(tiny_model());
  EXPECT_EQ(s.candidates(), (std::vector<std::string>{"fc1", "fc2", "head"}));
  FedCmd over(0.1, FedCmdDistance::kW2, 2);
  over.initialize(tiny_model());
  EXPECT_EQ(over.candidates(), (std::vector<std::string>{"fc2", "head"}));
  FedCmd too_far(0.1, FedCmdDistance::kW2, 4);
  EXPECT_THROW(too_far.initialize(tiny_model()), std::invalid_argument);
  EXPECT_THROW(FedCmd(0, FedCmdDistance::kW2), std::invalid_argument);
  EXPECT_THROW(FedCmd(1.5, FedCmdDistance::kW2), std::invalid_argument);
  EXPECT_THROW(s.configure_fit(1, {0}), std::logic_error);  // T unknown
  s.set_total_rounds(200);
  EXPECT_EQ(s.selection_rounds(), 20);
  s.set_total_rounds(4);
  EXPECT_EQ(s.selection_rounds(), 1);  // round(0.4) = 0, at least one round
}

TEST(FedCmdStrategy, RegistryValidatesParameters) {
  EXPECT_EQ(create_strategy("fedcmd")->name(), "fedcmd");
  EXPECT_NO_THROW(create_strategy("fedcmd", {{"rho", 0.2}, {"distance", 1}, {"first_layer", 2}, {"delta", 1}}));
  EXPECT_THROW(create_strategy("fedcmd", {{"distance", 2}}), std::invalid_argument);
  EXPECT_THROW(create_strategy("fedcmd", {{"delta", 0.5}}), std::invalid_argument);
  EXPECT_THROW(create_strategy("fedcmd", {{"delta", 3}}), std::invalid_argument);
  EXPECT_THROW(create_strategy("fedcmd", {{"head", 3}}), std::invalid_argument);
  EXPECT_NO_THROW(create_strategy("fedcmd", {{"head", 2}}));
  EXPECT_NO_THROW(create_strategy("fedcmd", {{"delta", 2}, {"head", 1}, {"body", 1}}));
  EXPECT_THROW(create_strategy("fedcmd", {{"body", 2}}), std::invalid_argument);
  EXPECT_THROW(create_strategy("fedcmd", {{"rho", 0}}), std::invalid_argument);
  EXPECT_THROW(create_strategy("fedcmd", {{"first_layer", 1.5}}), std::invalid_argument);
  EXPECT_THROW(create_strategy("fedcmd", {{"rounds", 10}}), std::invalid_argument);
}

// phi = 3 rounds; each round's majority (summed votes) is tallied, then the most-voted layer
// is fixed. Meanwhile FedAvg on everything.
TEST(FedCmdStrategy, TallyFixesTheMostVotedLayerAfterPhiRounds) {
  FedCmd s(0.3, FedCmdDistance::kW2);
  s.initialize(tiny_model());
  s.set_total_rounds(10);
  ASSERT_EQ(s.selection_rounds(), 3);
  auto tasks = s.configure_fit(1, {0, 4});
  ASSERT_EQ(tasks.size(), 2u);
  EXPECT_EQ(tasks[1].client_id, 4);
  EXPECT_EQ(tasks[0].config.at("fedcmd_select"), 1);
  EXPECT_EQ(tasks[0].config.at("fedcmd_first"), 1);
  EXPECT_EQ(tasks[0].config.at("fedcmd_layer"), -1);
  EXPECT_EQ(tasks[0].config.at("fedcmd_distance"), 0);
  EXPECT_EQ(tasks[0].config.at("fedcmd_delta"), static_cast<double>(FedCmdDelta::kShared));
  EXPECT_TRUE(tasks[0].model.equal(tiny_model()));

  // Round 1: fc1 3, fc2 1+4 -> fc2 (invalid votes ignored: not a candidate, negative, fractional).
  auto m = s.aggregate_fit(1, {vote_result(0, 1, 1, {{"fc1", 3}, {"fc2", 1}, {"conv", 100}}),
                               vote_result(4, 4, 3, {{"fc2", 4}, {"head", -7}, {"fc1", 0.5}})});
  EXPECT_EQ(m.at("fedcmd_round_layer"), 2);  // group index of fc2
  EXPECT_EQ(m.at("fedcmd_round_votes"), 8);
  EXPECT_EQ(m.at("fedcmd_layer"), -1);
  EXPECT_TRUE(s.selected_layer().empty());
  EXPECT_TRUE(s.global_model().equal(tiny_model(3.25f)));  // (1*1 + 3*4) / 4
  // Round 2: no votes at all (degenerate batches): nothing tallied.
  m = s.aggregate_fit(2, {vote_result(1, 0, 1, {})});
  EXPECT_EQ(m.at("fedcmd_round_layer"), -1);
  // Round 3: a tie between fc2 and head goes to the earlier candidate, fc2.
  m = s.aggregate_fit(3, {vote_result(2, 0, 1, {{"fc2", 2}, {"head", 2}})});
  EXPECT_EQ(m.at("fedcmd_round_layer"), 2);
  EXPECT_EQ(s.tally().at("fc2"), 2);
  EXPECT_EQ(s.tally().count("fc1"), 0u);
  EXPECT_EQ(s.selected_layer(), "fc2");
  EXPECT_EQ(m.at("fedcmd_layer"), 2);
  tasks = s.configure_fit(4, {3});
  EXPECT_EQ(tasks[0].config.at("fedcmd_select"), 0);
  EXPECT_EQ(tasks[0].config.at("fedcmd_layer"), 2);
}

TEST(FedCmdStrategy, TiedTallyGoesToTheEarlierCandidateAndNoVotesExtendThePhase) {
  FedCmd s(0.2, FedCmdDistance::kW2);
  s.initialize(tiny_model());
  s.set_total_rounds(10);  // phi = 2
  s.aggregate_fit(1, {vote_result(0, 0, 1, {})});
  s.aggregate_fit(2, {vote_result(0, 0, 1, {})});
  EXPECT_TRUE(s.selected_layer().empty());  // nothing voted yet: still selecting
  s.aggregate_fit(3, {vote_result(0, 0, 1, {{"head", 5}})});
  EXPECT_EQ(s.selected_layer(), "head");

  FedCmd t(0.2, FedCmdDistance::kW2);
  t.initialize(tiny_model());
  t.set_total_rounds(10);
  t.aggregate_fit(1, {vote_result(0, 0, 1, {{"head", 5}})});
  t.aggregate_fit(2, {vote_result(0, 0, 1, {{"fc1", 1}})});
  EXPECT_EQ(t.selected_layer(), "fc1");
}

// Fixes l* = fc2 with phi = 1.
FedCmd selected_fc2(FedCmdHead head = FedCmdHead::kPhi) {
  FedCmd s(0.1, FedCmdDistance::kW2, -1, FedCmdDelta::kShared, head);
  s.initialize(tiny_model());
  s.set_total_rounds(10);
  s.aggregate_fit(1, {vote_result(0, 0, 1, {{"fc2", 1}})});
  EXPECT_EQ(s.selected_layer(), "fc2");
  return s;
}

ClientResult update(int client, float v, int64_t n, const ModelState& delta) {
  ClientResult r;
  r.client_id = client;
  r.num_examples = n;
  r.model = tiny_model(v).select({"conv.weight", "conv.bias", "fc1.weight", "fc1.bias", "head.weight", "head.bias"});
  r.tensors[kFedCmdDeltaKey] = delta;
  return r;
}

TEST(FedCmdStrategy, AggregationAveragesBeforeKeepsLStarPersonalisesAfter) {
  FedCmd s = selected_fc2();
  const ModelState frozen = s.global_model().clone();
  const auto da = delta_state({1, 0, 0, 0, 1, 0}, {0, 0});
  const auto db = delta_state({1, 0, 0, 1, 0, 0}, {0, 1});  // Phi_ab = 0.5
  const auto dc = da.scaled(-1);                            // Phi_ac = 0, Phi_bc = max(0, -0.5) = 0
  auto m = s.aggregate_fit(2, {update(3, 1, 1, da), update(5, 2, 2, db), update(8, 4, 1, dc)});
  EXPECT_EQ(m.at("fedcmd_layer"), 2);
  EXPECT_EQ(m.at("fedcmd_deltas"), 3);
  EXPECT_NEAR(m.at("fedcmd_phi_mean"), 0.5 / 3, 1e-12);
  EXPECT_NEAR(s.similarity(3, 5), 0.5, 1e-12);
  EXPECT_NEAR(s.similarity(5, 3), 0.5, 1e-12);
  EXPECT_EQ(s.similarity(3, 8), 0.0);
  EXPECT_EQ(s.similarity(5, 8), 0.0);
  EXPECT_EQ(s.similarity(8, 8), 1.0);
  EXPECT_EQ(s.similarity(3, 9), 0.0);  // never together
  // Before l*: example-weighted (1*1 + 2*2 + 1*4) / 4 = 2.25. l* untouched by the server.
  const auto& g = s.global_model();
  EXPECT_TRUE(torch::allclose(g.at("conv.weight"), torch::full({2, 1, 3, 3}, 2.25f)));
  EXPECT_TRUE(torch::allclose(g.at("fc1.bias"), torch::full({3}, 2.25f)));
  EXPECT_TRUE(g.at("fc2.weight").equal(frozen.at("fc2.weight")));
  EXPECT_TRUE(g.at("fc2.bias").equal(frozen.at("fc2.bias")));
  // After l*: client a = (1*1 + .5*2 + 0*4) / 1.5, b = (.5*1 + 1*2) / 1.5, c = its own 4.
  ASSERT_NE(s.personalized(3), nullptr);
  EXPECT_EQ(s.personalized(3)->names(), (std::vector<std::string>{"head.weight", "head.bias"}));
  EXPECT_NEAR(s.personalized(3)->at("head.weight")[0][0].item<double>(), 2.0 / 1.5, 1e-6);
  EXPECT_NEAR(s.personalized(5)->at("head.bias")[1].item<double>(), 2.5 / 1.5, 1e-6);
  EXPECT_NEAR(s.personalized(8)->at("head.weight")[1][1].item<double>(), 4.0, 1e-6);
  EXPECT_EQ(s.personalized(7), nullptr);
  // The next task of a: the global model with a's own layers after l*; a newcomer: the global.
  auto tasks = s.configure_fit(3, {3, 7});
  EXPECT_TRUE(tasks[0].model.at("head.weight").equal(s.personalized(3)->at("head.weight")));
  EXPECT_TRUE(tasks[0].model.at("conv.weight").equal(g.at("conv.weight")));
  EXPECT_TRUE(tasks[0].model.at("fc2.weight").equal(frozen.at("fc2.weight")));
  EXPECT_TRUE(tasks[1].model.equal(g));
  // An update carrying l*'s weights (or lacking a shared layer) is refused.
  auto bad = update(3, 1, 1, da);
  bad.model = tiny_model(1);
  EXPECT_THROW(s.aggregate_fit(3, {bad}), std::invalid_argument);
  // A missing delta: similar to nobody, the round goes on.
  auto nodelta = update(5, 1, 1, da);
  nodelta.tensors.clear();
  m = s.aggregate_fit(3, {update(3, 1, 1, da), nodelta});
  EXPECT_EQ(m.at("fedcmd_deltas"), 1);
  EXPECT_EQ(s.similarity(3, 5), 0.0);
}

// The public code's variant: client i's layers after l* are softmax_j(Phi_ij) over every
// client's latest upload, built when i gets its next task; it persists like the rest.
TEST(FedCmdStrategy, SoftmaxHeadVariantWeighsEveryClientsLatestUpload) {
  FedCmd s = selected_fc2(FedCmdHead::kSoftmaxAll);
  const auto da = delta_state({1, 0, 0, 0, 1, 0}, {0, 0});
  const auto db = delta_state({1, 0, 0, 1, 0, 0}, {0, 1});  // Phi_35 = 0.5, the rest 0
  s.aggregate_fit(2, {update(3, 1, 1, da), update(5, 2, 2, db), update(8, 4, 1, da.scaled(-1))});
  EXPECT_EQ(s.personalized(3), nullptr);
  auto tasks = s.configure_fit(3, {3, 7});
  const double e = std::exp(1.0), h = std::exp(0.5);
  EXPECT_NEAR(tasks[0].model.at("head.weight")[0][0].item<double>(), (e * 1 + h * 2 + 1 * 4) / (e + h + 1), 1e-6);
  EXPECT_NEAR(tasks[1].model.at("head.bias")[0].item<double>(), 7.0 / 3, 1e-6);  // Phi_7j = 0: plain mean
  EXPECT_TRUE(tasks[0].model.at("conv.weight").equal(s.global_model().at("conv.weight")));
  // Latest upload wins: client 8 uploads 10 next round.
  s.aggregate_fit(3, {update(8, 10, 1, da)});
  tasks = s.configure_fit(4, {7});
  EXPECT_NEAR(tasks[0].model.at("head.bias")[1].item<double>(), 13.0 / 3, 1e-6);
  FedCmd t(0.1, FedCmdDistance::kW2, -1, FedCmdDelta::kShared, FedCmdHead::kSoftmaxAll);
  t.initialize(s.global_model());
  t.set_total_rounds(10);
  t.load_state(s.save_state());
  EXPECT_TRUE(t.configure_fit(4, {3})[0].model.equal(s.configure_fit(4, {3})[0].model));
}

// kShared: the layers after l* are the round's example-weighted average, the same for every
// client (what the public code's softmax amounts to, its stored client parameters all being
// one live model); Phi is still measured.
TEST(FedCmdStrategy, SharedHeadVariantAveragesTheLayersAfterLStarLikeTheBody) {
  FedCmd s = selected_fc2(FedCmdHead::kShared);
  const auto da = delta_state({1, 0, 0, 0, 1, 0}, {0, 0});
  const auto db = delta_state({1, 0, 0, 1, 0, 0}, {0, 1});  // Phi_35 = 0.5
  s.aggregate_fit(2, {update(3, 1, 1, da), update(5, 2, 2, db), update(8, 4, 1, da.scaled(-1))});
  EXPECT_NEAR(s.similarity(3, 5), 0.5, 1e-12);
  EXPECT_EQ(s.personalized(3), nullptr);
  EXPECT_TRUE(torch::allclose(s.global_model().at("head.weight"), torch::full({2, 2}, 2.25f)));
  const auto tasks = s.configure_fit(3, {3, 7});
  EXPECT_TRUE(tasks[0].model.equal(s.global_model()));
  EXPECT_TRUE(tasks[1].model.equal(s.global_model()));
}

// kPopulation (the public code's intent for the layers before l*): every client's latest upload
// since the phase ended, example-weighted, replaces the round's average; it persists.
TEST(FedCmdStrategy, PopulationBodyVariantAveragesEveryClientsLatestUpload) {
  FedCmd s(0.1, FedCmdDistance::kW2, -1, FedCmdDelta::kShared, FedCmdHead::kPhi, FedCmdBody::kPopulation);
  s.initialize(tiny_model());
  s.set_total_rounds(10);
  s.aggregate_fit(1, {vote_result(0, 0, 1, {{"fc2", 1}})});
  ASSERT_EQ(s.selected_layer(), "fc2");
  const auto da = delta_state({1, 0, 0, 0, 1, 0}, {0, 0});
  auto body = [&](const FedCmd& f) { return f.global_model().at("conv.weight")[0][0][0][0].item<double>(); };
  s.aggregate_fit(2, {update(3, 1, 1, da), update(5, 2, 2, da)});
  EXPECT_NEAR(body(s), 5.0 / 3, 1e-6);
  s.aggregate_fit(3, {update(8, 4, 1, da)});  // the round alone would give 4
  EXPECT_NEAR(body(s), (1 + 2 * 2 + 4) / 4.0, 1e-6);
  EXPECT_NEAR(s.global_model().at("fc1.bias")[2].item<double>(), 9 / 4.0, 1e-6);
  EXPECT_NEAR(s.global_model().at("head.bias")[0].item<double>(), 4, 1e-6);  // after l*: the round's
  s.aggregate_fit(4, {update(3, 10, 1, da)});  // client 3's latest replaces its first
  EXPECT_NEAR(body(s), (10 + 2 * 2 + 4) / 4.0, 1e-6);
  FedCmd t(0.1, FedCmdDistance::kW2, -1, FedCmdDelta::kShared, FedCmdHead::kPhi, FedCmdBody::kPopulation);
  t.initialize(s.global_model());
  t.set_total_rounds(10);
  t.load_state(s.save_state());
  s.aggregate_fit(5, {update(5, 0, 2, da)});
  t.aggregate_fit(5, {update(5, 0, 2, da)});
  EXPECT_NEAR(body(t), (10 + 4) / 4.0, 1e-6);
  EXPECT_TRUE(t.global_model().equal(s.global_model()));
}

// kInit (the public code's reference): Phi compares what l* learnt since the initial model, so
// the server adds l*(fixed) - l*(initial) to the deltas the clients measure from the fixed copy;
// the initial l* persists with the state, since a restarted coordinator only has the latest model.
TEST(FedCmdStrategy, InitDeltaVariantMeasuresFromTheInitialLayer) {
  FedCmd s(0.1, FedCmdDistance::kW2, -1, FedCmdDelta::kInit);
  s.initialize(tiny_model(0));
  s.set_total_rounds(10);
  s.aggregate_fit(1, {vote_result(0, 1, 1, {{"fc2", 1}})});  // fc2 fixed at 1, initially 0
  ASSERT_EQ(s.selected_layer(), "fc2");
  EXPECT_EQ(s.configure_fit(2, {3})[0].config.at("fedcmd_delta"), static_cast<double>(FedCmdDelta::kShared));
  const auto da = delta_state({1, 0, 0, 0, 1, 0}, {0, 0});
  const auto db = delta_state({1, 0, 0, 1, 0, 0}, {0, 1});
  const auto ones = delta_state({1, 1, 1, 1, 1, 1}, {1, 1});
  const double expected = fedcmd_similarity(da + ones, db + ones);  // rows (2,1,1,1).(2,1,1,1), (1,2,1,1).(2,1,1,2)
  EXPECT_NEAR(expected, (1 + 7 / std::sqrt(70.0)) / 2, 1e-12);
  const std::string saved = s.save_state();
  s.aggregate_fit(2, {update(3, 1, 1, da), update(5, 2, 2, db)});
  EXPECT_NEAR(s.similarity(3, 5), expected, 1e-12);
  // Restarted from the latest model (fc2 = 1 everywhere): the initial fc2 comes from the state.
  FedCmd t(0.1, FedCmdDistance::kW2, -1, FedCmdDelta::kInit);
  t.initialize(tiny_model(1));
  t.set_total_rounds(10);
  t.load_state(saved);
  t.aggregate_fit(2, {update(3, 1, 1, da), update(5, 2, 2, db)});
  EXPECT_NEAR(t.similarity(3, 5), expected, 1e-12);
  // A state saved without the initial layers cannot serve kInit.
  FedCmd shared = selected_fc2();
  FedCmd u(0.1, FedCmdDistance::kW2, -1, FedCmdDelta::kInit);
  u.initialize(tiny_model());
  u.set_total_rounds(10);
  EXPECT_THROW(u.load_state(shared.save_state()), std::runtime_error);
}

// k selection rounds, save, load into a fresh instance, continue: the same l* and model; and
// the same after the phase (Phi and the personalised layers persist).
TEST(FedCmdStrategy, SaveLoadResumesExactly) {
  auto rounds = [](FedCmd& s, int from, int to) {
    for (int r = from; r <= to; ++r) {
      if (s.selected_layer().empty())
        s.aggregate_fit(r, {vote_result(r % 3, static_cast<float>(r), r, {{r % 2 ? "fc2" : "fc1", 2}}),
                            vote_result(9, 0.5f, 1, {{"fc2", 3}})});
      else
        s.aggregate_fit(r, {update(r % 3, static_cast<float>(r), 1, delta_state({1, 0, 0, 0, 1, 0}, {0, 0})),
                            update(9, 2, 2, delta_state({1, 0, 0, 1, 0, 0}, {0, 1}))});
    }
  };
  FedCmd a(0.4, FedCmdDistance::kW2);
  a.initialize(tiny_model());
  a.set_total_rounds(10);  // phi = 4
  rounds(a, 1, 2);
  FedCmd b(0.4, FedCmdDistance::kW2);
  b.initialize(a.global_model());
  b.load_state(a.save_state());
  b.set_total_rounds(10);
  EXPECT_EQ(b.tally(), a.tally());
  rounds(a, 3, 6);
  rounds(b, 3, 6);
  EXPECT_EQ(a.selected_layer(), "fc2");
  EXPECT_EQ(b.selected_layer(), a.selected_layer());
  EXPECT_TRUE(b.global_model().equal(a.global_model()));
  // After the phase.
  FedCmd c(0.4, FedCmdDistance::kW2);
  c.initialize(a.global_model());
  c.load_state(a.save_state());
  c.set_total_rounds(10);
  EXPECT_EQ(c.selected_layer(), "fc2");
  EXPECT_NEAR(c.similarity(0, 9), a.similarity(0, 9), 0);
  EXPECT_NEAR(c.similarity(9, 2), 0.5, 1e-12);
  ASSERT_NE(c.personalized(9), nullptr);
  EXPECT_TRUE(c.personalized(9)->equal(*a.personalized(9)));
  rounds(a, 7, 8);
  rounds(c, 7, 8);
  EXPECT_TRUE(c.global_model().equal(a.global_model()));
  EXPECT_TRUE(c.personalized(1)->equal(*a.personalized(1)));
  EXPECT_EQ(c.save_state(), a.save_state());
  // Corrupt or foreign state is refused with a reason.
  FedCmd d(0.4, FedCmdDistance::kW2);
  d.initialize(a.global_model());
  EXPECT_THROW(d.load_state("garbage"), std::runtime_error);
  FedCmd other(0.4, FedCmdDistance::kW2, 3);  // candidates: head only, so l* = fc2 is foreign
  other.initialize(a.global_model());
  EXPECT_THROW(other.load_state(a.save_state()), std::runtime_error);
  d.load_state("");  // a fresh run: nothing stored
  EXPECT_TRUE(d.selected_layer().empty());
}

// ---- the client half, on LeNet-5 ----

TensorDataset images(int64_t n, uint64_t seed) {
  torch::manual_seed(seed);
  auto x = torch::rand({n, 1, 28, 28});
  auto y = torch::arange(n, torch::kLong).remainder(10);
  return TensorDataset{x, y, 10, {}};
}

std::unique_ptr<Model> lenet() {
  ModelSpec spec;
  spec.name = "lenet5";
  torch::manual_seed(11);
  return build_model(spec);
}

ClientTask task_for(const ModelState& model, bool selecting, int layer, FedCmdDelta delta = FedCmdDelta::kShared) {
  ClientTask t;
  t.round = 1;
  t.client_id = 0;
  t.model = model;
  t.seed = 5;
  t.config = {{"fedcmd_select", selecting ? 1 : 0}, {"fedcmd_first", 2}, {"fedcmd_layer", layer},
              {"fedcmd_distance", 0}, {"fedcmd_delta", static_cast<double>(delta)}};
  return t;
}

bool is_bn_stat(const std::string& n) {
  return n.find("running_") != std::string::npos || n.find("num_batches_tracked") != std::string::npos;
}

TEST(FedCmdClient, VotesDoNotDisturbTrainingAndBnStatisticsStayLocal) {
  auto model = lenet();
  const ModelState init = model->state();
  auto train = images(64, 1), test = images(20, 2);
  TrainOptions opt;
  opt.batch_size = 16;
  std::map<std::string, ModelState> personal;
  ClientContext ctx{*model, train, &test, opt, personal};
  FedCmd strategy(0.1, FedCmdDistance::kW2);
  auto r = create_client_algorithm(strategy.name())->fit(task_for(init, true, -1), ctx);
  ASSERT_TRUE(r.ok) << r.error;
  // 4 batches of 16 with every label present: 4 votes over fc1, fc2, classifier.
  double votes = 0;
  for (const char* g : {"fc1", "fc2", "classifier"}) votes += r.metrics.at(std::string(kFedCmdVotePrefix) + g);
  EXPECT_EQ(votes, 4);
  EXPECT_EQ(r.metrics.count(std::string(kFedCmdVotePrefix) + "conv2"), 0u);
  EXPECT_TRUE(r.tensors.empty());
  // Exactly what FedAvg's client computes from the same task: the extra forward changed nothing
  // (BatchNorm's running statistics included).
  auto model2 = lenet();
  std::map<std::string, ModelState> none;
  ClientContext ctx2{*model2, train, &test, opt, none};
  ClientTask plain = task_for(init, true, -1);
  auto ref = create_client_algorithm("fedavg")->fit(plain, ctx2);
  EXPECT_TRUE(r.model.equal(ref.model));
  EXPECT_EQ(r.metrics.at("personalized_accuracy"), ref.metrics.at("personalized_accuracy"));
  // Personal: the BatchNorm statistics only.
  ASSERT_EQ(personal.count("model"), 1u);
  for (const auto& n : personal.at("model").names()) EXPECT_TRUE(is_bn_stat(n)) << n;
  EXPECT_EQ(personal.at("model").size(), 6u);  // 2 BatchNorm layers x (mean, var, count)
  EXPECT_TRUE(personal.at("model").at("conv1.1.running_mean").equal(ref.model.at("conv1.1.running_mean")));
}

TEST(FedCmdClient, SelectedLayerNeverLeavesTheClientOnlyItsDelta) {
  auto model = lenet();
  const ModelState init = model->state();
  auto train = images(48, 3), test = images(20, 4);
  TrainOptions opt;
  opt.batch_size = 16;
  std::map<std::string, ModelState> personal;
  ClientContext ctx{*model, train, &test, opt, personal};
  FedCmd strategy(0.1, FedCmdDistance::kW2);
  auto algo = create_client_algorithm(strategy.name());
  const int fc2 = 3;  // conv1 conv2 fc1 fc2 classifier
  auto r = algo->fit(task_for(init, false, fc2), ctx);
  ASSERT_TRUE(r.ok) << r.error;
  for (const auto& n : r.model.names()) EXPECT_NE(n.rfind("fc2.", 0), 0u) << n << " was sent";
  EXPECT_EQ(r.model.size(), init.size() - 2);
  ASSERT_EQ(r.tensors.size(), 1u);
  const auto& delta = r.tensors.at(kFedCmdDeltaKey);
  EXPECT_EQ(delta.names(), (std::vector<std::string>{"fc2.0.weight", "fc2.0.bias"}));
  const auto& mine = personal.at("model");
  EXPECT_TRUE(mine.contains("fc2.0.weight"));
  EXPECT_TRUE(mine.contains("conv1.1.running_var"));
  EXPECT_FALSE(mine.contains("fc1.1.weight"));
  EXPECT_TRUE(torch::allclose(delta.at("fc2.0.weight"), mine.at("fc2.0.weight") - init.at("fc2.0.weight")));
  EXPECT_GT(delta.norm(), 0);
  EXPECT_FALSE(r.metrics.count(std::string(kFedCmdVotePrefix) + "fc2"));

  // Next round the server sends an fc2 of zeros as the shared copy: the client trains its own fc2
  // instead. The delta (kShared) is measured from the shared copy the task carries, so it is the
  // client's whole fc2 here; with kRound it is this round's steps only.
  ModelState next = init.clone();
  next.assign(r.model);
  next.assign(ModelState({{"fc2.0.weight", torch::zeros({84, 120})}, {"fc2.0.bias", torch::zeros({84})}}));
  const ModelState own = mine.clone();
  std::map<std::string, ModelState> personal_copy{{"model", mine.clone()}};
  auto r2 = algo->fit(task_for(next, false, fc2, FedCmdDelta::kShared), ctx);
  ASSERT_TRUE(r2.ok) << r2.error;
  EXPECT_TRUE(torch::allclose(r2.tensors.at(kFedCmdDeltaKey).at("fc2.0.weight"), personal.at("model").at("fc2.0.weight")));
  EXPECT_GT(personal.at("model").at("fc2.0.weight").abs().sum().item<double>(), 1.0);
  auto model3 = lenet();
  ClientContext ctx3{*model3, train, &test, opt, personal_copy};
  auto r3 = algo->fit(task_for(next, false, fc2, FedCmdDelta::kRound), ctx3);
  ASSERT_TRUE(r3.ok) << r3.error;
  const auto& trained = personal_copy.at("model").at("fc2.0.weight");
  EXPECT_TRUE(torch::allclose(r3.tensors.at(kFedCmdDeltaKey).at("fc2.0.weight"), trained - own.at("fc2.0.weight")));
  EXPECT_TRUE(torch::allclose(trained, personal.at("model").at("fc2.0.weight")));  // same training either way

  // Malformed task configuration is refused, naming the key.
  ClientTask bad = task_for(init, false, fc2);
  bad.config.erase("fedcmd_first");
  EXPECT_THROW(
      {
        try {
          algo->fit(bad, ctx);
        } catch (const std::invalid_argument& e) {
          EXPECT_NE(std::string(e.what()).find("fedcmd_first"), std::string::npos);
          throw;
        }
      },
      std::invalid_argument);
  bad = task_for(init, false, 1);  // conv2 is not a candidate
  EXPECT_THROW(algo->fit(bad, ctx), std::invalid_argument);
  bad = task_for(init, false, 9);
  EXPECT_THROW(algo->fit(bad, ctx), std::invalid_argument);
}

TEST(FedCmdSim, VariantFlagsMapToTheParametersAndAreChecked) {
  auto run = [](const std::string& args) {
    return testing_util::run_command(std::string(FL_BINARY_DIR) + "/bin/fedsim " + args + " --no-progress 2>&1");
  };
  struct Refused {
    std::string args;
    int exit_code;  // 1: fedsim's own check, 2: the command line parser's
    std::string says;
  };
  for (const auto& c : std::vector<Refused>{
           {"--strategy fedavg --fedcmd-distance mean", 1,
            "--fedcmd-distance is a parameter of fedcmd, not of the run's strategy fedavg"},
           {"--strategy fedcmd --fedcmd-distance mean --strategy-param distance=0", 1, "both given"},
           {"--strategy fedcmd --fedcmd-distance l1", 2, "--fedcmd-distance"},
           {"--strategy fedcmd --fedcmd-head softmax --strategy-param head=0", 1,
            "--fedcmd-head and --strategy-param head=... both given"},
           {"--strategy fedcmd --fedcmd-delta final", 2, "--fedcmd-delta"}}) {
    const auto r = run(c.args + " --rounds 1");
    EXPECT_EQ(r.code, c.exit_code) << c.args;
    EXPECT_NE(r.output.find(c.says), std::string::npos) << c.args << ": " << r.output;
  }
  if (!std::filesystem::exists(default_fashion_mnist_dir())) GTEST_SKIP() << "no Fashion-MNIST";
  const std::string report = ::testing::TempDir() + "/fedcmd_mean.json";
  const auto r = run("--strategy fedcmd --fedcmd-distance mean --fedcmd-delta init --fedcmd-head softmax --model lenet5 "
          "--clients 4 --rounds 2 --local-steps 2 --train-limit 800 --client-test-fraction 0.3 --report " + report);
  ASSERT_EQ(r.code, 0) << r.output;
  std::ifstream in(report);
  const auto j = nlohmann::json::parse(in);
  EXPECT_EQ(j["config"]["strategy_params"]["distance"], "mean");  // enum parameters travel by name
  EXPECT_EQ(j["config"]["strategy_params"]["delta"], "init");
  EXPECT_EQ(j["config"]["strategy_params"]["head"], "softmax");
  EXPECT_GE(j["rounds"][0]["strategy"]["fedcmd_layer"].get<double>(), 2);  // phi = 1: a candidate, fixed
  EXPECT_TRUE(j["rounds"][1]["strategy"].contains("fedcmd_phi_mean"));
}

// In fedsim: the same numbers with one worker or three (a reused replica leaks nothing from
// one virtual client to the next), and l* fixed after phi rounds.
TEST(FedCmdSim, SameNumbersWhateverTheWorkersAndLayerFixed) {
  auto run = [](int workers) {
    std::vector<VirtualClient> clients;
    for (int i = 0; i < 6; ++i) {
      VirtualClient c;
      c.train = images(32, 100 + i);
      c.test = images(10, 200 + i);
      clients.push_back(std::move(c));
    }
    ModelSpec spec;
    spec.name = "lenet5";
    FedCmd s(0.5, FedCmdDistance::kW2);
    torch::manual_seed(3);
    s.initialize(build_model(spec)->state());
    TrainOptions opt;
    opt.batch_size = 16;
    InProcessPool pool(std::move(clients), spec, c10::Device(c10::kCPU), create_client_algorithm(s.name()), opt,
                       PoolOptions{workers, 1, {}});
    EngineOptions eo;
    eo.rounds = 4;  // phi = 2
    eo.fraction = 0.5;
    eo.seed = 9;
    RoundEngine engine(s, pool, eo);
    std::vector<double> pers;
    for (int r = 1; r <= 4; ++r) pers.push_back(engine.run_round(r).personalized_accuracy);
    EXPECT_FALSE(s.selected_layer().empty());
    return std::make_tuple(pers, s.global_model().clone(), s.save_state());
  };
  auto [pa, ga, sa] = run(1);
  auto [pb, gb, sb] = run(3);
  EXPECT_EQ(pa, pb);
  EXPECT_TRUE(ga.equal(gb));
  EXPECT_EQ(sa, sb);
}

// Over gRPC: the real fedcoord and three fedclients (mutual TLS). The coordinator is killed
// (SIGKILL) after round 1, in the selection phase (phi = 2 of 4 rounds), and restarted: the
// tally survives in RocksDB, l* is fixed after round 2 and recorded, the clients keep l*
// locally and send only its delta.
TEST(FedCmdE2E, CoordinatorKilledDuringSelectionResumesAndFixesTheLayer) {
  namespace fs = std::filesystem;
  using namespace std::chrono_literals;
  using testing_util::Process;
  if (!fs::exists(default_fashion_mnist_dir())) GTEST_SKIP() << "no Fashion-MNIST";
  const std::string bin = std::string(FL_BINARY_DIR) + "/bin/";
  const std::string dir = ::testing::TempDir() + "/e2e_fedcmd", pki = dir + "/pki", db = dir + "/db",
                    partition = dir + "/partition.json";
  fs::remove_all(dir);
  fs::create_directories(dir);
  const std::string addr = "127.0.0.1:" + std::to_string(testing_util::free_port());
  ASSERT_EQ(testing_util::sh(std::string(FL_SOURCE_DIR) + "/scripts/pki.sh " + pki + " > " + dir + "/pki.log 2>&1"), 0);
  ASSERT_EQ(testing_util::sh(bin + "fedsim partition --partition dirichlet --alpha 0.5 --clients 3 --seed 1 "
                             "--train-limit 3000 --save-partition " + partition + " > " + dir + "/partition.log 2>&1"),
            0);
  auto coordinator = [&](const std::string& log) {
    return std::make_unique<Process>(
        std::vector<std::string>{bin + "fedcoord", "--listen", addr, "--tls-ca", pki + "/ca.crt", "--tls-cert",
                                 pki + "/coordinator.crt", "--tls-key", pki + "/coordinator.key", "--data-dir", db,
                                 "--run-id", "cmd", "--model", "lenet5", "--strategy", "fedcmd", "--strategy-param",
                                 "rho=0.5", "--rounds", "4", "--min-clients", "3", "--local-steps", "4",
                                 "--batch-size", "32", "--lr", "0.05", "--seed", "3", "--eval-every", "0",
                                 "--finish-grace-s", "3", "--heartbeat-ms", "500", "--liveness-timeout-s", "120"},
        dir + "/" + log);
  };
  auto client = [&](int i) {
    const std::string name = "hospital-" + std::to_string(i + 1);
    return std::make_unique<Process>(
        std::vector<std::string>{bin + "fedclient", "--coordinator", addr, "--tls-ca", pki + "/ca.crt", "--tls-cert",
                                 pki + "/" + name + ".crt", "--tls-key", pki + "/" + name + ".key", "--partition-file",
                                 partition, "--client-index", std::to_string(i), "--train-limit", "3000",
                                 "--state-dir", dir + "/" + name, "--max-backoff-s", "1", "--device", "cpu",
                                 "--threads", "1"},
        dir + "/" + name + ".log");
  };
  auto coord = coordinator("coordinator-1.log");
  std::vector<std::unique_ptr<Process>> clients;
  for (int i = 0; i < 3; ++i) clients.push_back(client(i));
  auto until = std::chrono::steady_clock::now() + 120s;
  while (coord->log().find("round 1/4") == std::string::npos && coord->running() &&
         std::chrono::steady_clock::now() < until)
    std::this_thread::sleep_for(20ms);
  ASSERT_NE(coord->log().find("round 1/4"), std::string::npos) << coord->log();
  coord->signal(SIGKILL);
  EXPECT_EQ(coord->wait_for(10s), 128 + SIGKILL);
  {  // Killed in the selection phase: one round tallied, no layer yet.
    StateStore store(db);
    ASSERT_EQ(store.rounds("cmd").size(), 1u);
    FedCmd s(0.5, FedCmdDistance::kW2);
    s.initialize(*store.load_model("cmd", 1));
    s.load_state(store.load_strategy_state("cmd"));
    EXPECT_TRUE(s.selected_layer().empty());
    int64_t tallied = 0;
    for (const auto& kv : s.tally()) tallied += kv.second;
    EXPECT_EQ(tallied, 1);
  }
  auto coord2 = coordinator("coordinator-2.log");
  ASSERT_EQ(coord2->wait_for(120s), 0) << coord2->log();
  for (auto& c : clients) EXPECT_EQ(c->wait_for(60s), 0) << c->log();
  const std::string log2 = coord2->log();
  EXPECT_NE(log2.find("resuming after round 1 of 4"), std::string::npos) << log2;
  EXPECT_NE(log2.find("selected after round 2 (2 of 2 majority rounds)"), std::string::npos) << log2;

  StateStore store(db);
  const auto rounds = store.rounds("cmd");
  ASSERT_EQ(rounds.size(), 4u);
  FedCmd s(0.5, FedCmdDistance::kW2);
  s.initialize(*store.load_model("cmd", 4));
  s.load_state(store.load_strategy_state("cmd"));
  const std::string lstar = s.selected_layer();
  ASSERT_FALSE(lstar.empty());
  const auto groups = state_groups(s.global_model());
  const double index = std::find(groups.begin(), groups.end(), lstar) - groups.begin();
  EXPECT_EQ(nlohmann::json::parse(rounds[0].json)["strategy"]["fedcmd_layer"].get<double>(), -1);
  for (int r = 1; r < 4; ++r)
    EXPECT_EQ(nlohmann::json::parse(rounds[r].json)["strategy"]["fedcmd_layer"].get<double>(), index) << r;
  // Round 4's updates: no l* weights, its delta instead; Phi in the stored state is the
  // similarity of those deltas, recomputed here.
  const auto updates = store.updates("cmd", 4);
  ASSERT_EQ(updates.size(), 3u);
  std::map<int, ModelState> deltas;
  for (const auto& u : updates) {
    v1::PayloadManifest m;
    ASSERT_TRUE(m.ParseFromString(u.manifest));
    ModelState model;
    std::map<std::string, ModelState> extras;
    unpack_payload(decode_state(m, u.payload), model, extras);
    for (const auto& n : model.names()) EXPECT_NE(n.rfind(lstar + ".", 0), 0u) << n << " was sent";
    ASSERT_EQ(extras.count(kFedCmdDeltaKey), 1u);
    EXPECT_TRUE(extras.at(kFedCmdDeltaKey).contains(lstar + ".0.weight"));
    deltas[u.client_index] = extras.at(kFedCmdDeltaKey);
  }
  ASSERT_EQ(deltas.size(), 3u);
  double phi_sum = 0;
  for (int a = 0; a < 3; ++a)
    for (int b = a + 1; b < 3; ++b) {
      EXPECT_NEAR(s.similarity(a, b), fedcmd_similarity(deltas.at(a), deltas.at(b)), 1e-12) << a << "," << b;
      phi_sum += s.similarity(a, b);
    }
  const auto r4 = nlohmann::json::parse(rounds[3].json)["strategy"];
  EXPECT_EQ(r4["fedcmd_deltas"].get<double>(), 3);
  EXPECT_NEAR(r4["fedcmd_phi_mean"].get<double>(), phi_sum / 3, 1e-12);
  for (int i = 0; i < 3; ++i) {
    const auto personal = read_safetensors(dir + "/hospital-" + std::to_string(i + 1) + "/personal/model.safetensors");
    EXPECT_TRUE(personal.contains(lstar + ".0.weight")) << i;
    EXPECT_FALSE(personal.contains("conv1.0.weight")) << i;
  }
}

}  // namespace
}  // namespace fl
