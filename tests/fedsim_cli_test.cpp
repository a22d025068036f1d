// Runs the real fedsim binary: the quick accuracy check, determinism of the report,
// partition replay, and clear errors for bad flags and config keys.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <csignal>
#include <thread>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "common/data/idx.h"
#include "common/privacy/rdp_accountant.h"
#include "file_bytes.h"
#include "process_util.h"

namespace {

fl::testing_util::CommandResult run(const std::string& args) {
  return fl::testing_util::run_command(std::string(FL_BINARY_DIR) + "/bin/fedsim " + args + " --no-progress 2>&1");
}

nlohmann::json read_json(const std::string& path) {
  std::ifstream in(path);
  return nlohmann::json::parse(in);
}

std::string tmp(const std::string& name) { return ::testing::TempDir() + "/fedsim_" + name; }

bool have_data() { return std::filesystem::exists(fl::default_fashion_mnist_dir()); }

// The quick check: 10 clients, Dirichlet(0.5), 5 rounds, 1 local epoch, lenet5 -> >= 80%.
TEST(FedsimCli, QuickFedAvgDirichletReaches80Percent) {
  if (!have_data()) GTEST_SKIP() << "no Fashion-MNIST";
  auto r = run("--model lenet5 --partition dirichlet --alpha 0.5 --clients 10 --rounds 5 --local-epochs 1 "
               "--batch-size 64 --lr 0.01 --momentum 0.9 --seed 1 --eval-every 5 --report " + tmp("quick.json"));
  ASSERT_EQ(r.code, 0) << r.output;
  auto j = read_json(tmp("quick.json"));
  EXPECT_EQ(j["rounds"].size(), 5u);
  EXPECT_GE(j["final"]["global_accuracy"].get<double>(), 0.80) << r.output;
  EXPECT_GT(j["samples_per_s"].get<double>(), 0);
  EXPECT_TRUE(std::filesystem::exists(tmp("quick.csv")));
  EXPECT_TRUE(std::filesystem::exists(tmp("quick.svg")));
}

TEST(FedsimCli, SameSeedSameReportNumbers) {
  if (!have_data()) GTEST_SKIP() << "no Fashion-MNIST";
  const std::string common = "--model lenet5 --partition dirichlet --alpha 0.3 --clients 6 --fraction 0.5 --rounds 2 "
                             "--local-steps 5 --train-limit 3000 --client-test-fraction 0.3 --seed 7 ";
  ASSERT_EQ(run(common + "--report " + tmp("det_a.json")).code, 0);
  ASSERT_EQ(run(common + "--workers 1 --report " + tmp("det_b.json")).code, 0);
  auto a = read_json(tmp("det_a.json")), b = read_json(tmp("det_b.json"));
  for (size_t i = 0; i < 2; ++i) {
    for (const char* k : {"global_accuracy", "personalized_accuracy", "loss", "samples"})
      EXPECT_EQ(a["rounds"][i][k], b["rounds"][i][k]) << k << " round " << i;
  }
  EXPECT_TRUE(a["rounds"][0]["personalized_accuracy"].is_number());
}

TEST(FedsimCli, SavedPartitionReplaysExactly) {
  if (!have_data()) GTEST_SKIP() << "no Fashion-MNIST";
  auto a = run("partition --partition shards --clients 5 --shards-per-client 2 --train-limit 2000 --seed 3 "
               "--save-partition " + tmp("part.json"));
  ASSERT_EQ(a.code, 0) << a.output;
  auto b = run("partition --train-limit 2000 --seed 99 --partition-file " + tmp("part.json"));
  ASSERT_EQ(b.code, 0) << b.output;
  EXPECT_EQ(a.output, b.output);
}

// FL-bench's convention: the train and test files are partitioned together, each client's share
// split into its train and test parts, and the global model judged on the union of those.
// --selection-file replays the rounds' clients; a malformed or mismatched file is refused
// before training with the file and the round named.
TEST(FedsimCli, SelectionFileReplaysTheRoundsClients) {
  auto write = [](const std::string& name, const std::string& text) {
    std::ofstream(tmp(name)) << text;
    return tmp(name);
  };
  const std::string common = "--model mlp --hidden 8 --clients 4 --rounds 2 --local-steps 1 --train-limit 400 --seed 1 ";
  for (const auto& [text, says] : std::vector<std::pair<std::string, std::string>>{
           {"{\"rounds\": 1}", "expected an array of rounds"},
           {"[[0, 1], [2, \"x\"]]", "round 2 is not an array of client ids"},
           {"[[0, 1], [2, -1]]", "round 2 is not an array of client ids"},
           {"[[0, 1]", "not JSON"},
           {"[[0, 1]]", "the selection schedule has 1 rounds, the run 2"},
           {"[[0, 1], [3, 4]]", "selection schedule round 2: client 4 is not in [0, 4)"}}) {
    const auto r = run(common + "--selection-file " + write("sel_bad.json", text));
    EXPECT_EQ(r.code, 1) << text;
    EXPECT_NE(r.output.find(says), std::string::npos) << text << ": " << r.output;
  }
  if (!have_data()) GTEST_SKIP() << "no Fashion-MNIST";
  const auto good = write("sel.json", "[[3], [0, 2, 1]]");
  const auto r = run(common + "--fraction 0.5 --selection-file " + good + " --report " + tmp("sel_report.json"));
  ASSERT_EQ(r.code, 0) << r.output;
  const auto j = read_json(tmp("sel_report.json"));
  EXPECT_EQ(j["rounds"][0]["clients"], 1);  // not fraction * 4 = 2
  EXPECT_EQ(j["rounds"][1]["clients"], 3);
  EXPECT_EQ(j["config"]["selection_file"], good);

  // The same rounds as a cyclic workflow: the clients one after another, in the file's order.
  const auto c = run(common + "--workflow cyclic --selection-file " + good + " --report " + tmp("cyc_report.json"));
  ASSERT_EQ(c.code, 0) << c.output;
  const auto k = read_json(tmp("cyc_report.json"));
  EXPECT_EQ(k["config"]["workflow"], "cyclic");
  EXPECT_EQ(k["rounds"][1]["clients"], 3);
}

TEST(FedsimCli, TrainPlusTestPoolPartitionsBothFiles) {
  if (!have_data()) GTEST_SKIP() << "no Fashion-MNIST";
  auto t = run("partition --partition iid --clients 4 --client-test-fraction 0.5 --train-limit 3000 "
               "--partition-pool train+test --seed 2");
  ASSERT_EQ(t.code, 0) << t.output;
  std::istringstream rows(t.output);
  std::string line;
  std::getline(rows, line);  // header
  int64_t total = 0, clients = 0;
  for (int64_t id, n_train, n_test; rows >> id >> n_train >> n_test; std::getline(rows, line)) {
    total += n_train + n_test;
    EXPECT_LE(std::abs(n_train - n_test), 1) << "client " << id;
    ++clients;
  }
  EXPECT_EQ(clients, 4);
  EXPECT_EQ(total, 3000 + 10000);  // the limited train file plus the whole test file

  auto r = run("--model mlp --hidden 16 --partition dirichlet --alpha 0.5 --clients 6 --rounds 1 --local-steps 2 "
               "--train-limit 2000 --client-test-fraction 0.5 --partition-pool train+test --min-samples 40 "
               "--seed 3 --report " + tmp("pool.json"));
  ASSERT_EQ(r.code, 0) << r.output;
  auto j = read_json(tmp("pool.json"));
  EXPECT_EQ(j["config"]["partition_pool"], "train+test");
  EXPECT_EQ(j["config"]["min_samples"], 40);
  const auto& round = j["rounds"][0];
  EXPECT_GE(round["global_accuracy"].get<double>(), 0.0);
  EXPECT_GE(round["personalized_accuracy_pooled"].get<double>(), 0.0);
  EXPECT_LE(round["personalized_accuracy_pooled"].get<double>(), 1.0);
  EXPECT_GT(round["personalized_examples"].get<double>(), 0.0);
  EXPECT_TRUE(j["final"]["personalized_accuracy_pooled_last10"].is_number());

  auto bad = run("--partition-pool train+test --train-limit 100 --rounds 1");
  EXPECT_EQ(bad.code, 1);
  EXPECT_NE(bad.output.find("--partition-pool train+test needs --client-test-fraction"), std::string::npos)
      << bad.output;
}

TEST(FedsimCli, BadFlagsAndConfigKeysAreNamed) {
  auto r = run("--rounds abc");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.output.find("--rounds"), std::string::npos) << r.output;
  r = run("--partition zipf");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.output.find("--partition"), std::string::npos) << r.output;
  std::ofstream(tmp("bad.yaml")) << "rounds: 3\nlokal_epochs: 2\n";
  r = run("--config " + tmp("bad.yaml"));
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.output.find("lokal"), std::string::npos) << r.output;
  r = run("--workflow ring");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.output.find("--workflow"), std::string::npos) << r.output;
  r = run("--strategy nosuch --train-limit 100 --rounds 1");
  EXPECT_EQ(r.code, 2);  // checked by the flag's validator, from the registry
  EXPECT_NE(r.output.find("nosuch"), std::string::npos) << r.output;
}

