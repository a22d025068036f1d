// fedctl against the real fedcoord (mutual TLS, a PKI made by fl::pki): authorization (admin
// role only; client, revoked, foreign and missing certificates refused), the audit log, the run
// life cycle, and rounds / clients / model export after a real two-client run.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <thread>

#include <unistd.h>

#include "common/io/safetensors.h"
#include "common/net/pki.h"
#include "tests/process_util.h"

namespace fl {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using json = nlohmann::json;
using testing_util::Process;
using testing_util::ProgramRun;

const std::string kBin = std::string(FL_BINARY_DIR) + "/bin/";

// One coordinator for the whole suite: --keep-serving, no run of its own, a tiny model.
class FedctlAdmin : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    // ctest runs each test as its own process, possibly in parallel: one directory each.
    dir_ = ::testing::TempDir() + "/fedctl_admin_" + std::to_string(::getpid());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    pki_ = dir_ + "/pki";
    pki::init_ca(pki_);
    pki::issue(pki_, {"coordinator", "coordinator", {}});
    for (const char* a : {"admin", "admin-2"}) pki::issue(pki_, {"admin", a, {}});
    // hospital-3 and -4 for tests that run after hospital-2's revocation (one coordinator per suite).
    for (const char* c : {"hospital-1", "hospital-2", "hospital-3", "hospital-4"}) pki::issue(pki_, {"client", c, {}});
    foreign_ = dir_ + "/foreign";  // a second CA: its admin certificate is not ours
    pki::init_ca(foreign_, "someone-else");
    pki::issue(foreign_, {"admin", "admin", {}});
    // Tiny CSV data sets for the clients: 4 features, 2 classes.
    for (int c = 0; c < 2; ++c) {
      std::ofstream f(dir_ + "/data" + std::to_string(c) + ".csv");
      f << "a,b,c,d,label\n";
      for (int i = 0; i < 64; ++i) {
        const int y = (i + c) % 2;
        f << (y ? 1.0 : -1.0) + 0.01 * i << ',' << 0.5 * y << ',' << (i % 7) * 0.1 << ',' << -0.3 * y << ',' << y
          << '\n';
      }
    }
    addr_ = "127.0.0.1:" + std::to_string(testing_util::free_port());
    coordinator_ = new Process(
        {kBin + "fedcoord", "--listen", addr_, "--tls-ca", pki_ + "/ca.crt", "--tls-cert", pki_ + "/coordinator.crt",
         "--tls-key", pki_ + "/coordinator.key", "--tls-crl", pki::crl_path(pki_), "--data-dir", dir_ + "/db",
         "--run-id", "", "--keep-serving", "--model", "mlp", "--hidden", "8", "--input-shape", "4", "--num-classes",
         "2", "--eval-dataset", "none", "--min-clients", "2", "--local-steps", "2", "--batch-size", "16",
         "--heartbeat-ms", "200", "--liveness-timeout-s", "30", "--round-deadline-s", "60"},
        dir_ + "/coordinator.log");
    // Up when an admin can reach it.
    const auto until = std::chrono::steady_clock::now() + 60s;
    while (std::chrono::steady_clock::now() < until && fedctl("runs list").code != 0)
      std::this_thread::sleep_for(200ms);
  }
  static void TearDownTestSuite() {
    delete coordinator_;  // SIGKILL: the suite's state is thrown away
    coordinator_ = nullptr;
    fs::remove_all(dir_);
  }

  // fedctl as `identity` from `pki_dir` (default: our admin).
  static ProgramRun fedctl(const std::string& args, const std::string& identity = "admin",
                           const std::string& pki_dir = "") {
    return testing_util::run_program(kBin + "fedctl --coordinator " + addr_ + " --pki-dir " +
                                         (pki_dir.empty() ? pki_ : pki_dir) + " --identity " + identity +
                                         " --timeout-s 20 " + args,
                                     dir_ + "/fedctl.err");
  }
  static json fedctl_json(const std::string& args) {
    auto r = fedctl("--json " + args);
    EXPECT_EQ(r.code, 0) << args << "\n" << r.err;
    return json::parse(r.out.empty() ? "{}" : r.out);
  }
  static Process* client(const std::string& name, int data) {
    return new Process({kBin + "fedclient", "--coordinator", addr_, "--tls-ca", pki_ + "/ca.crt", "--tls-cert",
                        pki_ + "/" + name + ".crt", "--tls-key", pki_ + "/" + name + ".key", "--dataset", "csv",
                        "--train-csv", dir_ + "/data" + std::to_string(data) + ".csv", "--test-csv",
                        dir_ + "/data" + std::to_string(data) + ".csv", "--state-dir",
                        dir_ + "/state-" + name, "--max-backoff-s", "1", "--poll-wait-ms", "500", "--device", "cpu",
                        "--threads", "1", "--stay"},
                       dir_ + "/" + name + ".log");
  }
  // The audit records (newest last) whose action is `action`.
  static std::vector<json> audit_of(const std::string& action) {
    std::vector<json> out;
    const json all = fedctl_json("audit --limit 0");  // kept: a range-for over a temporary's member dangles
    for (const auto& r : all["records"])
      if (r["action"] == action) out.push_back(r);
    return out;
  }

  static std::string dir_, pki_, foreign_, addr_;
  static Process* coordinator_;
};
std::string FedctlAdmin::dir_, FedctlAdmin::pki_, FedctlAdmin::foreign_, FedctlAdmin::addr_;
Process* FedctlAdmin::coordinator_ = nullptr;

