// The compute setup a program reports: which BLAS library is loaded (the reference one gets a
// warning), named by the file that provides dgemm_.
#include <gtest/gtest.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <filesystem>
#include <thread>

#include "common/core/compute_setup.h"

namespace {

using namespace fl;

TEST(ComputeSetup, NamesBlasLibrariesByTheirFile) {
  const auto ref = classify_blas("/usr/lib/x86_64-linux-gnu/blas/libblas.so.3.11.0");
  EXPECT_EQ(ref.name, "reference BLAS");
  EXPECT_TRUE(ref.reference);
  const auto open = classify_blas("/usr/lib/x86_64-linux-gnu/openblas-openmp/libblas.so.3");
  EXPECT_EQ(open.name, "OpenBLAS");
  EXPECT_FALSE(open.reference);
  EXPECT_EQ(classify_blas("/usr/lib/x86_64-linux-gnu/blis-openmp/libblas.so.3").name, "BLIS");
  EXPECT_EQ(classify_blas("/opt/intel/lib/libmkl_rt.so").name, "MKL");
  EXPECT_EQ(classify_blas("").name, "unknown");
  EXPECT_FALSE(classify_blas("/somewhere/libfoo.so").reference);
}

TEST(ComputeSetup, FindsTheBlasThisProcessCalls) {
  const auto b = loaded_blas();
  ASSERT_FALSE(b.path.empty()) << "no library defines dgemm_";
  EXPECT_TRUE(std::filesystem::exists(b.path)) << b.path;
  EXPECT_NE(b.name, "unknown") << b.path;
  const std::string d = describe_compute(c10::Device(c10::kCPU));
  EXPECT_EQ(d.rfind("cpu, ", 0), 0u) << d;
  EXPECT_NE(d.find("intra-op threads, BLAS: " + b.name), std::string::npos) << d;
}

}  // namespace

namespace fl {
namespace {

// 0 means one thread per core, whatever libtorch started with (one, on Debian's build).
TEST(ComputeSetup, ZeroThreadsMeansOnePerCore) {
  const int before = at::get_num_threads();
  const int cores = std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  EXPECT_EQ(set_intra_op_threads(0), cores);
  EXPECT_EQ(at::get_num_threads(), cores);
  EXPECT_EQ(set_intra_op_threads(1), 1);
  EXPECT_EQ(at::get_num_threads(), 1);
  EXPECT_EQ(set_intra_op_threads(3), 3);
  EXPECT_EQ(at::get_num_threads(), 3);
  at::set_num_threads(before);
}

}  // namespace
}  // namespace fl
