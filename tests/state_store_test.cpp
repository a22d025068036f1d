#include <gtest/gtest.h>
#include <rocksdb/db.h>
#include <rocksdb/options.h>
#include <sys/wait.h>
#include <torch/torch.h>
#include <unistd.h>

#include <cmath>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "common/io/safetensors.h"
#include "coordinator/store/state_store.h"
#include "expect_error.h"
#include "temp_dir.h"

namespace fl {
namespace {

using fl::testing_util::expect_error;
using fl::testing_util::expect_error_of;
using fl::testing_util::TempDir;

namespace fs = std::filesystem;

// Bytes with every value 0..255, NULs included, so that nothing is treated as text.
std::string binary(size_t n, int seed) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>((i * 31 + seed * 7) & 0xff);
  return s;
}

void spit(const std::string& path, const std::string& text) { std::ofstream(path, std::ios::binary) << text; }

StoredUpdate make_update(int round, int client, size_t payload_bytes = 100) {
  StoredUpdate u;
  u.round = round;
  u.client_index = client;
  u.num_examples = 1000 + client;
  u.metrics = {{"loss", 0.25 * client + round}, {"accuracy", 0.5}};
  u.manifest = binary(17, client + 100);
  u.payload = binary(payload_bytes, client * 1000 + round);
  return u;
}

ModelState make_model(float base) {
  return ModelState({{"fc.weight", torch::arange(12, torch::kFloat).view({3, 4}) * base},
                     {"fc.bias", torch::tensor({base, -base, 0.125f})},
                     {"bn.num_batches_tracked", torch::tensor({int64_t{7} + static_cast<int64_t>(base)}, torch::kLong)},
                     {"half", torch::tensor({1.5f, base}).to(torch::kHalf)}});
}

RunRecord make_run(const std::string& id) {
  RunRecord r;
  r.run_id = id;
  r.config_json = R"({"strategy":"fedavg","rounds":12})";
  r.state = "running";
  r.current_round = 1;
  r.total_rounds = 12;
  return r;
}

void expect_run_eq(const RunRecord& a, const RunRecord& b) {
  EXPECT_EQ(a.run_id, b.run_id);
  EXPECT_EQ(a.config_json, b.config_json);
  EXPECT_EQ(a.state, b.state);
  EXPECT_EQ(a.current_round, b.current_round);
  EXPECT_EQ(a.total_rounds, b.total_rounds);
}

TEST(StateStore, RunRecordRoundTripsAndSurvivesReopen) {
  TempDir tmp;
  RunRecord a = make_run("run-a");
  RunRecord b = make_run("run-b");
  b.state = "waiting";
  b.current_round = 0;
  b.total_rounds = 3;
  b.config_json = std::string("{\"x\":\"\xc3\xa9\"}");
  {
    StateStore store(tmp.file("db"));
    EXPECT_FALSE(store.load_run("run-a").has_value());
    EXPECT_TRUE(store.list_runs().empty());
    store.save_run(a);
    store.save_run(b);
    auto back = store.load_run("run-a");
    ASSERT_TRUE(back.has_value());
    expect_run_eq(*back, a);
    a.state = "finished";  // overwrite
    a.current_round = 13;
    store.save_run(a);
  }
  StateStore store(tmp.file("db"));
  auto back = store.load_run("run-a");
  ASSERT_TRUE(back.has_value());
  expect_run_eq(*back, a);
  const auto runs = store.list_runs();
  ASSERT_EQ(runs.size(), 2u);
  expect_run_eq(runs[0], a);
  expect_run_eq(runs[1], b);
  EXPECT_FALSE(store.load_run("run-c").has_value());
  EXPECT_THROW(store.load_run(""), std::invalid_argument);
  EXPECT_THROW(store.save_run(make_run(std::string("a\0b", 3))), std::invalid_argument);
}

TEST(StateStore, RegisterClientGivesStableIdempotentIndicesPerRun) {
  TempDir tmp;
  {
    StateStore store(tmp.file("db"));
    EXPECT_EQ(store.register_client("r1", "alice", 600, 100), 0);
    EXPECT_EQ(store.register_client("r1", "bob", 500, 50), 1);
    EXPECT_EQ(store.register_client("r1", "alice", 999, 999), 0);  // known: same index, record kept
    EXPECT_EQ(store.register_client("r2", "bob", 1, 2), 0);        // indices are per run
    EXPECT_EQ(store.register_client("r1", "carol", 10, 20), 2);
    EXPECT_EQ(store.client_index("r1", "bob"), 1);
    EXPECT_FALSE(store.client_index("r1", "dave").has_value());
  }
  StateStore store(tmp.file("db"));
  EXPECT_EQ(store.register_client("r1", "bob", 0, 0), 1);
  EXPECT_EQ(store.register_client("r1", "dave", 7, 8), 3);  // continues after reopen
  const auto cs = store.clients("r1");
  ASSERT_EQ(cs.size(), 4u);
  const std::vector<std::string> names{"alice", "bob", "carol", "dave"};
  for (size_t i = 0; i < cs.size(); ++i) {
    EXPECT_EQ(cs[i].index, static_cast<int>(i));
    EXPECT_EQ(cs[i].name, names[i]);
    EXPECT_GT(cs[i].registered_at, 1.6e9);  // wall clock seconds
  }
  EXPECT_EQ(cs[0].num_train_examples, 600);
  EXPECT_EQ(cs[0].num_test_examples, 100);
  EXPECT_EQ(cs[3].num_train_examples, 7);
  EXPECT_EQ(cs[3].num_test_examples, 8);
  const auto r2 = store.clients("r2");
  ASSERT_EQ(r2.size(), 1u);
  EXPECT_EQ(r2[0].name, "bob");
  EXPECT_EQ(r2[0].num_test_examples, 2);
  EXPECT_TRUE(store.clients("r3").empty());
}

TEST(StateStore, DuplicateUpdateIsRejectedAndTheFirstIsKept) {
  TempDir tmp;
  StateStore store(tmp.file("db"));
  StoredUpdate first = make_update(1, 4, 5000);  // large enough to go to a blob file
  first.metrics["nan"] = std::numeric_limits<double>::quiet_NaN();
  first.metrics["inf"] = -std::numeric_limits<double>::infinity();
  EXPECT_FALSE(store.has_update("r", 1, 4));
  EXPECT_TRUE(store.put_update("r", first));
  EXPECT_TRUE(store.has_update("r", 1, 4));
  EXPECT_FALSE(store.has_update("r", 1, 5));
  EXPECT_FALSE(store.has_update("r", 2, 4));
  EXPECT_FALSE(store.has_update("other", 1, 4));

  StoredUpdate second = make_update(1, 4, 64);
  second.num_examples = 1;
  second.payload = "different";
  EXPECT_FALSE(store.put_update("r", second));

  const auto got = store.updates("r", 1);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].round, 1);
  EXPECT_EQ(got[0].client_index, 4);
  EXPECT_EQ(got[0].num_examples, first.num_examples);
  EXPECT_EQ(got[0].payload, first.payload);
  EXPECT_EQ(got[0].manifest, first.manifest);
  ASSERT_EQ(got[0].metrics.size(), 4u);
  EXPECT_DOUBLE_EQ(got[0].metrics.at("loss"), first.metrics.at("loss"));
  EXPECT_DOUBLE_EQ(got[0].metrics.at("accuracy"), 0.5);
  EXPECT_TRUE(std::isnan(got[0].metrics.at("nan")));
  EXPECT_EQ(got[0].metrics.at("inf"), -std::numeric_limits<double>::infinity());
}

