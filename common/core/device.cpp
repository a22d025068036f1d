#include "common/core/device.h"

#include <torch/torch.h>

#include <stdexcept>

namespace fl {

bool cuda_available() { return torch::cuda::is_available(); }

c10::Device resolve_device(const std::string& spec) {
  if (spec == "auto") return cuda_available() ? c10::Device(c10::kCUDA, 0) : c10::Device(c10::kCPU);
  if (spec == "cpu") return c10::Device(c10::kCPU);
  if (spec.rfind("cuda", 0) == 0) {
    if (!cuda_available())
      throw std::invalid_argument("device '" + spec + "' requested but CUDA is not available in this build/machine");
    try {
      return c10::Device(spec);
    } catch (const std::exception&) {
      throw std::invalid_argument("invalid device '" + spec + "' (use auto, cpu, cuda or cuda:N)");
    }
  }
  throw std::invalid_argument("invalid device '" + spec + "' (use auto, cpu, cuda or cuda:N)");
}

void seed_everything(uint64_t seed) {
  torch::manual_seed(seed);
  if (cuda_available()) torch::cuda::manual_seed_all(seed);
}

}  // namespace fl
