// fedsim on several ranks (simulations/distributed.h): the launch settings and their errors, the
// client assignment, the result codec, and the real fedsim binary run as 1, 2 and 3 local
// processes on loopback: the same final model bit for bit, a killed rank named by the others and
// a relaunch that resumes to the uninterrupted run's model.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <chrono>
#include <csignal>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <memory>
#include <sstream>
#include <thread>

#include "common/data/idx.h"
#include "common/io/safetensors.h"
#include "expect_error.h"
#include "file_bytes.h"
#include "process_util.h"
#include "simulations/distributed.h"
#include "temp_dir.h"

namespace {

using fl::DistributedOptions;
using fl::testing_util::expect_error_of;
using fl::testing_util::Process;
using fl::testing_util::TempDir;

// ---------------------------------------------------------------------------------------------
// Launch settings

fl::EnvLookup env_of(std::map<std::string, std::string> vars) {
  return [vars](const std::string& name) -> std::optional<std::string> {
    auto it = vars.find(name);
    if (it == vars.end()) return std::nullopt;
    return it->second;
  };
}

TEST(DistributedSettings, EnvironmentAndFlagsWithFlagsWinning) {
  const auto none = fl::resolve_distributed(DistributedOptions(), env_of({{"MASTER_ADDR", "h"}}));
  EXPECT_FALSE(none.enabled());  // MASTER_* alone (set for something else) do not make a distributed run

  const auto env = env_of({{"WORLD_SIZE", "4"}, {"RANK", "2"}, {"LOCAL_RANK", "0"}, {"MASTER_ADDR", "node-a"},
                           {"MASTER_PORT", "29500"}});
  auto d = fl::resolve_distributed(DistributedOptions(), env);
  EXPECT_TRUE(d.enabled());
  EXPECT_EQ(d.world_size, 4);
  EXPECT_EQ(d.rank, 2);
  EXPECT_EQ(d.local_rank, 0);
  EXPECT_EQ(d.master_addr, "node-a");
  EXPECT_EQ(d.master_port, 29500);

  DistributedOptions flags;
  flags.rank = 3;
  flags.master_port = 1234;
  flags.master_addr = "node-b";
  d = fl::resolve_distributed(flags, env);
  EXPECT_EQ(d.rank, 3);
  EXPECT_EQ(d.master_port, 1234);
  EXPECT_EQ(d.master_addr, "node-b");
  EXPECT_EQ(d.world_size, 4);

  // torchrun's static rendezvous: its agent hosts the store, each restart under a prefix of its own.
  auto agent = env_of({{"WORLD_SIZE", "2"}, {"RANK", "0"}, {"MASTER_ADDR", "127.0.0.1"}, {"MASTER_PORT", "29500"},
                       {"TORCHELASTIC_USE_AGENT_STORE", "True"}, {"TORCHELASTIC_RESTART_COUNT", "2"}});
  d = fl::resolve_distributed(DistributedOptions(), agent);
  EXPECT_TRUE(d.agent_store);
  EXPECT_EQ(d.store_prefix, "/worker/attempt_2");
  EXPECT_FALSE(fl::resolve_distributed(DistributedOptions(), env).agent_store);

  // One rank needs no rendezvous: no MASTER_ADDR / MASTER_PORT required.
  d = fl::resolve_distributed(DistributedOptions(), env_of({{"WORLD_SIZE", "1"}, {"RANK", "0"}}));
  EXPECT_EQ(d.world_size, 1);
  EXPECT_EQ(d.local_rank, -1);
}

TEST(DistributedSettings, BadLaunchSettingsAreErrorsNamingThem) {
  const auto bad = [](std::map<std::string, std::string> vars, const std::vector<std::string>& needles,
                      DistributedOptions flags = DistributedOptions()) {
    expect_error_of<std::invalid_argument>([&] { fl::resolve_distributed(flags, env_of(vars)); }, needles);
  };
  const std::map<std::string, std::string> ok{{"WORLD_SIZE", "2"}, {"RANK", "1"}, {"MASTER_ADDR", "127.0.0.1"},
                                              {"MASTER_PORT", "29500"}};
  auto with = [&](const std::string& k, const std::string& v) {
    auto m = ok;
    m[k] = v;
    return m;
  };
  auto without = [&](const std::string& k) {
    auto m = ok;
    m.erase(k);
    return m;
  };
  bad(with("RANK", "2"), {"rank 2 is not below the world size 2"});
  bad(with("RANK", "-1"), {"RANK=-1 is outside [0,"});
  bad(with("WORLD_SIZE", "0"), {"WORLD_SIZE=0 is outside [1,"});
  bad(with("WORLD_SIZE", "two"), {"WORLD_SIZE='two' is not a whole number", "--world-size"});
  bad(with("RANK", "1x"), {"RANK='1x' is not a whole number"});
  bad(with("MASTER_PORT", "70000"), {"MASTER_PORT=70000 is outside [1, 65535]"});
  bad(with("MASTER_PORT", ""), {"MASTER_PORT='' is not a whole number"});
  bad(with("LOCAL_RANK", "gpu0"), {"LOCAL_RANK='gpu0' is not a whole number"});
  bad(without("MASTER_PORT"), {"needs MASTER_PORT (or --master-port)"});
  bad(without("MASTER_ADDR"), {"needs MASTER_ADDR (or --master-addr)"});
  bad(without("WORLD_SIZE"), {"RANK (or --rank) is set but WORLD_SIZE (or --world-size) is not"});
  bad(without("RANK"), {"WORLD_SIZE (or --world-size) is set but RANK (or --rank) is not"});
  DistributedOptions port_only;
  port_only.master_port = 29500;
  bad({}, {"--master-addr, --master-port and --local-rank are for a distributed run"}, port_only);
  DistributedOptions rank_flag;
  rank_flag.rank = 5;  // the flag against the environment's world of 2
  bad(ok, {"rank 5 is not below the world size 2"}, rank_flag);
}

// ---------------------------------------------------------------------------------------------
// Client assignment

TEST(DistributedAssignment, LongestFirstToTheLeastLoadedRank) {
  // 100, 90, 60, 50, 40, 10 over 2 ranks: 0 <- 100, 1 <- 90, 1 <- 60 (150), 0 <- 50 (150),
  // 0 <- 40 (190) ... ties go to the lower rank.
  const std::vector<int64_t> examples{50, 100, 10, 90, 60, 40};
  const auto owner = fl::assign_clients(examples, 2);
  EXPECT_EQ(owner, (std::vector<int>{0, 0, 1, 1, 1, 0}));
  std::vector<int64_t> load(2, 0);
  for (size_t c = 0; c < examples.size(); ++c) load[owner[c]] += examples[c];
  EXPECT_EQ(load, (std::vector<int64_t>{190, 160}));
  EXPECT_EQ(fl::assign_clients(examples, 1), std::vector<int>(6, 0));
  // Equal sizes: round robin by id.
  EXPECT_EQ(fl::assign_clients({5, 5, 5, 5, 5}, 3), (std::vector<int>{0, 1, 2, 0, 1}));
  EXPECT_THROW(fl::assign_clients({1}, 0), std::invalid_argument);
}

// ---------------------------------------------------------------------------------------------
// Results as bytes

TEST(DistributedCodec, ResultsRoundTripBitForBit) {
  torch::manual_seed(4);
  fl::ClientResult a;
  a.round = 7;
  a.client_id = 12;
  a.num_examples = 321;
  a.model = fl::ModelState({{"fc.weight", torch::randn({3, 4})}, {"fc.bias", torch::randn({3})},
                            {"bn.num_batches_tracked", torch::tensor(5, torch::kLong)}});
  a.tensors["control"] = fl::ModelState({{"fc.weight", torch::randn({3, 4}).to(torch::kHalf)}});
  a.metrics = {{"train_loss", 0.1 + 0.2}, {"samples", 640}, {"tiny", std::numeric_limits<double>::denorm_min()}};
  fl::ClientResult b;
  b.round = 7;
  b.client_id = 3;
  b.ok = false;
  b.error = "out of memory: \"quoted\"\nsecond line";
  b.metrics = {{"nan", std::nan("")}};
  const auto bytes = fl::encode_results({{4, a}, {0, b}});
  const auto back = fl::decode_results(bytes, "rank 1's results");
  ASSERT_EQ(back.size(), 2u);
  EXPECT_EQ(back[0].first, 4u);
  EXPECT_EQ(back[1].first, 0u);
  const auto& x = back[0].second;
  EXPECT_EQ(x.round, 7);
  EXPECT_EQ(x.client_id, 12);
  EXPECT_TRUE(x.ok);
  EXPECT_EQ(x.num_examples, 321);
  EXPECT_TRUE(x.model.equal(a.model));
  ASSERT_EQ(x.tensors.count("control"), 1u);
  EXPECT_TRUE(x.tensors.at("control").equal(a.tensors.at("control")));
  EXPECT_EQ(x.tensors.at("control").entries()[0].tensor.scalar_type(), torch::kHalf);
  EXPECT_EQ(x.metrics, a.metrics);  // exact doubles, 0.30000000000000004 and a denormal included
  const auto& y = back[1].second;
  EXPECT_FALSE(y.ok);
  EXPECT_EQ(y.error, b.error);
  EXPECT_TRUE(y.model.empty());
  EXPECT_TRUE(std::isnan(y.metrics.at("nan")));
  EXPECT_EQ(fl::decode_results(fl::encode_results({}), "none").size(), 0u);

  fl::testing_util::expect_error([&] { fl::decode_results("garbage", "rank 2's results"); },
                                 {"rank 2's results", "not a block of client results"});
  fl::testing_util::expect_error([&] { fl::decode_results(bytes.substr(0, bytes.size() - 9), "rank 2's results"); },
                                 {"rank 2's results", "truncated"});
  fl::testing_util::expect_error([&] { fl::decode_results(bytes + "x", "rank 2's results"); },
                                 {"1 bytes after the results"});
}

// ---------------------------------------------------------------------------------------------
// The real fedsim, 1 to 3 ranks on loopback

bool have_data() { return std::filesystem::exists(fl::default_fashion_mnist_dir()); }

std::string fedsim() { return std::string(FL_BINARY_DIR) + "/bin/fedsim"; }

std::vector<std::string> words(const std::string& s) {
  std::vector<std::string> out;
  std::istringstream in(s);
  for (std::string w; in >> w;) out.push_back(w);
  return out;
}

using fl::testing_util::file_bytes;

// A small, deterministic run: 7 clients of a Dirichlet split, 3/4 of them per round (so a rank
// trains a different share every round), per-client test splits (personalised accuracy).
const std::string kRun =
    "--model mlp --hidden 32 --partition dirichlet --alpha 0.5 --clients 7 --fraction 0.75 "
    "--batch-size 16 --train-limit 1200 --client-test-fraction 0.2 --eval-every 0 --seed 3 --workers 1 --no-progress";

struct Ranks {
  std::vector<std::unique_ptr<Process>> procs;
  std::vector<int> codes;
};

// `world` ranks of `args` on loopback. Rank r > 0 get the PyTorch environment (WORLD_SIZE, RANK,
// MASTER_ADDR, MASTER_PORT, as torchrun sets it), rank 0 the same as flags.
Ranks launch(int world, const std::string& args, const std::string& dir, int port) {
  Ranks k;
  for (int r = 0; r < world; ++r) {
    std::vector<std::string> argv;
    if (r == 0) {
      argv = words(fedsim() + " " + args);
      for (const auto& w : words("--world-size " + std::to_string(world) + " --rank 0 --master-addr 127.0.0.1 "
                                 "--master-port " + std::to_string(port)))
        argv.push_back(w);
    } else {
      argv = words("/usr/bin/env WORLD_SIZE=" + std::to_string(world) + " RANK=" + std::to_string(r) +
                   " MASTER_ADDR=127.0.0.1 MASTER_PORT=" + std::to_string(port) + " " + fedsim() + " " + args);
    }
    k.procs.push_back(std::make_unique<Process>(argv, dir + "/rank" + std::to_string(r) + ".log"));
  }
  return k;
}

void wait_all(Ranks& k) {
  for (auto& p : k.procs) k.codes.push_back(p->wait_for(std::chrono::seconds(120)));
}

// `world` ranks of `args` checkpointing to `dir` (their logs there too), run to their end.
Ranks run_world(int world, const std::string& args, const std::string& dir) {
  std::filesystem::create_directories(dir);
  auto k = launch(world, args + " --checkpoint-dir " + dir, dir, fl::testing_util::free_port());
  wait_all(k);
  return k;
}

std::string logs(const Ranks& k) {
  std::string s;
  for (size_t r = 0; r < k.procs.size(); ++r) s += "--- rank " + std::to_string(r) + ":\n" + k.procs[r]->log();
  return s;
}

// The clients' personal tensors of all ranks together (each rank checkpoints its own).
std::map<std::string, at::Tensor> pool_union(const std::string& dir, int world, int round) {
  std::map<std::string, at::Tensor> all;
  for (int r = 0; r < world; ++r) {
    const std::string f = dir + "/rank-" + std::to_string(r) + "/round-" + std::to_string(round) + "/pool.safetensors";
    if (!std::filesystem::exists(f)) continue;
    const auto state = fl::read_safetensors(f);
    for (const auto& e : state.entries()) EXPECT_TRUE(all.emplace(e.name, e.tensor).second) << e.name;
  }
  return all;
}

void expect_same_tensors(const std::map<std::string, at::Tensor>& a, const std::map<std::string, at::Tensor>& b) {
  ASSERT_EQ(a.size(), b.size());
  for (const auto& [name, t] : a) {
    ASSERT_EQ(b.count(name), 1u) << name;
    EXPECT_TRUE(torch::equal(t, b.at(name))) << name;
  }
}

std::map<std::string, at::Tensor> tensors_of(const std::string& file) {
  std::map<std::string, at::Tensor> m;
  const auto state = fl::read_safetensors(file);
  for (const auto& e : state.entries()) m.emplace(e.name, e.tensor);
  return m;
}

// The largest difference between two models' values (integer entries must be equal: +inf when not).
double max_difference(const std::string& a_file, const std::string& b_file) {
  const auto a = tensors_of(a_file), b = tensors_of(b_file);
  EXPECT_EQ(a.size(), b.size());
  EXPECT_FALSE(a.empty());
  double worst = 0;
  for (const auto& [name, t] : a) {
    if (!b.count(name) || !t.sizes().equals(b.at(name).sizes())) return std::numeric_limits<double>::infinity();
    if (!t.is_floating_point()) {
      if (!torch::equal(t, b.at(name))) return std::numeric_limits<double>::infinity();
      continue;
    }
    worst = std::max(worst, (t.to(at::kDouble) - b.at(name).to(at::kDouble)).abs().max().item<double>());
  }
  return worst;
}

// The contract: 1, 2 and 3 ranks end with the same global model, bit for bit (the results
// are gathered and aggregated in task order on every rank: --dist-reduce gather), for FedAvg, a
// personalised strategy (FedPer: its clients' personal layers, spread over the ranks'
// checkpoints, equal the one-process run's too) and a robust one (Krum needs every update at once).
TEST(DistributedFedsim, OneTwoAndThreeRanksEndWithTheSameModelBitForBit) {
  if (!have_data()) GTEST_SKIP() << "no Fashion-MNIST";
  for (const std::string strategy : {"fedavg", "fedper", "krum"}) {
    SCOPED_TRACE(strategy);
    TempDir tmp;
    const std::string args = kRun + " --rounds 3 --local-steps 5 --dist-reduce gather --strategy " + strategy;
    const auto single = fl::testing_util::run_command(fedsim() + " " + args + " --checkpoint-dir " + tmp.file("one") +
                                                      " 2>&1");
    ASSERT_EQ(single.code, 0) << single.output;
    const std::string reference = file_bytes(tmp.file("one") + "/round-3/global.safetensors");
    ASSERT_FALSE(reference.empty());
    // It learnt (10 classes: chance is 0.1), so the models compared below are not the initial one.
    const auto accuracy = single.output.find("global_accuracy=");
    ASSERT_NE(accuracy, std::string::npos) << single.output;
    EXPECT_GT(std::stod(single.output.substr(accuracy + 16)), 0.2) << single.output;
    for (int world : {2, 3}) {
      SCOPED_TRACE(world);
      const std::string dir = tmp.file("w" + std::to_string(world));
      auto k = run_world(world, args, dir);
      for (int r = 0; r < world; ++r) ASSERT_EQ(k.codes[r], 0) << logs(k);
      for (int r = 0; r < world; ++r) {
        const std::string mine = file_bytes(dir + "/rank-" + std::to_string(r) + "/round-3/global.safetensors");
        EXPECT_TRUE(mine == reference) << "rank " << r << " of " << world << " ends elsewhere";
      }
      const auto one = tmp.file("one") + "/round-3/pool.safetensors";
      if (strategy == "fedper") {
        ASSERT_TRUE(std::filesystem::exists(one));
        const auto spread = pool_union(dir, world, 3);
        expect_same_tensors(tensors_of(one), spread);
        // Each rank keeps only its own clients' state.
        for (int r = 0; r < world; ++r)
          EXPECT_LT(tensors_of(dir + "/rank-" + std::to_string(r) + "/round-3/pool.safetensors").size(), spread.size());
      }
      EXPECT_NE(k.procs[0]->log().find("fedsim: rounds=3 global_accuracy="), std::string::npos) << logs(k);
      EXPECT_NE(k.procs[1]->log().find("fedsim: rank 1 of " + std::to_string(world) + " done"), std::string::npos);
    }
  }
}

// FedAvg-family sums all-reduced (the default): the models never travel, each rank sends only its
// results' metadata and one fixed-point sum of the model's size, and the final model (FedAdam's
// server state too) has the same bits for 1, 2 and 3 ranks. Against the one-process run (an fp32
// fold of the models in task order) FedAvg ends within 1e-6; FedAdam's is not compared: its
// normalised step (m / sqrt(v), tau 1e-9 next to pseudo-gradients near zero) turns a last-bit
// difference of the mean into a step of the size of the learning rate.
TEST(DistributedFedsim, AllReducedFedAvgFamilySumsGiveTheSameBitsForOneTwoAndThreeRanks) {
  if (!have_data()) GTEST_SKIP() << "no Fashion-MNIST";
  for (const std::string strategy : {"fedavg", "fedadam"}) {
    SCOPED_TRACE(strategy);
    TempDir tmp;
    const std::string args = kRun + " --rounds 3 --local-steps 5 --strategy " + strategy;
    const std::string world1 = tmp.file("w1");
    const auto alone = fl::testing_util::run_command(fedsim() + " " + args + " --world-size 1 --rank 0 --checkpoint-dir " +
                                                     world1 + " 2>&1");
    ASSERT_EQ(alone.code, 0) << alone.output;
    const std::string one_rank = world1 + "/rank-0/round-3/";
    if (strategy == "fedavg") {
      const auto single = fl::testing_util::run_command(fedsim() + " " + args + " --checkpoint-dir " + tmp.file("one") +
                                                        " 2>&1");
      ASSERT_EQ(single.code, 0) << single.output;
      const double to_fp32_fold = max_difference(one_rank + "global.safetensors", tmp.file("one") + "/round-3/global.safetensors");
      std::cout << "fedavg: max |difference| to the one-process run " << to_fp32_fold << "\n";
      EXPECT_LE(to_fp32_fold, 1e-6);
    }
    for (int world : {2, 3}) {
      SCOPED_TRACE(world);
      const std::string dir = tmp.file("w" + std::to_string(world));
      auto k = run_world(world, args, dir);
      for (int r = 0; r < world; ++r) ASSERT_EQ(k.codes[r], 0) << logs(k);
      for (int r = 0; r < world; ++r) {
        const std::string mine = dir + "/rank-" + std::to_string(r) + "/round-3/";
        EXPECT_TRUE(file_bytes(mine + "global.safetensors") == file_bytes(one_rank + "global.safetensors"))
            << "rank " << r << " of " << world << ": " << max_difference(mine + "global.safetensors", one_rank + "global.safetensors");
        EXPECT_TRUE(file_bytes(mine + "strategy.bin") == file_bytes(one_rank + "strategy.bin")) << "rank " << r;
        // Metadata only: a result without its model is a few hundred bytes (gathered, each is a
        // 25,450-parameter model); the sums are the model's elements as 8-byte integers, 3 rounds.
        EXPECT_NE(k.procs[r]->log().find(" 0.0 MB of results sent; all-reduce"), std::string::npos) << logs(k);
        EXPECT_NE(k.procs[r]->log().find(" 0.6 MB of sums"), std::string::npos) << logs(k);
      }
    }
  }
}

// torchrun starts it as PyTorch programs are started (its agent hosting the rendezvous store):
// the same model as one process. Debian's torchrun (Python 3.11) needs --redirects/--tee other
// than 0 (its Std enum loses NONE when iterated).
TEST(DistributedFedsim, TorchrunLaunchesItWithTheSameResult) {
  if (!have_data()) GTEST_SKIP() << "no Fashion-MNIST";
  if (fl::testing_util::run_command("command -v torchrun").code != 0) GTEST_SKIP() << "no torchrun (python3-torch)";
  TempDir tmp;
  const std::string args = kRun + " --rounds 2 --local-steps 5 --dist-reduce gather --strategy fedavg";
  const auto single = fl::testing_util::run_command(fedsim() + " " + args + " --checkpoint-dir " + tmp.file("one") +
                                                    " 2>&1");
  ASSERT_EQ(single.code, 0) << single.output;
  const auto r = fl::testing_util::run_command(
      "torchrun --nnodes 1 --nproc_per_node 2 --master_addr 127.0.0.1 --master_port " +
      std::to_string(fl::testing_util::free_port()) + " --redirects 1 --tee 1 --no_python " + fedsim() + " " + args +
      " --checkpoint-dir " + tmp.file("two") + " 2>&1");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("fedsim: rank 1 of 2 done after round 2"), std::string::npos) << r.output;
  const std::string reference = file_bytes(tmp.file("one") + "/round-2/global.safetensors");
  ASSERT_FALSE(reference.empty());
  for (int rank = 0; rank < 2; ++rank)
    EXPECT_TRUE(file_bytes(tmp.file("two") + "/rank-" + std::to_string(rank) + "/round-2/global.safetensors") == reference)
        << rank;
}

