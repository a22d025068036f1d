#pragma once
// For tests: small model files with known behaviour.
#include <torch/torch.h>

#include <string>

#include "common/io/safetensors.h"
#include "common/models/model.h"

namespace fl::testing_util {

// mlp [features -> classes] with every weight 0 but weight[1][0] = 1, so its logits are
// (0, x0, 0, ...): class 1 wherever the (standardised) first feature is > 0. Written as safetensors.
inline void write_first_feature_model(const std::string& path, int64_t features = 2, int64_t classes = 2) {
  ModelSpec spec;
  spec.name = "mlp";
  spec.input_shape = {features};
  spec.num_classes = classes;
  spec.hidden = {};
  auto m = build_model(spec);
  torch::NoGradGuard no_grad;
  for (auto& e : m->tensors()) {
    auto t = e.tensor;
    t.zero_();
    if (t.dim() == 2) t[1][0] = 1.0;
  }
  write_safetensors(path, m->state());
}

}  // namespace fl::testing_util
