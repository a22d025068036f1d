#include "common/core/compute_setup.h"

#include <ATen/Parallel.h>
#include <dlfcn.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <thread>

namespace fl {

BlasLibrary classify_blas(const std::string& path) {
  BlasLibrary b;
  b.path = path;
  const auto has = [&](const char* s) { return path.find(s) != std::string::npos; };
  if (path.empty()) {
    b.name = "unknown";
  } else if (has("openblas")) {
    b.name = "OpenBLAS";
  } else if (has("blis")) {
    b.name = "BLIS";
  } else if (has("mkl")) {
    b.name = "MKL";
  } else if (has("atlas")) {
    b.name = "ATLAS";
  } else if (has("/blas/libblas.so")) {  // Debian's libblas3: /usr/lib/<triplet>/blas/libblas.so.3.x
    b.name = "reference BLAS";
    b.reference = true;
  } else {
    b.name = "unknown";
  }
  return b;
}

BlasLibrary loaded_blas() {
  std::string path;
  if (void* dgemm = dlsym(RTLD_DEFAULT, "dgemm_")) {
    Dl_info info{};
    if (dladdr(dgemm, &info) && info.dli_fname) {
      char real[PATH_MAX];
      path = realpath(info.dli_fname, real) ? real : info.dli_fname;
    }
  }
  BlasLibrary b = classify_blas(path);
  using ConfigFn = char* (*)();
  if (auto config = reinterpret_cast<ConfigFn>(dlsym(RTLD_DEFAULT, "openblas_get_config"))) {
    b.name = "OpenBLAS";
    b.reference = false;
    b.config = config();
  }
  return b;
}

std::string describe_compute(const c10::Device& device) {
  const BlasLibrary b = loaded_blas();
  std::string blas = b.name;
  if (!b.config.empty()) blas += " (" + b.config + ")";
  if (!b.path.empty()) blas += " from " + b.path;
  return device.str() + ", " + std::to_string(at::get_num_threads()) + " intra-op threads, BLAS: " + blas;
}

void log_compute_setup(const c10::Device& device) {
  spdlog::info("compute: {}", describe_compute(device));
  if (loaded_blas().reference)
    spdlog::warn("the reference BLAS trains 2.8x to 5.4x slower than OpenBLAS: install libopenblas0-openmp "
                 "(scripts/install-deps.sh does)");
}

int set_intra_op_threads(int n) {
  if (n <= 0) n = std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  at::set_num_threads(n);
  return n;
}

}  // namespace fl
