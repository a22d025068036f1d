// End-to-end under network faults: the real fedcoord and three real fedclient processes over
// mutual TLS, each site dialing the coordinator through its own FaultProxy (tests/fault_proxy.h)
// on loopback. The coordinator's certificate names 127.0.0.1 (scripts/pki.sh), so a site
// dialing 127.0.0.1:<proxy port> verifies it as usual. With --client-names the sites' indices
// are fixed, so the same seed gives the same global model bit for bit whatever the network
// did: latency, a bandwidth cap, cut uploads and downloads must all end in the fault-free model.
#include <gtest/gtest.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <regex>

#include "common/data/idx.h"
#include "coordinator/store/state_store.h"
#include "fault_proxy.h"
#include "process_util.h"

namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using fl::testing_util::FaultProxy;
using fl::testing_util::Process;
using Clock = std::chrono::steady_clock;

const std::string kBin = std::string(FL_BINARY_DIR) + "/bin/";
constexpr int kSites = 3;

bool have_data() { return fs::exists(fl::default_fashion_mnist_dir()); }

int count(const std::string& text, const std::string& needle) {
  int n = 0;
  for (size_t p = text.find(needle); p != std::string::npos; p = text.find(needle, p + 1)) ++n;
  return n;
}

// Waits (polling, at most `timeout`) until `done` holds.
bool wait_until(const std::function<bool()>& done, std::chrono::milliseconds timeout,
                std::chrono::milliseconds every = 20ms) {
  const auto until = Clock::now() + timeout;
  while (!done()) {
    if (Clock::now() >= until) return false;
    std::this_thread::sleep_for(every);
  }
  return true;
}

// A run's outcome: exit codes and logs.
struct Outcome {
  int coordinator_code = -1;
  std::string coordinator_log;
  std::vector<int> client_codes;
  std::vector<std::string> client_logs;
};

// Three sites (hospital-1..3) and a coordinator running an MLP (~0.8 MB each way per task), each
// site behind its own FaultProxy when `proxied`.
struct FaultyFederation {
  std::string dir, pki, db, partition, addr;
  int rounds;
  std::vector<std::unique_ptr<FaultProxy>> proxies;  // proxies[i]: in front of the coordinator for site i

  FaultyFederation(const std::string& name, int rounds_, bool proxied) : rounds(rounds_) {
    dir = ::testing::TempDir() + "/faults_" + name;
    fs::remove_all(dir);
    fs::create_directories(dir);
    pki = dir + "/pki";
    db = dir + "/db";
    partition = dir + "/partition.json";
    const int port = fl::testing_util::free_port();
    addr = "127.0.0.1:" + std::to_string(port);
    EXPECT_EQ(fl::testing_util::sh(std::string(FL_SOURCE_DIR) + "/scripts/pki.sh " + pki +
                                   " --client hospital-1 --client hospital-2 --client hospital-3 --admin admin > " +
                                   dir + "/pki.log 2>&1"),
              0);
    EXPECT_EQ(fl::testing_util::sh(kBin + "fedsim partition --partition dirichlet --alpha 0.5 --clients 3 --seed 1 "
                                          "--train-limit 3000 --client-test-fraction 0.2 --save-partition " +
                                   partition + " > " + dir + "/partition.log 2>&1"),
              0);
    if (proxied)
      for (int i = 0; i < kSites; ++i) {
        fl::testing_util::FaultProxyOptions o;
        o.seed = static_cast<uint64_t>(i) + 1;
        proxies.push_back(std::make_unique<FaultProxy>("127.0.0.1", port, o));
      }
  }

