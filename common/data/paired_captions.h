#pragma once
// A paired image-caption benchmark built deterministically from Fashion-MNIST (CreamFL, issue 18;
// docs/creamfl.md). Real image-caption corpora are not available offline, so each 28x28 image
// gets a caption of kCaptionLength tokens computed from the image itself:
//   - a class noun, one of three synonyms ("sneaker", "trainer", "runner"),
//   - four attribute words: the brightness quartile of its ink (mean intensity of the pixels
//     above kInkByte), the quartile of its ink area (the fraction of such pixels), the tercile of
//     its horizontal centre of mass, and its height bucket (rows spanned by ink: <= 23, 24-27, 28),
//   - three filler words,
// the synonym, the fillers and the order of the five content words drawn from a stream seeded by
// the benchmark's seed and the image's bytes: the same image and seed give the same caption on
// every machine, so a site derives the captions of its own images without being sent any.
// The quartile and tercile bounds are constants: the quantiles of the 60,000 training images
// (docs/creamfl.md; a test checks each bucket holds its share of the test images).
//
// A retrieval is correct when the retrieved item has the query's signature: its class and its
// four attribute buckets (10 x 4 x 4 x 3 x 3 = 1,440 signatures).
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

#include "common/data/dataset.h"

namespace fl {

constexpr int64_t kCaptionLength = 8;  // tokens per caption (no padding: every caption has 8)
constexpr int kInkByte = 25;           // a pixel is ink above this byte value (about 0.1)

struct CaptionAttributes {
  int brightness = 0;  // quartile 0..3 of the ink's mean intensity
  int area = 0;        // quartile 0..3 of the ink's share of the image
  int position = 0;    // tercile 0..2 of the horizontal centre of mass (0: left)
  int height = 0;      // 0: <= 23 rows spanned by ink, 1: 24-27, 2: 28
};

// The attributes of one 28x28 image of bytes (row-major).
CaptionAttributes image_attributes(const uint8_t* pixels);
// class * 144 + brightness * 36 + area * 9 + position * 3 + height.
int64_t caption_signature(int64_t label, const CaptionAttributes& a);

// The caption vocabulary: index 0 is "<pad>" (never produced), then the nouns, the attribute
// words and the fillers. caption_vocab_size() == caption_vocab().size().
const std::vector<std::string>& caption_vocab();
int64_t caption_vocab_size();
// "a photo of the bright huge rightward tall sneaker" (the words of one row of token ids).
std::string caption_text(const at::Tensor& tokens);

// A set of pairs: images as bytes [N, 28, 28] uint8, captions as token ids [N, kCaptionLength]
// int64, labels [N] int64 and signatures [N] int64.
struct PairedSet {
  at::Tensor images;
  at::Tensor tokens;
  at::Tensor labels;
  at::Tensor signatures;
  int64_t size() const { return images.defined() ? images.size(0) : 0; }
};

// The captions (and signatures) of `images` ([N, 28, 28] uint8) with labels [N] in [0, 10).
// Throws std::invalid_argument naming a bad shape, dtype or label.
PairedSet make_paired_set(const at::Tensor& images, const at::Tensor& labels, uint64_t seed);

// Fashion-MNIST's normalised float features ([N, 1, 28, 28], load_fashion_mnist's) back to their
// bytes, and bytes to features: the two are exact inverses on bytes.
at::Tensor features_to_bytes(const at::Tensor& features);
at::Tensor bytes_to_features(const at::Tensor& bytes);

// The benchmark's shared sets, from Fashion-MNIST's test file in `dir` (10,000 images): a
// permutation seeded by `seed` gives the public set P (its first `public_size` images) and the
// test set (its last `test_size`), disjoint; the clients' private sets are their partitions of
// the training file (image-only clients use images + labels, text-only clients the captions +
// labels, multimodal clients the pairs). Throws std::invalid_argument when the sizes do not fit.
struct PairedBenchmark {
  PairedSet public_set;
  PairedSet test;
};
PairedBenchmark load_paired_benchmark(const std::string& dir, int64_t public_size, int64_t test_size, uint64_t seed);

}  // namespace fl
