// safetensors bytes (a model export, a checkpoint, FedCMD's saved state) into a ModelState.
// Errors are std::runtime_error / std::invalid_argument naming the problem; nothing else.
#include <torch/torch.h>

#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <map>
#include <stdexcept>
#include <string>

#include "common/io/safetensors.h"

// FL_FUZZ_WRITE_SEEDS=DIR: writes the seed corpus (a model with metadata, an empty state) and exits.
extern "C" int LLVMFuzzerInitialize(int*, char***) {
  const char* dir = std::getenv("FL_FUZZ_WRITE_SEEDS");
  if (!dir) return 0;
  fl::ModelState s({{"conv.weight", torch::randn({2, 1, 3, 3})}, {"fc.bias", torch::zeros({5}, torch::kDouble)},
                    {"steps", torch::tensor(int64_t{9})}, {"half", torch::ones({3}, torch::kHalf)}});
  std::ofstream(std::string(dir) + "/model.safetensors", std::ios::binary)
      << fl::to_safetensors_bytes(s, {{"format", "pt"}, {"run", "seed"}});
  std::ofstream(std::string(dir) + "/empty.safetensors", std::ios::binary) << fl::to_safetensors_bytes(fl::ModelState());
  std::exit(0);
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    std::map<std::string, std::string> metadata;
    fl::from_safetensors_bytes(std::string(reinterpret_cast<const char*>(data), size), &metadata);
  } catch (const std::runtime_error&) {
  } catch (const std::invalid_argument&) {
  }
  return 0;
}