  std::unique_ptr<Process> coordinator(const std::vector<std::string>& extra) const {
    std::vector<std::string> a = {kBin + "fedcoord", "--listen", addr, "--tls-ca", pki + "/ca.crt", "--tls-cert",
                                  pki + "/coordinator.crt", "--tls-key", pki + "/coordinator.key", "--data-dir", db,
                                  "--run-id", "e2e", "--model", "mlp", "--rounds", std::to_string(rounds),
                                  "--min-clients", "3", "--client-names", "hospital-1,hospital-2,hospital-3",
                                  "--local-steps", "8", "--batch-size", "32", "--lr", "0.05", "--momentum", "0.9",
                                  "--seed", "3", "--eval-dataset", "none", "--log-level", "debug",
                                  "--finish-grace-s", "3", "--heartbeat-ms", "500"};
    a.insert(a.end(), extra.begin(), extra.end());
    return std::make_unique<Process>(a, dir + "/coordinator.log");
  }

  std::unique_ptr<Process> client(int i) const {
    const std::string name = "hospital-" + std::to_string(i + 1);
    const std::string to = proxies.empty() ? addr : proxies[static_cast<size_t>(i)]->address();
    return std::make_unique<Process>(
        std::vector<std::string>{kBin + "fedclient", "--coordinator", to, "--tls-ca", pki + "/ca.crt", "--tls-cert",
                                 pki + "/" + name + ".crt", "--tls-key", pki + "/" + name + ".key",
                                 "--partition-file", partition, "--client-index", std::to_string(i),
                                 "--train-limit", "3000", "--state-dir", dir + "/" + name, "--max-backoff-s", "1",
                                 "--device", "cpu", "--threads", "1"},
        dir + "/" + name + ".log");
  }

  // Runs fedcoord and the three sites to the end; `during` runs meanwhile (the fault script).
  Outcome run(const std::vector<std::string>& extra,
              const std::function<void(Process& coordinator, std::vector<std::unique_ptr<Process>>& clients)>& during =
                  nullptr) const {
    Outcome o;
    auto coord = coordinator(extra);
    std::vector<std::unique_ptr<Process>> clients;
    for (int i = 0; i < kSites; ++i) clients.push_back(client(i));
    if (during) during(*coord, clients);
    o.coordinator_code = coord->wait_for(240s);
    o.coordinator_log = coord->log();
    for (auto& c : clients) {
      o.client_codes.push_back(c->wait_for(60s));
      o.client_logs.push_back(c->log());
    }
    return o;
  }

  std::vector<fl::ModelState> models() const {
    fl::StateStore store(db);
    std::vector<fl::ModelState> out;
    for (int r = 1; r <= rounds; ++r) {
      auto m = store.load_model("e2e", r);
      if (!m) break;
      out.push_back(std::move(*m));
    }
    return out;
  }
};

void expect_clean_exit(const Outcome& o) {
  EXPECT_EQ(o.coordinator_code, 0) << o.coordinator_log;
  for (size_t i = 0; i < o.client_codes.size(); ++i) EXPECT_EQ(o.client_codes[i], 0) << o.client_logs[i];
}

// The global model after each round of the fault-free run (the sites dial fedcoord directly),
// computed once for the tests that compare against it.
const std::vector<fl::ModelState>& fault_free_models() {
  static const std::vector<fl::ModelState> models = [] {
    // ctest runs each test as its own process, two at a time: a directory of this process's own.
    FaultyFederation f("baseline_" + std::to_string(::getpid()), 2, /*proxied=*/false);
    const Outcome o = f.run({});
    expect_clean_exit(o);
    return f.models();
  }();
  return models;
}

void expect_same_models(const FaultyFederation& f) {
  const auto& expected = fault_free_models();
  const auto got = f.models();
  ASSERT_EQ(expected.size(), 2u);
  ASSERT_EQ(got.size(), 2u);
  for (size_t r = 0; r < got.size(); ++r)
    EXPECT_TRUE(got[r].equal(expected[r])) << "round " << r + 1 << ": the global model differs from the fault-free run's";
}

// How many times the coordinator accepted (round, client)'s fit update, duplicates apart.
int accepted_once(const std::string& log, int round, int client) {
  const std::string line = "accepted e2e/" + std::to_string(round) + "/" + std::to_string(client) + "/fit from client #" +
                           std::to_string(client);
  return count(log, line + "\n") + count(log, line + "\r\n");
}