// A round has several exchanges with a client (fit, evaluate, fit-2...): each is its own
// record, so a second upload in a round is not taken for a duplicate of the first, and a
// restarted coordinator finds each phase's updates apart. Pruning removes every phase's files.
TEST(StateStore, UpdatesAreKeyedByPhase) {
  TempDir tmp;
  StateStore store(tmp.file("db"));
  StoredUpdate fit = make_update(1, 2, 64), eval = make_update(1, 2, 16), second = make_update(1, 3, 8);
  eval.phase = "evaluate";
  eval.payload = "evaluation";
  second.phase = "fit-2";
  EXPECT_TRUE(store.put_update("r", fit));
  EXPECT_TRUE(store.put_update("r", eval));
  EXPECT_TRUE(store.put_update("r", second));
  EXPECT_FALSE(store.put_update("r", eval));  // the same phase again: a duplicate
  EXPECT_TRUE(store.has_update("r", 1, 2, "evaluate"));
  EXPECT_FALSE(store.has_update("r", 1, 3, "evaluate"));
  EXPECT_EQ(store.update_clients("r", 1), (std::vector<int>{2}));
  EXPECT_EQ(store.update_clients("r", 1, "fit-2"), (std::vector<int>{3}));
  const auto evals = store.updates("r", 1, "evaluate");
  ASSERT_EQ(evals.size(), 1u);
  EXPECT_EQ(evals[0].phase, "evaluate");
  EXPECT_EQ(evals[0].payload, "evaluation");
  EXPECT_EQ(store.updates("r", 1)[0].payload, fit.payload);
  EXPECT_THROW(store.begin_update("r", 1, 2, "Fit/2"), std::invalid_argument);  // names go into keys and files

  RunRecord run;
  run.run_id = "r";
  run.state = "running";
  run.total_rounds = 3;
  store.save_run(run);
  store.commit_round(run, 1, make_model(1), "", RoundRecord{1, "{}"});
  store.commit_round(run, 2, make_model(2), "", RoundRecord{2, "{}"});
  store.prune_updates("r", 1);
  EXPECT_TRUE(store.updates("r", 1, "evaluate").empty());
  EXPECT_TRUE(store.update_clients("r", 1, "fit-2").empty());
  EXPECT_EQ(std::distance(fs::directory_iterator(fs::path(tmp.file("db")) / "payloads"), fs::directory_iterator()), 0);
}