TEST_F(FedctlAdmin, AdminCertificateIsServedAndEveryRequestIsAudited) {
  ASSERT_TRUE(coordinator_->running()) << coordinator_->log();
  auto r = fedctl("status");
  ASSERT_EQ(r.code, 0) << r.err;
  const auto before = audit_of("status").size();
  ASSERT_EQ(fedctl("status").code, 0);
  const auto after = audit_of("status");
  ASSERT_EQ(after.size(), before + 1);
  EXPECT_EQ(after.back()["who"], "admin");
  EXPECT_EQ(after.back()["role"], "admin");
  EXPECT_EQ(after.back()["outcome"], "ok");
  EXPECT_NEAR(after.back()["time"].get<double>(),
              std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count(), 60);
}

TEST_F(FedctlAdmin, ClientRoleCertificateIsRefusedWithExitCode3AndAudited) {
  auto r = fedctl("runs list", "hospital-1");
  EXPECT_EQ(r.code, 3) << r.out << r.err;
  EXPECT_NE(r.err.find("admin-role certificate"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("'hospital-1' has role 'client'"), std::string::npos) << r.err;
  const auto denied = audit_of("runs.list");
  ASSERT_FALSE(denied.empty());
  bool found = false;
  for (const auto& a : denied)
    found |= a["who"] == "hospital-1" && a["outcome"].get<std::string>().rfind("denied: ", 0) == 0;
  EXPECT_TRUE(found);
}

// A refused caller chooses its audit record's target: it is bounded and escaped before it is
// recorded, and `fedctl audit` prints no control byte raw.
TEST_F(FedctlAdmin, HostileAuditTargetsAreBoundedAndEscaped) {
  const std::string evil = "\"$(printf 'evil\\033[2J'; head -c 100000 /dev/zero | tr '\\0' A)\"";
  auto r = fedctl("runs show " + evil, "hospital-1");
  EXPECT_EQ(r.code, 3) << r.err;
  const auto denied = audit_of("runs.show");
  ASSERT_FALSE(denied.empty());
  const std::string target = denied.back()["target"];
  EXPECT_EQ(target.rfind("evil\\x1b[2JAAA", 0), 0u) << target.substr(0, 40);
  EXPECT_LT(target.size(), 300u);
  EXPECT_NE(target.find("more bytes)"), std::string::npos) << target;
  auto table = fedctl("audit --limit 5");
  EXPECT_EQ(table.code, 0) << table.err;
  EXPECT_EQ(table.out.find('\x1b'), std::string::npos);
  EXPECT_NE(table.out.find("evil\\x1b[2J"), std::string::npos) << table.out;
}

TEST_F(FedctlAdmin, ForeignOrMissingCertificatesCannotConnect) {
  // Signed by another CA: the TLS handshake fails, nothing reaches the service.
  auto r = testing_util::run_program(kBin + "fedctl --coordinator " + addr_ + " --tls-ca " + pki_ +
                                         "/ca.crt --tls-cert " + foreign_ + "/admin.crt --tls-key " + foreign_ +
                                         "/admin.key --timeout-s 5 status",
                                     dir_ + "/foreign.err");
  EXPECT_EQ(r.code, 3) << r.out << r.err;
  // No certificate at all (plaintext against a TLS port).
  r = testing_util::run_program(kBin + "fedctl --coordinator " + addr_ + " --insecure --timeout-s 5 status",
                                dir_ + "/none.err");
  EXPECT_EQ(r.code, 3) << r.out << r.err;
  // No credentials given: a usage error.
  r = testing_util::run_program(kBin + "fedctl --coordinator " + addr_ + " status", dir_ + "/usage.err");
  EXPECT_EQ(r.code, 2) << r.out << r.err;
  EXPECT_NE(r.err.find("--pki-dir"), std::string::npos) << r.err;
}

TEST_F(FedctlAdmin, RevokedCertificateIsRefusedWithoutARestart) {
  ASSERT_EQ(fedctl("status", "admin-2").code, 0);
  auto rv = testing_util::run_program(kBin + "fedctl pki revoke --dir " + pki_ + " admin-2", dir_ + "/revoke.err");
  ASSERT_EQ(rv.code, 0) << rv.err;
  std::this_thread::sleep_for(700ms);  // the coordinator re-checks the CRL file at most every 500 ms
  auto r = fedctl("status", "admin-2");
  EXPECT_EQ(r.code, 3) << r.out << r.err;
  EXPECT_NE(r.err.find("is revoked"), std::string::npos) << r.err;
  EXPECT_EQ(fedctl("status").code, 0);  // the others are untouched
}

TEST_F(FedctlAdmin, RunLifeCycleAndItsErrors) {
  auto created = fedctl_json("runs create life --rounds 3 --lr 0.05 --strategy fedprox --strategy-param mu=0.1");
  EXPECT_EQ(created["state"], "created");
  const auto settings = json::parse(created["config_json"].get<std::string>());
  EXPECT_EQ(settings["rounds"], 3);
  EXPECT_DOUBLE_EQ(settings["lr"].get<double>(), 0.05);
  EXPECT_DOUBLE_EQ(settings["strategy_params"]["mu"].get<double>(), 0.1);
  EXPECT_EQ(settings["model"], "mlp");  // from the coordinator's own flags

  auto r = fedctl("runs create life");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("exists already"), std::string::npos) << r.err;
  // The run's flags are checked here by the same rules as the coordinator's (a usage error)...
  r = fedctl("runs create bad --lr=-1");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("--lr"), std::string::npos) << r.err;
  r = fedctl("runs create bad --strategy nosuch");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("nosuch"), std::string::npos) << r.err;
  // ... and what arrives as JSON by the coordinator, the strategy's own checks included.
  r = fedctl("runs create bad --settings '{\"lr\": -1}'");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("run setting 'lr' = -1"), std::string::npos) << r.err;
  r = fedctl("runs create bad --strategy fedrep --local-epochs 1 --local-steps 0");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("head_epochs=1 leaves no epoch for the body"), std::string::npos) << r.err;
  r = fedctl("runs create bad --settings '{\"warp\": 9}'");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("unknown run setting 'warp'"), std::string::npos) << r.err;
  EXPECT_EQ(fedctl("runs create bad --rounds abc").code, 2);
  EXPECT_EQ(fedctl("runs pause").code, 2);
  EXPECT_EQ(fedctl("runs").code, 2);

  r = fedctl("runs pause life");  // created: nothing to pause
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("cannot pause run 'life': it is created"), std::string::npos) << r.err;
  EXPECT_EQ(fedctl_json("runs start life")["state"], "waiting");
  EXPECT_EQ(fedctl_json("runs pause life")["state"], "paused");
  EXPECT_EQ(fedctl_json("runs show life")["state"], "paused");
  // Started, it becomes the executing run (waiting for clients): resume makes it running again.
  const std::string resumed = fedctl_json("runs resume life")["state"];
  EXPECT_TRUE(resumed == "waiting" || resumed == "running") << resumed;
  EXPECT_EQ(fedctl_json("runs abort life")["state"], "aborted");
  r = fedctl("runs resume life");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("it is aborted"), std::string::npos) << r.err;
  r = fedctl("runs show nosuch");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("no run 'nosuch'"), std::string::npos) << r.err;

  bool listed = false;
  const json runs = fedctl_json("runs list");
  for (const auto& run : runs["runs"]) listed |= run["run_id"] == "life" && run["state"] == "aborted";
  EXPECT_TRUE(listed);
  const auto table = fedctl("runs list");
  EXPECT_NE(table.out.find("RUN"), std::string::npos);
  EXPECT_NE(table.out.find("life"), std::string::npos);
  // The audit has who did what: the failed resume included.
  const auto resumes = audit_of("runs.resume");
  ASSERT_GE(resumes.size(), 2u);
  EXPECT_EQ(resumes.back()["target"], "life");
  EXPECT_EQ(resumes.back()["outcome"].get<std::string>().rfind("error: ", 0), 0u);
}