// "round R/N: clients C (dropped D) ... (X.Xs)": C, D and the round's wall time.
struct RoundLine {
  int clients = -1, dropped = -1;
  double seconds = -1;
};
RoundLine round_line(const std::string& log, int round, int rounds) {
  const std::regex re("round " + std::to_string(round) + "/" + std::to_string(rounds) +
                      ": clients ([0-9]+) \\(dropped ([0-9]+)\\)[^\\n]*\\(([0-9.]+)s\\)");
  std::smatch m;
  RoundLine r;
  if (std::regex_search(log, m, re)) {
    r.clients = std::stoi(m[1].str());
    r.dropped = std::stoi(m[2].str());
    r.seconds = std::stod(m[3].str());
  }
  return r;
}

// (a) A slow, narrow link: 50 ms each way on every chunk and 5 MB/s each way, on every site.
// Two rounds complete and end in the fault-free run's models, bit for bit.
TEST(FaultProxyE2E, LatencyAndBandwidthCapLeaveTheModelBitIdentical) {
  if (!have_data()) GTEST_SKIP() << "no Fashion-MNIST";
  ASSERT_EQ(fault_free_models().size(), 2u);
  FaultyFederation f("slow_link", 2, /*proxied=*/true);
  for (auto& p : f.proxies) {
    p->set_latency(50ms);
    p->set_bandwidth(5e6);
  }
  const Outcome o = f.run({});
  expect_clean_exit(o);
  EXPECT_GT(round_line(o.coordinator_log, 2, 2).clients, 0) << o.coordinator_log;
  for (int r = 1; r <= 2; ++r)
    for (int c = 0; c < kSites; ++c) EXPECT_EQ(accepted_once(o.coordinator_log, r, c), 1) << r << "/" << c;
  for (const auto& p : f.proxies) {  // the model and the update of both rounds went through it
    EXPECT_GT(p->bytes_to_client(), 2u * 700000u);
    EXPECT_GT(p->bytes_to_target(), 2u * 700000u);
    EXPECT_EQ(p->faults(), 0u);
  }
  expect_same_models(f);
}

// (b) Connections cut in mid-transfer every 300 KB for a while, then healed: site 1's uploads
// closed (FIN) and site 2's reset (RST) six times each (past fedclient's five tries of one
// upload, so it reconnects, registers again and re-sends the update it trained), site 3's
// downloads reset three times. The coordinator takes each update once, and the models are
// the fault-free run's, bit for bit.
TEST(FaultProxyE2E, CutUploadsAndDownloadsAreRetriedAndAcceptedOnce) {
  if (!have_data()) GTEST_SKIP() << "no Fashion-MNIST";
  ASSERT_EQ(fault_free_models().size(), 2u);
  FaultyFederation f("cuts", 2, /*proxied=*/true);
  using K = FaultProxy::FaultKind;
  using D = FaultProxy::Direction;
  const std::vector<std::pair<K, D>> faults = {{K::kClose, D::kToTarget}, {K::kReset, D::kToTarget},
                                               {K::kReset, D::kToClient}};
  const std::vector<uint64_t> cuts = {6, 6, 3};  // then healed
  for (size_t i = 0; i < faults.size(); ++i) {
    f.proxies[i]->set_fault_kind(faults[i].first);
    f.proxies[i]->set_drop_direction(faults[i].second);
    f.proxies[i]->set_drop_after_bytes(300000);
  }
  const Outcome o = f.run({}, [&](Process& coord, std::vector<std::unique_ptr<Process>>&) {
    std::vector<bool> healed(faults.size(), false);
    const bool all = wait_until(
        [&] {
          for (size_t i = 0; i < faults.size(); ++i)
            if (!healed[i] && f.proxies[i]->faults() >= cuts[i]) {
              f.proxies[i]->heal();
              healed[i] = true;
            }
          return std::count(healed.begin(), healed.end(), true) == 3 || !coord.running();
        },
        120s);
    EXPECT_TRUE(all) << "faults injected: " << f.proxies[0]->faults() << " " << f.proxies[1]->faults() << " "
                     << f.proxies[2]->faults();
  });
  expect_clean_exit(o);
  for (size_t i = 0; i < faults.size(); ++i) {
    EXPECT_GE(f.proxies[i]->faults(), cuts[i]);
    const std::string& log = o.client_logs[i];
    EXPECT_GE(count(log, "retrying in"), 1) << log;  // EdgeClient's backoff
    if (faults[i].second == D::kToTarget)  // past its retries, the trained update goes again
      EXPECT_GE(count(log, "re-sending the fit update the coordinator did not acknowledge"), 1) << log;
    else  // the download failed: it reconnected and registered again
      EXPECT_GE(count(log, "registered with"), 2) << log;
  }
  for (int r = 1; r <= 2; ++r)
    for (int c = 0; c < kSites; ++c)
      EXPECT_EQ(accepted_once(o.coordinator_log, r, c), 1) << "round " << r << " client " << c << "\n"
                                                           << o.coordinator_log;
  EXPECT_EQ(round_line(o.coordinator_log, 1, 2).dropped, 0) << o.coordinator_log;
  EXPECT_EQ(round_line(o.coordinator_log, 2, 2).dropped, 0) << o.coordinator_log;
  expect_same_models(f);
}

