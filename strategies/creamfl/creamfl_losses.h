#pragma once
// CreamFL's losses, ensemble and retrieval metric (issue 18; Yu et al., ICLR 2023), on tensors:
// the strategy (creamfl.cpp) and the tests use them directly.
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

namespace fl::creamfl {

// PCME-style retrieval loss over a batch of B pairs: v, t [B, D] (L2-normalised by the caller),
// d_ij = ||v_i - t_j||, s_ij = -a d_ij + b, m_ij = +1 when i == j else -1,
// loss = sum_ij softplus(-2 m_ij s_ij). a, b: one-element tensors (learnable).
at::Tensor retrieval_loss(const at::Tensor& v, const at::Tensor& t, const at::Tensor& a, const at::Tensor& b);

// The client regulariser on public rows `rows` ([B] int64 into P): u [B, D] the client's
// L2-normalised representations, u_old [B, D] those of its model from its previous participation
// (frozen), g_same / g_other [N, D] the server's global representations of P in u's modality and
// the other one. Returns 0.5 * (L_intra + L_inter) with
//   L_inter = CE(u g_other^T / tau, rows),
//   L_intra = CE([<u, g_same[rows]>, <u, u_old>] / tau, 0).
at::Tensor regulariser(const at::Tensor& u, const at::Tensor& u_old, const at::Tensor& g_same,
                       const at::Tensor& g_other, const at::Tensor& rows, double tau = 0.5);

// The global-local cross-modal ensemble's weights, [K, N]: for client k's representations
// locals[k] [N, D] of one modality and the global representations g_other [N, D] of the other,
//   s_k[n] = <l_k[n], g_other[n]> - logsumexp_m <l_k[n], g_other[m]>,   w[:, n] = softmax_k s[:, n].
// Computed `chunk_rows` rows at a time: at most chunk_rows x N scores in memory, never N x N.
at::Tensor ensemble_weights(const std::vector<at::Tensor>& locals, const at::Tensor& g_other, int64_t chunk_rows = 256);
// A[n] = sum_k w[k, n] l_k[n]: [N, D].
at::Tensor ensemble(const std::vector<at::Tensor>& locals, const at::Tensor& weights);
// Uniform weights 1/K, [K, N] (the ablation).
at::Tensor uniform_weights(int64_t k, int64_t n);

// Retrieval recall on a test set of N pairs: the fraction of queries whose top-k by inner
// product holds an item with the query's signature (class and attribute buckets), image->text
// and text->image, k = 1, 5, 10. Computed chunk_rows queries at a time.
struct Recalls {
  double i2t[3] = {0, 0, 0};
  double t2i[3] = {0, 0, 0};
  double sum() const { return i2t[0] + i2t[1] + i2t[2] + t2i[0] + t2i[1] + t2i[2]; }
};
Recalls retrieval_recalls(const at::Tensor& img, const at::Tensor& txt, const at::Tensor& signatures,
                          int64_t chunk_rows = 256);

}  // namespace fl::creamfl
