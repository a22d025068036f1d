// Mixed client models: what a client declares (ModelDeclaration: JSON and wire forms, their
// validation), which declarations a strategy takes, FedDistill's two halves (per-label logits
// aggregated exactly; distillation pulling a client's logits towards the federation's), and
// fedsim runs that mix cnn and mlp clients.
#include <gtest/gtest.h>

#include "tiny_federation.h"
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>

#include "common/core/device.h"
#include "common/data/idx.h"
#include "common/models/model.h"
#include "common/models/model_declaration.h"
#include "common/net/codec.h"
#include "expect_error.h"
#include "process_util.h"
#include "strategies/registry.h"

namespace {

using namespace fl;

// `expr` must throw E whose message contains `needle`.
#define EXPECT_ERROR_CONTAINS(expr, E, needle) \
  fl::testing_util::expect_error_of<E>([&] { (void)(expr); }, std::string(needle))

ModelSpec spec_of(const std::string& name, std::vector<int64_t> hidden = {16}) {
  ModelSpec s;
  s.name = name;
  s.input_shape = {1, 28, 28};
  s.num_classes = 10;
  s.hidden = std::move(hidden);
  return s;
}

ModelDeclaration declared(const std::string& name, std::vector<int64_t> hidden = {16}) {
  return ModelDeclaration::of(*build_model(spec_of(name, std::move(hidden))));
}

TEST(ModelDeclaration, JsonAndWireFormsRoundTripAndBadOnesAreNamed) {
  const auto mlp = declared("mlp", {16, 8});
  EXPECT_EQ(mlp.architecture, "mlp");
  EXPECT_EQ(mlp.hidden, (std::vector<int64_t>{16, 8}));
  ASSERT_EQ(mlp.layout.size(), 6u);  // three linear layers: weight and bias each
  EXPECT_EQ(mlp.layout[0].shape, (std::vector<int64_t>{16, 784}));
  EXPECT_EQ(mlp.describe(), "mlp [16, 8] (6 tensors, 12,786 values)");

  const auto back = ModelDeclaration::from_json(nlohmann::json::parse(mlp.to_json().dump()));
  EXPECT_EQ(back.layout_difference(mlp), "");
  EXPECT_EQ(back.hidden, mlp.hidden);
  v1::ModelDeclaration wire;
  declaration_to_wire(mlp, &wire);
  EXPECT_EQ(wire.layout(0).dtype(), v1::DTYPE_F32);
  EXPECT_EQ(declaration_from_wire(wire).layout_difference(mlp), "");

  // The first difference is named, entry and both sides.
  const auto cnn = declared("cnn");
  const std::string d = mlp.layout_difference(cnn);
  EXPECT_NE(d.find("entry 0: '"), std::string::npos) << d;
  EXPECT_NE(d.find("float32 [16, 784] where the other has"), std::string::npos) << d;

  auto twice = wire;
  *twice.add_layout() = wire.layout(0);
  EXPECT_ERROR_CONTAINS(declaration_from_wire(twice), std::invalid_argument, "appears twice in the layout");
  auto unnamed = wire;
  unnamed.mutable_layout(1)->clear_name();
  EXPECT_ERROR_CONTAINS(declaration_from_wire(unnamed), std::invalid_argument, "layout entry 1 has no name");
  auto no_dtype = wire;
  no_dtype.mutable_layout(2)->set_dtype(v1::DTYPE_UNSPECIFIED);
  EXPECT_ERROR_CONTAINS(declaration_from_wire(no_dtype), std::invalid_argument, "unknown dtype 0");
  auto negative = wire;
  negative.mutable_layout(0)->set_shape(0, -3);
  EXPECT_ERROR_CONTAINS(declaration_from_wire(negative), std::invalid_argument, "negative dimension");
  v1::ModelDeclaration empty;
  empty.set_architecture("mlp");
  EXPECT_ERROR_CONTAINS(declaration_from_wire(empty), std::invalid_argument, "no tensors in its layout");
  auto j = mlp.to_json();
  j["layout"][0]["dtype"] = "float99";
  EXPECT_ERROR_CONTAINS(ModelDeclaration::from_json(j), std::invalid_argument, "unknown dtype 'float99'");
  j = mlp.to_json();
  j.erase("architecture");
  EXPECT_ERROR_CONTAINS(ModelDeclaration::from_json(j), std::invalid_argument, "architecture");
}

TEST(StrategyRegistry, TheStrategyDecidesWhichClientModelsJoin) {
  const auto cnn = declared("cnn"), mlp = declared("mlp"), mlp_wide = declared("mlp", {32});
  // Strategies that combine models take the run's model only, and say which entry differs.
  EXPECT_EQ(check_client_model("fedavg", cnn, cnn), "");
  const std::string why = check_client_model("fedavg", cnn, mlp);
  EXPECT_NE(why.find("strategy 'fedavg' combines the clients' models, so every client must train the run's model cnn"),
            std::string::npos) << why;
  EXPECT_NE(why.find("the client's model mlp [16]"), std::string::npos) << why;
  EXPECT_NE(check_client_model("scaffold", mlp, mlp_wide).find("entry 0"), std::string::npos);
  // FedDistill exchanges logits only: any architecture joins.
  EXPECT_EQ(check_client_model("feddistill", cnn, mlp), "");
  EXPECT_EQ(check_client_model("feddistill", mlp, mlp_wide), "");
}

// Client k's per-label logit sums and counts, as its ClientAlgorithm sends them.
ClientResult logits_result(int client, at::Tensor sums, at::Tensor counts) {
  ClientResult r;
  r.client_id = client;
  r.num_examples = counts.sum().item<int64_t>();
  r.tensors["logits"] = ModelState({{"sums", sums}, {"counts", counts}});
  return r;
}

TEST(FedDistill, ServerAveragesEachLabelsLogitsOverTheClientsExamples) {
  auto s = create_strategy("feddistill", {{"lambda", 0.5}});
  s->initialize(build_model(spec_of("cnn"))->state());
  EXPECT_FALSE(s->has_global_model());
  EXPECT_TRUE(s->global_model().empty());  // the run's model is nobody's: nothing is shared yet
  auto first = s->configure_fit(1, {0, 1});
  ASSERT_EQ(first.size(), 2u);
  EXPECT_TRUE(first[0].model.empty());
  EXPECT_TRUE(first[0].tensors.empty());
  EXPECT_EQ(first[0].config.at("lambda"), 0.5);
  EXPECT_EQ(first[0].encoding, "fp32");

  // Three labels: client 0 saw labels 0 (2 examples) and 1 (1), client 1 label 0 (1); nobody label 2.
  auto a = logits_result(0, torch::tensor({2.f, 4.f, 0.f, 1.f, 1.f, 1.f, 0.f, 0.f, 0.f}).view({3, 3}),
                         torch::tensor({2, 1, 0}, torch::kLong));
  auto b = logits_result(1, torch::tensor({4.f, 0.f, 3.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f}).view({3, 3}),
                         torch::tensor({1, 0, 0}, torch::kLong));
  const auto m = s->aggregate_fit(1, {a, b});
  EXPECT_EQ(m.at("labels"), 2);
  const auto& g = s->global_model();
  EXPECT_TRUE(g.at("mean_logits").allclose(
      torch::tensor({2.f, 4.f / 3, 1.f, 1.f, 1.f, 1.f, 0.f, 0.f, 0.f}).view({3, 3})));
  EXPECT_TRUE(g.at("label_counts").equal(torch::tensor({3, 1, 0}, torch::kLong)));
  // Round 2's tasks carry them; evaluation tasks carry nothing (each client evaluates its own).
  auto second = s->configure_fit(2, {1});
  EXPECT_TRUE(second[0].tensors.at("logits").equal(g));
  EXPECT_TRUE(s->configure_evaluate(2, {0})[0].model.empty());

  // A client whose model has another number of outputs is named.
  auto c = logits_result(2, torch::zeros({4, 4}), torch::ones({4}, torch::kLong));
  EXPECT_ERROR_CONTAINS(s->aggregate_fit(2, {a, c}), std::invalid_argument, "client 2's model has 4 outputs");
  ClientResult none;
  none.client_id = 5;
  EXPECT_ERROR_CONTAINS(s->aggregate_fit(2, {none}), std::invalid_argument, "client 5 sent no per-label logits");
  // A resumed run gets its logits back.
  auto resumed = create_strategy("feddistill");
  resumed->initialize(g);
  EXPECT_TRUE(resumed->global_model().equal(g));
}

// A small synthetic task: 3 classes, 4 features, 60 examples.
TensorDataset synthetic(uint64_t seed) {
  auto gen = at::detail::createCPUGenerator(seed);
  TensorDataset d;
  d.y = torch::arange(60, torch::kLong).remainder(3);
  d.x = torch::randn({60, 4}, gen) * 0.5 + 2 * (d.y.unsqueeze(1).to(torch::kFloat) - 1);  // well apart
  d.num_classes = 3;
  return d;
}

ModelSpec tiny_mlp() { return fl::testing_util::tiny_mlp({32}); }

TEST(FedDistill, ClientKeepsItsModelSendsLogitsAndDistilsTowardsTheFederations) {
  const auto data = synthetic(1);
  auto algo = create_client_algorithm("feddistill");
  TrainOptions opt;
  opt.epochs = 30;
  opt.batch_size = 10;
  opt.lr = 0.05;
  // Round 1: no federation logits yet.
  seed_everything(4);
  auto model = build_model(tiny_mlp());
  std::map<std::string, ModelState> personal;
  ClientContext ctx{*model, data, nullptr, opt, personal};
  ClientTask t;
  t.round = 1;
  auto r = algo->run(t, ctx);
  ASSERT_TRUE(r.ok) << r.error;
  EXPECT_TRUE(r.model.empty());  // weights never leave the client
  ASSERT_TRUE(personal.count("model"));
  EXPECT_TRUE(personal.at("model").equal(model->state()));
  const auto& logits = r.tensors.at("logits");
  EXPECT_EQ(logits.at("sums").sizes(), (std::vector<int64_t>{3, 3}));
  EXPECT_TRUE(logits.at("counts").equal(torch::tensor({20, 20, 20}, torch::kLong)));
  {
    torch::NoGradGuard g;
    model->train(false);
    auto out = model->forward(data.x);
    auto want = torch::zeros({3, 3}).index_add_(0, data.y, out);
    EXPECT_TRUE(logits.at("sums").allclose(want, 1e-4, 1e-4));
  }

  // Round 2 from the same start, with a federation that puts a third of each label's mass on
  // the next label (CE alone drives it to zero): the larger lambda, the closer the client's
  // per-label distribution ends up to the federation's.
  const auto target = torch::tensor({2.f, 1.5f, -3.f, -3.f, 2.f, 1.5f, 1.5f, -3.f, 2.f}).view({3, 3});
  auto distance_after = [&](double lambda) {
    std::map<std::string, ModelState> mine = personal;
    auto m = build_model(tiny_mlp());
    ClientContext c{*m, data, nullptr, opt, mine};
    ClientTask task;
    task.round = 2;
    task.config["lambda"] = lambda;
    task.tensors["logits"] = ModelState({{"mean_logits", target}, {"label_counts", torch::tensor({20, 20, 20}, torch::kLong)}});
    auto res = algo->run(task, c);
    EXPECT_TRUE(res.ok) << res.error;
    const auto& l = res.tensors.at("logits");
    const auto mean = l.at("sums") / l.at("counts").unsqueeze(1).to(torch::kFloat);
    return (torch::softmax(mean, 1) - torch::softmax(target, 1)).abs().sum().item<double>();
  };
  const double none = distance_after(0), some = distance_after(1), more = distance_after(5);
  EXPECT_LT(some, none) << "lambda 0: " << none << ", lambda 1: " << some;
  EXPECT_LT(more, some) << "lambda 1: " << some << ", lambda 5: " << more;
  EXPECT_LT(more, 0.3 * none) << "lambda 0: " << none << ", lambda 5: " << more;
}

// ---- fedsim: mixed architectures in one simulation

fl::testing_util::CommandResult fedsim(const std::string& args) {
  return fl::testing_util::run_command(std::string(FL_BINARY_DIR) + "/bin/fedsim " + args + " --no-progress 2>&1");
}

std::string tmp(const std::string& name) { return ::testing::TempDir() + "/mixed_" + name; }

nlohmann::json read_json(const std::string& path) {
  std::ifstream in(path);
  return nlohmann::json::parse(in);
}

TEST(FedsimMixedModels, CnnAndMlpClientsLearnUnderFedDistillWhateverTheWorkers) {
  if (!std::filesystem::exists(default_fashion_mnist_dir())) GTEST_SKIP() << "no Fashion-MNIST";
  const std::string common = "--strategy feddistill --model cnn --client-models cnn,mlp --hidden 32 --clients 4 "
                             "--rounds 3 --local-epochs 1 --batch-size 32 --lr 0.05 --momentum 0.9 --train-limit 2400 "
                             "--partition dirichlet --alpha 1 --client-test-fraction 0.25 --fraction-evaluate 1 --seed 5 ";
  auto r = fedsim(common + "--workers 1 --report " + tmp("fd1.json"));
  ASSERT_EQ(r.code, 0) << r.output;
  auto r2 = fedsim(common + "--workers 2 --report " + tmp("fd2.json"));
  ASSERT_EQ(r2.code, 0) << r2.output;
  const auto a = read_json(tmp("fd1.json")), b = read_json(tmp("fd2.json"));
  EXPECT_EQ(a["config"]["client_models"], nlohmann::json({"cnn", "mlp"}));
  EXPECT_TRUE(a["final"]["global_accuracy"].is_null());  // no global model to evaluate
  ASSERT_EQ(a["rounds"].size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    const auto& fe = a["rounds"][i]["federated_evaluation"];
    EXPECT_EQ(fe["clients"], 4);
    // A new client's weights are its architecture's, not those a worker's replica held last.
    EXPECT_EQ(fe, b["rounds"][i]["federated_evaluation"]) << "round " << i + 1;
    EXPECT_EQ(a["rounds"][i]["loss"], b["rounds"][i]["loss"]);
  }
  // Each client's own model learns across rounds.
  EXPECT_GT(a["rounds"][2]["federated_evaluation"]["accuracy"].get<double>(), 0.6) << r.output;
  EXPECT_GT(a["rounds"][2]["federated_evaluation"]["accuracy"].get<double>(),
            a["rounds"][0]["federated_evaluation"]["accuracy"].get<double>());
}

TEST(FedsimMixedModels, AStrategyThatAveragesModelsRefusesMixedOnesBeforeRoundOne) {
  if (!std::filesystem::exists(default_fashion_mnist_dir())) GTEST_SKIP() << "no Fashion-MNIST";
  auto r = fedsim("--strategy fedavg --model cnn --client-models cnn,mlp --clients 2 --rounds 1 --train-limit 200");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("--client-models: strategy 'fedavg' combines the clients' models"), std::string::npos)
      << r.output;
  EXPECT_EQ(r.output.find("round 1"), std::string::npos) << r.output;
}

}  // namespace