TEST(StateStore, UpdatesAreSortedByClientAndRoundsInNumericOrder) {
  TempDir tmp;
  {
    StateStore store(tmp.file("db"));
    // Inserted out of order; clients 256 and 1 would swap under a decimal/little-endian key.
    for (int c : {256, 3, 1, 10, 2}) ASSERT_TRUE(store.put_update("run", make_update(9, c)));
    for (int c : {5, 0}) ASSERT_TRUE(store.put_update("run", make_update(10, c)));
    ASSERT_TRUE(store.put_update("run", make_update(1, 7)));
    ASSERT_TRUE(store.put_update("run2", make_update(9, 0)));  // another run is not mixed in
  }
  StateStore store(tmp.file("db"));
  const auto r9 = store.updates("run", 9);
  std::vector<int> clients;
  for (const auto& u : r9) {
    clients.push_back(u.client_index);
    EXPECT_EQ(u.round, 9);
    EXPECT_EQ(u.payload, make_update(9, u.client_index).payload);
    EXPECT_EQ(u.num_examples, 1000 + u.client_index);
  }
  EXPECT_EQ(clients, (std::vector<int>{1, 2, 3, 10, 256}));
  EXPECT_EQ(store.update_clients("run", 9), (std::vector<int>{1, 2, 3, 10, 256}));
  const auto r10 = store.updates("run", 10);
  ASSERT_EQ(r10.size(), 2u);
  EXPECT_EQ(r10[0].client_index, 0);
  EXPECT_EQ(r10[1].client_index, 5);
  EXPECT_EQ(r10[1].payload, make_update(10, 5).payload);
  EXPECT_EQ(store.updates("run", 1).size(), 1u);
  EXPECT_TRUE(store.updates("run", 2).empty());
  EXPECT_EQ(store.updates("run2", 9).size(), 1u);
}

