#include "strategies/creamfl/creamfl_losses.h"

#include <torch/torch.h>

#include <stdexcept>
#include <string>

namespace fl::creamfl {

namespace {

void require_rows(const at::Tensor& t, int64_t n, int64_t d, const char* what) {
  if (t.dim() != 2 || t.size(0) != n || t.size(1) != d)
    throw std::invalid_argument(std::string("creamfl: ") + what + " is " + c10::str(t.sizes()) + ", want [" +
                                std::to_string(n) + ", " + std::to_string(d) + "]");
}

}  // namespace

at::Tensor retrieval_loss(const at::Tensor& v, const at::Tensor& t, const at::Tensor& a, const at::Tensor& b) {
  if (v.dim() != 2) throw std::invalid_argument("creamfl: retrieval loss wants [B, D] embeddings");
  require_rows(t, v.size(0), v.size(1), "the text embeddings");
  const auto d = torch::cdist(v, t);
  const auto s = -a * d + b;
  const auto m = torch::eye(v.size(0), v.options()) * 2 - 1;
  return torch::softplus(-2 * m * s).sum();
}

at::Tensor regulariser(const at::Tensor& u, const at::Tensor& u_old, const at::Tensor& g_same,
                       const at::Tensor& g_other, const at::Tensor& rows, double tau) {
  if (u.dim() != 2 || g_same.dim() != 2) throw std::invalid_argument("creamfl: regulariser wants [B, D] and [N, D]");
  const int64_t bsz = u.size(0), d = u.size(1), n = g_same.size(0);
  require_rows(u_old, bsz, d, "u_old");
  require_rows(g_same, n, d, "the global representations (same modality)");
  require_rows(g_other, n, d, "the global representations (other modality)");
  const auto inter = torch::nn::functional::cross_entropy(torch::mm(u, g_other.t()) / tau, rows);
  const auto pos = (u * g_same.index_select(0, rows)).sum(1);
  const auto neg = (u * u_old).sum(1);
  const auto intra = torch::nn::functional::cross_entropy(torch::stack({pos, neg}, 1) / tau,
                                                          torch::zeros({bsz}, rows.options()));
  return 0.5 * (intra + inter);
}

at::Tensor ensemble_weights(const std::vector<at::Tensor>& locals, const at::Tensor& g_other, int64_t chunk_rows) {
  if (locals.empty()) throw std::invalid_argument("creamfl: no client representations to weight");
  if (chunk_rows < 1) throw std::invalid_argument("creamfl: chunk_rows must be >= 1");
  const int64_t n = g_other.size(0), d = g_other.size(1);
  torch::NoGradGuard no_grad;
  auto scores = torch::empty({static_cast<int64_t>(locals.size()), n}, g_other.options());
  const auto gt = g_other.t();
  for (size_t k = 0; k < locals.size(); ++k) {
    require_rows(locals[k], n, d, "a client's representations");
    for (int64_t r = 0; r < n; r += chunk_rows) {
      const int64_t c = std::min(chunk_rows, n - r);
      const auto l = locals[k].narrow(0, r, c);
      const auto logits = torch::mm(l, gt);  // c x N: one chunk of rows at a time
      const auto diag = (l * g_other.narrow(0, r, c)).sum(1);
      scores[k].narrow(0, r, c).copy_(diag - torch::logsumexp(logits, 1));
    }
  }
  return torch::softmax(scores, 0);
}

at::Tensor ensemble(const std::vector<at::Tensor>& locals, const at::Tensor& weights) {
  if (locals.empty() || weights.dim() != 2 || weights.size(0) != static_cast<int64_t>(locals.size()))
    throw std::invalid_argument("creamfl: ensemble wants one weight row per client");
  auto a = torch::zeros_like(locals[0]);
  for (size_t k = 0; k < locals.size(); ++k) a.add_(locals[k] * weights[k].unsqueeze(1));
  return a;
}

at::Tensor uniform_weights(int64_t k, int64_t n) { return torch::full({k, n}, 1.0 / static_cast<double>(k)); }

Recalls retrieval_recalls(const at::Tensor& img, const at::Tensor& txt, const at::Tensor& signatures, int64_t chunk_rows) {
  const int64_t n = img.size(0);
  require_rows(txt, n, img.size(1), "the text embeddings");
  if (signatures.dim() != 1 || signatures.size(0) != n)
    throw std::invalid_argument("creamfl: recall wants one signature per pair");
  torch::NoGradGuard no_grad;
  const auto sig = signatures.to(img.device(), torch::kLong);
  const int64_t kmax = std::min<int64_t>(10, n);
  const int64_t ks[3] = {1, 5, 10};
  Recalls out;
  const auto direction = [&](const at::Tensor& q, const at::Tensor& keys, double* r) {
    for (int64_t s = 0; s < n; s += chunk_rows) {
      const int64_t c = std::min(chunk_rows, n - s);
      const auto top = std::get<1>(torch::mm(q.narrow(0, s, c), keys.t()).topk(kmax, 1));
      const auto hit = sig.index_select(0, top.flatten()).view({c, kmax}).eq(sig.narrow(0, s, c).unsqueeze(1));
      for (int i = 0; i < 3; ++i)
        r[i] += hit.narrow(1, 0, std::min(ks[i], kmax)).any(1).sum().item<double>();
    }
    for (int i = 0; i < 3; ++i) r[i] /= static_cast<double>(n);
  };
  direction(img, txt, out.i2t);
  direction(txt, img, out.t2i);
  return out;
}

}  // namespace fl::creamfl