// A rank SIGKILLed mid-run: the others fail, naming it, within --dist-silence-s; every rank
// relaunched with the same command resumes after the last round all of them committed and ends
// with the uninterrupted one-process run's model and personal state, bit for bit.
TEST(DistributedFedsim, AKilledRankIsNamedAndTheRelaunchResumesBitIdentical) {
  if (!have_data()) GTEST_SKIP() << "no Fashion-MNIST";
  TempDir tmp;
  const std::string args = kRun + " --rounds 8 --local-steps 40 --strategy fedper --dist-silence-s 2";
  const auto single = fl::testing_util::run_command(fedsim() + " " + args + " --checkpoint-dir " + tmp.file("one") +
                                                    " 2>&1");
  ASSERT_EQ(single.code, 0) << single.output;
  const std::string dir = tmp.file("three");
  std::filesystem::create_directories(dir);
  int latest = -1;
  {
    auto k = launch(3, args + " --checkpoint-dir " + dir, dir, fl::testing_util::free_port());
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (k.procs[1]->running() && std::chrono::steady_clock::now() < until) {
      const auto text = file_bytes(dir + "/rank-1/LATEST");
      latest = text.empty() ? -1 : std::stoi(text);
      if (latest >= 2) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    ASSERT_TRUE(k.procs[1]->running()) << "rank 1 ended before it could be killed: " << logs(k);
    k.procs[1]->signal(SIGKILL);
    const auto killed = std::chrono::steady_clock::now();
    wait_all(k);
    const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - killed).count();
    ASSERT_GE(latest, 2);
    ASSERT_LT(latest, 8);
    EXPECT_EQ(k.codes[1], 128 + SIGKILL);
    for (int r : {0, 2}) {
      EXPECT_EQ(k.codes[r], 1) << logs(k);
      EXPECT_NE(k.procs[r]->log().find("rank 1 of 3 stopped: no heartbeat for 2 s"), std::string::npos) << logs(k);
      EXPECT_NE(k.procs[r]->log().find("Relaunch every rank with the same command"), std::string::npos);
    }
    EXPECT_LT(took, 20) << "the survivors took " << took << " s to give up";
  }
  auto k = launch(3, args + " --checkpoint-dir " + dir, dir, fl::testing_util::free_port());
  wait_all(k);
  for (int r = 0; r < 3; ++r) ASSERT_EQ(k.codes[r], 0) << logs(k);
  EXPECT_NE(k.procs[0]->log().find("resuming from " + dir + " after round"), std::string::npos) << logs(k);
  const std::string reference = file_bytes(tmp.file("one") + "/round-8/global.safetensors");
  for (int r = 0; r < 3; ++r)
    EXPECT_TRUE(file_bytes(dir + "/rank-" + std::to_string(r) + "/round-8/global.safetensors") == reference) << r;
  expect_same_tensors(tensors_of(tmp.file("one") + "/round-8/pool.safetensors"), pool_union(dir, 3, 8));
}

