#pragma once
// Model: what the trainer, the strategies and the transports need from a neural network,
// independent of whether it was built in C++ (torch::nn) or loaded from TorchScript.
#include "common/core/model_state.h"

#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace fl {

struct ModelSpec {
  std::string name = "cnn";                     // registry key
  std::vector<int64_t> input_shape{1, 28, 28};  // one example, without the batch dimension
  int64_t num_classes = 10;
  std::vector<int64_t> hidden{200, 200};        // mlp hidden widths
  std::string path;                             // torchscript: file saved by torch.jit.save
};

class Model {
 public:
  explicit Model(ModelSpec spec) : spec_(std::move(spec)) {}
  virtual ~Model() = default;

  virtual at::Tensor forward(const at::Tensor& x) = 0;
  // The output after each layer group, in order; the last one is the logits. Strategies that
  // reason about layers (FedCMD, FedPer) use it together with layer_groups().
  virtual std::vector<at::Tensor> forward_groups(const at::Tensor& x) = 0;
  // Names of the top-level layer groups in forward order; every state entry's name starts
  // with "<group>.".
  virtual std::vector<std::string> layer_groups() const = 0;

  virtual std::vector<at::Tensor> parameters() = 0;  // trainable tensors, in state order
  // The model's own parameters and buffers, in state order (named as in PyTorch's state_dict):
  // no copy, so writing into them changes the model.
  virtual std::vector<ModelState::Entry> tensors() const = 0;
  // A copy of all parameters and buffers: tensors() packed into one buffer.
  ModelState state() const;
  // Copies values in; names, shapes and dtypes must match exactly (the error names the entry).
  void load_state(const ModelState& state);
  // Copies the entries of `part` in, leaving the others as they are: a task's shared layers,
  // a client's personal ones. Every name must be one of the model's, with its shape and dtype
  // (std::invalid_argument naming the entry); one copy, no temporary state.
  void assign_state(const ModelState& part);
  virtual void train(bool on = true) = 0;
  virtual void to(const c10::Device& device) = 0;
  virtual c10::Device device() const = 0;
  virtual std::unique_ptr<Model> clone() const = 0;

  const ModelSpec& spec() const { return spec_; }
  int64_t num_parameters();

 protected:
  ModelSpec spec_;
};

using ModelFactory = std::function<std::unique_ptr<Model>(const ModelSpec&)>;

// Registry of model builders by name: mlp, cnn, lenet5, resnet, torchscript are built in.
void register_model(const std::string& name, ModelFactory factory);
std::unique_ptr<Model> build_model(const ModelSpec& spec);
std::vector<std::string> registered_models();

}  // namespace fl
