// CreamFL: "Multimodal Federated Learning via Contrastive Representation Ensemble" (Yu et al.,
// ICLR 2023; issue 18; docs/creamfl.md). Clients of different architectures and modalities
// (image-only, text-only, image-text; creamfl_model.h) never send weights: they send
// L2-normalised representations of a public set P, and the server trains a larger two-tower
// model of its own. A round, as in the reference implementation (FLAIR-THU/CreamFL, MMFL.py):
//
//   1. configure_fit: the server trains one epoch on P with the PCME-style retrieval loss, then
//      computes G_img, G_txt (N x D, normalised) and sends them, with P, to the round's clients.
//   2. each client, E local epochs (--local-epochs) of: one epoch of its private task
//      (classification for image-only and text-only clients, retrieval for multimodal ones),
//      then one epoch over P with 0.5 * (L_intra + L_inter), tau = 0.5, against its model as it
//      was at the start of the round (its previous participation's, frozen);
//   3. it uploads its representations of P for each modality it has ("reps/img", "reps/txt");
//   4. aggregate_fit: the global-local cross-modal ensemble (weights computed in row chunks, no
//      N x N matrix), or uniform weights (weights=uniform, the ablation);
//   5. the server distils one epoch over P: kd_weight * (MSE(f_img(P), A_img) + MSE(f_txt(P),
//      A_txt)), then reports image->text and text->image R@1/5/10 on the test pairs.
//
// kd_weight = 0 leaves the clients out of the server's model: the server trained on P alone.
// The data: common/data/paired_captions.h. The server reads P and the test pairs from the
// Fashion-MNIST test file in $FASHION_MNIST_DIR (default /usr/share/datasets/fashion-mnist).
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <mutex>
#include <sstream>
#include <stdexcept>

#include "common/data/idx.h"
#include "common/data/paired_captions.h"
#include "common/engine/strategy.h"
#include "strategies/creamfl/creamfl_losses.h"
#include "strategies/creamfl/creamfl_model.h"
#include "strategies/registry.h"