// (c) A partition: site 3's link goes silent (blackhole: nothing delivered, nothing closed)
// after it asked for its round-1 task and before the task reached it. Round 1 ends with the
// other two at --round-deadline-s 10, not later; healed, site 3 receives the task the
// coordinator no longer has, lets it go, and takes part in round 2.
TEST(FaultProxyE2E, BlackholedSiteIsDroppedAtTheDeadlineAndRejoinsOnceHealed) {
  if (!have_data()) GTEST_SKIP() << "no Fashion-MNIST";
  FaultyFederation f("blackhole", 2, /*proxied=*/true);
  FaultProxy& link = *f.proxies[2];
  const auto latency = 1000ms;  // a slow link first, so that the partition's timing is certain
  link.set_latency(latency);
  const Outcome o = f.run(
      {"--round-deadline-s", "10", "--liveness-timeout-s", "60"},
      [&](Process& coord, std::vector<std::unique_ptr<Process>>&) {
        // Registered at T (the third: round 1 starts and posts its tasks) ...
        ASSERT_TRUE(wait_until([&] { return coord.log().find("client 'hospital-3' registered as #2") != std::string::npos; },
                               120s, 2ms))
            << coord.log();
        // ... the reply reaches the site (T + 1 s), which polls (and heartbeats) at once: that
        // reaches the coordinator at T + 2 s, the poll's answer (the task) would reach the site
        // at T + 3 s and the site's download request the coordinator at T + 4 s. The partition
        // starts half way, at T + 2.5 s: the task is handed out, its model not asked for.
        const uint64_t down = link.bytes_to_client();
        ASSERT_TRUE(wait_until([&] { return link.bytes_to_client() > down; }, 30s, 2ms));
        const uint64_t up = link.bytes_to_target();
        ASSERT_TRUE(wait_until([&] { return link.bytes_to_target() > up; }, 30s, 2ms));
        std::this_thread::sleep_for(latency / 2);
        link.set_blackhole(true);
        ASSERT_TRUE(wait_until([&] { return coord.log().find("round 1/2:") != std::string::npos || !coord.running(); },
                               60s))
            << coord.log();
        link.heal();
      });
  expect_clean_exit(o);
  const RoundLine r1 = round_line(o.coordinator_log, 1, 2), r2 = round_line(o.coordinator_log, 2, 2);
  EXPECT_EQ(r1.clients, 2) << o.coordinator_log;
  EXPECT_EQ(r1.dropped, 1) << o.coordinator_log;
  EXPECT_NE(o.coordinator_log.find("client 2 dropped: missed the round deadline"), std::string::npos)
      << o.coordinator_log;
  EXPECT_GE(r1.seconds, 10.0) << o.coordinator_log;
  EXPECT_LT(r1.seconds, 12.0) << "round 1 waited past its deadline\n" << o.coordinator_log;
  EXPECT_EQ(r2.clients, 3) << o.coordinator_log;
  EXPECT_EQ(accepted_once(o.coordinator_log, 1, 2), 0) << o.coordinator_log;
  EXPECT_EQ(accepted_once(o.coordinator_log, 2, 2), 1) << o.coordinator_log;
  EXPECT_EQ(link.faults(), 0u);
  // The site was handed round 1's task before the partition and asked for its model after it.
  EXPECT_NE(o.client_logs[2].find("round 1: the fit task is gone"), std::string::npos) << o.client_logs[2];
}