TEST_F(FedctlAdmin, RealRunThenRoundsClientsModelExportAndClientRevocation) {
  std::unique_ptr<Process> h1(client("hospital-1", 0)), h2(client("hospital-2", 1));
  auto created = fedctl_json(
      "runs create real --rounds 2 --start --seed 5 --fraction-evaluate 1 --eval-attack fgsm --dp central --dp-noise 0.1");
  EXPECT_EQ(created["state"], "waiting");
  const auto until = std::chrono::steady_clock::now() + 180s;
  std::string state;
  while (std::chrono::steady_clock::now() < until) {
    state = fedctl_json("runs show real")["state"];
    if (state == "finished") break;
    std::this_thread::sleep_for(300ms);
  }
  ASSERT_EQ(state, "finished") << coordinator_->log() << h1->log();

  const auto rounds = fedctl_json("rounds list --run real")["rounds"];
  ASSERT_EQ(rounds.size(), 2u);
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ(rounds[i]["info"]["round"], i + 1);
    auto names = rounds[i]["participant_names"].get<std::vector<std::string>>();  // in registration order
    std::sort(names.begin(), names.end());
    EXPECT_EQ(names, std::vector<std::string>({"hospital-1", "hospital-2"}));
    EXPECT_GT(rounds[i]["info"]["wall_s"].get<double>(), 0);
    // proto3 JSON writes int64 as a string. 2 clients x 2 steps x batch 16:
    EXPECT_EQ(rounds[i]["samples"], "64");
  }
  auto show = fedctl("rounds show 2 --run real");
  ASSERT_EQ(show.code, 0) << show.err;
  EXPECT_NE(show.out.find("participants:"), std::string::npos);
  EXPECT_NE(show.out.find("hospital-1"), std::string::npos) << show.out;
  EXPECT_TRUE(std::regex_search(show.out, std::regex("samples: +64\n"))) << show.out;
  // The round's federated evaluation, robust accuracy included (the run's --eval-attack).
  EXPECT_NE(show.out.find("federated evaluation robust_accuracy_fgsm"), std::string::npos) << show.out;
  const auto detail = fedctl_json("rounds show 2 --run real");
  EXPECT_EQ(detail["federated_evaluation"]["clients"], 2) << detail.dump();
  EXPECT_LE(detail["federated_evaluation"]["robust_accuracy_fgsm"].get<double>(),
            detail["federated_evaluation"]["accuracy"].get<double>())
      << detail.dump();
  EXPECT_EQ(fedctl("rounds show 3 --run real").code, 1);
  // The run's differential privacy: the (epsilon, delta) spent so far, after every round.
  EXPECT_NE(show.out.find("strategy dp_epsilon"), std::string::npos) << show.out;
  const double eps1 = fedctl_json("rounds show 1 --run real")["strategy_metrics"]["dp_epsilon"].get<double>();
  const double eps2 = detail["strategy_metrics"]["dp_epsilon"].get<double>();
  EXPECT_GT(eps1, 0);
  EXPECT_GT(eps2, eps1);

  // The exported model is the stored safetensors file: mlp 4-8-2, and round 2 is not round 0.
  const std::string m0 = dir_ + "/real-0.safetensors", m2 = dir_ + "/real-2.safetensors";
  auto e = fedctl_json("model export --run real --round 2 --format safetensors --out " + m2);
  EXPECT_EQ(e["round"], 2);
  EXPECT_EQ(static_cast<uintmax_t>(e["bytes"].get<uint64_t>()), fs::file_size(m2));
  ASSERT_EQ(fedctl("model export --run real --round 0 --out " + m0).code, 0);
  const ModelState s0 = read_safetensors(m0), s2 = read_safetensors(m2);
  ASSERT_EQ(s2.names(), s0.names());
  EXPECT_EQ(s2.numel(), 4 * 8 + 8 + 8 * 2 + 2);
  EXPECT_FALSE(s0.flat().equal(s2.flat()));
  auto missing = fedctl("model export --run real --round 7 --out " + dir_ + "/x.safetensors");
  EXPECT_EQ(missing.code, 1);
  EXPECT_NE(missing.err.find("no model for round 7"), std::string::npos) << missing.err;
  EXPECT_FALSE(fs::exists(dir_ + "/x.safetensors"));
  EXPECT_EQ(fedctl("model export --run real --out " + m0 + " --format onnx").code, 2);

  // Clients: both took part in both rounds; revoking one refuses it from then on.
  auto h2info = fedctl_json("clients show hospital-2 --run real");
  EXPECT_EQ(h2info["rounds"], json({1, 2}));
  EXPECT_EQ(h2info["revoked"], false);
  auto rv = fedctl_json("clients revoke hospital-2 --run real");
  EXPECT_EQ(rv["revoked"], true);
  EXPECT_EQ(fedctl("clients revoke hospital-2 --run real").code, 1);  // already
  EXPECT_EQ(fedctl("clients show nobody --run real").code, 1);
  const auto list = fedctl_json("clients list --run real")["clients"];
  ASSERT_EQ(list.size(), 2u);
  for (const auto& c : list) EXPECT_EQ(c["revoked"], c["info"]["name"] == "hospital-2") << c;
  // hospital-2 is refused by the Federation service: its next registration fails for good.
  EXPECT_NE(h2->wait_for(30s), -1) << h2->log();
  EXPECT_NE(h2->log().find("revoked by an admin"), std::string::npos) << h2->log();
  EXPECT_TRUE(h1->running()) << h1->log();

  // An admin certificate cannot train: the Federation service refuses it.
  std::unique_ptr<Process> fake(new Process(
      {kBin + "fedclient", "--coordinator", addr_, "--tls-ca", pki_ + "/ca.crt", "--tls-cert", pki_ + "/admin.crt",
       "--tls-key", pki_ + "/admin.key", "--dataset", "csv", "--train-csv", dir_ + "/data0.csv", "--test-csv",
       dir_ + "/data0.csv",
       "--state-dir", dir_ + "/state-fake", "--max-backoff-s", "1", "--device", "cpu"},
      dir_ + "/fake.log"));
  EXPECT_NE(fake->wait_for(30s), 0);
  EXPECT_NE(fake->log().find("only 'client' may train"), std::string::npos) << fake->log();
}