namespace fl {

namespace {

namespace F = torch::nn::functional;

constexpr const char* kPublic = "public";    // task: P's images (uint8 [N, 28, 28]) and captions (int64 [N, L])
constexpr const char* kGlobal = "global";    // task: G_img, G_txt ([N, D] float)
constexpr const char* kReps = "reps";        // result: the client's representations of P, per modality
constexpr const char* kImg = "img";
constexpr const char* kTxt = "txt";
constexpr const char* kImages = "images";
constexpr const char* kTokens = "tokens";
constexpr const char* kCaptionSeed = "caption_seed";
constexpr const char* kTau = "tau";
constexpr double kTauValue = 0.5;
constexpr int64_t kChunkRows = 256;
constexpr const char* kServerModel = "creamfl-server";

at::Tensor normalized(const at::Tensor& x) { return F::normalize(x, F::NormalizeFuncOptions().dim(1)); }

std::unique_ptr<torch::optim::Optimizer> make_optimizer(const std::vector<at::Tensor>& params, const TrainOptions& o) {
  if (o.optimizer == "adam")
    return std::make_unique<torch::optim::Adam>(
        params, torch::optim::AdamOptions(o.lr).betas({o.adam_beta1, o.adam_beta2}).weight_decay(o.weight_decay));
  return std::make_unique<torch::optim::SGD>(
      params, torch::optim::SGDOptions(o.lr).momentum(o.momentum).weight_decay(o.weight_decay));
}

// Normalised representations of all of `x` by `encode`, in batches, without gradients.
template <class Encode>
at::Tensor represent(const at::Tensor& x, Encode encode, int64_t batch = 512) {
  torch::NoGradGuard no_grad;
  std::vector<at::Tensor> parts;
  for (int64_t s = 0; s < x.size(0); s += batch) parts.push_back(normalized(encode(x.narrow(0, s, std::min(batch, x.size(0) - s)))));
  return torch::cat(parts);
}

// Batches of a seeded permutation of [0, n).
std::vector<at::Tensor> batches(int64_t n, int64_t batch, uint64_t seed, const c10::Device& device) {
  auto gen = at::detail::createCPUGenerator(seed);
  const auto perm = torch::randperm(n, gen, torch::kLong).to(device);
  std::vector<at::Tensor> out;
  for (int64_t s = 0; s < n; s += batch) out.push_back(perm.narrow(0, s, std::min(batch, n - s)));
  return out;
}

// One epoch of the retrieval loss over the pairs (images [N,1,28,28] float, tokens [N, L]).
double retrieval_epoch(CreamNet& net, torch::optim::Optimizer& opt, const at::Tensor& images, const at::Tensor& tokens,
                       int64_t batch, uint64_t seed) {
  double total = 0;
  int64_t steps = 0;
  for (const auto& idx : batches(images.size(0), batch, seed, images.device())) {
    if (idx.size(0) < 2) continue;  // a lone pair has no negatives
    const auto v = normalized(net.encode_image(images.index_select(0, idx)));
    const auto t = normalized(net.encode_text(tokens.index_select(0, idx)));
    auto loss = creamfl::retrieval_loss(v, t, net.scale_a, net.shift_b);
    opt.zero_grad();
    loss.backward();
    opt.step();
    total += loss.item<double>();
    ++steps;
  }
  return steps ? total / steps : 0;
}

at::Tensor task_tensor(const ClientTask& task, const char* group, const char* name) {
  auto g = task.tensors.find(group);
  if (g == task.tensors.end() || !g->second.contains(name))
    throw std::invalid_argument(std::string("creamfl: the task carries no '") + group + "/" + name + "'");
  return g->second.at(name);
}

class CreamClient : public ClientAlgorithm {
 public:
  ClientResult fit(const ClientTask& task, ClientContext& ctx) const override {
    ClientResult result;
    result.round = task.round;
    result.client_id = task.client_id;
    auto& model = as_cream_model(ctx.model, "creamfl client");
    auto personal = ctx.personal.find("model");
    if (personal != ctx.personal.end()) ctx.model.assign_state(personal->second);
    CreamNet& net = model.net();
    const auto device = model.device();
    const int64_t dim = model.arch().dim;

    const at::Tensor pub_bytes = task_tensor(task, kPublic, kImages);
    const at::Tensor pub_tokens = task_tensor(task, kPublic, kTokens);
    const int64_t n = pub_bytes.size(0);
    if (pub_bytes.dim() != 3 || pub_bytes.scalar_type() != torch::kByte || pub_tokens.dim() != 2 ||
        pub_tokens.size(0) != n || pub_tokens.scalar_type() != torch::kLong)
      throw std::invalid_argument("creamfl: the public set is images " + c10::str(pub_bytes.sizes()) + " and captions " +
                                  c10::str(pub_tokens.sizes()) + " (want uint8 [N, 28, 28] and int64 [N, L])");
    if (pub_tokens.numel() && (pub_tokens.min().item<int64_t>() < 0 ||
                               pub_tokens.max().item<int64_t>() >= caption_vocab_size()))
      throw std::invalid_argument("creamfl: the public captions hold token ids outside the vocabulary");
    const at::Tensor g_img = task_tensor(task, kGlobal, kImg).to(device, torch::kFloat);
    const at::Tensor g_txt = task_tensor(task, kGlobal, kTxt).to(device, torch::kFloat);
    for (const auto* g : {&g_img, &g_txt})
      if (g->dim() != 2 || g->size(0) != n || g->size(1) != dim)
        throw std::invalid_argument("creamfl: the global representations are " + c10::str(g->sizes()) + ", want [" +
                                    std::to_string(n) + ", " + std::to_string(dim) + "] (this model's D is " +
                                    std::to_string(dim) + ")");
    const auto config = [&](const char* key, double def) {
      auto it = task.config.find(key);
      return it == task.config.end() ? def : it->second;
    };
    const double tau = config(kTau, kTauValue);
    const auto caption_seed = static_cast<uint64_t>(config(kCaptionSeed, 1));
    const at::Tensor p_images = bytes_to_features(pub_bytes).to(device);
    const at::Tensor p_tokens = pub_tokens.to(device);

    // The private data: images + labels; the captions of those images for text and pairs.
    const at::Tensor x = ctx.train.x.to(device);
    const at::Tensor y = ctx.train.y.to(device);
    at::Tensor tokens;
    if (model.has_text()) tokens = make_paired_set(features_to_bytes(ctx.train.x), ctx.train.y, caption_seed).tokens.to(device);

    auto old = model.clone();  // u_old: the model of the previous participation, frozen
    old->train(false);
    CreamNet& old_net = static_cast<CreamModel&>(*old).net();
    model.train(true);
    auto opt = make_optimizer(model.parameters(), ctx.train_options);
    const int64_t bs = ctx.train_options.batch_size;
    const bool multimodal = model.has_image() && model.has_text();
    double private_loss = 0, reg_loss = 0;
    int64_t samples = 0;
    uint64_t seed = task.seed;
    for (int64_t e = 0; e < ctx.train_options.epochs; ++e) {
      double sum = 0;
      int64_t steps = 0;
      if (multimodal) {
        sum = retrieval_epoch(net, *opt, x, tokens, bs, seed++);
        steps = 1;
      } else {
        for (const auto& idx : batches(x.size(0), bs, seed++, device)) {
          const auto emb = model.has_image() ? net.encode_image(x.index_select(0, idx))
                                             : net.encode_text(tokens.index_select(0, idx));
          auto loss = F::cross_entropy(net.classify(emb), y.index_select(0, idx));
          opt->zero_grad();
          loss.backward();
          opt->step();
          sum += loss.item<double>();
          ++steps;
        }
      }
      private_loss = steps ? sum / steps : 0;
      samples += x.size(0);
      // One epoch over P with the regulariser, per modality the client has.
      double rsum = 0;
      int64_t rsteps = 0;
      for (const auto& rows : batches(n, bs, seed++, device)) {
        at::Tensor loss = torch::zeros({}, g_img.options());
        if (model.has_image()) {
          const auto in = p_images.index_select(0, rows);
          at::Tensor u_old;
          {
            torch::NoGradGuard g;
            u_old = normalized(old_net.encode_image(in));
          }
          loss = loss + creamfl::regulariser(normalized(net.encode_image(in)), u_old, g_img, g_txt, rows, tau);
        }
        if (model.has_text()) {
          const auto in = p_tokens.index_select(0, rows);
          at::Tensor u_old;
          {
            torch::NoGradGuard g;
            u_old = normalized(old_net.encode_text(in));
          }
          loss = loss + creamfl::regulariser(normalized(net.encode_text(in)), u_old, g_txt, g_img, rows, tau);
        }
        opt->zero_grad();
        loss.backward();
        opt->step();
        rsum += loss.item<double>();
        ++rsteps;
      }
      reg_loss = rsteps ? rsum / rsteps : 0;
      samples += n;
    }

    model.train(false);
    ModelState reps;
    std::vector<ModelState::Entry> entries;
    if (model.has_image()) entries.push_back({kImg, represent(p_images, [&](const at::Tensor& b) { return net.encode_image(b); }).cpu()});
    if (model.has_text()) entries.push_back({kTxt, represent(p_tokens, [&](const at::Tensor& b) { return net.encode_text(b); }).cpu()});
    model.train(true);
    int64_t rep_bytes = 0;
    for (const auto& e : entries) rep_bytes += e.tensor.numel() * 4;
    result.tensors[kReps] = ModelState(std::move(entries));
    ctx.personal["model"] = model.state();  // the client's model stays here, never sent
    result.num_examples = ctx.train.size();
    result.metrics["train_loss"] = private_loss;
    result.metrics["regulariser_loss"] = reg_loss;
    result.metrics["samples"] = static_cast<double>(samples);
    result.metrics["representation_bytes"] = static_cast<double>(rep_bytes);
    result.metrics["weights_bytes"] = static_cast<double>(model.num_parameters() * 4);
    return result;
  }
};

class CreamFL : public Strategy {
 public:
  explicit CreamFL(const StrategyParams& p)
      : public_size_(static_cast<int64_t>(p.at("public_size"))),
        test_size_(static_cast<int64_t>(p.at("test_size"))),
        data_seed_(static_cast<uint64_t>(p.at("data_seed"))),
        kd_weight_(p.at("kd_weight")),
        uniform_(p.at("weights") == 1),
        server_epochs_(static_cast<int64_t>(p.at("server_epochs"))) {
    server_train_.optimizer = "adam";
    server_train_.lr = p.at("server_lr");
    server_train_.batch_size = static_cast<int64_t>(p.at("server_batch"));
  }
  std::string name() const override { return "creamfl"; }
  // The server's model is a two-tower retrieval model, not a classifier of the run's test set:
  // it is judged by retrieval recall in aggregate_fit's metrics.
  bool has_global_model() const override { return false; }