// A run the strategy cannot use is refused before round 1, with the strategy's own reason (it
// used to end in "round 1: every client failed" and nothing else).
TEST(FedsimCli, StrategyRefusesARunBeforeRoundOneWithItsReason) {
  auto r = run("--strategy fedrep --local-epochs 1 --rounds 1 --train-limit 100");
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("fedrep: head_epochs=1 leaves no epoch for the body (local epochs: 1)"), std::string::npos)
      << r.output;
  EXPECT_EQ(r.output.find("round 1"), std::string::npos) << r.output;
  r = run("--strategy fedavg --mu 0.1 --rounds 1 --train-limit 100");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find("--mu is a parameter of fedprox"), std::string::npos) << r.output;
}

// When every client fails, their reasons reach the error (and the report, for partial failures).
TEST(FedsimCli, FailedClientsReasonsReachTheError) {
  if (!have_data()) GTEST_SKIP() << "no Fashion-MNIST";
  auto r = run("--model mlp --hidden 8 --strategy fedper --strategy-param k=5 --clients 2 --rounds 1 --local-steps 1 "
               "--train-limit 200 --client-test-fraction 0.2");
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("round 1: every client failed (client 0: fedper: k=5 would keep every layer group local"),
            std::string::npos)
      << r.output;
}

// The strategy list comes from the registry: every strategy, FedCMD included, with its parameters.
TEST(FedsimCli, StrategiesAreListedFromTheRegistry) {
  auto r = run("strategies");
  ASSERT_EQ(r.code, 0) << r.output;
  for (const char* name : {"fedavg", "fedprox", "fedcmd", "scaffold", "fedrep", "krum", "local"})
    EXPECT_NE(r.output.find(std::string(name) + "\n"), std::string::npos) << name;
  EXPECT_NE(r.output.find("(or --fedcmd-head)"), std::string::npos) << r.output;
  auto help = run("--help");
  EXPECT_NE(help.output.find("fedcmd"), std::string::npos);
}