// (c, mid-upload) The partition comes in the middle of site 3's round-1 upload (its link capped
// at 400 KB/s, so that the upload takes two seconds): the stalled stream does not hold round 1
// past its deadline; healed, the rest of the late update arrives and is not aggregated into
// round 1, and site 3 takes part in round 2.
TEST(FaultProxyE2E, PartitionInMidUploadDoesNotHoldTheRoundPastItsDeadline) {
  if (!have_data()) GTEST_SKIP() << "no Fashion-MNIST";
  FaultyFederation f("blackhole_upload", 2, /*proxied=*/true);
  FaultProxy& link = *f.proxies[2];
  link.set_bandwidth(400e3);
  const Outcome o = f.run({"--round-deadline-s", "10", "--liveness-timeout-s", "60"},
                          [&](Process& coord, std::vector<std::unique_ptr<Process>>&) {
                            // Uploads are the only large traffic towards the coordinator.
                            ASSERT_TRUE(wait_until([&] { return link.bytes_to_target() > 250000; }, 120s, 2ms));
                            link.set_blackhole(true);
                            ASSERT_TRUE(wait_until(
                                [&] { return coord.log().find("round 1/2:") != std::string::npos || !coord.running(); },
                                60s))
                                << coord.log();
                            link.heal();
                          });
  expect_clean_exit(o);
  const RoundLine r1 = round_line(o.coordinator_log, 1, 2), r2 = round_line(o.coordinator_log, 2, 2);
  EXPECT_EQ(r1.clients, 2) << o.coordinator_log;
  EXPECT_EQ(r1.dropped, 1) << o.coordinator_log;
  EXPECT_GE(r1.seconds, 10.0) << o.coordinator_log;
  EXPECT_LT(r1.seconds, 12.0) << "round 1 waited past its deadline\n" << o.coordinator_log;
  EXPECT_EQ(r2.clients, 3) << o.coordinator_log;
  EXPECT_EQ(accepted_once(o.coordinator_log, 2, 2), 1) << o.coordinator_log;
  EXPECT_EQ(link.faults(), 0u);
  // Round 1 was aggregated from sites 1 and 2 alone. The rest of the stalled upload may still
  // arrive once healed: it is refused then, never stored nor acknowledged (docs/faults.md).
  fl::StateStore store(f.db);
  const auto rounds = store.rounds("e2e");
  ASSERT_EQ(rounds.size(), 2u);
  const auto record = nlohmann::json::parse(rounds[0].json);
  EXPECT_EQ(record["dropped"], nlohmann::json::array({2})) << rounds[0].json;
  EXPECT_EQ(record["failed"]["2"], "missed the round deadline") << rounds[0].json;
  EXPECT_EQ(o.coordinator_log.find("accepted e2e/1/2/fit"), std::string::npos) << o.coordinator_log;
  EXPECT_FALSE(store.has_update("e2e", 1, 2));
}

}  // namespace