  // The run's model (a new run) or the server's saved one (a resume): creamfl-server's layout.
  void initialize(const ModelState& initial) override {
    if (!initial.contains("img_proj.weight") || !initial.contains("txt_proj.weight"))
      throw std::invalid_argument("creamfl: the run's model must be creamfl-server (--model creamfl-server), the "
                                  "server's two-tower model");
    ModelSpec spec;
    spec.name = kServerModel;
    spec.hidden = {initial.at("img_proj.weight").size(0)};
    auto m = std::make_unique<CreamModel>(spec);
    m->load_state(initial);  // names the entry when the layout differs
    server_ = std::move(m);
    dim_ = spec.hidden[0];
    global_ = server_->state();
    // One optimizer for the server's retrieval epochs and its distillation, kept across rounds
    // (the reference's engine.optimizer): distillation's small MSE gradients then take small
    // steps next to the retrieval loss's, where a fresh Adam would scale them up to full steps.
    opt_ = make_optimizer(server_->parameters(), server_train_);
  }

  // The server optimizer's moments (the model is saved apart, as the global model).
  std::string save_state() const override {
    if (!opt_) return {};
    torch::serialize::OutputArchive archive;
    opt_->save(archive);
    std::ostringstream out;
    archive.save_to(out);
    return out.str();
  }
  void load_state(const std::string& blob) override {
    if (blob.empty()) return;
    if (!opt_) throw std::invalid_argument("creamfl: strategy state before the server's model");
    std::istringstream in(blob);
    torch::serialize::InputArchive archive;
    try {
      archive.load_from(in);
      opt_->load(archive);
    } catch (const c10::Error& e) {
      throw std::invalid_argument(std::string("creamfl: the saved optimizer state cannot be read: ") + e.what_without_backtrace());
    }
  }

