#pragma once
// What the math runs on, said once when a program starts: the device, ATen's intra-op threads
// and the BLAS library actually loaded. Debian's libtorch calls whatever libblas.so.3 the
// alternatives system points at, and Netlib's reference BLAS (libblas3) trains our models 2.8x to
// 5.4x slower than OpenBLAS (docs/performance.md), so a run on it gets a warning.
#include <c10/core/Device.h>

#include <string>

namespace fl {

struct BlasLibrary {
  std::string path;        // the file that provides dgemm_ (empty: none found)
  std::string name;        // "OpenBLAS", "reference BLAS", "BLIS", "MKL", "ATLAS" or "unknown"
  std::string config;      // OpenBLAS's own description of its build, when it is OpenBLAS
  bool reference = false;  // Netlib's reference implementation
};

// The BLAS this process calls (found through the library that defines dgemm_).
BlasLibrary loaded_blas();
// The rule loaded_blas names a library file by (its real path).
BlasLibrary classify_blas(const std::string& path);
// "cpu, 2 intra-op threads, BLAS: OpenBLAS (...)"
std::string describe_compute(const c10::Device& device);
// Logs describe_compute at info, and warns when the BLAS is the reference one.
void log_compute_setup(const c10::Device& device);
// Sets ATen's intra-op threads: n > 0 that many, 0 one per core (std::thread::hardware_concurrency).
// Debian's libtorch otherwise starts with ONE thread whatever the machine (measured on the 2-core
// build machine): fedclient's "--threads 0" used to leave it there, and fedcoord evaluated on one
// core while the other idled. Returns the count set.
int set_intra_op_threads(int n);

}  // namespace fl