using fl::testing_util::file_bytes;

// --checkpoint-dir: a run killed with SIGKILL and started again with the same command resumes
// after its last committed round and ends with the same model, bit for bit, and the same
// numbers as a run that was never interrupted. FedPer: the clients' personal layers are part of
// the checkpoint too.
TEST(FedsimCli, KilledAndRestartedRunEndsBitIdentical) {
  if (!have_data()) GTEST_SKIP() << "no Fashion-MNIST";
  const std::string common = "--model lenet5 --strategy fedper --partition dirichlet --alpha 0.5 --clients 4 --rounds 6 "
                             "--local-steps 15 --batch-size 32 --train-limit 3000 --client-test-fraction 0.2 "
                             "--eval-every 0 --seed 5 --no-progress";
  const std::string a = tmp("ckpt_a"), b = tmp("ckpt_b");
  std::filesystem::remove_all(a);
  std::filesystem::remove_all(b);
  auto straight = run(common + " --checkpoint-dir " + a + " --report " + a + ".json");
  ASSERT_EQ(straight.code, 0) << straight.output;

  std::vector<std::string> argv;
  std::istringstream words(std::string(FL_BINARY_DIR) + "/bin/fedsim " + common + " --checkpoint-dir " + b +
                           " --report " + b + ".json");
  for (std::string w; words >> w;) argv.push_back(w);
  int latest = -1;
  {
    fl::testing_util::Process p(argv, b + ".first.log");
    const auto until = std::chrono::steady_clock::now() + std::chrono::minutes(5);
    while (p.running() && std::chrono::steady_clock::now() < until) {
      const auto text = file_bytes(b + "/LATEST");
      latest = text.empty() ? -1 : std::stoi(text);
      if (latest >= 2) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    ASSERT_TRUE(p.running()) << "the run ended before it could be killed: " << p.log();
    p.signal(SIGKILL);
    p.wait_for(std::chrono::seconds(10));
  }
  ASSERT_GE(latest, 2);
  ASSERT_LT(latest, 6);
  auto resumed = run(common + " --checkpoint-dir " + b + " --report " + b + ".json");
  ASSERT_EQ(resumed.code, 0) << resumed.output;
  EXPECT_NE(resumed.output.find("resuming from " + b + " after round"), std::string::npos) << resumed.output;

  for (const char* f : {"/round-6/global.safetensors", "/round-6/pool.safetensors", "/round-6/strategy.bin"}) {
    EXPECT_TRUE(std::filesystem::exists(a + f)) << f;
    EXPECT_TRUE(file_bytes(a + f) == file_bytes(b + f)) << f << " differs";
  }
  EXPECT_FALSE(file_bytes(a + "/round-6/pool.safetensors").empty());  // FedPer's personal layers
  const auto ja = read_json(a + ".json"), jb = read_json(b + ".json");
  ASSERT_EQ(jb["rounds"].size(), 6u);
  for (size_t i = 0; i < 6; ++i)
    for (const char* k : {"loss", "personalized_accuracy", "samples", "global_accuracy", "selected"})
      EXPECT_EQ(ja["rounds"][i][k], jb["rounds"][i][k]) << k << " round " << i + 1;
  EXPECT_EQ(ja["final"], jb["final"]);

  // Another run's checkpoint is refused, naming what differs.
  auto other = run("--model lenet5 --strategy fedper --rounds 6 --seed 6 --train-limit 100 --checkpoint-dir " + a);
  EXPECT_EQ(other.code, 1) << other.output;
  EXPECT_NE(other.output.find("holds another run"), std::string::npos) << other.output;
}

// Federated evaluation is a phase of the round: after aggregation, the chosen clients evaluate
// the new global model on their own test splits; the report carries the aggregate.
TEST(FedsimCli, FederatedEvaluationAfterEachRound) {
  if (!have_data()) GTEST_SKIP() << "no Fashion-MNIST";
  auto r = run("--model mlp --hidden 16 --clients 4 --rounds 2 --local-steps 3 --train-limit 800 "
               "--client-test-fraction 0.25 --fraction-evaluate 0.5 --seed 2 --report " + tmp("fedeval.json"));
  ASSERT_EQ(r.code, 0) << r.output;
  const auto j = read_json(tmp("fedeval.json"));
  for (const auto& round : j["rounds"]) {
    ASSERT_TRUE(round.contains("federated_evaluation")) << round.dump();
    EXPECT_EQ(round["federated_evaluation"]["clients"], 2);
    EXPECT_GE(round["federated_evaluation"]["accuracy"].get<double>(), 0.0);
    EXPECT_LE(round["federated_evaluation"]["accuracy"].get<double>(), 1.0);
    EXPECT_EQ(round["evaluate_failures"], 0);
  }
  EXPECT_EQ(j["config"]["fraction_evaluate"], 0.5);
}

// FAL from the command line: clients train on PGD examples, and the global model's accuracy
// under FGSM and PGD is in every evaluated round and in the final summary, below the clean one.
TEST(FedsimCli, AdversarialTrainingAndRobustEvaluation) {
  if (!have_data()) GTEST_SKIP() << "no Fashion-MNIST";
  auto r = run("--model mlp --hidden 32 --clients 2 --rounds 2 --local-steps 10 --train-limit 600 "
               "--local-training fal --fal-steps 3 --fal-epsilon 0.1 --eval-attack all --eval-attack-examples 200 "
               "--client-test-fraction 0.25 --fraction-evaluate 1 --seed 4 --report " + tmp("fal.json"));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("robust_accuracy_pgd="), std::string::npos) << r.output;
  const auto j = read_json(tmp("fal.json"));
  EXPECT_EQ(j["config"]["local_training"], "fal");
  EXPECT_EQ(j["config"]["fal_steps"], 3);
  for (const auto& round : j["rounds"]) {
    const double clean = round["global_accuracy"].get<double>();
    const double pgd = round["global_metrics"]["robust_accuracy_pgd"].get<double>();
    const double fgsm = round["global_metrics"]["robust_accuracy_fgsm"].get<double>();
    EXPECT_GE(pgd, 0.0);
    EXPECT_LE(pgd, fgsm + 0.02) << round.dump();  // PGD-20 is the stronger attack
    EXPECT_LT(fgsm, clean) << round.dump();
    // The clients measured it on their own test splits as well.
    EXPECT_TRUE(round["federated_evaluation"].contains("robust_accuracy_pgd")) << round.dump();
  }
  EXPECT_EQ(j["final"]["robust_accuracy_pgd"], j["rounds"][1]["global_metrics"]["robust_accuracy_pgd"]);
  // A bad attack setting is refused before anything runs, naming it.
  auto bad = run("--rounds 1 --fal-steps 0");
  EXPECT_NE(bad.code, 0);
  EXPECT_NE(bad.output.find("--fal-steps"), std::string::npos) << bad.output;
}

