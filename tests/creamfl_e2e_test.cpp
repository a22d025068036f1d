// CreamFL over gRPC (issue 18): the real fedcoord and three real fedclients of different
// modalities and architectures (an image-only CNN, a text-only GRU, a multimodal two-tower) over
// mutual TLS. Only representations of the public set travel up (N x D per modality, through the
// chunked payload path), never weights; a site that declares a model the run cannot use is
// refused at registration with the strategy's reason.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <filesystem>

#include "common/data/idx.h"
#include "common/engine/payload.h"
#include "common/net/codec.h"
#include "coordinator/store/state_store.h"
#include "process_util.h"

namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using fl::testing_util::Process;

const std::string kBin = std::string(FL_BINARY_DIR) + "/bin/";

TEST(CreamFLE2E, HeterogeneousSitesOverMutualTls) {
  if (!fs::exists(fl::default_fashion_mnist_dir())) GTEST_SKIP() << "no Fashion-MNIST";
  const std::string dir = ::testing::TempDir() + "/creamfl_e2e", pki = dir + "/pki", db = dir + "/db";
  fs::remove_all(dir);
  fs::create_directories(dir);
  const std::string addr = "127.0.0.1:" + std::to_string(fl::testing_util::free_port());
  ASSERT_EQ(fl::testing_util::sh(std::string(FL_SOURCE_DIR) + "/scripts/pki.sh " + pki +
                                 " --client image-site --client text-site --client pair-site --client cnn-site > " +
                                 dir + "/pki.log 2>&1"), 0);
  ASSERT_EQ(fl::testing_util::sh(kBin + "fedsim partition --partition iid --clients 3 --seed 1 --train-limit 600 "
                                        "--save-partition " + dir + "/partition.json > " + dir + "/partition.log 2>&1"), 0);
  const int64_t n = 64, d = 16;
  Process coord({kBin + "fedcoord", "--listen", addr, "--tls-ca", pki + "/ca.crt", "--tls-cert",
                 pki + "/coordinator.crt", "--tls-key", pki + "/coordinator.key", "--data-dir", db, "--run-id", "e2e",
                 "--strategy", "creamfl", "--model", "creamfl-server", "--hidden", std::to_string(d),
                 "--strategy-param", "public_size=" + std::to_string(n), "--strategy-param", "test_size=64",
                 "--eval-dataset", "none", "--rounds", "2", "--min-clients", "3", "--local-epochs", "1",
                 "--batch-size", "32", "--optimizer", "adam", "--lr", "0.001", "--seed", "3", "--finish-grace-s", "3",
                 "--heartbeat-ms", "500", "--log-level", "debug"},
                dir + "/coordinator.log");
  const auto site = [&](const std::string& name, const std::string& model, int index) {
    return std::make_unique<Process>(
        std::vector<std::string>{kBin + "fedclient", "--coordinator", addr, "--tls-ca", pki + "/ca.crt", "--tls-cert",
                                 pki + "/" + name + ".crt", "--tls-key", pki + "/" + name + ".key", "--partition-file",
                                 dir + "/partition.json", "--client-index", std::to_string(index), "--train-limit",
                                 "600", "--state-dir", dir + "/" + name, "--max-backoff-s", "1", "--device", "cpu",
                                 "--threads", "1", "--model", model, "--hidden", std::to_string(d)},
        dir + "/" + name + ".log");
  };
  // A site with a plain classifier is refused when it registers, with the strategy's reason.
  auto cnn = site("cnn-site", "cnn", 0);
  auto image = site("image-site", "creamfl-image-s", 0);
  auto text = site("text-site", "creamfl-text", 1);
  auto pair = site("pair-site", "creamfl-multi", 2);
  const int refused = cnn->wait_for(120s);
  EXPECT_NE(refused, 0) << cnn->log();
  EXPECT_NE(refused, -1) << "the cnn site did not give up: " << cnn->log();
  EXPECT_NE(cnn->log().find("takes clients with a creamfl encoder"), std::string::npos) << cnn->log();
  ASSERT_EQ(coord.wait_for(300s), 0) << coord.log();
  for (auto* p : {image.get(), text.get(), pair.get()}) EXPECT_EQ(p->wait_for(60s), 0) << p->log();
  EXPECT_NE(coord.log().find("mutual TLS"), std::string::npos) << coord.log();

  fl::StateStore store(db);
  const auto rounds = store.rounds("e2e");
  ASSERT_EQ(rounds.size(), 2u);
  for (const auto& rec : rounds) {
    const auto j = nlohmann::json::parse(rec.json);
    EXPECT_EQ(j["participants"].size(), 3u) << rec.json;
    EXPECT_EQ(j["failures"].get<int>(), 0) << rec.json;
    const auto& s = j["strategy"];
    EXPECT_EQ(s["image_clients"].get<double>(), 2) << rec.json;  // the image site and the pair site
    EXPECT_EQ(s["text_clients"].get<double>(), 2) << rec.json;   // the text site and the pair site
    for (const char* key : {"i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10"}) {
      ASSERT_TRUE(s.contains(key)) << key << " " << rec.json;
      EXPECT_GE(s[key].get<double>(), 0);
      EXPECT_LE(s[key].get<double>(), 1);
    }
  }
  // What each site uploaded: representations only, N x D per modality it has, far fewer bytes
  // than its weights.
  const auto updates = store.updates("e2e", 2);
  ASSERT_EQ(updates.size(), 3u);
  int modalities = 0;
  for (const auto& u : updates) {
    fl::v1::PayloadManifest m;
    ASSERT_TRUE(m.ParseFromString(u.manifest));
    fl::ModelState model;
    std::map<std::string, fl::ModelState> extras;
    fl::unpack_payload(fl::decode_state(m, u.payload), model, extras);
    EXPECT_TRUE(model.empty());
    ASSERT_TRUE(extras.count("reps"));
    for (const auto& e : extras.at("reps").entries()) {
      EXPECT_TRUE(e.name == "img" || e.name == "txt") << e.name;
      EXPECT_EQ(e.tensor.sizes(), (std::vector<int64_t>{n, d}));
      EXPECT_NEAR(e.tensor.norm(2, {1}).mean().item<double>(), 1.0, 1e-3);  // L2-normalised rows
      ++modalities;
    }
    const auto reps = static_cast<int64_t>(extras.at("reps").size());
    EXPECT_LE(static_cast<int64_t>(u.payload.size()), reps * n * d * 4 + 4096);
  }
  EXPECT_EQ(modalities, 4);  // image + text + (image and text)
}

}  // namespace
