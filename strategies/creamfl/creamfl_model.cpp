#include "strategies/creamfl/creamfl_model.h"

#include <map>
#include <stdexcept>

#include "common/data/paired_captions.h"

namespace fl {

namespace {

const std::map<std::string, CreamArchitecture>& architectures() {
  static const std::map<std::string, CreamArchitecture> a = [] {
    std::map<std::string, CreamArchitecture> m;
    CreamArchitecture image_s;
    image_s.image_width = 8;
    image_s.classifier = true;
    m["creamfl-image-s"] = image_s;
    CreamArchitecture image_m = image_s;
    image_m.image_width = 16;
    m["creamfl-image-m"] = image_m;
    CreamArchitecture text;
    text.text_embed = 32;
    text.text_hidden = 64;
    text.classifier = true;
    m["creamfl-text"] = text;
    CreamArchitecture multi;
    multi.image_width = 8;
    multi.text_embed = 32;
    multi.text_hidden = 64;
    m["creamfl-multi"] = multi;
    // Larger clients (still well under the server): the image tower of creamfl-image-m and the
    // server's text tower (docs/results.md "CreamFL": clients with real encoders).
    CreamArchitecture text_l = text;
    text_l.text_embed = 64;
    text_l.text_hidden = 128;
    m["creamfl-text-l"] = text_l;
    CreamArchitecture multi_l = multi;
    multi_l.image_width = 16;
    multi_l.text_embed = 64;
    multi_l.text_hidden = 128;
    m["creamfl-multi-l"] = multi_l;
    CreamArchitecture server;
    server.image_width = 32;
    server.text_embed = 64;
    server.text_hidden = 128;
    m["creamfl-server"] = server;
    return m;
  }();
  return a;
}

std::unique_ptr<Model> make_cream(const ModelSpec& spec) { return std::make_unique<CreamModel>(spec); }

// Registered with the model registry when the strategies library is loaded (linked whole).
const bool kRegistered = [] {
  for (const auto& kv : architectures()) register_model(kv.first, make_cream);
  return true;
}();

}  // namespace

bool is_cream_model_name(const std::string& name) { return architectures().count(name) > 0; }

CreamArchitecture cream_architecture(const ModelSpec& spec) {
  auto it = architectures().find(spec.name);
  if (it == architectures().end()) throw std::invalid_argument("'" + spec.name + "' is not a creamfl model");
  CreamArchitecture a = it->second;
  a.dim = spec.hidden.size() == 1 ? spec.hidden[0] : 64;
  if (a.dim < 1 || a.dim > 4096)
    throw std::invalid_argument(spec.name + ": the shared dimension D (--hidden) must be in [1, 4096], got " +
                                std::to_string(a.dim));
  a.classes = spec.num_classes;
  a.vocab = caption_vocab_size();
  return a;
}

CreamNet::CreamNet(const CreamArchitecture& a) : arch(a) {
  namespace nn = torch::nn;
  if (a.image_width > 0) {
    const int64_t w = a.image_width;
    conv1 = register_module("conv1", nn::Conv2d(nn::Conv2dOptions(1, w, 3).padding(1)));
    conv2 = register_module("conv2", nn::Conv2d(nn::Conv2dOptions(w, 2 * w, 3).padding(1)));
    img_fc = register_module("img_fc", nn::Linear(2 * w * 7 * 7, 8 * w));
    img_proj = register_module("img_proj", nn::Linear(8 * w, a.dim));
  }
  if (a.text_embed > 0) {
    embed = register_module("embed", nn::Embedding(a.vocab, a.text_embed));
    gru = register_module("gru", nn::GRU(nn::GRUOptions(a.text_embed, a.text_hidden).batch_first(true)));
    txt_proj = register_module("txt_proj", nn::Linear(a.text_hidden, a.dim));
  }
  if (a.classifier) head = register_module("head", nn::Linear(a.dim, a.classes));
  if (a.image_width > 0 && a.text_embed > 0) {
    retrieval = register_module("retrieval", std::make_shared<nn::Module>());
    scale_a = retrieval->register_parameter("a", torch::full({1}, 15.0));
    shift_b = retrieval->register_parameter("b", torch::full({1}, 15.0));
  }
}

at::Tensor CreamNet::encode_image(const at::Tensor& x) {
  if (!conv1) throw std::invalid_argument("creamfl: this model has no image tower");
  auto h = torch::max_pool2d(torch::relu(conv1->forward(x)), 2);
  h = torch::max_pool2d(torch::relu(conv2->forward(h)), 2);
  h = torch::relu(img_fc->forward(h.flatten(1)));
  return img_proj->forward(h);
}

at::Tensor CreamNet::encode_text(const at::Tensor& t) {
  if (!embed) throw std::invalid_argument("creamfl: this model has no text tower");
  auto out = gru->forward(embed->forward(t));
  return txt_proj->forward(std::get<1>(out).select(0, 0));  // the last layer's final hidden state
}

at::Tensor CreamNet::classify(const at::Tensor& e) {
  if (!head) throw std::invalid_argument("creamfl: this model has no classification head");
  return head->forward(e);
}

CreamModel::CreamModel(const ModelSpec& spec) : Model(spec), net_(std::make_shared<CreamNet>(cream_architecture(spec))) {}

at::Tensor CreamModel::forward(const at::Tensor& x) {
  if (x.scalar_type() == torch::kLong) return net_->classify(net_->encode_text(x));
  return net_->classify(net_->encode_image(x));
}

std::vector<std::string> CreamModel::layer_groups() const {
  std::vector<std::string> g;
  for (const auto& m : net_->named_children()) g.push_back(m.key());
  return g;
}

std::vector<ModelState::Entry> CreamModel::tensors() const {
  std::vector<ModelState::Entry> entries;
  for (const auto& p : net_->named_parameters()) entries.push_back({p.key(), p.value()});
  for (const auto& b : net_->named_buffers()) entries.push_back({b.key(), b.value()});
  return entries;
}

c10::Device CreamModel::device() const {
  auto params = net_->parameters();
  return params.empty() ? c10::Device(c10::kCPU) : params.front().device();
}

std::unique_ptr<Model> CreamModel::clone() const {
  auto copy = std::make_unique<CreamModel>(spec_);
  copy->to(device());
  copy->load_state(state());
  return copy;
}

CreamModel& as_cream_model(Model& m, const std::string& who) {
  auto* c = dynamic_cast<CreamModel*>(&m);
  if (!c)
    throw std::invalid_argument(who + ": the model '" + m.spec().name +
                                "' is not a creamfl model (creamfl-image-s, creamfl-image-m, creamfl-text, "
                                "creamfl-text-l, creamfl-multi, creamfl-multi-l, creamfl-server)");
  return *c;
}

}  // namespace fl