// runs watch follows a run to its end, a line per round as it commits (JSON lines with --json),
// and fails with the reason on an abort, a timeout or an unknown run.
TEST_F(FedctlAdmin, RunsWatchFollowsARunLiveUntilItEnds) {
  std::unique_ptr<Process> h1(client("hospital-3", 0)), h2(client("hospital-4", 1));
  ASSERT_EQ(fedctl("runs create watched --rounds 3").code, 0);
  // Started while nobody watches yet would race; the watcher is there first.
  std::unique_ptr<Process> watch(new Process(
      {kBin + "fedctl", "--coordinator", addr_, "--pki-dir", pki_, "--json", "runs", "watch", "watched",
       "--interval-s", "0.1", "--timeout-s", "120"},
      dir_ + "/watch.log"));
  std::this_thread::sleep_for(500ms);
  EXPECT_TRUE(watch->running()) << watch->log();  // a created run: waits for it
  ASSERT_EQ(fedctl("runs start watched").code, 0);
  ASSERT_EQ(watch->wait_for(150s), 0) << watch->log() << coordinator_->log();
  std::vector<json> lines;
  std::istringstream in(watch->log());
  for (std::string line; std::getline(in, line);)
    if (!line.empty() && line[0] == '{') lines.push_back(json::parse(line));
  ASSERT_EQ(lines.size(), 3u) << watch->log();
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(lines[i]["info"]["round"], i + 1);
    EXPECT_EQ(lines[i]["participant_names"].size(), 2u);
  }
  // A finished run: the table at once, then exit 0.
  auto table = fedctl("runs watch watched");
  EXPECT_EQ(table.code, 0) << table.err;
  EXPECT_NE(table.out.find("run watched: finished (round 3 of 3)"), std::string::npos) << table.out;
  EXPECT_TRUE(std::regex_search(table.out, std::regex("ROUND +CLIENTS +DROPPED +LOSS +FED_ACC +GLOBAL_ACC +WALL_S\n"
                                                      "1 +2 +0 +[0-9.]+ ")))
      << table.out;
  EXPECT_TRUE(std::regex_search(table.out, std::regex("\n3 +2 +0 +[0-9.]+ "))) << table.out;

  // Not started within the timeout: exit 1 saying so. Aborted while watched: exit 1 saying so.
  ASSERT_EQ(fedctl("runs create doomed --rounds 2").code, 0);
  auto late = fedctl("runs watch doomed --interval-s 0.1 --timeout-s 0.5");
  EXPECT_EQ(late.code, 1);
  EXPECT_NE(late.err.find("run 'doomed' still created after 0.5 s"), std::string::npos) << late.err;
  std::unique_ptr<Process> watch2(new Process(
      {kBin + "fedctl", "--coordinator", addr_, "--pki-dir", pki_, "runs", "watch", "doomed", "--interval-s", "0.1"},
      dir_ + "/watch2.log"));
  std::this_thread::sleep_for(500ms);
  ASSERT_EQ(fedctl("runs abort doomed").code, 0);
  EXPECT_EQ(watch2->wait_for(30s), 1) << watch2->log();
  EXPECT_NE(watch2->log().find("run 'doomed' was aborted after 0 committed round(s)"), std::string::npos)
      << watch2->log();
  auto unknown = fedctl("runs watch nosuchrun");
  EXPECT_EQ(unknown.code, 1);
  EXPECT_NE(unknown.err.find("nosuchrun"), std::string::npos) << unknown.err;
}

// Every command answers --help (exit 0) without a coordinator.
TEST(FedctlCli, EveryCommandHasHelp) {
  for (const char* cmd : {"", "status", "clients list", "clients show", "clients revoke", "runs create", "runs start",
                          "runs pause", "runs resume", "runs abort", "runs list", "runs show", "runs watch", "rounds list",
                          "rounds show", "model export", "audit", "strategies", "pki init", "pki issue", "pki revoke", "pki list"}) {
    const auto r = testing_util::run_program(kBin + "fedctl " + cmd + " --help", ::testing::TempDir() + "/help.err");
    EXPECT_EQ(r.code, 0) << cmd << "\n" << r.err;
    EXPECT_NE(r.out.find("Usage:"), std::string::npos) << cmd;
  }
}

}  // namespace
}  // namespace fl