TEST(StateStore, CommitRoundIsDurableAndConsistentAfterReopen) {
  TempDir tmp;
  const ModelState m0 = make_model(1.0f), m1 = make_model(2.0f), m2 = make_model(3.5f);
  RunRecord run = make_run("exp");
  {
    StateStore store(tmp.file("db"));
    EXPECT_FALSE(store.latest_model_version("exp").has_value());
    EXPECT_FALSE(store.load_model("exp", 0).has_value());
    EXPECT_EQ(store.load_strategy_state("exp"), "");
    store.save_run(run);
    store.save_initial_model("exp", m0);
    EXPECT_EQ(store.latest_model_version("exp"), 0);
    store.commit_round(run, 1, m1, binary(300, 1), RoundRecord{1, R"({"round":1,"participants":[0,1]})"});
    run.current_round = 2;
    store.commit_round(run, 2, m2, binary(300, 2), RoundRecord{2, R"({"round":2,"dropped":[1]})"});
    EXPECT_THROW(store.commit_round(run, 3, m2, "", RoundRecord{4, "{}"}), std::invalid_argument);
    EXPECT_THROW(store.commit_round(run, 0, m2, "", RoundRecord{0, "{}"}), std::invalid_argument);
  }
  StateStore store(tmp.file("db"));
  auto back = store.load_run("exp");
  ASSERT_TRUE(back.has_value());
  EXPECT_EQ(back->current_round, 3);  // the next round to run
  EXPECT_EQ(back->state, "running");
  EXPECT_EQ(back->config_json, run.config_json);
  EXPECT_EQ(store.latest_model_version("exp"), 2);
  for (auto [version, expected] : {std::pair<int, const ModelState*>{0, &m0}, {1, &m1}, {2, &m2}}) {
    auto m = store.load_model("exp", version);
    ASSERT_TRUE(m.has_value()) << version;
    EXPECT_TRUE(m->equal(*expected)) << version;
    EXPECT_EQ(m->names(), expected->names());
  }
  EXPECT_FALSE(store.load_model("exp", 1).value().equal(m2));
  EXPECT_FALSE(store.load_model("exp", 3).has_value());
  EXPECT_EQ(store.load_strategy_state("exp"), binary(300, 2));
  const auto rs = store.rounds("exp");
  ASSERT_EQ(rs.size(), 2u);
  EXPECT_EQ(rs[0].round, 1);
  EXPECT_EQ(rs[0].json, R"({"round":1,"participants":[0,1]})");
  EXPECT_EQ(rs[1].round, 2);
  EXPECT_EQ(rs[1].json, R"({"round":2,"dropped":[1]})");
  EXPECT_FALSE(store.latest_model_version("ex").has_value());  // a prefix of the run id is another run
}

TEST(StateStore, RoundsAndModelVersionsSortNumerically) {
  TempDir tmp;
  StateStore store(tmp.file("db"));
  RunRecord run = make_run("r");
  const ModelState m = make_model(1.0f);
  for (int round : {2, 9, 10, 1, 255, 256}) store.commit_round(run, round, m, "", RoundRecord{round, std::to_string(round)});
  std::vector<int> order;
  for (const auto& r : store.rounds("r")) {
    order.push_back(r.round);
    EXPECT_EQ(r.json, std::to_string(r.round));
  }
  EXPECT_EQ(order, (std::vector<int>{1, 2, 9, 10, 255, 256}));
  EXPECT_EQ(store.latest_model_version("r"), 256);
}

