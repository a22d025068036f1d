// TorchScript models: researchers define a model in Python, save it with
// torch.jit.script(m).save("m.pt"), and train it here like any built-in model.
#include <stdexcept>

#include "common/models/torch_model.h"

namespace fl {
namespace {

class TorchScriptModel : public Model {
 public:
  TorchScriptModel(ModelSpec spec, torch::jit::Module module) : Model(std::move(spec)), module_(std::move(module)) {
    for (const auto& child : module_.named_children()) {
      // Only children that own tensors are layer groups (activations, pooling are not).
      if (child.value.parameters().size() > 0 || child.value.buffers().size() > 0) groups_.push_back(child.name);
    }
    has_forward_groups_ = module_.find_method("forward_groups").has_value();
  }

  at::Tensor forward(const at::Tensor& x) override { return module_.forward({x}).toTensor(); }

  std::vector<at::Tensor> forward_groups(const at::Tensor& x) override {
    // A scripted model may expose `forward_groups(x) -> List[Tensor]`; otherwise only the
    // logits are known.
    if (has_forward_groups_) return module_.get_method("forward_groups")({x}).toTensorVector();
    return {forward(x)};
  }

  std::vector<std::string> layer_groups() const override { return groups_; }

  std::vector<at::Tensor> parameters() override {
    std::vector<at::Tensor> out;
    for (const auto& p : module_.parameters()) out.push_back(p);
    return out;
  }

  std::vector<ModelState::Entry> tensors() const override {
    std::vector<ModelState::Entry> entries;
    for (const auto& p : module_.named_parameters(true)) entries.push_back({p.name, p.value});
    for (const auto& b : module_.named_buffers(true)) entries.push_back({b.name, b.value});
    return entries;
  }

  void train(bool on) override { module_.train(on); }
  void to(const c10::Device& device) override { module_.to(device); }
  c10::Device device() const override {
    for (const auto& p : module_.parameters()) return p.device();
    return c10::Device(c10::kCPU);
  }
  std::unique_ptr<Model> clone() const override {
    return std::make_unique<TorchScriptModel>(spec_, module_.deepcopy());
  }

 private:
  torch::jit::Module module_;
  std::vector<std::string> groups_;
  bool has_forward_groups_ = false;
};

}  // namespace

std::unique_ptr<Model> make_torchscript_model(const ModelSpec& spec) {
  if (spec.path.empty()) throw std::invalid_argument("model 'torchscript' needs a file path (--model-path)");
  torch::jit::Module module;
  try {
    module = torch::jit::load(spec.path);
  } catch (const c10::Error& e) {
    throw std::runtime_error("cannot load TorchScript model '" + spec.path + "': " + e.what_without_backtrace());
  }
  for (const auto& p : module.parameters()) p.set_requires_grad(true);
  return std::make_unique<TorchScriptModel>(spec, std::move(module));
}

}  // namespace fl