// A rank that hangs (SIGSTOP: its connections stay open, so no exchange fails by itself) is named
// too: the other rank's heartbeat monitor ends it --dist-silence-s + 1 s after the beats stopped.
TEST(DistributedFedsim, AHungRankIsNamedToo) {
  if (!have_data()) GTEST_SKIP() << "no Fashion-MNIST";
  TempDir tmp;
  const std::string args = kRun + " --rounds 30 --local-steps 40 --dist-silence-s 1 --checkpoint-dir " + tmp.file("c");
  auto k = launch(2, args, tmp.path(), fl::testing_util::free_port());
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (k.procs[1]->running() && std::chrono::steady_clock::now() < until &&
         file_bytes(tmp.file("c") + "/rank-1/LATEST").empty())
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  ASSERT_TRUE(k.procs[1]->running()) << logs(k);
  k.procs[1]->signal(SIGSTOP);
  const auto stopped = std::chrono::steady_clock::now();
  EXPECT_EQ(k.procs[0]->wait_for(std::chrono::seconds(30)), 1) << logs(k);
  const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - stopped).count();
  EXPECT_NE(k.procs[0]->log().find("rank 1 of 2 stopped: no heartbeat for 1 s"), std::string::npos) << logs(k);
  EXPECT_LT(took, 15);
  k.procs[1]->signal(SIGKILL);
}