// DP-FedAvg from the command line: every round reports the (epsilon, delta) spent so far, which
// grows; a strategy that does not average is refused, naming the setting.
TEST(FedsimCli, DifferentialPrivacyReportsEpsilonEveryRound) {
  if (!have_data()) GTEST_SKIP() << "no Fashion-MNIST";
  auto r = run("--model mlp --hidden 32 --clients 4 --fraction 0.5 --rounds 3 --local-steps 5 --train-limit 400 "
               "--dp central --dp-clip 1 --dp-noise 1.2 --dp-delta 1e-4 --seed 2 --report " + tmp("dp.json"));
  ASSERT_EQ(r.code, 0) << r.output;
  const auto j = read_json(tmp("dp.json"));
  EXPECT_EQ(j["config"]["dp"], "central");
  double last = 0;
  for (const auto& round : j["rounds"]) {
    const auto& m = round["strategy"];
    EXPECT_DOUBLE_EQ(m["dp_sampling_rate"].get<double>(), 0.5) << round.dump();
    EXPECT_DOUBLE_EQ(m["dp_delta"].get<double>(), 1e-4);
    EXPECT_GT(m["dp_epsilon"].get<double>(), last) << round.dump();
    last = m["dp_epsilon"].get<double>();
  }
  fl::RdpAccountant a;
  a.compose(0.5, 1.2, 3);
  EXPECT_NEAR(last, a.spent(1e-4).epsilon, 1e-9);
  auto bad = run("--rounds 1 --dp central --strategy fedmedian");
  EXPECT_NE(bad.code, 0);
  EXPECT_NE(bad.output.find("'dp'"), std::string::npos) << bad.output;
}