// The child process writes and dies without closing the database (as under kill -9); the
// parent must find every update whose put_update had returned.
TEST(StateStore, SyncedUpdatesSurviveAChildProcessCrash) {
  for (const bool use_kill : {false, true}) {
    TempDir tmp;
    const std::string dir = tmp.file("db");
    const pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      int code = 0;
      try {
        auto* store = new StateStore(dir);  // never deleted: no close, no flush
        if (!store->put_update("crash", make_update(3, 1, 20000))) code = 3;
        if (!store->put_update("crash", make_update(3, 0, 10))) code = 4;
        store->append_audit(R"({"event":"child"})");
      } catch (...) {
        code = 2;
      }
      if (use_kill && code == 0) raise(SIGKILL);
      _exit(code);
    }
    int status = 0;
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    if (use_kill) {
      ASSERT_TRUE(WIFSIGNALED(status));
      EXPECT_EQ(WTERMSIG(status), SIGKILL);
    } else {
      ASSERT_TRUE(WIFEXITED(status));
      ASSERT_EQ(WEXITSTATUS(status), 0);
    }
    StateStore store(dir);
    const auto got = store.updates("crash", 3);
    ASSERT_EQ(got.size(), 2u) << "kill=" << use_kill;
    EXPECT_EQ(got[0].client_index, 0);
    EXPECT_EQ(got[0].payload, make_update(3, 0, 10).payload);
    EXPECT_EQ(got[1].client_index, 1);
    EXPECT_EQ(got[1].payload, make_update(3, 1, 20000).payload);
    EXPECT_EQ(got[1].manifest, make_update(3, 1).manifest);
    EXPECT_FALSE(store.put_update("crash", make_update(3, 1)));  // still a duplicate
    EXPECT_EQ(store.audit(), (std::vector<std::string>{R"({"event":"child"})"}));
  }
}

TEST(StateStore, OpeningARegularFileFailsNamingThePath) {
  TempDir tmp;
  const std::string file = tmp.file("not_a_db");
  std::ofstream(file) << "hello";
  expect_error([&] { StateStore store(file); }, {file, "RocksDB"});
}

TEST(StateStore, PruneUpdatesKeepsTheLastRoundsAndTheRoundInProgress) {
  TempDir tmp;
  StateStore store(tmp.file("db"));
  RunRecord run = make_run("p");
  const ModelState m = make_model(1.0f);
  store.save_initial_model("p", m);
  for (int round = 1; round <= 5; ++round) {
    for (int c = 0; c < 3; ++c) ASSERT_TRUE(store.put_update("p", make_update(round, c)));
    ASSERT_TRUE(store.put_update("other", make_update(round, 0)));
  }
  store.prune_updates("p", 0);  // only version 0 committed: nothing to delete
  for (int round = 1; round <= 5; ++round) EXPECT_EQ(store.updates("p", round).size(), 3u);
  for (int round = 1; round <= 4; ++round) store.commit_round(run, round, m, "", RoundRecord{round, "{}"});
  // Rounds 1-4 committed, 5 in progress; keep the last 2 committed rounds (3, 4).
  store.prune_updates("p", 2);
  EXPECT_TRUE(store.updates("p", 1).empty());
  EXPECT_TRUE(store.updates("p", 2).empty());
  EXPECT_FALSE(store.has_update("p", 2, 1));
  EXPECT_EQ(store.updates("p", 3).size(), 3u);
  EXPECT_EQ(store.updates("p", 4).size(), 3u);
  EXPECT_EQ(store.updates("p", 5).size(), 3u);
  for (int round = 1; round <= 5; ++round) EXPECT_EQ(store.updates("other", round).size(), 1u);  // other run untouched
  store.prune_updates("p", 0);
  EXPECT_TRUE(store.updates("p", 4).empty());
  EXPECT_EQ(store.updates("p", 5).size(), 3u);  // in progress: never pruned
  EXPECT_THROW(store.prune_updates("p", -1), std::invalid_argument);
}