  std::vector<ClientTask> configure_fit(int round, const std::vector<int>& clients) override {
    load_data();
    CreamNet& net = server_->net();
    // 1. One epoch (server_epochs) of the retrieval loss on P.
    server_->train(true);
    for (int64_t e = 0; e < server_epochs_; ++e)
      last_server_loss_ = retrieval_epoch(net, *opt_, p_images_, data_.public_set.tokens, server_train_.batch_size,
                                          data_seed_ * 1000003 + static_cast<uint64_t>(round) * 101 + e);
    server_->train(false);
    g_img_ = represent(p_images_, [&](const at::Tensor& b) { return net.encode_image(b); });
    g_txt_ = represent(data_.public_set.tokens, [&](const at::Tensor& b) { return net.encode_text(b); });
    before_kd_ = evaluate();
    global_ = server_->state();
    auto tasks = Strategy::configure_fit(round, clients);
    for (auto& t : tasks) {
      t.model = ModelState();
      t.tensors[kPublic] = ModelState({{kImages, data_.public_set.images}, {kTokens, data_.public_set.tokens}});
      t.tensors[kGlobal] = ModelState({{kImg, g_img_}, {kTxt, g_txt_}});
      t.config[kCaptionSeed] = static_cast<double>(data_seed_);
      t.config[kTau] = kTauValue;
    }
    return tasks;
  }

  // The clients' models are their own and the server's is judged in aggregate_fit: no
  // federated evaluation.
  std::vector<ClientTask> configure_evaluate(int, const std::vector<int>&) override { return {}; }

  std::string check_result(const ClientTask&, const ClientResult& r) const override {
    if (!r.model.empty()) return "a model (creamfl clients keep theirs and send representations of the public set)";
    auto it = r.tensors.find(kReps);
    if (it == r.tensors.end() || it->second.empty())
      return "no representations of the public set ('reps/img' or 'reps/txt')";
    for (const auto& e : it->second.entries()) {
      if (e.name != kImg && e.name != kTxt)
        return "a representation named '" + e.name + "' (want 'img' or 'txt')";
      if (e.tensor.dim() != 2 || e.tensor.size(0) != public_size_ || (dim_ > 0 && e.tensor.size(1) != dim_) ||
          !e.tensor.is_floating_point())
        return "representations '" + e.name + "' " + c10::str(e.tensor.sizes()) + " (want float [" +
               std::to_string(public_size_) + ", " + std::to_string(dim_) + "]: the public set x the server's D)";
    }
    return "";
  }