// Byzantine clients: a quarter of the clients flips and boosts its update; the run's norm bound
// rejects exactly those, every round, and says so in the report.
TEST(FedsimCli, ByzantineClientsAndTheUpdateNormBound) {
  if (!have_data()) GTEST_SKIP() << "no Fashion-MNIST";
  auto r = run("--model mlp --hidden 32 --clients 4 --rounds 2 --local-steps 5 --train-limit 400 --seed 3 "
               "--byzantine-fraction 0.25 --byzantine-attack sign-flip --byzantine-scale 1000 --max-update-norm 50 "
               "--report " + tmp("byz.json"));
  ASSERT_EQ(r.code, 0) << r.output;
  const auto j = read_json(tmp("byz.json"));
  EXPECT_EQ(j["config"]["byzantine_attack"], "sign-flip");
  EXPECT_EQ(j["config"]["max_update_norm"], 50);
  for (const auto& round : j["rounds"]) {
    EXPECT_EQ(round["rejected"], 1) << round.dump();
    ASSERT_EQ(round["dropped"].size(), 1u);
    EXPECT_NE(round["failed"].begin()->get<std::string>().find("max_update_norm"), std::string::npos) << round.dump();
  }
  EXPECT_EQ(j["rounds"][0]["dropped"], j["rounds"][1]["dropped"]);  // the same attacker
  auto bad = run("--rounds 1 --byzantine-attack gaussian");
  EXPECT_NE(bad.code, 0);
  EXPECT_NE(bad.output.find("--byzantine-attack"), std::string::npos) << bad.output;
}

}  // namespace
