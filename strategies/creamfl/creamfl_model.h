#pragma once
// CreamFL's encoders (issue 18): an image tower (a small CNN), a text tower (token embedding +
// GRU over the caption vocabulary, common/data/paired_captions.h), or both, each projecting to
// the shared dimension D; a classification head on clients whose private task is
// classification (image-only, text-only); the retrieval loss's learnable a, b on the two-tower
// models. Registered in the model registry, so that fedsim's --client-models and fedclient's
// --model name them and a site declares them when it registers:
//
//   name              image CNN width   text GRU (embed, hidden)   private task     tower(s)
//   creamfl-image-s   8                 -                          classification   image
//   creamfl-image-m   16                -                          classification   image
//   creamfl-text      -                 (32, 64)                   classification   text
//   creamfl-multi     8                 (32, 64)                   retrieval        image + text
//   creamfl-text-l    -                 (64, 128)                  classification   text
//   creamfl-multi-l   16                (64, 128)                  retrieval        image + text
//   creamfl-server    32                (64, 128)                  retrieval        image + text
//
// D is ModelSpec::hidden[0] when hidden has exactly one width (--hidden D), else 64.
#include <torch/torch.h>

#include <string>

#include "common/models/model.h"

namespace fl {

struct CreamArchitecture {
  int64_t image_width = 0;   // 0: no image tower
  int64_t text_embed = 0;    // 0: no text tower
  int64_t text_hidden = 0;
  bool classifier = false;   // a head D -> classes (the private task is classification)
  int64_t dim = 64;
  int64_t classes = 10;
  int64_t vocab = 0;
};

// The architecture a creamfl-* registry name stands for; std::invalid_argument for other names.
CreamArchitecture cream_architecture(const ModelSpec& spec);
bool is_cream_model_name(const std::string& name);

class CreamNet : public torch::nn::Module {
 public:
  explicit CreamNet(const CreamArchitecture& a);
  at::Tensor encode_image(const at::Tensor& x);  // [B, 1, 28, 28] float -> [B, D] (not normalised)
  at::Tensor encode_text(const at::Tensor& t);   // [B, L] int64 -> [B, D]
  at::Tensor classify(const at::Tensor& e);      // [B, D] -> [B, classes]

  CreamArchitecture arch;
  torch::nn::Conv2d conv1{nullptr}, conv2{nullptr};
  torch::nn::Linear img_fc{nullptr}, img_proj{nullptr};
  torch::nn::Embedding embed{nullptr};
  torch::nn::GRU gru{nullptr};
  torch::nn::Linear txt_proj{nullptr};
  torch::nn::Linear head{nullptr};
  // The retrieval loss's a and b ("retrieval.a", "retrieval.b"; two-tower models only).
  std::shared_ptr<torch::nn::Module> retrieval;
  at::Tensor scale_a, shift_b;
};

class CreamModel : public Model {
 public:
  explicit CreamModel(const ModelSpec& spec);
  CreamNet& net() { return *net_; }
  const CreamArchitecture& arch() const { return net_->arch; }
  bool has_image() const { return arch().image_width > 0; }
  bool has_text() const { return arch().text_embed > 0; }

  // Classification logits: images ([B, 1, 28, 28] float) through the image tower, token ids
  // ([B, L] int64) through the text tower; the model must have the tower and a head.
  at::Tensor forward(const at::Tensor& x) override;
  std::vector<at::Tensor> forward_groups(const at::Tensor& x) override { return {forward(x)}; }
  std::vector<std::string> layer_groups() const override;
  std::vector<at::Tensor> parameters() override { return net_->parameters(); }
  std::vector<ModelState::Entry> tensors() const override;
  void train(bool on) override { net_->train(on); }
  void to(const c10::Device& device) override { net_->to(device); }
  c10::Device device() const override;
  std::unique_ptr<Model> clone() const override;

 private:
  std::shared_ptr<CreamNet> net_;
};

// The model as a CreamModel, or std::invalid_argument naming `who` and the model it is.
CreamModel& as_cream_model(Model& m, const std::string& who);

}  // namespace fl
