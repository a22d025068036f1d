// A site that brings its own TorchScript file (fedclient --model-path, no --model) declares it
// when registering: a file whose layout the run cannot take is refused then, with the strategy's
// reason, instead of failing every task while the coordinator retries the round forever.
#include <gtest/gtest.h>
#include <torch/script.h>
#include <torch/torch.h>

#include <filesystem>
#include <fstream>

#include "process_util.h"

namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using fl::testing_util::Process;

const std::string kBin = std::string(FL_BINARY_DIR) + "/bin/";

// A linear TorchScript model over 4 features; `outputs` classes, parameter names w and b.
void save_linear(const std::string& path, int64_t outputs) {
  torch::jit::Module m("Net");
  m.register_parameter("w", torch::zeros({4, outputs}), false);
  m.register_parameter("b", torch::zeros({outputs}), false);
  m.define(R"(
    def forward(self, x):
        return torch.matmul(x.flatten(1), self.w) + self.b
  )");
  m.save(path);
}

struct Site {
  std::string dir, addr;
  explicit Site(const std::string& name) {
    dir = ::testing::TempDir() + "/tssite_" + name;
    fs::remove_all(dir);
    fs::create_directories(dir);
    addr = "127.0.0.1:" + std::to_string(fl::testing_util::free_port());
    std::ofstream f(dir + "/data.csv");
    f << "a,b,c,d,label\n";
    for (int i = 0; i < 32; ++i) f << (i % 2 ? 1 : -1) << ',' << i * 0.1 << ",0.5," << -(i % 2) << ',' << i % 2 << '\n';
    save_linear(dir + "/run.pt", 2);
  }
  std::unique_ptr<Process> coordinator() const {
    return std::make_unique<Process>(
        std::vector<std::string>{kBin + "fedcoord", "--insecure", "--listen", addr, "--data-dir", dir + "/db",
                                 "--run-id", "ts", "--model", "torchscript", "--model-path", dir + "/run.pt",
                                 "--input-shape", "4", "--num-classes", "2", "--eval-dataset", "none",
                                 "--min-clients", "1", "--rounds", "1", "--local-steps", "2", "--batch-size", "8",
                                 "--finish-grace-s", "2", "--registration-timeout-s", "60"},
        dir + "/coordinator.log");
  }
  std::unique_ptr<Process> client(const std::string& pt) const {
    return std::make_unique<Process>(
        std::vector<std::string>{kBin + "fedclient", "--insecure", "--name", "site", "--coordinator", addr,
                                 "--dataset", "csv", "--train-csv", dir + "/data.csv", "--test-csv", dir + "/data.csv",
                                 "--model-path", pt, "--state-dir", dir + "/state", "--device", "cpu", "--threads",
                                 "1", "--max-backoff-s", "1"},
        dir + "/client.log");
  }
};

TEST(TorchScriptSite, AFileTheRunCannotTakeIsRefusedAtRegistration) {
  Site s("mismatch");
  save_linear(s.dir + "/three_classes.pt", 3);
  auto coord = s.coordinator();
  auto client = s.client(s.dir + "/three_classes.pt");
  const int code = client->wait_for(60s);
  EXPECT_NE(code, 0) << client->log();
  EXPECT_NE(code, -1) << "fedclient did not give up: " << client->log();
  EXPECT_NE(client->log().find("strategy 'fedavg' combines the clients' models"), std::string::npos) << client->log();
  EXPECT_NE(client->log().find("differs"), std::string::npos) << client->log();
}

TEST(TorchScriptSite, TheRunsOwnFileTrains) {
  Site s("match");
  fs::copy_file(s.dir + "/run.pt", s.dir + "/site.pt");
  auto coord = s.coordinator();
  auto client = s.client(s.dir + "/site.pt");
  EXPECT_EQ(coord->wait_for(120s), 0) << coord->log();
  EXPECT_EQ(client->wait_for(60s), 0) << client->log();
  EXPECT_NE(coord->log().find("round 1/1: clients 1 (dropped 0)"), std::string::npos) << coord->log();
}

}  // namespace