// Payloads stream to a file while they arrive: nothing is visible before commit, an abandoned
// writer leaves no file, a second writer for the same update loses, and a payload file that no
// longer matches its metadata is reported as corrupt, naming the file.
TEST(StateStore, StreamedUpdatesAreVisibleOnlyOnceCommitted) {
  TempDir tmp;
  StateStore store(tmp.file("db"));
  const fs::path payloads = fs::path(tmp.file("db")) / "payloads";
  auto count_files = [&] { return std::distance(fs::directory_iterator(payloads), fs::directory_iterator()); };
  StoredUpdate u = make_update(2, 1, 0);
  const std::string part1 = binary(3 << 20, 5), part2 = binary(1000, 6);
  {
    auto abandoned = store.begin_update("s", 2, 1);
    ASSERT_TRUE(abandoned);
    abandoned->append(part1.data(), part1.size());
    EXPECT_FALSE(store.has_update("s", 2, 1));
  }
  EXPECT_EQ(count_files(), 0);  // the abandoned temporary file is gone
  auto w1 = store.begin_update("s", 2, 1), w2 = store.begin_update("s", 2, 1);
  ASSERT_TRUE(w1 && w2);
  w1->append(part1);
  w1->append(part2.data(), part2.size());
  EXPECT_EQ(w1->bytes_appended(), part1.size() + part2.size());
  EXPECT_FALSE(store.has_update("s", 2, 1));
  ASSERT_TRUE(w1->commit(u));
  w2->append(std::string("late"));
  EXPECT_FALSE(w2->commit(u));  // the first one stands
  w2.reset();
  EXPECT_FALSE(store.begin_update("s", 2, 1));  // stored: no writer for it any more
  auto got = store.updates("s", 2);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].payload, part1 + part2);
  EXPECT_EQ(got[0].manifest, u.manifest);
  EXPECT_EQ(count_files(), 1);
  StoredUpdate wrong = make_update(3, 1);
  EXPECT_THROW(store.begin_update("s", 2, 0)->commit(wrong), std::invalid_argument);  // metadata for another key
  // Truncate the payload file behind the store's back.
  const auto file = fs::directory_iterator(payloads)->path();
  fs::resize_file(file, 10);
  try {
    store.updates("s", 2);
    FAIL() << "a truncated payload file must be reported";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find(file.filename().string()), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("has 10 bytes, the metadata says"), std::string::npos) << e.what();
  }
}

TEST(StateStore, PruningRemovesThePayloadFiles) {
  TempDir tmp;
  StateStore store(tmp.file("db"));
  const ModelState m = make_model(1.0f);
  store.save_initial_model("q", m);
  for (int round = 1; round <= 3; ++round) ASSERT_TRUE(store.put_update("q", make_update(round, 0)));
  RunRecord run = make_run("q");
  for (int round = 1; round <= 3; ++round) store.commit_round(run, round, m, "", RoundRecord{round, "{}"});
  const fs::path payloads = fs::path(tmp.file("db")) / "payloads";
  EXPECT_EQ(std::distance(fs::directory_iterator(payloads), fs::directory_iterator()), 3);
  store.prune_updates("q", 1);  // keep round 3
  EXPECT_EQ(std::distance(fs::directory_iterator(payloads), fs::directory_iterator()), 1);
  EXPECT_EQ(store.updates("q", 3).size(), 1u);
}

TEST(StateStore, AuditIsAppendOnlyAcrossReopen) {
  TempDir tmp;
  {
    StateStore store(tmp.file("db"));
    EXPECT_TRUE(store.audit().empty());
    store.append_audit(R"({"n":0})");
    store.append_audit(R"({"n":1})");
  }
  StateStore store(tmp.file("db"));
  store.append_audit(R"({"n":2})");
  EXPECT_EQ(store.audit(), (std::vector<std::string>{R"({"n":0})", R"({"n":1})", R"({"n":2})"}));
}

TEST(StateStore, OpensExistingDatabaseWithExtraColumnFamilies) {
  TempDir tmp;
  {
    rocksdb::Options o;
    o.create_if_missing = true;
    rocksdb::DB* raw = nullptr;
    ASSERT_TRUE(rocksdb::DB::Open(o, tmp.file("db"), &raw).ok());
    rocksdb::ColumnFamilyHandle* extra = nullptr;
    ASSERT_TRUE(raw->CreateColumnFamily(rocksdb::ColumnFamilyOptions(), "from_the_future", &extra).ok());
    ASSERT_TRUE(raw->Put(rocksdb::WriteOptions(), extra, "k", "v").ok());
    raw->DestroyColumnFamilyHandle(extra);
    delete raw;
  }
  {
    StateStore store(tmp.file("db"));
    store.save_run(make_run("x"));
  }
  StateStore store(tmp.file("db"));
  EXPECT_TRUE(store.load_run("x").has_value());
}