  Metrics aggregate_fit(int round, const std::vector<ClientResult>& results) override {
    if (!server_ || !g_img_.defined()) throw std::invalid_argument("creamfl: aggregate_fit before configure_fit");
    std::vector<at::Tensor> imgs, txts;
    for (const auto& r : results) {
      if (const std::string why = check_result({}, r); !why.empty())
        throw std::invalid_argument("creamfl round " + std::to_string(round) + ": client " +
                                    std::to_string(r.client_id) + " sent " + why);
      const auto& reps = r.tensors.at(kReps);
      if (reps.contains(kImg)) imgs.push_back(normalized(reps.at(kImg).to(torch::kFloat)));
      if (reps.contains(kTxt)) txts.push_back(normalized(reps.at(kTxt).to(torch::kFloat)));
    }
    Metrics m{{"image_clients", static_cast<double>(imgs.size())}, {"text_clients", static_cast<double>(txts.size())},
              {"server_loss", last_server_loss_}};
    // 4. The ensemble: image representations weighted against G_txt, text against G_img.
    at::Tensor a_img, a_txt;
    const auto aggregate = [&](const std::vector<at::Tensor>& locals, const at::Tensor& g_other, const char* key) {
      if (locals.empty()) return at::Tensor();
      const auto w = uniform_ ? creamfl::uniform_weights(static_cast<int64_t>(locals.size()), public_size_)
                              : creamfl::ensemble_weights(locals, g_other, kChunkRows);
      m[std::string("weight_max_") + key] = std::get<0>(w.max(0)).mean().item<double>();  // 1/K: uniform
      return creamfl::ensemble(locals, w);
    };
    a_img = aggregate(imgs, g_txt_, kImg);
    a_txt = aggregate(txts, g_img_, kTxt);
    // Diagnostics: how close the clients' representations and the ensemble are to the server's
    // own, per item (mean cosine with G of the same and of the other modality; the ensemble's
    // direction and its mean norm, below 1 where the clients disagree).
    const auto closeness = [&](const std::vector<at::Tensor>& locals, const at::Tensor& a, const at::Tensor& g_same,
                               const at::Tensor& g_other, const std::string& key) {
      if (locals.empty()) return;
      double same = 0, other = 0;
      for (const auto& l : locals) {
        same += (l * g_same).sum(1).mean().item<double>();
        other += (l * g_other).sum(1).mean().item<double>();
      }
      m["client_cos_same_" + key] = same / static_cast<double>(locals.size());
      m["client_cos_other_" + key] = other / static_cast<double>(locals.size());
      m["ensemble_cos_same_" + key] = (normalized(a) * g_same).sum(1).mean().item<double>();
      m["ensemble_norm_" + key] = a.norm(2, 1).mean().item<double>();
    };
    closeness(imgs, a_img, g_img_, g_txt_, kImg);
    closeness(txts, a_txt, g_txt_, g_img_, kTxt);
    // Diagnostics: retrieval on P by the ensemble (the distillation's targets) and by the server's
    // own G, the same signature rule as the test set's.
    if (a_img.defined() && a_txt.defined()) {
      m["ensemble_rsum_public"] =
          creamfl::retrieval_recalls(a_img, a_txt, data_.public_set.signatures, kChunkRows).sum();
      m["server_rsum_public"] = creamfl::retrieval_recalls(g_img_, g_txt_, data_.public_set.signatures, kChunkRows).sum();
    }
    // 5. Distillation over P.
    if (kd_weight_ > 0 && (a_img.defined() || a_txt.defined())) {
      CreamNet& net = server_->net();
      server_->train(true);
      double total = 0;
      int64_t steps = 0;
      for (const auto& idx : batches(public_size_, server_train_.batch_size,
                                     data_seed_ * 7919 + static_cast<uint64_t>(round), c10::Device(c10::kCPU))) {
        at::Tensor loss = torch::zeros({});
        if (a_img.defined())
          loss = loss + F::mse_loss(normalized(net.encode_image(p_images_.index_select(0, idx))), a_img.index_select(0, idx));
        if (a_txt.defined())
          loss = loss + F::mse_loss(normalized(net.encode_text(data_.public_set.tokens.index_select(0, idx))),
                                    a_txt.index_select(0, idx));
        loss = loss * kd_weight_;
        opt_->zero_grad();
        loss.backward();
        opt_->step();
        total += loss.item<double>();
        ++steps;
      }
      server_->train(false);
      m["distill_loss"] = steps ? total / steps : 0;
    }
    global_ = server_->state();
    const auto r = evaluate();
    const char* ks[3] = {"1", "5", "10"};
    for (int i = 0; i < 3; ++i) {
      m[std::string("i2t_r") + ks[i]] = r.i2t[i];
      m[std::string("t2i_r") + ks[i]] = r.t2i[i];
    }
    m["rsum"] = r.sum();
    m["rsum_before_kd"] = before_kd_.sum();
    return m;
  }

