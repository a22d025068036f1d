#include <gtest/gtest.h>
#include <torch/torch.h>

#include "common/models/model.h"

namespace fl {
namespace {

int64_t count(const std::string& name, std::vector<int64_t> input = {1, 28, 28}, int64_t classes = 10) {
  ModelSpec spec;
  spec.name = name;
  spec.input_shape = std::move(input);
  spec.num_classes = classes;
  return build_model(spec)->num_parameters();
}

TEST(Models, ParameterCountsMatchThePapers) {
  // McMahan et al. 2017 CNN on 28x28x1, 10 classes.
  EXPECT_EQ(count("cnn"), 1663370);
  // LeNet-5 (FedCMD): conv 156 + bn 12 + conv 2416 + bn 32 + fc1 30840 + fc2 10164 + cls 850.
  EXPECT_EQ(count("lenet5"), 44470);
  // MLP 784-200-200-10 (McMahan et al. "2NN").
  EXPECT_EQ(count("mlp"), 199210);
  // ResNet-8 on 32x32x3: hand-counted from the block layout.
  EXPECT_EQ(count("resnet", {3, 32, 32}), 78042);
}

TEST(Models, ForwardShapesAndLayerGroups) {
  ModelSpec spec;
  spec.name = "lenet5";
  auto m = build_model(spec);
  EXPECT_EQ(m->layer_groups(), (std::vector<std::string>{"conv1", "conv2", "fc1", "fc2", "classifier"}));
  auto outs = m->forward_groups(torch::randn({3, 1, 28, 28}));
  ASSERT_EQ(outs.size(), 5u);
  EXPECT_EQ(outs[1].sizes(), (std::vector<int64_t>{3, 16, 4, 4}));
  EXPECT_EQ(outs[2].sizes(), (std::vector<int64_t>{3, 120}));
  EXPECT_EQ(outs[4].sizes(), (std::vector<int64_t>{3, 10}));
  const auto state = m->state();
  for (const auto& e : state.entries()) {
    bool grouped = false;
    for (const auto& g : m->layer_groups()) grouped |= e.name.rfind(g + ".", 0) == 0;
    EXPECT_TRUE(grouped) << e.name;
  }
  // BatchNorm buffers are part of the state.
  EXPECT_TRUE(m->state().contains("conv1.1.running_mean"));
  EXPECT_TRUE(m->state().contains("conv1.1.num_batches_tracked"));
}

TEST(Models, StateRoundTripAndCloneAreIndependent) {
  ModelSpec spec;
  spec.name = "cnn";
  torch::manual_seed(1);
  auto a = build_model(spec);
  torch::manual_seed(2);
  auto b = build_model(spec);
  EXPECT_FALSE(a->state().equal(b->state()));
  b->load_state(a->state());
  EXPECT_TRUE(a->state().equal(b->state()));
  auto c = a->clone();
  EXPECT_TRUE(c->state().equal(a->state()));
  {
    torch::NoGradGuard g;
    c->parameters()[0].add_(1.0);
  }
  EXPECT_FALSE(c->state().equal(a->state()));
  // A state of another model is refused with the offending entry named.
  ModelSpec other;
  other.name = "lenet5";
  try {
    a->load_state(build_model(other)->state());
    FAIL();
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("tensor"), std::string::npos) << e.what();
  }
}

// assign_state copies a part of a state in (a task's shared layers, a client's personal ones)
// and leaves the rest; a part that does not fit is refused before anything is copied.
TEST(Models, AssignStateCopiesAPartAndRefusesWhatDoesNotFit) {
  ModelSpec spec;
  spec.name = "mlp";
  spec.input_shape = {4};
  spec.hidden = {3};
  spec.num_classes = 2;
  torch::manual_seed(1);
  auto a = build_model(spec);
  const ModelState before = a->state();
  ASSERT_EQ(before.names(), (std::vector<std::string>{"fc1.1.weight", "fc1.1.bias", "classifier.0.weight", "classifier.0.bias"}));
  const ModelState head({{"classifier.0.weight", torch::full({2, 3}, 7.0f)}, {"classifier.0.bias", torch::full({2}, 8.0f)}});
  a->assign_state(head);
  const ModelState after = a->state();
  EXPECT_TRUE(torch::equal(after.at("classifier.0.weight"), head.at("classifier.0.weight")));
  EXPECT_TRUE(torch::equal(after.at("classifier.0.bias"), head.at("classifier.0.bias")));
  EXPECT_TRUE(torch::equal(after.at("fc1.1.weight"), before.at("fc1.1.weight")));
  EXPECT_TRUE(torch::equal(after.at("fc1.1.bias"), before.at("fc1.1.bias")));

  auto refused = [&](const ModelState& part, const std::string& says) {
    try {
      a->assign_state(part);
      ADD_FAILURE() << "no error for " << says;
    } catch (const std::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find(says), std::string::npos) << e.what();
    }
    EXPECT_TRUE(a->state().equal(after)) << "a refused part changed the model: " << says;
  };
  refused(ModelState({{"classifier.0.bias", torch::zeros({2})}, {"tail.weight", torch::zeros({2})}}),
          "assign_state(mlp): tensor 'tail.weight' is not one of the model's");
  refused(ModelState({{"classifier.0.bias", torch::zeros({2})}, {"fc1.1.bias", torch::zeros({4})}}),
          "tensor 'fc1.1.bias' has shape [4] Float, expected [3] Float");
  refused(ModelState({{"classifier.0.bias", torch::zeros({2}, torch::kDouble)}}), "has shape [2] Double, expected [2] Float");
}

TEST(Models, UnknownModelAndBadSpecAreErrors) {
  ModelSpec spec;
  spec.name = "transformer9000";
  EXPECT_THROW(build_model(spec), std::invalid_argument);
  spec.name = "cnn";
  spec.input_shape = {784};
  EXPECT_THROW(build_model(spec), std::invalid_argument);
  spec.name = "torchscript";
  spec.path = "/nonexistent/model.pt";
  EXPECT_THROW(build_model(spec), std::runtime_error);
}

// A TorchScript module (Python's torch.jit.save format, written here from C++ since both share
// the serialisation) loads, exposes its layer groups and trains.
TEST(Models, TorchScriptModelLoadsAndTrains) {
  torch::jit::Module m("Net");
  m.register_parameter("w", torch::randn({4, 2}), false);
  m.register_parameter("b", torch::zeros({2}), false);
  m.define(R"(
    def forward(self, x):
        return torch.matmul(x.flatten(1), self.w) + self.b
  )");
  const std::string path = ::testing::TempDir() + "/tiny_script.pt";
  m.save(path);
  ModelSpec spec;
  spec.name = "torchscript";
  spec.path = path;
  spec.input_shape = {4};
  spec.num_classes = 2;
  auto model = build_model(spec);
  EXPECT_EQ(model->num_parameters(), 10);
  auto x = torch::randn({8, 4});
  auto y = torch::randint(0, 2, {8}, torch::kLong);
  auto before = model->state();
  auto loss = torch::nn::functional::cross_entropy(model->forward(x), y);
  loss.backward();
  ASSERT_TRUE(model->parameters()[0].grad().defined());
  {
    torch::NoGradGuard g;
    for (auto& p : model->parameters()) p.sub_(0.1 * p.grad());
  }
  EXPECT_FALSE(model->state().equal(before));
  auto copy = model->clone();
  EXPECT_TRUE(copy->state().equal(model->state()));
}

}  // namespace
}  // namespace fl
