#pragma once
// IDX files (the MNIST / Fashion-MNIST format), plain or gzip-compressed.
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>

#include "common/data/dataset.h"

namespace fl {

// Reads an IDX file (magic 0x00 0x00 <type> <ndims>, big-endian uint32 dims, big-endian data)
// into a CPU tensor of the natural dtype (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
// 0x0D float32, 0x0E float64) and shape dims. gzip files are decompressed transparently.
// Throws std::runtime_error naming the file and the problem.
at::Tensor read_idx(const std::string& path);

// Fashion-MNIST from `dir`: {train,t10k}-{images-idx3,labels-idx1}-ubyte, with or without
// ".gz". split is "train" or "test". Images are float32 [N,1,28,28], scaled to [0,1] and
// normalised with mean 0.2860 / std 0.3530; labels are int64 in [0,10). limit >= 0 keeps the
// first `limit` examples.
TensorDataset load_fashion_mnist(const std::string& dir, const std::string& split, int64_t limit = -1);

// $FASHION_MNIST_DIR when set, else /usr/share/datasets/fashion-mnist.
std::string default_fashion_mnist_dir();

}  // namespace fl