TEST(StateStore, CorruptValuesNameTheColumnFamilyAndKey) {
  TempDir tmp;
  { StateStore store(tmp.file("db")); store.save_run(make_run("bad-run")); }
  {
    std::vector<std::string> names;
    ASSERT_TRUE(rocksdb::DB::ListColumnFamilies(rocksdb::DBOptions(), tmp.file("db"), &names).ok());
    std::vector<rocksdb::ColumnFamilyDescriptor> ds;
    for (const auto& n : names) ds.emplace_back(n, rocksdb::ColumnFamilyOptions());
    std::vector<rocksdb::ColumnFamilyHandle*> hs;
    rocksdb::DB* raw = nullptr;
    ASSERT_TRUE(rocksdb::DB::Open(rocksdb::DBOptions(), tmp.file("db"), ds, &hs, &raw).ok());
    for (size_t i = 0; i < names.size(); ++i) {
      if (names[i] == "runs") {
        ASSERT_TRUE(raw->Put(rocksdb::WriteOptions(), hs[i], "bad-run", "{not json").ok());
      }
      if (names[i] == "models") {
        std::string key = std::string("bad-run") + '\0' + std::string(7, '\0') + '\x05';
        ASSERT_TRUE(raw->Put(rocksdb::WriteOptions(), hs[i], key, "garbage").ok());
      }
    }
    for (auto* h : hs) raw->DestroyColumnFamilyHandle(h);
    delete raw;
  }
  StateStore store(tmp.file("db"));
  expect_error([&] { store.load_run("bad-run"); }, {"'runs'", "bad-run", tmp.file("db")});
  expect_error([&] { store.list_runs(); }, {"'runs'", "bad-run"});
  expect_error([&] { store.load_model("bad-run", 5); }, {"'models'", "bad-run/version 5"});
}

// What a crash leaves in payloads/ (an upload's temporary file, a renamed payload whose record
// was never written) is removed when the store opens; acknowledged payloads and files that are
// not ours stay.
TEST(StateStore, OrphanPayloadFilesAreCollectedWhenTheStoreOpens) {
  TempDir tmp;
  const StoredUpdate kept = make_update(2, 1, 5000);
  {
    StateStore store(tmp.file("db"));
    ASSERT_TRUE(store.put_update("r", kept));
    EXPECT_EQ(store.orphans_collected(), 0u);
  }
  const std::string dir = tmp.file("db") + "/payloads/";
  spit(dir + "72-2-fit-1.bin.tmp.4242.7", "half an upload");
  spit(dir + "72-3-fit-2-0.bin", "renamed, but its record was never written");  // phase "fit-2"
  spit(dir + "notes.txt", "not ours");
  StateStore store(tmp.file("db"));
  EXPECT_EQ(store.orphans_collected(), 2u);
  EXPECT_FALSE(fs::exists(dir + "72-2-fit-1.bin.tmp.4242.7"));
  EXPECT_FALSE(fs::exists(dir + "72-3-fit-2-0.bin"));
  EXPECT_TRUE(fs::exists(dir + "notes.txt"));
  const auto back = store.updates("r", 2);
  ASSERT_EQ(back.size(), 1u);
  EXPECT_EQ(back[0].payload, kept.payload);
}

// Writes `value` under `key` in one column family of the closed store at `db`, behind its back.
void raw_put(const std::string& db, const std::string& family, const std::string& key, const std::string& value) {
  std::vector<std::string> names;
  ASSERT_TRUE(rocksdb::DB::ListColumnFamilies(rocksdb::DBOptions(), db, &names).ok());
  std::vector<rocksdb::ColumnFamilyDescriptor> ds;
  for (const auto& n : names) ds.emplace_back(n, rocksdb::ColumnFamilyOptions());
  std::vector<rocksdb::ColumnFamilyHandle*> hs;
  rocksdb::DB* raw = nullptr;
  ASSERT_TRUE(rocksdb::DB::Open(rocksdb::DBOptions(), db, ds, &hs, &raw).ok());
  for (size_t i = 0; i < names.size(); ++i) {
    if (names[i] == family) {
      EXPECT_TRUE(raw->Put(rocksdb::WriteOptions(), hs[i], key, value).ok());
    }
  }
  for (auto* h : hs) raw->DestroyColumnFamilyHandle(h);
  delete raw;
}