// Launches that cannot work are refused with an error that says which rank and what.
TEST(DistributedFedsim, BadLaunchesAreClearErrors) {
  if (!have_data()) GTEST_SKIP() << "no Fashion-MNIST";
  TempDir tmp;
  const std::string args = kRun + " --rounds 1 --local-steps 5";
  const std::string waits = " --dist-timeout-s 20";  // a rank that failed before the rendezvous is not waited for long
  auto run = [&](const std::string& env, const std::string& extra) {
    return fl::testing_util::run_command("/usr/bin/env " + env + " " + fedsim() + " " + args + " " + extra + " 2>&1");
  };
  auto r = run("WORLD_SIZE=2 RANK=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=29500", "");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find("rank 2 is not below the world size 2"), std::string::npos) << r.output;
  r = run("WORLD_SIZE=2 RANK=1 MASTER_ADDR=127.0.0.1", "");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find("needs MASTER_PORT (or --master-port)"), std::string::npos) << r.output;
  r = run("WORLD_SIZE=8 RANK=0", "--master-addr 127.0.0.1 --master-port " + std::to_string(fl::testing_util::free_port()) +
                                     "");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find("a distributed run of 8 ranks needs at least as many clients, it has 7"), std::string::npos)
      << r.output;
  // Rank 0 alone: the others never come.
  r = run("WORLD_SIZE=3 RANK=0", "--master-addr 127.0.0.1 --master-port " + std::to_string(fl::testing_util::free_port()) +
                                     " --dist-timeout-s 1");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find("ranks 1, 2 of 3 did not join within 1 s"), std::string::npos) << r.output;
  // Rank 1 alone: rank 0 never hosts the rendezvous.
  const int nobody = fl::testing_util::free_port();
  r = run("WORLD_SIZE=2 RANK=1 MASTER_ADDR=127.0.0.1 MASTER_PORT=" + std::to_string(nobody), "--dist-timeout-s 1");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find("rank 1: cannot reach the rendezvous at 127.0.0.1:" + std::to_string(nobody) +
                          " (rank 0 hosts it) within 1 s"),
            std::string::npos)
      << r.output;
  // Two processes with RANK=1: the later one is refused, the others run.
  {
    const int port = fl::testing_util::free_port();
    auto k = launch(2, args + waits, tmp.path(), port);
    k.procs.push_back(std::make_unique<Process>(
        words("/usr/bin/env WORLD_SIZE=2 RANK=1 MASTER_ADDR=127.0.0.1 MASTER_PORT=" + std::to_string(port) + " " +
              fedsim() + " " + args + waits),
        tmp.file("rank1-twice.log")));
    wait_all(k);
    EXPECT_EQ(k.codes[0], 0) << logs(k);
    const std::string twice = "rank 1 joined the rendezvous at 127.0.0.1:" + std::to_string(port) +
                              " twice: two processes were started with RANK=1";
    const bool first = k.procs[1]->log().find(twice) != std::string::npos;
    const bool second = k.procs[2]->log().find(twice) != std::string::npos;
    EXPECT_TRUE(first != second) << logs(k) << "--- the other rank 1:\n" << k.procs[2]->log();
    EXPECT_EQ(k.codes[first ? 1 : 2], 1);
    EXPECT_EQ(k.codes[first ? 2 : 1], 0);
  }
  // Ranks started with different world sizes.
  {
    const int port = fl::testing_util::free_port();
    auto k = launch(2, args + " --dist-timeout-s 3", tmp.path(), port);
    k.procs.pop_back();
    k.procs.push_back(std::make_unique<Process>(
        words("/usr/bin/env WORLD_SIZE=3 RANK=1 MASTER_ADDR=127.0.0.1 MASTER_PORT=" + std::to_string(port) + " " +
              fedsim() + " " + args + " --dist-timeout-s 3"),
        tmp.file("rank1-world.log")));
    wait_all(k);
    EXPECT_EQ(k.codes, (std::vector<int>{1, 1})) << logs(k);
    EXPECT_NE(k.procs[0]->log().find("rank 1 was started with WORLD_SIZE=3, rank 0 with 2"), std::string::npos)
        << logs(k);
  }
  // Ranks started with different settings: both refuse, naming the setting. Rank 1 gets `extra`.
  auto expect_other_settings_refused = [&](const std::string& extra, const std::string& error) {
    const int port = fl::testing_util::free_port();
    auto k = launch(2, args + waits, tmp.path(), port);
    k.procs.pop_back();  // replace rank 1 by one with the other setting
    k.procs.push_back(std::make_unique<Process>(
        words("/usr/bin/env WORLD_SIZE=2 RANK=1 MASTER_ADDR=127.0.0.1 MASTER_PORT=" + std::to_string(port) + " " +
              fedsim() + " " + args + waits + " " + extra),
        tmp.file("rank1-other.log")));
    wait_all(k);
    for (int rank = 0; rank < 2; ++rank) {
      EXPECT_EQ(k.codes[rank], 1) << logs(k);
      EXPECT_NE(k.procs[rank]->log().find(error), std::string::npos) << logs(k);
    }
  };
  expect_other_settings_refused("--lr 0.05", "rank 1 runs other settings than rank 0: its lr is 0.05, rank 0's 0.01");
  // One rank gathering while the other all-reduces would wait forever: refused like any other setting.
  expect_other_settings_refused("--dist-reduce gather",
                                "rank 1 runs other settings than rank 0: its dist_reduce is \"gather\", rank 0's \"allreduce\"");
  r = run("WORLD_SIZE=2 RANK=0", "--master-addr 127.0.0.1 --master-port 29500 --dist-reduce scatter");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("--dist-reduce: scatter not in {allreduce,gather}"), std::string::npos) << r.output;
  // A checkpoint of 2 ranks is not resumed by 3 (the clients' owners differ).
  {
    const std::string dir = tmp.file("ckpt");
    std::filesystem::create_directories(dir);
    auto two = launch(2, args + waits + " --checkpoint-dir " + dir, dir, fl::testing_util::free_port());
    wait_all(two);
    ASSERT_EQ(two.codes, (std::vector<int>{0, 0})) << logs(two);
    auto three = launch(3, args + waits + " --checkpoint-dir " + dir + " --dist-silence-s 1", dir, fl::testing_util::free_port());
    wait_all(three);
    for (int rank = 0; rank < 3; ++rank) EXPECT_EQ(three.codes[rank], 1) << logs(three);
    for (int rank = 0; rank < 2; ++rank)
      EXPECT_NE(three.procs[rank]->log().find("holds another run: its world_size is 2, this one's 3"), std::string::npos)
          << logs(three);
  }
}

}  // namespace
