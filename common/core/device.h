#pragma once
// Run-time device choice: the same binary runs on CPU LibTorch and CUDA LibTorch.
#include <c10/core/Device.h>

#include <string>

namespace fl {

// "auto" -> cuda when available, else cpu; "cpu"; "cuda" or "cuda:N" (error when absent).
c10::Device resolve_device(const std::string& spec);
bool cuda_available();
// Seeds torch's global generators (CPU and, when present, CUDA).
void seed_everything(uint64_t seed);

}  // namespace fl
