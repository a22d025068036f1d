// Built-in models: mlp, cnn (McMahan et al. 2017), lenet5 (FedCMD experiments), resnet (small,
// CIFAR-style). Each is a sequence of named layer groups so that personalisation strategies
// can address "fc2" or "classifier" by name.
#include <stdexcept>

#include "common/models/torch_model.h"

namespace fl {
namespace nn = torch::nn;
using Groups = std::vector<std::pair<std::string, nn::Sequential>>;

SequentialModel::SequentialModel(ModelSpec spec, Groups groups)
    : Model(std::move(spec)), root_(std::make_shared<nn::Module>("model")) {
  for (auto& g : groups) {
    root_->register_module(g.first, g.second);
    groups_.push_back(g.second);
    group_names_.push_back(g.first);
  }
}

at::Tensor SequentialModel::forward(const at::Tensor& x) {
  at::Tensor h = x;
  for (auto& g : groups_) h = g->forward(h);
  return h;
}

std::vector<at::Tensor> SequentialModel::forward_groups(const at::Tensor& x) {
  std::vector<at::Tensor> outs;
  at::Tensor h = x;
  for (auto& g : groups_) {
    h = g->forward(h);
    outs.push_back(h);
  }
  return outs;
}

std::vector<ModelState::Entry> SequentialModel::tensors() const {
  std::vector<ModelState::Entry> entries;
  for (const auto& p : root_->named_parameters()) entries.push_back({p.key(), p.value()});
  for (const auto& b : root_->named_buffers()) entries.push_back({b.key(), b.value()});
  return entries;
}

c10::Device SequentialModel::device() const {
  auto params = root_->parameters();
  return params.empty() ? c10::Device(c10::kCPU) : params.front().device();
}

std::unique_ptr<Model> SequentialModel::clone() const {
  auto copy = build_model(spec_);
  copy->to(device());
  copy->load_state(state());
  return copy;
}

namespace {

int64_t flat_size(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

void require_image(const ModelSpec& spec) {
  if (spec.input_shape.size() != 3)
    throw std::invalid_argument("model '" + spec.name + "' needs input_shape [C,H,W], got " +
                                std::to_string(spec.input_shape.size()) + " dimensions");
}

std::unique_ptr<Model> make_mlp(const ModelSpec& spec) {
  Groups groups;
  int64_t in = flat_size(spec.input_shape);
  for (size_t i = 0; i < spec.hidden.size(); ++i) {
    nn::Sequential g;
    if (i == 0) g->push_back(nn::Flatten());
    g->push_back(nn::Linear(in, spec.hidden[i]));
    g->push_back(nn::ReLU());
    groups.emplace_back("fc" + std::to_string(i + 1), g);
    in = spec.hidden[i];
  }
  nn::Sequential head;
  if (spec.hidden.empty()) head->push_back(nn::Flatten());
  head->push_back(nn::Linear(in, spec.num_classes));
  groups.emplace_back("classifier", head);
  return std::make_unique<SequentialModel>(spec, std::move(groups));
}

// McMahan et al. 2017 "CNN": two 5x5 convolutions (32, 64 channels, 'same' padding) each
// followed by 2x2 max pooling, a 512-unit fully connected layer and the classifier.
// 1,663,370 parameters on 28x28x1 with 10 classes.
std::unique_ptr<Model> make_cnn(const ModelSpec& spec) {
  require_image(spec);
  const int64_t c = spec.input_shape[0], h = spec.input_shape[1] / 4, w = spec.input_shape[2] / 4;
  Groups groups;
  groups.emplace_back("conv1", nn::Sequential(nn::Conv2d(nn::Conv2dOptions(c, 32, 5).padding(2)), nn::ReLU(),
                                              nn::MaxPool2d(2)));
  groups.emplace_back("conv2", nn::Sequential(nn::Conv2d(nn::Conv2dOptions(32, 64, 5).padding(2)), nn::ReLU(),
                                              nn::MaxPool2d(2)));
  groups.emplace_back("fc1", nn::Sequential(nn::Flatten(), nn::Linear(64 * h * w, 512), nn::ReLU()));
  groups.emplace_back("classifier", nn::Sequential(nn::Linear(512, spec.num_classes)));
  return std::make_unique<SequentialModel>(spec, std::move(groups));
}

// LeNet-5 as in the FedCMD experiments: conv(1,6,5)+BN+ReLU+pool, conv(6,16,5)+BN+ReLU+pool,
// fc1 256->120, fc2 120->84, classifier 84->classes.
std::unique_ptr<Model> make_lenet5(const ModelSpec& spec) {
  require_image(spec);
  const int64_t c = spec.input_shape[0];
  const int64_t h = ((spec.input_shape[1] - 4) / 2 - 4) / 2, w = ((spec.input_shape[2] - 4) / 2 - 4) / 2;
  if (h <= 0 || w <= 0) throw std::invalid_argument("lenet5: input too small (needs at least 16x16)");
  Groups groups;
  groups.emplace_back("conv1", nn::Sequential(nn::Conv2d(nn::Conv2dOptions(c, 6, 5)), nn::BatchNorm2d(6), nn::ReLU(),
                                              nn::MaxPool2d(2)));
  groups.emplace_back("conv2", nn::Sequential(nn::Conv2d(nn::Conv2dOptions(6, 16, 5)), nn::BatchNorm2d(16),
                                              nn::ReLU(), nn::MaxPool2d(2)));
  groups.emplace_back("fc1", nn::Sequential(nn::Flatten(), nn::Linear(16 * h * w, 120), nn::ReLU()));
  groups.emplace_back("fc2", nn::Sequential(nn::Linear(120, 84), nn::ReLU()));
  groups.emplace_back("classifier", nn::Sequential(nn::Linear(84, spec.num_classes)));
  return std::make_unique<SequentialModel>(spec, std::move(groups));
}

// Pre-activation-free basic residual block (He et al. 2016) for the small ResNet.
struct BasicBlockImpl : nn::Module {
  BasicBlockImpl(int64_t in, int64_t out, int64_t stride)
      : conv1(nn::Conv2dOptions(in, out, 3).stride(stride).padding(1).bias(false)),
        bn1(out),
        conv2(nn::Conv2dOptions(out, out, 3).padding(1).bias(false)),
        bn2(out) {
    register_module("conv1", conv1);
    register_module("bn1", bn1);
    register_module("conv2", conv2);
    register_module("bn2", bn2);
    if (stride != 1 || in != out) {
      shortcut = nn::Sequential(nn::Conv2d(nn::Conv2dOptions(in, out, 1).stride(stride).bias(false)),
                                nn::BatchNorm2d(out));
      register_module("shortcut", shortcut);
    }
  }
  torch::Tensor forward(torch::Tensor x) {
    auto out = torch::relu(bn1(conv1(x)));
    out = bn2(conv2(out));
    return torch::relu(out + (shortcut.is_empty() ? x : shortcut->forward(x)));
  }
  nn::Conv2d conv1;
  nn::BatchNorm2d bn1;
  nn::Conv2d conv2;
  nn::BatchNorm2d bn2;
  nn::Sequential shortcut{nullptr};
};
TORCH_MODULE(BasicBlock);

// A ResNet-8 for 32x32 inputs: 16-channel stem, three stages of one block each (16, 32, 64
// channels), global average pooling and the classifier.
std::unique_ptr<Model> make_resnet(const ModelSpec& spec) {
  require_image(spec);
  const int64_t c = spec.input_shape[0];
  Groups groups;
  groups.emplace_back("stem", nn::Sequential(nn::Conv2d(nn::Conv2dOptions(c, 16, 3).padding(1).bias(false)),
                                             nn::BatchNorm2d(16), nn::ReLU()));
  groups.emplace_back("layer1", nn::Sequential(BasicBlock(16, 16, 1)));
  groups.emplace_back("layer2", nn::Sequential(BasicBlock(16, 32, 2)));
  groups.emplace_back("layer3", nn::Sequential(BasicBlock(32, 64, 2)));
  groups.emplace_back("classifier", nn::Sequential(nn::AdaptiveAvgPool2d(1), nn::Flatten(),
                                                   nn::Linear(64, spec.num_classes)));
  return std::make_unique<SequentialModel>(spec, std::move(groups));
}

}  // namespace

void register_builtin_models() {
  register_model("mlp", make_mlp);
  register_model("cnn", make_cnn);
  register_model("lenet5", make_lenet5);
  register_model("resnet", make_resnet);
  register_model("torchscript", make_torchscript_model);
}

}  // namespace fl