 private:
  void load_data() {
    std::call_once(loaded_, [&] {
      data_ = load_paired_benchmark(default_fashion_mnist_dir(), public_size_, test_size_, data_seed_);
      p_images_ = bytes_to_features(data_.public_set.images);
      test_images_ = bytes_to_features(data_.test.images);
    });
  }

  creamfl::Recalls evaluate() {
    CreamNet& net = server_->net();
    server_->train(false);
    const auto img = represent(test_images_, [&](const at::Tensor& b) { return net.encode_image(b); });
    const auto txt = represent(data_.test.tokens, [&](const at::Tensor& b) { return net.encode_text(b); });
    return creamfl::retrieval_recalls(img, txt, data_.test.signatures, kChunkRows);
  }

  int64_t public_size_, test_size_;
  uint64_t data_seed_;
  double kd_weight_;
  bool uniform_;
  int64_t server_epochs_;
  TrainOptions server_train_;
  std::unique_ptr<CreamModel> server_;
  std::unique_ptr<torch::optim::Optimizer> opt_;
  int64_t dim_ = 0;
  std::once_flag loaded_;
  PairedBenchmark data_;
  at::Tensor p_images_, test_images_;
  at::Tensor g_img_, g_txt_;
  creamfl::Recalls before_kd_;
  double last_server_loss_ = 0;
};

// A client may join with any creamfl encoder whose D is the server's; the run's model must be
// the server's two-tower model.
std::string accepts(const ModelDeclaration& run, const ModelDeclaration& client) {
  if (run.architecture != kServerModel)
    return "strategy 'creamfl' trains the server's two-tower model: the run's model must be creamfl-server, not " +
           run.architecture;
  if (!is_cream_model_name(client.architecture))
    return "strategy 'creamfl' takes clients with a creamfl encoder (creamfl-image-s, creamfl-image-m, creamfl-text, "
           "creamfl-text-l, creamfl-multi, creamfl-multi-l), not the client's model " + client.describe();
  const TensorLayout* server_proj = run.find("img_proj.weight");
  const TensorLayout* proj = client.find("img_proj.weight");
  if (!proj) proj = client.find("txt_proj.weight");
  if (!server_proj || !proj || server_proj->shape.empty() || proj->shape.empty())
    return "strategy 'creamfl': the client's model " + client.describe() + " has no projection to the shared dimension";
  if (proj->shape[0] != server_proj->shape[0])
    return "strategy 'creamfl': the client's " + client.architecture + " projects to D = " +
           std::to_string(proj->shape[0]) + ", the server's model to D = " + std::to_string(server_proj->shape[0]);
  return "";
}

StrategySpec creamfl_spec() {
  StrategySpec s{
      "creamfl",
      "CreamFL (Yu et al. 2023): clients of any modality and architecture send representations of a public set; "
      "the server ensembles them and distils its own two-tower model",
      {ParamSpec::integer("public_size", 2000, 16, 8000, "pairs in the public set P"),
       ParamSpec::integer("test_size", 1000, 16, 2000, "pairs in the retrieval test set"),
       ParamSpec::integer("data_seed", 1, 0, 1e9, "seed of the public/test split and of the captions"),
       ParamSpec::number("kd_weight", 0.3, 0, 100, "weight of the server's distillation (0: the server trains on P alone)"),
       ParamSpec::choice("weights", {"ensemble", "uniform"},
                         "client weights per public item: the global-local cross-modal ensemble, or uniform"),
       ParamSpec::integer("server_epochs", 1, 1, 1000, "epochs of the server's retrieval training on P per round"),
       ParamSpec::number("server_lr", 1e-3, 0, 10, "the server's learning rate (Adam)", true),
       ParamSpec::integer("server_batch", 64, 2, 4096, "the server's batch size")},
      [](const StrategyParams& p) { return std::make_unique<CreamFL>(p); },
      [] { return std::make_shared<CreamClient>(); }};
  s.accepts_model = accepts;
  return s;
}

const StrategyRegistrar kCreamFL{creamfl_spec()};

}  // namespace

}  // namespace fl
