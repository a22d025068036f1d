// scripts/flbench_partition.py: its numpy-compatible generator against values numpy gives, the
// partition it writes as fedsim replays it (every example once, FL-bench's sizes rule) and the
// client-selection stream.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <set>

#include "common/data/idx.h"
#include "process_util.h"

namespace {

using fl::testing_util::run_command;

const std::string kScript = std::string(FL_SOURCE_DIR) + "/scripts/flbench_partition.py";

bool have_python() { return run_command("python3 -c 'import json' 2>&1").code == 0; }

TEST(FlbenchPartition, GeneratorMatchesNumpysLegacyRandomState) {
  if (!have_python()) GTEST_SKIP() << "no python3";
  const auto r = run_command("python3 " + kScript + " --self-test 2>&1");
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("5 checks passed"), std::string::npos) << r.output;
}

TEST(FlbenchPartition, RefusesBadArguments) {
  if (!have_python()) GTEST_SKIP() << "no python3";
  auto r = run_command("python3 " + kScript + " --alpha 1.5 --out /dev/null 2>&1");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.output.find("--alpha must be in (0, 1)"), std::string::npos) << r.output;
  r = run_command("python3 " + kScript + " --alpha 0.5 --out /dev/null --data-dir /nonexistent 2>&1");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.output.find("not found"), std::string::npos) << r.output;
}

TEST(FlbenchPartition, WritesAPartitionFedsimReplays) {
  if (!have_python()) GTEST_SKIP() << "no python3";
  if (!std::filesystem::exists(fl::default_fashion_mnist_dir())) GTEST_SKIP() << "no Fashion-MNIST";
  const std::string out = ::testing::TempDir() + "/flbench_a05.json";
  const std::string selection = ::testing::TempDir() + "/flbench_selection.json";
  auto r = run_command("python3 " + kScript + " --alpha 0.5 --out " + out + " --selection-out " + selection + " 2>&1");
  ASSERT_EQ(r.code, 0) << r.output;
  // FL-bench's stream: random.seed(42), then random.sample(range(100), 10) per round; Python
  // gives [81, 14, 3, 94, 35, 31, 28, 17, 13, 86] first.
  std::ifstream sel_in(selection);
  const auto sel = nlohmann::json::parse(sel_in);
  ASSERT_EQ(sel.size(), 200u);
  EXPECT_EQ(sel[0], nlohmann::json({81, 14, 3, 94, 35, 31, 28, 17, 13, 86}));
  for (const auto& round : sel) EXPECT_EQ(std::set<int>(round.begin(), round.end()).size(), 10u);
  std::ifstream in(out);
  const auto j = nlohmann::json::parse(in);
  ASSERT_EQ(j["clients"].size(), 100u);
  EXPECT_EQ(j["dataset_size"], 70000);
  std::set<int64_t> seen;
  size_t total = 0;
  for (const auto& c : j["clients"]) {
    const size_t n_train = c["train"].size(), n = n_train + c["test"].size();
    EXPECT_GE(n, 40u);               // least_samples
    EXPECT_EQ(n_train, n / 2);       // int(n * 0.5) for training
    for (const char* part : {"train", "test"})
      for (const auto& i : c[part]) seen.insert(i.get<int64_t>());
    total += n;
  }
  EXPECT_EQ(total, 70000u);
  EXPECT_EQ(seen.size(), 70000u);  // every example exactly once
  // The same seed gives the same file; fedsim loads it (its partition command prints the table).
  const std::string again = ::testing::TempDir() + "/flbench_a05_again.json";
  ASSERT_EQ(run_command("python3 " + kScript + " --alpha 0.5 --out " + again).code, 0);
  std::ifstream in2(again);
  EXPECT_EQ(nlohmann::json::parse(in2), j);
  r = run_command(std::string(FL_BINARY_DIR) + "/bin/fedsim partition --partition-pool train+test "
                  "--client-test-fraction 0.5 --clients 100 --partition-file " + out + " 2>&1");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("n_train"), std::string::npos) << r.output.substr(0, 500);
}

}  // namespace