// Model versions are safetensors files beside the database, named by their record: the bytes
// fedctl exports are the file's, a model an older store kept inside RocksDB still loads, a
// truncated file is an error naming the version, and a file whose commit never happened (or a
// temporary one) is removed when the store opens.
TEST(StateStore, ModelVersionsAreFilesNamedByTheirRecords) {
  TempDir tmp;
  const std::string db = tmp.file("db"), dir = db + "/models/";
  const ModelState m0 = make_model(1.0f), m1 = make_model(2.0f);
  RunRecord run = make_run("r");
  {
    StateStore store(db);
    store.save_run(run);
    store.save_initial_model("r", m0);
    store.commit_round(run, 1, m1, "", RoundRecord{1, "{}"});
    // "r" is 72 in hex.
    ASSERT_TRUE(fs::exists(dir + "72-0.safetensors"));
    ASSERT_TRUE(fs::exists(dir + "72-1.safetensors"));
    std::ifstream in(dir + "72-1.safetensors", std::ios::binary);
    const std::string file((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    EXPECT_EQ(store.model_bytes("r", 1), file);
    EXPECT_TRUE(store.load_model("r", 1)->equal(m1));
  }
  // An older store's inline model; an orphan model file and a temporary one.
  raw_put(db, "models", std::string("r") + '\0' + std::string(7, '\0') + '\x07',
          to_safetensors_bytes(make_model(7.0f)));
  spit(dir + "72-9.safetensors", "renamed, but its round was never committed");
  spit(dir + "72-2.safetensors.tmp.99.1", "half a model");
  spit(dir + "README", "not ours");
  {
    StateStore store(db);
    EXPECT_EQ(store.orphans_collected(), 2u);
    EXPECT_FALSE(fs::exists(dir + "72-9.safetensors"));
    EXPECT_FALSE(fs::exists(dir + "72-2.safetensors.tmp.99.1"));
    EXPECT_TRUE(fs::exists(dir + "README"));
    EXPECT_TRUE(fs::exists(dir + "72-0.safetensors"));
    EXPECT_TRUE(store.load_model("r", 7)->equal(make_model(7.0f)));
    EXPECT_TRUE(store.load_model("r", 0)->equal(m0));
    EXPECT_EQ(store.latest_model_version("r"), 7);
  }
  fs::resize_file(dir + "72-1.safetensors", 10);
  StateStore store(db);
  expect_error([&] { store.load_model("r", 1); }, {"'models'", "r/version 1", "72-1.safetensors' has 10 bytes, the record says"});
  fs::remove(dir + "72-0.safetensors");
  expect_error([&] { store.model_bytes("r", 0); }, {"'models'", "r/version 0", "model file is unreadable"});
}

// Run ids name payload files (hex, so 64 characters make 128 of a file name) and appear in
// task ids split at '/': only a plain, short alphabet is taken.
TEST(StateStore, RunIdsArePlainAndShort) {
  for (const std::string& ok : std::vector<std::string>{"a", "exp-1", "run_2.b", "R9", std::string(64, 'x')})
    EXPECT_EQ(run_id_problem(ok), "") << ok;
  for (const std::string& bad : {std::string(), std::string(65, 'x'), std::string("a/b"), std::string("-x"),
                                std::string(".hidden"), std::string("a b"), std::string("a\x1b[2J"),
                                std::string("a\0b", 3)}) {
    const std::string why = run_id_problem(bad);
    EXPECT_NE(why.find("is not valid: use 1 to 64 letters, digits"), std::string::npos) << why;
    EXPECT_EQ(why.find('\x1b'), std::string::npos) << "control bytes are not echoed";
  }
  TempDir tmp;
  StateStore store(tmp.file("db"));
  expect_error_of<std::invalid_argument>([&] { store.save_run(make_run(std::string(128, 'r'))); },
                                         "(128 bytes) is not valid");
}

}  // namespace
}  // namespace fl
