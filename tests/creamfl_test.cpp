// CreamFL (issue 18): the paired caption benchmark, the encoders, the losses and the ensemble on
// small hand-made tensors, the strategy's two halves, and fedsim runs with image-only, text-only
// and multimodal clients.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <csignal>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>

#include "common/data/idx.h"
#include "common/data/paired_captions.h"
#include "common/models/model_declaration.h"
#include "expect_error.h"
#include "file_bytes.h"
#include "process_util.h"
#include "temp_dir.h"
#include "strategies/creamfl/creamfl_losses.h"
#include "strategies/creamfl/creamfl_model.h"
#include "strategies/registry.h"

namespace {

using namespace fl;
namespace cf = fl::creamfl;

#define EXPECT_ERROR_CONTAINS(expr, E, needle) \
  fl::testing_util::expect_error_of<E>([&] { (void)(expr); }, std::string(needle))

// ---- the benchmark

// A 28x28 image: a bright block of rows [r0, r1) x columns [c0, c1), value v.
at::Tensor block(int r0, int r1, int c0, int c1, int v) {
  auto im = torch::zeros({28, 28}, torch::kByte);
  im.slice(0, r0, r1).slice(1, c0, c1).fill_(v);
  return im;
}

TEST(PairedCaptions, AttributesOfHandMadeImages) {
  // 28 rows x 4 columns of 255 on the right: bright, tiny (112/784 = 0.14), rightward, tall.
  auto a = image_attributes(block(0, 28, 24, 28, 255).data_ptr<uint8_t>());
  EXPECT_EQ(a.brightness, 3);
  EXPECT_EQ(a.area, 0);
  EXPECT_EQ(a.position, 2);
  EXPECT_EQ(a.height, 2);
  // 10 rows x 27 columns of 100 (0.39): dark, small (270/784 = 0.344), centred (mean column 14/27
  // = 0.519: the terciles are 0.5056 and 0.5273), short.
  a = image_attributes(block(5, 15, 1, 28, 100).data_ptr<uint8_t>());
  EXPECT_EQ(a.brightness, 0);
  EXPECT_EQ(a.area, 1);
  EXPECT_EQ(a.position, 1);
  EXPECT_EQ(a.height, 0);
  EXPECT_EQ(caption_signature(7, a), 7 * 144 + 0 * 36 + 1 * 9 + 1 * 3 + 0);
  // Pixels at or below the ink threshold are no ink: nothing has no height, and a 25 is not ink.
  a = image_attributes(block(0, 26, 0, 14, kInkByte).data_ptr<uint8_t>());
  EXPECT_EQ(a.area, 0);
  EXPECT_EQ(a.height, 0);
  EXPECT_EQ(a.position, 0);  // the mass is on the left
}

TEST(PairedCaptions, CaptionsAreDeterministicAndCarryTheSignature) {
  auto images = torch::stack({block(0, 28, 24, 28, 255), block(5, 15, 1, 28, 100)});
  auto labels = torch::tensor({7, 1}, torch::kLong);
  const auto p = make_paired_set(images, labels, 3);
  const auto q = make_paired_set(images, labels, 3);
  EXPECT_TRUE(p.tokens.equal(q.tokens));
  EXPECT_EQ(p.tokens.sizes(), (std::vector<int64_t>{2, kCaptionLength}));
  const std::string c0 = caption_text(p.tokens[0]), c1 = caption_text(p.tokens[1]);
  // The content words, whatever their seeded order and the synonym drawn.
  for (const char* w : {" bright", " tiny", " rightward", " tall"}) EXPECT_NE((" " + c0).find(w), std::string::npos) << c0;
  EXPECT_TRUE(c0.find("sneaker") != std::string::npos || c0.find("trainer") != std::string::npos ||
              c0.find("runner") != std::string::npos) << c0;
  for (const char* w : {" dark", " small", " centred", " short"}) EXPECT_NE((" " + c1).find(w), std::string::npos) << c1;
  EXPECT_EQ(p.signatures[0].item<int64_t>(), caption_signature(7, image_attributes(images[0].contiguous().data_ptr<uint8_t>())));
  // Another seed draws other fillers/synonyms/orders for some captions, never other content.
  const auto r = make_paired_set(images, labels, 4);
  EXPECT_TRUE(r.signatures.equal(p.signatures));
  EXPECT_LT(p.tokens.max().item<int64_t>(), caption_vocab_size());
  EXPECT_EQ(static_cast<int64_t>(caption_vocab().size()), caption_vocab_size());

  EXPECT_ERROR_CONTAINS(make_paired_set(images.to(torch::kFloat), labels, 1), std::invalid_argument, "uint8 [N, 28, 28]");
  EXPECT_ERROR_CONTAINS(make_paired_set(images, torch::tensor({7, 12}, torch::kLong), 1), std::invalid_argument,
                        "label 12 of example 1");
  EXPECT_ERROR_CONTAINS(make_paired_set(images, torch::tensor({7}, torch::kLong), 1), std::invalid_argument,
                        "2 images but labels");
}

TEST(PairedCaptions, BenchmarkSplitsAreDisjointAndBucketsHoldTheirShare) {
  const auto b = load_paired_benchmark(default_fashion_mnist_dir(), 2000, 1000, 1);
  EXPECT_EQ(b.public_set.size(), 2000);
  EXPECT_EQ(b.test.size(), 1000);
  // Disjoint: no test image equals a public one (Fashion-MNIST's test file has no duplicates among these).
  const auto pub = b.public_set.images.view({2000, -1}).to(torch::kInt);
  const auto test = b.test.images.view({1000, -1}).to(torch::kInt);
  const auto pub_hash = (pub * torch::arange(1, 785, torch::kInt)).sum(1);
  const auto test_hash = (test * torch::arange(1, 785, torch::kInt)).sum(1);
  EXPECT_FALSE(torch::isin(test_hash, pub_hash).any().item<bool>());
  // The features round trip to the same bytes.
  EXPECT_TRUE(features_to_bytes(bytes_to_features(b.test.images)).equal(b.test.images));
  // The quartile/tercile bounds are the training set's: on the held-out public images every
  // bucket holds its share, within a few points.
  const auto s = b.public_set.signatures;
  const auto share = [&](const at::Tensor& bucket, int64_t v) { return bucket.eq(v).to(torch::kDouble).mean().item<double>(); };
  for (int v = 0; v < 4; ++v) {
    EXPECT_NEAR(share(s.div(36, "floor").remainder(4), v), 0.25, 0.05) << "brightness " << v;
    EXPECT_NEAR(share(s.div(9, "floor").remainder(4), v), 0.25, 0.05) << "area " << v;
  }
  for (int v = 0; v < 3; ++v) EXPECT_NEAR(share(s.div(3, "floor").remainder(3), v), 1.0 / 3, 0.05) << "position " << v;
  EXPECT_TRUE(s.div(144, "floor").equal(b.public_set.labels));
  // Signatures are fine-grained: hundreds of distinct ones among the test pairs.
  EXPECT_GT(std::get<0>(at::_unique(b.test.signatures)).numel(), 300);
  EXPECT_ERROR_CONTAINS(load_paired_benchmark(default_fashion_mnist_dir(), 9500, 1000, 1), std::invalid_argument,
                        "do not fit in the 10000 images");
}

// ---- losses and ensemble on hand-made tensors

TEST(CreamFLLosses, RetrievalLossIsTheSumOfSoftplusOverAllPairs) {
  // v0 = t0 = (1, 0); v1 = (0, 1), t1 = (0.6, 0.8). a = b = 15 as initialised.
  const auto v = torch::tensor({1.f, 0.f, 0.f, 1.f}).view({2, 2});
  const auto t = torch::tensor({1.f, 0.f, 0.6f, 0.8f}).view({2, 2});
  auto a = torch::full({1}, 15.0f, torch::requires_grad());
  auto b = torch::full({1}, 15.0f, torch::requires_grad());
  const double d00 = 0, d01 = std::sqrt(0.16 + 0.64), d10 = std::sqrt(2.0), d11 = std::sqrt(0.36 + 0.04);
  const auto sp = [](double x) { return std::log1p(std::exp(x)); };
  const auto s = [](double d) { return -15 * d + 15; };
  const double want = sp(-2 * s(d00)) + sp(2 * s(d01)) + sp(2 * s(d10)) + sp(-2 * s(d11));
  auto loss = cf::retrieval_loss(v, t, a, b);
  EXPECT_NEAR(loss.item<double>(), want, 1e-3 * want);
  loss.backward();
  ASSERT_TRUE(a.grad().defined());
  // d loss / d b = sum -2 m sigmoid(-2 m s): the pairs pull b up, the non-pairs down.
  const auto sig = [](double x) { return 1 / (1 + std::exp(-x)); };
  const double db = -2 * sig(-2 * s(d00)) + 2 * sig(2 * s(d01)) + 2 * sig(2 * s(d10)) - 2 * sig(-2 * s(d11));
  EXPECT_NEAR(b.grad().item<double>(), db, 1e-3 * std::abs(db) + 1e-5);
  EXPECT_ERROR_CONTAINS(cf::retrieval_loss(v, t.narrow(0, 0, 1), a, b), std::invalid_argument, "text embeddings");
}

TEST(CreamFLLosses, RegulariserIsHalfIntraPlusInterAtTau) {
  // N = 3 public items, D = 2, a batch of rows {2, 0}.
  const auto g_same = torch::tensor({1.f, 0.f, 0.f, 1.f, 0.6f, 0.8f}).view({3, 2});
  const auto g_other = torch::tensor({0.f, 1.f, 1.f, 0.f, 0.8f, 0.6f}).view({3, 2});
  const auto u = torch::tensor({0.6f, 0.8f, 1.f, 0.f}).view({2, 2});
  const auto u_old = torch::tensor({0.f, 1.f, 0.f, 1.f}).view({2, 2});
  const auto rows = torch::tensor({2, 0}, torch::kLong);
  const double tau = 0.5;
  // By hand: inter row 0 (target 2): logits <u0, g_other[m]> / tau = (0.8, 0.6, 0.96) / 0.5.
  const auto ce = [](std::vector<double> z, int target) {
    double m = -1e9, s = 0;
    for (double v : z) m = std::max(m, v);
    for (double v : z) s += std::exp(v - m);
    return -(z[target] - m - std::log(s));
  };
  const double inter = (ce({0.8 / tau, 0.6 / tau, 0.96 / tau}, 2) + ce({0.0, 1 / tau, 0.8 / tau}, 0)) / 2;
  // intra: [<u, g_same[row]>, <u, u_old>] / tau, target 0: row 0 (1.0, 0.8), row 1 (1.0, 0.0).
  const double intra = (ce({1.0 / tau, 0.8 / tau}, 0) + ce({1.0 / tau, 0.0}, 0)) / 2;
  EXPECT_NEAR(cf::regulariser(u, u_old, g_same, g_other, rows, tau).item<double>(), 0.5 * (intra + inter), 1e-5);
  EXPECT_ERROR_CONTAINS(cf::regulariser(u, u_old, g_same, g_other.narrow(1, 0, 1), rows), std::invalid_argument,
                        "other modality");
}

TEST(CreamFLEnsemble, WeightsFollowTheFormulaInAnyChunkSize) {
  // Two clients, N = 3, D = 2. G_other's rows: e0, e1, e0.
  const auto g = torch::tensor({1.f, 0.f, 0.f, 1.f, 1.f, 0.f}).view({3, 2});
  const auto l0 = torch::tensor({1.f, 0.f, 1.f, 0.f, 0.f, 1.f}).view({3, 2});
  const auto l1 = torch::tensor({0.f, 1.f, 0.f, 1.f, 1.f, 0.f}).view({3, 2});
  // s_k[n] = <l_k[n], g[n]> - log sum_m exp <l_k[n], g[m]>; by hand with e = exp(1):
  const double e = std::exp(1.0);
  const double s0[3] = {1 - std::log(2 * e + 1), 0 - std::log(2 * e + 1), 0 - std::log(2 + e)};
  const double s1[3] = {0 - std::log(2 + e), 1 - std::log(2 + e), 1 - std::log(2 * e + 1)};
  for (int64_t chunk : {1, 2, 3, 256}) {
    const auto w = cf::ensemble_weights({l0, l1}, g, chunk);
    ASSERT_EQ(w.sizes(), (std::vector<int64_t>{2, 3}));
    for (int n = 0; n < 3; ++n) {
      const double w0 = std::exp(s0[n]) / (std::exp(s0[n]) + std::exp(s1[n]));
      EXPECT_NEAR(w[0][n].item<double>(), w0, 1e-6) << "chunk " << chunk << " row " << n;
      EXPECT_NEAR(w[1][n].item<double>(), 1 - w0, 1e-6);
    }
    // A[n] = sum_k w_k[n] l_k[n].
    const auto a = cf::ensemble({l0, l1}, w);
    EXPECT_TRUE(a[1].allclose(l0[1] * w[0][1] + l1[1] * w[1][1]));
  }
  // Row 0: client 0 agrees with G (weight > 1/2); row 1: client 1 does.
  const auto w = cf::ensemble_weights({l0, l1}, g, 2);
  EXPECT_GT(w[0][0].item<double>(), 0.5);
  EXPECT_GT(w[1][1].item<double>(), 0.5);
  // A larger random case: chunked equals the full N x N computation.
  auto gen = at::detail::createCPUGenerator(5);
  std::vector<at::Tensor> ls;
  for (int k = 0; k < 3; ++k) ls.push_back(torch::nn::functional::normalize(torch::randn({50, 8}, gen)));
  const auto gg = torch::nn::functional::normalize(torch::randn({50, 8}, gen));
  std::vector<at::Tensor> full;
  for (const auto& l : ls) {
    const auto logits = torch::mm(l, gg.t());
    full.push_back(logits.diagonal() - torch::logsumexp(logits, 1));
  }
  EXPECT_TRUE(cf::ensemble_weights(ls, gg, 7).allclose(torch::softmax(torch::stack(full), 0), 1e-5, 1e-6));
  EXPECT_TRUE(cf::uniform_weights(3, 4).allclose(torch::full({3, 4}, 1.0 / 3)));
  EXPECT_ERROR_CONTAINS(cf::ensemble_weights({l0, l1.narrow(0, 0, 2)}, g), std::invalid_argument,
                        "a client's representations");
  EXPECT_ERROR_CONTAINS(cf::ensemble_weights({}, g), std::invalid_argument, "no client representations");
}

// This process's resident memory, current and peak since the last reset, in bytes (-1: unknown).
int64_t status_bytes(const std::string& field) {
  std::ifstream in("/proc/self/status");
  for (std::string line; std::getline(in, line);)
    if (line.rfind(field + ":", 0) == 0) return std::stoll(line.substr(field.size() + 1)) * 1024;
  return -1;
}

// How far `f` raised the resident peak above the resident memory before it (Linux: writing 5 to
// /proc/self/clear_refs resets the peak). -1 when it cannot be measured here.
template <class F>
int64_t peak_growth(F&& f) {
  std::ofstream reset("/proc/self/clear_refs");
  if (!(reset << "5" << std::flush)) return -1;
  const int64_t before = status_bytes("VmRSS");
  f();
  const int64_t peak = status_bytes("VmHWM");
  return before < 0 || peak < 0 ? -1 : peak - before;
}

// The memory contract, measured: the ensemble of K clients' N x D representations raises
// the peak by about chunk x N scores, not by an N x N matrix. The control (one client's full
// N x N logits) shows that the gauge sees such a matrix.
TEST(CreamFLEnsemble, PeakMemoryGrowsWithNTimesDNotNTimesN) {
  const int64_t n = 6000, d = 64;
  auto gen = at::detail::createCPUGenerator(11);
  std::vector<at::Tensor> ls;
  for (int k = 0; k < 4; ++k) ls.push_back(torch::nn::functional::normalize(torch::randn({n, d}, gen)));
  const auto g = torch::nn::functional::normalize(torch::randn({n, d}, gen));
  const int64_t n_by_n = n * n * static_cast<int64_t>(sizeof(float));  // 144 MB
  // Warm up first (BLAS and thread-pool buffers come with the first product, not with N).
  cf::ensemble_weights({ls[0].narrow(0, 0, 300)}, g.narrow(0, 0, 300), 64);
  at::Tensor w64, w256;
  const int64_t chunked = peak_growth([&] { w64 = cf::ensemble_weights(ls, g, 64); });
  if (chunked < 0) GTEST_SKIP() << "no /proc/self/clear_refs here";
  const int64_t default_chunk = peak_growth([&] { w256 = cf::ensemble_weights(ls, g); });
  ASSERT_EQ(w64.sizes(), (std::vector<int64_t>{4, n}));
  EXPECT_TRUE(w64.allclose(w256, 1e-5, 1e-6));
  double full_sum = 0;
  const int64_t full = peak_growth([&] { full_sum = torch::mm(ls[0], g.t()).logsumexp(1).sum().item<double>(); });
  std::cout << "ensemble of 4 x " << n << " x " << d << ": peak +" << chunked / 1e6 << " MB in blocks of 64 rows, +"
            << default_chunk / 1e6 << " MB in blocks of 256; one " << n << " x " << n << " logits matrix: +"
            << full / 1e6 << " MB\n";
  EXPECT_TRUE(std::isfinite(full_sum));
  EXPECT_GT(full, n_by_n * 9 / 10) << "the gauge must see an N x N matrix";
  EXPECT_LT(chunked, n_by_n / 8);
}

TEST(CreamFLEnsemble, RecallCountsASignatureMatchInTheTopK) {
  // 3 pairs; signatures 5, 6, 5. Images and texts in 2-D.
  const auto img = torch::tensor({1.f, 0.f, 0.f, 1.f, 0.9f, 0.1f}).view({3, 2});
  const auto txt = torch::tensor({0.f, 1.f, 1.f, 0.f, 0.95f, 0.f}).view({3, 2});
  const auto sig = torch::tensor({5, 6, 5}, torch::kLong);
  const auto r = cf::retrieval_recalls(img, txt, sig, 2);
  // i2t top-1: img0 -> txt1 (5 vs 6: miss), img1 -> txt0 (6 vs 5: miss), img2 -> txt1 (5 vs 6: miss).
  EXPECT_NEAR(r.i2t[0], 0.0, 1e-9);
  EXPECT_NEAR(r.i2t[1], 1.0, 1e-9);  // top-3 holds everything
  // t2i top-1: txt0 -> img1 (6 vs 5: miss), txt1 -> img0 (sig 5 vs 6: miss), txt2 -> img0 (5: hit).
  EXPECT_NEAR(r.t2i[0], 1.0 / 3, 1e-9);
  EXPECT_NEAR(r.sum(), 0 + 1 + 1 + 1.0 / 3 + 1 + 1, 1e-9);
  // The cut-offs: image 0 ranks the 12 texts 11, 10, ..., 0, and the only other text with its
  // signature is text 6, at rank 6: a miss at 1 and 5, a hit at 10. Images 1-11 rank their own first.
  auto q = torch::eye(12);
  q[0].copy_(torch::arange(0, 12, torch::kFloat));
  auto sig12 = torch::arange(100, 112, torch::kLong);
  sig12[6] = sig12[0].item<int64_t>();
  const auto r12 = cf::retrieval_recalls(q, torch::eye(12), sig12, 5);
  EXPECT_NEAR(r12.i2t[0], 11.0 / 12, 1e-9);
  EXPECT_NEAR(r12.i2t[1], 11.0 / 12, 1e-9);
  EXPECT_NEAR(r12.i2t[2], 1.0, 1e-9);
}

// ---- models and the strategy

ModelSpec cream_spec(const std::string& name, int64_t dim = 16) {
  ModelSpec s;
  s.name = name;
  s.hidden = {dim};
  return s;
}

TEST(CreamFLModels, TowersProjectToDAndTheServerIsTheLargest) {
  int64_t largest_client = 0;
  for (const char* name : {"creamfl-image-s", "creamfl-image-m", "creamfl-text", "creamfl-multi"}) {
    auto m = build_model(cream_spec(name));
    auto& c = as_cream_model(*m, "test");
    largest_client = std::max(largest_client, m->num_parameters());
    if (c.has_image()) {
      EXPECT_EQ(c.net().encode_image(torch::zeros({3, 1, 28, 28})).sizes(), (std::vector<int64_t>{3, 16}));
    }
    if (c.has_text()) {
      EXPECT_EQ(c.net().encode_text(torch::ones({3, kCaptionLength}, torch::kLong)).sizes(), (std::vector<int64_t>{3, 16}));
    }
    if (c.arch().classifier) {
      const auto x = c.has_image() ? torch::zeros({2, 1, 28, 28}) : torch::ones({2, 8}, torch::kLong);
      EXPECT_EQ(m->forward(x).sizes(), (std::vector<int64_t>{2, 10}));
    }
    auto copy = m->clone();
    EXPECT_TRUE(copy->state().equal(m->state()));
  }
  auto server = build_model(cream_spec("creamfl-server"));
  EXPECT_GT(server->num_parameters(), 2 * largest_client);
  EXPECT_TRUE(server->state().contains("retrieval.a"));
  EXPECT_EQ(server->state().at("retrieval.b").item<float>(), 15.0f);
  auto cnn = build_model(ModelSpec());
  EXPECT_ERROR_CONTAINS(as_cream_model(*cnn, "creamfl client"), std::invalid_argument, "'cnn' is not a creamfl model");
}

// The larger clients of docs/results.md ("clients with real encoders"): the server's text tower,
// creamfl-image-m's image tower, still well below the server; counts at D = 64 as in docs/creamfl.md.
TEST(CreamFLModels, LargerClientsStayBelowTheServer) {
  const auto params = [](const char* name) { return build_model(cream_spec(name, 64))->num_parameters(); };
  EXPECT_EQ(params("creamfl-text-l"), 87050);
  EXPECT_EQ(params("creamfl-multi-l"), 300290);
  EXPECT_EQ(params("creamfl-server"), 924738);
  EXPECT_GT(params("creamfl-multi-l"), params("creamfl-multi"));
  EXPECT_GT(params("creamfl-text-l"), params("creamfl-text"));
  auto multi = build_model(cream_spec("creamfl-multi-l"));
  auto& m = as_cream_model(*multi, "test");
  EXPECT_FALSE(m.arch().classifier);  // a multimodal client trains retrieval
  EXPECT_EQ(m.net().encode_image(torch::zeros({3, 1, 28, 28})).sizes(), (std::vector<int64_t>{3, 16}));
  EXPECT_EQ(m.net().encode_text(torch::ones({3, kCaptionLength}, torch::kLong)).sizes(), (std::vector<int64_t>{3, 16}));
  auto text = build_model(cream_spec("creamfl-text-l"));
  EXPECT_EQ(text->forward(torch::ones({2, kCaptionLength}, torch::kLong)).sizes(), (std::vector<int64_t>{2, 10}));
  const auto server = ModelDeclaration::of(*build_model(cream_spec("creamfl-server")));
  EXPECT_EQ(check_client_model("creamfl", server, ModelDeclaration::of(*multi)), "");
  EXPECT_EQ(check_client_model("creamfl", server, ModelDeclaration::of(*text)), "");
}

TEST(CreamFLStrategy, RefusesClientsItCannotUse) {
  const auto server = ModelDeclaration::of(*build_model(cream_spec("creamfl-server")));
  const auto text = ModelDeclaration::of(*build_model(cream_spec("creamfl-text")));
  EXPECT_EQ(check_client_model("creamfl", server, text), "");
  EXPECT_EQ(check_client_model("creamfl", server, ModelDeclaration::of(*build_model(cream_spec("creamfl-image-m")))), "");
  const std::string cnn = check_client_model("creamfl", server, ModelDeclaration::of(*build_model(ModelSpec())));
  EXPECT_NE(cnn.find("takes clients with a creamfl encoder"), std::string::npos) << cnn;
  const std::string d = check_client_model("creamfl", server, ModelDeclaration::of(*build_model(cream_spec("creamfl-text", 8))));
  EXPECT_NE(d.find("projects to D = 8, the server's model to D = 16"), std::string::npos) << d;
  const std::string run = check_client_model("creamfl", text, text);
  EXPECT_NE(run.find("the run's model must be creamfl-server"), std::string::npos) << run;

  auto s = create_strategy("creamfl", {{"public_size", 32}, {"test_size", 32}});
  EXPECT_FALSE(s->has_global_model());
  EXPECT_ERROR_CONTAINS(s->initialize(build_model(ModelSpec())->state()), std::invalid_argument,
                        "must be creamfl-server");
  s->initialize(build_model(cream_spec("creamfl-server"))->state());
  ClientResult r;
  r.tensors["reps"] = ModelState({{"img", torch::zeros({32, 8})}});
  EXPECT_NE(s->check_result({}, r).find("want float [32, 16]"), std::string::npos) << s->check_result({}, r);
  r.tensors["reps"] = ModelState({{"audio", torch::zeros({32, 16})}});
  EXPECT_NE(s->check_result({}, r).find("'audio'"), std::string::npos);
  r.tensors.clear();
  EXPECT_NE(s->check_result({}, r).find("no representations"), std::string::npos);
  r.tensors["reps"] = ModelState({{"txt", torch::zeros({32, 16})}});
  EXPECT_EQ(s->check_result({}, r), "");
  EXPECT_ERROR_CONTAINS(create_strategy("creamfl", {{"weights", 2}}), std::invalid_argument, "weights");
}

// A small client data set of real Fashion-MNIST images.
TensorDataset few_images(int64_t offset, int64_t n) {
  static const TensorDataset train = load_fashion_mnist(default_fashion_mnist_dir(), "train", 2000);
  return train.subset(torch::arange(offset, offset + n, torch::kLong));
}

TEST(CreamFLStrategy, ARoundWithImageTextAndMultimodalClients) {
  torch::manual_seed(1);
  auto s = create_strategy("creamfl", {{"public_size", 64}, {"test_size", 64}});
  s->initialize(build_model(cream_spec("creamfl-server"))->state());
  const ModelState server_before = s->global_model().clone();
  auto tasks = s->configure_fit(1, {0, 1, 2});
  ASSERT_EQ(tasks.size(), 3u);
  EXPECT_TRUE(tasks[0].model.empty());  // no weights travel
  const auto& g = tasks[0].tensors.at("global");
  EXPECT_EQ(g.at("img").sizes(), (std::vector<int64_t>{64, 16}));
  EXPECT_NEAR(g.at("txt").norm(2, {1}).mean().item<double>(), 1.0, 1e-5);  // L2-normalised rows
  EXPECT_EQ(tasks[0].tensors.at("public").at("images").scalar_type(), torch::kByte);
  EXPECT_FALSE(s->global_model().equal(server_before));  // one epoch on P already

  auto algo = create_client_algorithm("creamfl");
  TrainOptions opt;
  opt.epochs = 1;
  opt.batch_size = 16;
  opt.optimizer = "adam";
  opt.lr = 1e-3;
  std::vector<ClientResult> results;
  std::vector<std::map<std::string, ModelState>> personal(3);
  const char* names[3] = {"creamfl-image-s", "creamfl-text", "creamfl-multi"};
  for (int k = 0; k < 3; ++k) {
    auto model = build_model(cream_spec(names[k]));
    const auto data = few_images(100 * k, 48);
    ClientContext ctx{*model, data, nullptr, opt, personal[k]};
    tasks[k].seed = 10 + k;
    auto r = algo->run(tasks[k], ctx);
    ASSERT_TRUE(r.ok) << r.error;
    EXPECT_TRUE(r.model.empty());
    EXPECT_TRUE(personal[k].count("model"));
    EXPECT_EQ(s->check_result(tasks[k], r), "");
    const auto& reps = r.tensors.at("reps");
    EXPECT_EQ(reps.contains("img"), k != 1) << names[k];
    EXPECT_EQ(reps.contains("txt"), k != 0) << names[k];
    EXPECT_EQ(r.metrics.at("representation_bytes"), (k == 2 ? 2 : 1) * 64 * 16 * 4);
    EXPECT_TRUE(std::isfinite(r.metrics.at("regulariser_loss")));
    results.push_back(std::move(r));
  }
  const auto m = s->aggregate_fit(1, results);
  EXPECT_EQ(m.at("image_clients"), 2);
  EXPECT_EQ(m.at("text_clients"), 2);
  EXPECT_GT(m.at("distill_loss"), 0);
  EXPECT_GE(m.at("weight_max_img"), 0.5);
  // Diagnostics: retrieval on P by the distillation's targets and by the server's G (sums of 6 recalls).
  for (const char* key : {"ensemble_rsum_public", "server_rsum_public"}) {
    EXPECT_GE(m.at(key), 0) << key;
    EXPECT_LE(m.at(key), 6) << key;
  }
  // How close the clients and the ensemble are to the server's own G: cosines, and the ensemble's
  // norm (a weighted mean of unit vectors: at most 1, exactly 1 only where the clients agree).
  for (const char* key : {"client_cos_same_img", "client_cos_other_img", "ensemble_cos_same_img", "client_cos_same_txt",
                          "client_cos_other_txt", "ensemble_cos_same_txt"}) {
    EXPECT_GE(m.at(key), -1) << key;
    EXPECT_LE(m.at(key), 1) << key;
  }
  for (const char* key : {"ensemble_norm_img", "ensemble_norm_txt"}) {
    EXPECT_GT(m.at(key), 0) << key;
    EXPECT_LT(m.at(key), 1) << key;
  }
  for (const char* key : {"i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10"}) {
    EXPECT_GE(m.at(key), 0) << key;
    EXPECT_LE(m.at(key), 1) << key;
  }
  EXPECT_LE(m.at("i2t_r1"), m.at("i2t_r5"));
  EXPECT_LE(m.at("i2t_r5"), m.at("i2t_r10"));
  // The server's optimizer state survives a restart: a strategy resumed from the global model
  // and the saved state trains round 2's server epoch exactly as the original does; without the
  // state (a fresh Adam) it does not.
  const std::string blob = s->save_state();
  EXPECT_GT(blob.size(), 1000u);  // Adam's moments of every server parameter
  auto resumed = create_strategy("creamfl", {{"public_size", 64}, {"test_size", 64}});
  resumed->initialize(s->global_model());
  resumed->load_state(blob);
  auto fresh = create_strategy("creamfl", {{"public_size", 64}, {"test_size", 64}});
  fresh->initialize(s->global_model());
  EXPECT_ERROR_CONTAINS(fresh->load_state("not an archive"), std::invalid_argument, "optimizer state cannot be read");
  (void)resumed->configure_fit(2, {0});
  (void)fresh->configure_fit(2, {0});
  // A second round: the clients' regulariser sees their previous models (u_old), kept personal.
  const ModelState mine = personal[0].at("model").clone();
  auto second = s->configure_fit(2, {0});
  EXPECT_TRUE(resumed->global_model().equal(s->global_model()));
  EXPECT_FALSE(fresh->global_model().equal(s->global_model()));
  auto model = build_model(cream_spec(names[0]));
  const auto data = few_images(0, 48);
  ClientContext ctx{*model, data, nullptr, opt, personal[0]};
  auto r = algo->run(second[0], ctx);
  ASSERT_TRUE(r.ok) << r.error;
  EXPECT_FALSE(personal[0].at("model").equal(mine));
  // A task whose global representations do not have the client's D is refused by name.
  auto bad = second[0];
  bad.tensors["global"] = ModelState({{"img", torch::zeros({64, 8})}, {"txt", torch::zeros({64, 8})}});
  EXPECT_ERROR_CONTAINS(algo->run(bad, ctx), std::invalid_argument, "this model's D is 16");
  EXPECT_ERROR_CONTAINS(algo->run(ClientTask(), ctx), std::invalid_argument, "the task carries no 'public/images'");
  bad = second[0];
  bad.tensors["public"] = ModelState({{"images", second[0].tensors.at("public").at("images")},
                                      {"tokens", torch::full({64, 8}, 57, torch::kLong)}});
  EXPECT_ERROR_CONTAINS(algo->run(bad, ctx), std::invalid_argument, "token ids outside the vocabulary");
  auto cnn = build_model(ModelSpec());
  ClientContext cnn_ctx{*cnn, data, nullptr, opt, personal[1]};
  EXPECT_ERROR_CONTAINS(algo->run(second[0], cnn_ctx), std::invalid_argument, "not a creamfl model");
}

// ---- fedsim

fl::testing_util::CommandResult fedsim(const std::string& args) {
  return fl::testing_util::run_command(std::string(FL_BINARY_DIR) + "/bin/fedsim " + args + " --no-progress 2>&1");
}

TEST(CreamFLFedsim, HeterogeneousClientsRunAndReportRecalls) {
  const std::string common =
      "--strategy creamfl --model creamfl-server --hidden 16 --client-models "
      "creamfl-image-s,creamfl-text,creamfl-multi,creamfl-image-m --clients 4 --rounds 2 --train-limit 800 "
      "--partition iid --optimizer adam --lr 0.001 --batch-size 32 --local-epochs 1 --workers 2 "
      "--strategy-param public_size=128 --strategy-param test_size=128 --seed 3";
  auto r = fedsim(common);
  ASSERT_EQ(r.code, 0) << r.output;
  for (const char* key : {"i2t_r1=", "i2t_r5=", "i2t_r10=", "t2i_r1=", "t2i_r5=", "t2i_r10=", "rsum="})
    EXPECT_NE(r.output.find(key), std::string::npos) << key << "\n" << r.output;
  // Seeded: the same numbers again.
  auto again = fedsim(common);
  const auto tail = [](const std::string& out) {  // the numbers of the final line, but the speed
    const auto line = out.substr(out.find("fedsim: rounds="));
    const auto from = line.find(" i2t_r1=");
    return line.substr(from, line.find(" samples_per_s=") - from);
  };
  EXPECT_EQ(tail(again.output), tail(r.output));

  // A client model the run cannot use is refused before round 1, with the reason.
  auto bad = fedsim("--strategy creamfl --model creamfl-server --client-models creamfl-text,cnn --clients 2 --rounds 1 "
                    "--train-limit 100");
  EXPECT_NE(bad.code, 0);
  EXPECT_NE(bad.output.find("takes clients with a creamfl encoder"), std::string::npos) << bad.output;
  auto no_server = fedsim("--strategy creamfl --model cnn --clients 2 --rounds 1 --train-limit 100");
  EXPECT_NE(no_server.code, 0);
  EXPECT_NE(no_server.output.find("must be creamfl-server"), std::string::npos) << no_server.output;
}

using fl::testing_util::file_bytes;

// A CreamFL run SIGKILLed between rounds and launched again with the same command resumes from its
// last checkpoint and ends where the uninterrupted run ends, bit for bit: the server's two towers
// (global.safetensors) and the clients' own models and u_old (pool.safetensors). The server's Adam
// (strategy.bin) is proven by the towers: had the resumed rounds started from another Adam state,
// the towers would differ. Its bytes are not compared: LibTorch keys an optimizer's state by the
// parameters' addresses and archives it in that map's order, so two uninterrupted runs already
// write different bytes (same size within 200 bytes, tensors in another order).
TEST(CreamFLFedsim, AKilledRunResumesFromItsCheckpointBitIdentical) {
  fl::testing_util::TempDir tmp;
  const std::string binary = std::string(FL_BINARY_DIR) + "/bin/fedsim";
  const std::string common =
      "--strategy creamfl --model creamfl-server --hidden 16 --client-models "
      "creamfl-image-s,creamfl-text,creamfl-multi,creamfl-image-m --clients 4 --rounds 6 --train-limit 800 "
      "--partition iid --optimizer adam --lr 0.001 --batch-size 32 --local-epochs 1 --workers 2 "
      "--strategy-param public_size=128 --strategy-param test_size=128 --seed 3 --eval-every 0";
  auto whole = fedsim(common + " --checkpoint-dir " + tmp.file("whole"));
  ASSERT_EQ(whole.code, 0) << whole.output;
  std::vector<std::string> argv;
  std::istringstream words(binary + " " + common + " --no-progress --checkpoint-dir " + tmp.file("killed"));
  for (std::string w; words >> w;) argv.push_back(w);
  int killed_after = -1;
  {
    fl::testing_util::Process run(argv, tmp.file("first.log"));
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (run.running() && std::chrono::steady_clock::now() < until) {
      const std::string latest = file_bytes(tmp.file("killed") + "/LATEST");
      if (!latest.empty() && std::stoi(latest) >= 2) {
        killed_after = std::stoi(latest);
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    ASSERT_TRUE(run.running()) << "the run ended before it could be killed: " << run.log();
    run.signal(SIGKILL);
    EXPECT_EQ(run.wait_for(std::chrono::seconds(30)), 128 + SIGKILL);
  }
  ASSERT_GE(killed_after, 2);
  ASSERT_LT(killed_after, 6);
  auto again = fedsim(common + " --checkpoint-dir " + tmp.file("killed"));
  ASSERT_EQ(again.code, 0) << again.output;
  EXPECT_NE(again.output.find("resuming from " + tmp.file("killed") + " after round"), std::string::npos) << again.output;
  for (const char* file : {"global.safetensors", "pool.safetensors"}) {
    const std::string a = file_bytes(tmp.file("whole") + "/round-6/" + file);
    EXPECT_FALSE(a.empty()) << file;
    EXPECT_TRUE(a == file_bytes(tmp.file("killed") + "/round-6/" + file)) << file;
  }
}

}  // namespace
