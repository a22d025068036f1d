#pragma once
// Internal: Model implementations backed by torch::nn (builtin models) and torch::jit.
// Included only by .cpp files in common/models.
#include <torch/script.h>
#include <torch/torch.h>

#include "common/models/model.h"

namespace fl {

// A model that is a sequence of named layer groups, each a torch::nn::Sequential.
class SequentialModel : public Model {
 public:
  SequentialModel(ModelSpec spec, std::vector<std::pair<std::string, torch::nn::Sequential>> groups);

  at::Tensor forward(const at::Tensor& x) override;
  std::vector<at::Tensor> forward_groups(const at::Tensor& x) override;
  std::vector<std::string> layer_groups() const override { return group_names_; }
  std::vector<at::Tensor> parameters() override { return root_->parameters(); }
  std::vector<ModelState::Entry> tensors() const override;
  void train(bool on) override { root_->train(on); }
  void to(const c10::Device& device) override { root_->to(device); }
  c10::Device device() const override;
  std::unique_ptr<Model> clone() const override;

 private:
  std::shared_ptr<torch::nn::Module> root_;
  std::vector<torch::nn::Sequential> groups_;
  std::vector<std::string> group_names_;
};

std::unique_ptr<Model> make_torchscript_model(const ModelSpec& spec);
void register_builtin_models();

}  // namespace fl
