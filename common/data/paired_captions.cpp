#include "common/data/paired_captions.h"

#include <torch/torch.h>

#include <algorithm>
#include <array>
#include <stdexcept>

#include "common/data/idx.h"

namespace fl {

namespace {

constexpr int kSide = 28;
// Fashion-MNIST's normalisation (load_fashion_mnist).
constexpr double kMean = 0.2860, kStd = 0.3530;

// Quantiles of the 60,000 training images (scripts in docs/creamfl.md): brightness and area
// quartiles, centre-of-mass terciles.
constexpr std::array<double, 3> kBrightness{0.5106, 0.6497, 0.7515};
constexpr std::array<double, 3> kArea{0.3253, 0.4605, 0.5727};
constexpr std::array<double, 2> kPosition{0.5056, 0.5273};

const std::array<std::array<const char*, 3>, 10> kNouns{{
    {"tshirt", "tee", "top"},
    {"trousers", "pants", "slacks"},
    {"pullover", "sweater", "jumper"},
    {"dress", "gown", "frock"},
    {"coat", "jacket", "overcoat"},
    {"sandal", "slipper", "flipflop"},
    {"shirt", "blouse", "buttonup"},
    {"sneaker", "trainer", "runner"},
    {"bag", "handbag", "purse"},
    {"boot", "ankleboot", "bootie"},
}};
const std::array<const char*, 4> kBrightWords{"dark", "dim", "light", "bright"};
const std::array<const char*, 4> kAreaWords{"tiny", "small", "large", "huge"};
const std::array<const char*, 3> kPositionWords{"leftward", "centred", "rightward"};
const std::array<const char*, 3> kHeightWords{"short", "medium", "tall"};
const std::array<const char*, 12> kFillers{"a",    "an",   "the",  "photo", "of",       "picture",
                                           "showing", "some", "item", "image", "clothing", "this"};

// Token ids: 0 <pad>, nouns 1..30, then brightness, area, position, height words, then fillers.
constexpr int64_t kNounBase = 1;
constexpr int64_t kBrightBase = kNounBase + 30;
constexpr int64_t kAreaBase = kBrightBase + 4;
constexpr int64_t kPositionBase = kAreaBase + 4;
constexpr int64_t kHeightBase = kPositionBase + 3;
constexpr int64_t kFillerBase = kHeightBase + 3;
constexpr int64_t kVocab = kFillerBase + 12;

template <size_t K>
int bucket(double v, const std::array<double, K>& bounds) {
  int b = 0;
  while (b < static_cast<int>(K) && v >= bounds[b]) ++b;
  return b;
}

uint64_t splitmix(uint64_t& s) {
  uint64_t z = (s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

}  // namespace

CaptionAttributes image_attributes(const uint8_t* px) {
  int64_t ink = 0, ink_sum = 0, total = 0, moment = 0;
  int top = kSide, bottom = -1;
  for (int r = 0; r < kSide; ++r) {
    for (int c = 0; c < kSide; ++c) {
      const int v = px[r * kSide + c];
      total += v;
      moment += static_cast<int64_t>(v) * c;
      if (v > kInkByte) {
        ++ink;
        ink_sum += v;
        top = std::min(top, r);
        bottom = std::max(bottom, r);
      }
    }
  }
  CaptionAttributes a;
  a.brightness = bucket(ink ? ink_sum / (255.0 * ink) : 0.0, kBrightness);
  a.area = bucket(static_cast<double>(ink) / (kSide * kSide), kArea);
  a.position = bucket(total ? moment / (27.0 * total) : 0.5, kPosition);
  const int height = bottom < 0 ? 0 : bottom - top + 1;
  a.height = height <= 23 ? 0 : (height <= 27 ? 1 : 2);
  return a;
}

int64_t caption_signature(int64_t label, const CaptionAttributes& a) {
  return label * 144 + a.brightness * 36 + a.area * 9 + a.position * 3 + a.height;
}

const std::vector<std::string>& caption_vocab() {
  static const std::vector<std::string> v = [] {
    std::vector<std::string> w{"<pad>"};
    for (const auto& syn : kNouns)
      for (const char* s : syn) w.push_back(s);
    for (const char* s : kBrightWords) w.push_back(s);
    for (const char* s : kAreaWords) w.push_back(s);
    for (const char* s : kPositionWords) w.push_back(s);
    for (const char* s : kHeightWords) w.push_back(s);
    for (const char* s : kFillers) w.push_back(s);
    return w;
  }();
  return v;
}

int64_t caption_vocab_size() { return kVocab; }

std::string caption_text(const at::Tensor& tokens) {
  const auto t = tokens.to(torch::kCPU, torch::kLong).contiguous();
  const auto& vocab = caption_vocab();
  std::string out;
  for (int64_t i = 0; i < t.numel(); ++i) {
    const int64_t id = t.data_ptr<int64_t>()[i];
    out += (out.empty() ? "" : " ") + (id >= 0 && id < kVocab ? vocab[id] : std::string("<?>"));
  }
  return out;
}

PairedSet make_paired_set(const at::Tensor& images, const at::Tensor& labels, uint64_t seed) {
  if (images.dim() != 3 || images.size(1) != kSide || images.size(2) != kSide || images.scalar_type() != torch::kByte)
    throw std::invalid_argument("paired captions: images must be uint8 [N, 28, 28], got " +
                                std::string(c10::toString(images.scalar_type())) + " " + c10::str(images.sizes()));
  if (labels.dim() != 1 || labels.size(0) != images.size(0))
    throw std::invalid_argument("paired captions: " + std::to_string(images.size(0)) + " images but labels " +
                                c10::str(labels.sizes()));
  const int64_t n = images.size(0);
  PairedSet p;
  p.images = images.to(torch::kCPU).contiguous();
  p.labels = labels.to(torch::kCPU, torch::kLong).contiguous();
  p.tokens = torch::zeros({n, kCaptionLength}, torch::kLong);
  p.signatures = torch::zeros({n}, torch::kLong);
  const uint8_t* px = p.images.data_ptr<uint8_t>();
  const int64_t* y = p.labels.data_ptr<int64_t>();
  int64_t* tok = p.tokens.data_ptr<int64_t>();
  int64_t* sig = p.signatures.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) {
    const uint8_t* im = px + i * kSide * kSide;
    if (y[i] < 0 || y[i] >= 10)
      throw std::invalid_argument("paired captions: label " + std::to_string(y[i]) + " of example " +
                                  std::to_string(i) + " is not in [0, 10)");
    const auto a = image_attributes(im);
    sig[i] = caption_signature(y[i], a);
    // The caption's random stream: FNV-1a of the image's bytes, mixed with the seed.
    uint64_t h = 1469598103934665603ull ^ seed;
    for (int j = 0; j < kSide * kSide; ++j) h = (h ^ im[j]) * 1099511628211ull;
    uint64_t s = h;
    std::array<int64_t, 5> content{kNounBase + 3 * y[i] + static_cast<int64_t>(splitmix(s) % 3),
                                   kBrightBase + a.brightness, kAreaBase + a.area,
                                   kPositionBase + a.position, kHeightBase + a.height};
    for (int k = 4; k > 0; --k) std::swap(content[k], content[splitmix(s) % (k + 1)]);  // Fisher-Yates
    int64_t* row = tok + i * kCaptionLength;
    row[0] = kFillerBase + static_cast<int64_t>(splitmix(s) % 12);
    row[1] = kFillerBase + static_cast<int64_t>(splitmix(s) % 12);
    for (int k = 0; k < 5; ++k) row[2 + k] = content[k];
    row[7] = kFillerBase + static_cast<int64_t>(splitmix(s) % 12);
  }
  return p;
}

at::Tensor features_to_bytes(const at::Tensor& features) {
  if (features.dim() != 4 || features.size(1) != 1 || features.size(2) != kSide || features.size(3) != kSide)
    throw std::invalid_argument("paired captions: features must be [N, 1, 28, 28], got " + c10::str(features.sizes()));
  return (features.to(torch::kCPU, torch::kDouble) * kStd + kMean)
      .mul(255)
      .round()
      .clamp(0, 255)
      .to(torch::kByte)
      .squeeze(1)
      .contiguous();
}

at::Tensor bytes_to_features(const at::Tensor& bytes) {
  return ((bytes.to(torch::kFloat) / 255.0f - static_cast<float>(kMean)) / static_cast<float>(kStd)).unsqueeze(1);
}

PairedBenchmark load_paired_benchmark(const std::string& dir, int64_t public_size, int64_t test_size, uint64_t seed) {
  const TensorDataset d = load_fashion_mnist(dir, "test");
  if (public_size < 1 || test_size < 1 || public_size + test_size > d.size())
    throw std::invalid_argument("paired benchmark: a public set of " + std::to_string(public_size) +
                                " and a test set of " + std::to_string(test_size) + " pairs do not fit in the " +
                                std::to_string(d.size()) + " images of " + dir + "'s test file");
  auto gen = at::detail::createCPUGenerator(seed);
  const auto perm = torch::randperm(d.size(), gen, torch::kLong);
  const auto bytes = features_to_bytes(d.x);
  const auto take = [&](const at::Tensor& idx) {
    return make_paired_set(bytes.index_select(0, idx), d.y.index_select(0, idx), seed);
  };
  PairedBenchmark b;
  b.public_set = take(perm.narrow(0, 0, public_size));
  b.test = take(perm.narrow(0, d.size() - test_size, test_size));
  return b;
}

}  // namespace fl
