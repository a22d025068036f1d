// The Federation service in-process over a real gRPC channel (insecure mode, so that the
// test controls identities): protocol checks, the task cycle, and rejection of bad payloads
// with a status that names what was wrong. Mutual TLS is covered by tls_test and the e2e test.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <fstream>
#include <future>
#include <thread>

#include <nlohmann/json.hpp>

#include "common/ops/metrics.h"
#include "coordinator/federation_service.h"
#include "coordinator/remote_pool.h"
#include "coordinator/store/state_store.h"
#include "expect_error.h"
#include "strategies/registry.h"

namespace {

using namespace std::chrono_literals;
using namespace fl;

ModelState tiny_model(float v) {
  return ModelState({{"fc.weight", torch::full({2, 3}, v)}, {"fc.bias", torch::full({2}, v)}});
}

// One task per client, each the model tiny_model(1).
std::vector<ClientTask> round_tasks(int round, const std::vector<int>& clients) {
  std::vector<ClientTask> tasks(clients.size());
  for (size_t i = 0; i < clients.size(); ++i) {
    tasks[i].round = round;
    tasks[i].client_id = clients[i];
    tasks[i].model = tiny_model(1.0f);
  }
  return tasks;
}

struct Harness {
  std::string dir;
  std::unique_ptr<StateStore> store;
  std::unique_ptr<RemoteClientPool> pool;
  std::unique_ptr<Authenticator> auth;
  RunSlot slot;
  std::unique_ptr<FederationService> service;
  std::unique_ptr<grpc::Server> server;
  std::unique_ptr<v1::Federation::Stub> stub;

  explicit Harness(const std::string& name, StreamGuard::Options streams = StreamGuard::Options(),
                   std::vector<std::string> roster = {}) {
    dir = ::testing::TempDir() + "/fedsvc_" + name;
    std::filesystem::remove_all(dir);
    store = std::make_unique<StateStore>(dir);
    RemotePoolOptions o;
    o.round_deadline = 20s;
    o.roster = std::move(roster);
    pool = std::make_unique<RemoteClientPool>(*store, "r", o);
    pool->set_run_model(ModelDeclaration::of_state("mlp", tiny_model(0)));
    RunDescription run;
    run.run_id = "r";
    auth = std::make_unique<Authenticator>(*store, /*insecure=*/true);
    slot.set(borrowed_run(*pool, run));
    service = std::make_unique<FederationService>(slot, *auth, streams);
    grpc::ServerBuilder b;
    int port = 0;
    b.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    b.RegisterService(service.get());
    server = b.BuildAndStart();
    stub = v1::Federation::NewStub(
        grpc::CreateChannel("127.0.0.1:" + std::to_string(port), grpc::InsecureChannelCredentials()));
  }
  ~Harness() {
    pool->abort();
    server->Shutdown(std::chrono::system_clock::now() + 1s);
  }

  std::unique_ptr<grpc::ClientContext> ctx(const std::string& who) const {
    auto c = std::make_unique<grpc::ClientContext>();
    c->AddMetadata("fl-client-name", who);
    c->set_deadline(std::chrono::system_clock::now() + 20s);
    return c;
  }

  grpc::Status register_client(const std::string& who, v1::ProtocolVersion version = v1::PROTOCOL_VERSION_1,
                               v1::RegisterReply* out = nullptr) {
    v1::RegisterRequest req;
    req.set_protocol(version);
    req.set_num_train_examples(10);
    v1::RegisterReply reply;
    auto s = stub->Register(ctx(who).get(), req, &reply);
    if (out) *out = reply;
    return s;
  }

  v1::Task poll(const std::string& who) {
    v1::PollTaskRequest req;
    req.set_run_id("r");
    req.set_wait_ms(5000);
    v1::PollTaskReply reply;
    EXPECT_TRUE(stub->PollTask(ctx(who).get(), req, &reply).ok());
    EXPECT_EQ(reply.kind(), v1::PollTaskReply::KIND_TASK);
    return reply.task();
  }

  // Starts round `round` with a task (the model tiny_model(1)) for each of `clients`; the future
  // holds execute()'s results.
  std::future<std::vector<ClientResult>> start_round(int round, std::vector<int> clients = {0}) {
    auto tasks = round_tasks(round, clients);
    return std::async(std::launch::async, [this, tasks] { return pool->execute(tasks); });
  }

  ModelState download(const std::string& who, const std::string& task_id) {
    v1::DownloadRequest req;
    req.set_task_id(task_id);
    auto c = ctx(who);
    auto reader = stub->DownloadModel(c.get(), req);
    PayloadAssembler a(1 << 20);
    v1::PayloadChunk chunk;
    while (reader->Read(&chunk)) a.add(chunk);
    EXPECT_TRUE(reader->Finish().ok());
    return decode_state(a.manifest(), a.take_bytes());
  }

  // Uploads `payload` (optionally tampered with after encoding) as the update of `task_id`.
  grpc::Status upload(const std::string& who, const std::string& task_id, EncodedPayload payload,
                      int64_t num_examples = 10, const Metrics& metrics = {}) {
    auto c = ctx(who);
    v1::UploadReply reply;
    auto w = stub->UploadUpdate(c.get(), &reply);
    v1::UploadChunk h;
    h.mutable_header()->set_task_id(task_id);
    h.mutable_header()->set_ok(true);
    h.mutable_header()->set_num_examples(num_examples);
    for (const auto& [k, v] : metrics) (*h.mutable_header()->mutable_metrics())[k] = v;
    w->Write(h);
    for_each_chunk(payload, [&](const v1::PayloadChunk& ch) {
      v1::UploadChunk m;
      *m.mutable_chunk() = ch;
      return w->Write(m);
    });
    w->WritesDone();
    return w->Finish();
  }
};

EncodedPayload packed_update(const ModelState& model) { return encode_state(pack_payload(model, {}), {}); }

// Client `index` of `pool` takes its task and answers it with `model` (without gRPC); returns
// upload()'s answer (true: a duplicate).
bool answer_in_process(RemoteClientPool& pool, int index, const ModelState& model, int64_t examples) {
  TaskOffer offer;
  EXPECT_EQ(pool.poll(index, 5s, &offer), RemoteClientPool::Poll::kTask);
  UploadHeader header;
  header.task_id = offer.task_id;
  header.num_examples = examples;
  auto p = packed_update(model);
  return pool.upload(index, header, p.manifest, p.bytes);
}

TEST(FederationService, RefusesOtherProtocolVersionsNamingBoth) {
  Harness h("protocol");
  auto s = h.register_client("a", v1::PROTOCOL_VERSION_UNSPECIFIED);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(s.error_message().find("incompatible protocol version 0"), std::string::npos) << s.error_message();
  EXPECT_NE(s.error_message().find("speaks version 1"), std::string::npos) << s.error_message();
  v1::RegisterRequest req;
  req.set_protocol(v1::PROTOCOL_VERSION_1);
  req.set_num_train_examples(0);
  v1::RegisterReply reply;
  s = h.stub->Register(h.ctx("a").get(), req, &reply);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("num_train_examples"), std::string::npos);
  // No identity at all: refused.
  grpc::ClientContext anonymous;
  s = h.stub->Register(&anonymous, req, &reply);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAUTHENTICATED);
}

// Damage in transit (a flipped byte: DATA_LOSS) and a stale task id leave the task open: the
// client may send again. An update the run cannot take is refused naming the problem, is that
// client's failure for the round at once (the round does not wait for its deadline), is never
// stored, and a retry of it is refused too.
TEST(FederationService, TaskCycleRejectsBadPayloadsAndKeepsTheGoodOne) {
  Harness h("cycle");
  v1::RegisterReply reg;
  ASSERT_TRUE(h.register_client("site-a", v1::PROTOCOL_VERSION_1, &reg).ok());
  EXPECT_EQ(reg.client_index(), 0);
  v1::RegisterReply again;
  ASSERT_TRUE(h.register_client("site-a", v1::PROTOCOL_VERSION_1, &again).ok());
  EXPECT_EQ(again.client_index(), 0);  // same identity, same index
  // A fedavg run: uploads are checked as its round engine will check them.
  auto strategy = create_strategy("fedavg", {});
  h.pool->set_result_check([&](const ClientTask& t, const ClientResult& r) { return result_problem(*strategy, t, r, 1000); });

  // Every refusal is counted by reason for Prometheus (this process's registry).
  const auto rejections = [](const std::string& reason) {
    return metrics::global()
        .counter("fl_update_rejections_total", "Client uploads refused on arrival, by reason", {{"reason", reason}})
        .value();
  };
  const double checksum0 = rejections("checksum"), header0 = rejections("header"), refused0 = rejections("refused");

  auto round = h.start_round(1);
  auto task = h.poll("site-a");
  EXPECT_EQ(task.task_id(), "r/1/0/fit");
  EXPECT_TRUE(h.download("site-a", task.task_id()).equal(pack_payload(tiny_model(1.0f), {})));
  // Flipped byte: checksum -> DATA_LOSS, and the task stays open.
  auto bad = packed_update(tiny_model(2.0f));
  bad.bytes[3] ^= 0x40;
  auto s = h.upload("site-a", task.task_id(), bad);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::DATA_LOSS) << s.error_message();
  EXPECT_NE(s.error_message().find("checksum"), std::string::npos) << s.error_message();
  // Stale task id.
  s = h.upload("site-a", "r/0/0/fit", packed_update(tiny_model(2.0f)));
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << s.error_message();

  // The good one is accepted, stored and ends the round; a retry is a duplicate.
  ASSERT_TRUE(h.upload("site-a", task.task_id(), packed_update(tiny_model(2.0f)), 7).ok());
  auto results = round.get();
  ASSERT_EQ(results.size(), 1u);
  ASSERT_TRUE(results[0].ok) << results[0].error;
  EXPECT_EQ(results[0].num_examples, 7);
  EXPECT_TRUE(results[0].model.equal(tiny_model(2.0f)));
  ASSERT_TRUE(h.store->has_update("r", 1, 0));
  EXPECT_EQ(h.store->updates("r", 1).at(0).num_examples, 7);

  // From here a round has two clients: the round stays open after site-a's refusal (so that its
  // retry meets the refusal) and ends as soon as site-b has answered, without waiting for site-a.
  ASSERT_TRUE(h.register_client("site-b").ok());
  struct Bad {
    std::string what;
    ModelState model;
    int64_t examples;
    grpc::StatusCode code;
    std::string needle;
    Metrics metrics = {};
  };
  const auto w = torch::full({2, 3}, 2.0f), b = torch::full({2}, 2.0f);
  auto nan_w = w.clone();
  nan_w[1][2] = std::numeric_limits<float>::quiet_NaN();
  const std::vector<Bad> bads = {
      {"shape", ModelState({{"fc.weight", torch::full({3, 2}, 2.0f)}, {"fc.bias", b}}), 10,
       grpc::StatusCode::INVALID_ARGUMENT, "model/fc.weight"},
      {"dtype", ModelState({{"fc.weight", torch::full({2, 3}, 2.0, torch::kDouble)}, {"fc.bias", b}}), 10,
       grpc::StatusCode::INVALID_ARGUMENT, "dtype"},
      {"unknown name", ModelState({{"fc.weight", w}, {"other", b}}), 10, grpc::StatusCode::INVALID_ARGUMENT,
       "model/other"},
      {"missing tensor", ModelState({{"fc.weight", w}}), 10, grpc::StatusCode::INVALID_ARGUMENT,
       "model tensor 'fc.bias' is missing"},
      {"reordered", ModelState({{"fc.bias", b}, {"fc.weight", w}}), 10, grpc::StatusCode::INVALID_ARGUMENT,
       "out of the model's order"},
      {"NaN", ModelState({{"fc.weight", nan_w}, {"fc.bias", b}}), 10, grpc::StatusCode::INVALID_ARGUMENT,
       "model tensor 'fc.weight' is not finite"},
      {"2^62 examples", tiny_model(2.0f), int64_t{1} << 62, grpc::StatusCode::FAILED_PRECONDITION,
       "more than the 10 training examples this client registered with"},
      {"0 examples", tiny_model(2.0f), 0, grpc::StatusCode::FAILED_PRECONDITION, "num_examples must be > 0"},
      {"metric name", tiny_model(2.0f), 10, grpc::StatusCode::FAILED_PRECONDITION,
       "metric name 'loss\\x1b[2J' is not 1 to 64 printable ASCII characters", {{"loss\x1b[2J", 1.0}}},
      {"non-finite metric", tiny_model(2.0f), 10, grpc::StatusCode::FAILED_PRECONDITION, "metric 'loss' is not finite",
       {{"loss", std::numeric_limits<double>::infinity()}}},
  };
  int r = 2;
  for (const auto& bad_update : bads) {
    SCOPED_TRACE(bad_update.what);
    auto pending = h.start_round(r, {0, 1});
    task = h.poll("site-a");
    s = h.upload("site-a", task.task_id(), packed_update(bad_update.model), bad_update.examples, bad_update.metrics);
    EXPECT_EQ(s.error_code(), bad_update.code) << s.error_message();
    EXPECT_NE(s.error_message().find(bad_update.needle), std::string::npos) << s.error_message();
    // Sending it again changes nothing.
    s = h.upload("site-a", task.task_id(), packed_update(tiny_model(2.0f)));
    EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << s.error_message();
    EXPECT_NE(s.error_message().find("refused already"), std::string::npos) << s.error_message();
    ASSERT_TRUE(h.upload("site-b", h.poll("site-b").task_id(), packed_update(tiny_model(3.0f))).ok());
    ASSERT_EQ(pending.wait_for(5s), std::future_status::ready) << "the round waits for a refused client";
    results = pending.get();
    ASSERT_EQ(results.size(), 2u);
    EXPECT_TRUE(results[1].ok) << results[1].error;
    EXPECT_FALSE(results[0].ok);
    EXPECT_NE(results[0].error.find(bad_update.needle), std::string::npos) << results[0].error;
    EXPECT_EQ(results[0].metrics.count("rejected"), 1u);
    EXPECT_FALSE(h.store->has_update("r", r, 0));
    ++r;
  }
  EXPECT_EQ(rejections("checksum") - checksum0, 1);
  EXPECT_EQ(rejections("refused") - refused0, 6);  // shape .. NaN: payloads the run cannot aggregate
  EXPECT_EQ(rejections("header") - header0, 1 + 4 + 10);  // the stale task, 4 bad counts or metrics, 10 retries
}

TEST(FederationService, RestartedPoolTakesStoredUpdatesInsteadOfAskingAgain) {
  Harness h("resume");
  ASSERT_TRUE(h.register_client("a").ok());
  ASSERT_TRUE(h.register_client("b").ok());
  const auto tasks = round_tasks(1, {0, 1});
  {
    auto round = std::async(std::launch::async, [&] { return h.pool->execute(tasks); });
    const auto ta = h.poll("a");
    ASSERT_TRUE(h.upload("a", ta.task_id(), packed_update(tiny_model(3.0f)), 5).ok());
    h.pool->abort();  // the coordinator dies before b answers
    EXPECT_THROW(round.get(), PoolAborted);
  }
  // A new pool over the same store: a's update comes from RocksDB, only b is asked.
  RemotePoolOptions o;
  o.round_deadline = 20s;
  RemoteClientPool pool2(*h.store, "r", o);
  pool2.set_run_model(ModelDeclaration::of_state("mlp", tiny_model(0)));
  EXPECT_EQ(pool2.num_clients(), 2);
  auto round = std::async(std::launch::async, [&] { return pool2.execute(tasks); });
  TaskOffer offer;
  EXPECT_EQ(pool2.poll(0, 300ms, &offer), RemoteClientPool::Poll::kWait);  // a: nothing to do
  EXPECT_FALSE(answer_in_process(pool2, 1, tiny_model(7.0f), 9));
  auto results = round.get();
  ASSERT_EQ(results.size(), 2u);
  EXPECT_TRUE(results[0].model.equal(tiny_model(3.0f)));
  EXPECT_EQ(results[0].num_examples, 5);
  EXPECT_TRUE(results[1].model.equal(tiny_model(7.0f)));
}

// Streaming aggregation (issue 20): while the engine defers the models, the service keeps no
// upload in memory (the bytes go to the update's file and are read back to be validated), a bad
// update is still refused before it is stored, and the round's results come without their models,
// which load_result_model reads back from the store, after a restart too.
TEST(FederationService, ADeferringRoundReadsEachUpdateBackFromTheStore) {
  using fl::testing_util::expect_error_of;
  Harness h("deferred");
  ASSERT_TRUE(h.register_client("a").ok());
  ASSERT_TRUE(h.register_client("b").ok());
  EXPECT_FALSE(h.pool->defer_result_models(true)) << "without a result check the engine must screen the models";
  auto strategy = create_strategy("fedavg", {});
  h.pool->set_result_check([&](const ClientTask& t, const ClientResult& r) { return result_problem(*strategy, t, r, 1000); });
  ASSERT_TRUE(h.pool->defer_result_models(true));

  auto round = h.start_round(1, {0, 1});
  const auto ta = h.poll("a");
  // Damaged in transit (checked from the file piece by piece): DATA_LOSS, the task stays open.
  auto flipped = packed_update(tiny_model(2.0f));
  flipped.bytes[6] ^= 0x01;
  auto damaged = h.upload("a", ta.task_id(), flipped);
  EXPECT_EQ(damaged.error_code(), grpc::StatusCode::DATA_LOSS) << damaged.error_message();
  auto nan_model = tiny_model(2.0f);
  nan_model.at("fc.bias")[1] = std::numeric_limits<float>::quiet_NaN();
  auto s = h.upload("a", ta.task_id(), packed_update(nan_model));
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();
  EXPECT_NE(s.error_message().find("model tensor 'fc.bias' is not finite"), std::string::npos) << s.error_message();
  // Not the model's layout (read back whole and decoded): refused naming the tensor.
  const auto tb = h.poll("b");
  auto wrong = h.upload("b", tb.task_id(),
                        packed_update(ModelState({{"fc.weight", torch::full({3, 2}, 2.0f)}, {"fc.bias", torch::full({2}, 2.0f)}})));
  EXPECT_EQ(wrong.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << wrong.error_message();
  EXPECT_NE(wrong.error_message().find("model/fc.weight"), std::string::npos) << wrong.error_message();
  ASSERT_FALSE(h.store->has_update("r", 1, 1));
  auto results = round.get();
  ASSERT_EQ(results.size(), 2u);
  EXPECT_FALSE(results[0].ok);
  EXPECT_FALSE(results[1].ok);

  // Round 2 (b answers well): its result comes without its model, read back when asked.
  round = h.start_round(2, {1});
  ASSERT_TRUE(h.upload("b", h.poll("b").task_id(), packed_update(tiny_model(3.0f)), 6).ok());
  results = round.get();
  ASSERT_EQ(results.size(), 1u);
  results.insert(results.begin(), ClientResult());  // keeps the indices below: [1] is b's
  EXPECT_FALSE(h.store->has_update("r", 1, 0));
  ASSERT_TRUE(results[1].ok) << results[1].error;
  EXPECT_TRUE(h.pool->result_models_deferred());
  EXPECT_EQ(results[1].num_examples, 6);
  EXPECT_TRUE(results[1].model.empty());
  h.pool->load_result_model(results[1]);
  EXPECT_TRUE(results[1].model.equal(tiny_model(3.0f)));
  expect_error_of<std::logic_error>([&] { h.pool->load_result_model(results[0]); }, "client 0 has no deferred result");

  // Round 3: a answers, then the coordinator dies; a new pool takes a's update from the store
  // without reading its payload, and reads it back when asked.
  {
    auto r2 = h.start_round(3, {0, 1});
    ASSERT_TRUE(h.upload("a", h.poll("a").task_id(), packed_update(tiny_model(5.0f)), 4).ok());
    h.pool->abort();
    EXPECT_THROW(r2.get(), PoolAborted);
  }
  RemotePoolOptions o;
  o.round_deadline = 20s;
  RemoteClientPool pool2(*h.store, "r", o);
  pool2.set_run_model(ModelDeclaration::of_state("mlp", tiny_model(0)));
  pool2.set_result_check([&](const ClientTask& t, const ClientResult& r) { return result_problem(*strategy, t, r, 1000); });
  ASSERT_TRUE(pool2.defer_result_models(true));
  const auto tasks = round_tasks(3, {0, 1});
  auto r2 = std::async(std::launch::async, [&] { return pool2.execute(tasks); });
  EXPECT_FALSE(answer_in_process(pool2, 1, tiny_model(7.0f), 9));
  results = r2.get();
  ASSERT_TRUE(results[0].ok && results[1].ok);
  EXPECT_TRUE(results[0].model.empty() && results[1].model.empty());
  EXPECT_EQ(results[0].num_examples, 4);
  pool2.load_result_model(results[0]);
  pool2.load_result_model(results[1]);
  EXPECT_TRUE(results[0].model.equal(tiny_model(5.0f)));
  EXPECT_TRUE(results[1].model.equal(tiny_model(7.0f)));
  // Folded piece by piece from the files: the bits of the average of the whole models.
  {
    WeightedMeanAccumulator mean(4 + 9);
    ASSERT_TRUE(pool2.add_result_model(results[0], mean, 4));
    ASSERT_TRUE(pool2.add_result_model(results[1], mean, 9));
    EXPECT_TRUE(mean.take().equal(weighted_average_of({results[0], results[1]})));
  }
  // A payload file changed on disk after it was accepted: its checksum says so.
  for (const auto& f : std::filesystem::directory_iterator(h.dir + "/payloads")) {
    std::fstream io(f.path(), std::ios::in | std::ios::out | std::ios::binary);
    io.seekp(5);
    io.put('\x7f');
  }
  {
    WeightedMeanAccumulator mean(4);
    expect_error_of<std::runtime_error>([&] { pool2.add_result_model(results[0], mean, 4); }, "fails its checksum");
  }
  // Switched off when the round is over: what it kept for reading back goes.
  EXPECT_FALSE(pool2.defer_result_models(false));
  expect_error_of<std::logic_error>([&] { pool2.load_result_model(results[0]); }, "no deferred result");
}

// A client declares its model: refused with the strategy's reason, or accepted and kept in the
// store, so that a restarted pool checks that client's uploads against its own model. A task's
// encoding reaches the client with the task.
TEST(FederationService, ClientsDeclareTheirModelAndTheStrategyDecides) {
  Harness h("declare");
  const auto run_model = ModelDeclaration::of_state("mlp", tiny_model(0));
  const auto acceptance = [](const std::string& strategy) {
    return [strategy](const ModelDeclaration& run, const ModelDeclaration& client) {
      return check_client_model(strategy, run, client);
    };
  };
  const auto own = ModelState({{"head.weight", torch::zeros({4, 2})}});
  const auto cnn = ModelDeclaration::of_state("cnn", own);
  const auto register_declaring = [&](const std::string& who, const ModelDeclaration& d) {
    v1::RegisterRequest req;
    req.set_protocol(v1::PROTOCOL_VERSION_1);
    req.set_num_train_examples(10);
    declaration_to_wire(d, req.mutable_model());
    v1::RegisterReply reply;
    return h.stub->Register(h.ctx(who).get(), req, &reply);
  };

  h.pool->set_run_model(run_model, acceptance("fedavg"));
  auto s = register_declaring("a", cnn);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << s.error_message();
  EXPECT_NE(s.error_message().find("strategy 'fedavg' combines the clients' models"), std::string::npos)
      << s.error_message();
  EXPECT_NE(s.error_message().find("the client's model cnn (1 tensors, 8 values)"), std::string::npos)
      << s.error_message();
  EXPECT_EQ(h.pool->num_clients(), 0);
  ModelDeclaration nameless = cnn;
  nameless.architecture.clear();
  s = register_declaring("a", nameless);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();
  EXPECT_NE(s.error_message().find("no architecture"), std::string::npos) << s.error_message();
  // The run's own model, declared, is the run's model: nothing kept apart.
  ASSERT_TRUE(register_declaring("b", run_model).ok());
  EXPECT_TRUE(h.store->clients("r").at(0).model_json.empty());

  h.pool->set_run_model(run_model, acceptance("feddistill"));
  ASSERT_TRUE(register_declaring("a", cnn).ok());
  const auto records = h.store->clients("r");
  ASSERT_EQ(records.size(), 2u);
  EXPECT_EQ(ModelDeclaration::from_json(nlohmann::json::parse(records[1].model_json)).layout_difference(cnn), "");

  // A restarted coordinator's pool knows a's model from the store.
  RemotePoolOptions o;
  o.round_deadline = 20s;
  RemoteClientPool pool2(*h.store, "r", o);
  pool2.set_run_model(run_model, acceptance("feddistill"));
  EXPECT_EQ(pool2.client_model(0).architecture, "mlp");
  EXPECT_EQ(pool2.client_model(1).architecture, "cnn");
  ClientTask t;
  t.round = 1;
  t.client_id = 1;
  t.encoding = "int8";
  auto round = std::async(std::launch::async, [&] { return pool2.execute({t}); });
  TaskOffer offer;
  ASSERT_EQ(pool2.poll(1, 5s, &offer), RemoteClientPool::Poll::kTask);
  EXPECT_EQ(offer.encoding, "int8");
  UploadHeader header;
  header.task_id = offer.task_id;
  header.num_examples = 3;
  auto runs = packed_update(tiny_model(1.0f));  // the run's model: not what this client trains
  fl::testing_util::expect_error_of<PayloadError>([&] { pool2.upload(1, header, runs.manifest, runs.bytes); },
                                                  "'model/fc.weight' is not a tensor of the client's model cnn");
  // That refusal was the client's answer for round 1; an update of its own model goes through in round 2.
  auto failed = round.get();
  ASSERT_FALSE(failed.at(0).ok);
  EXPECT_NE(failed[0].error.find("is not a tensor of the client's model cnn"), std::string::npos) << failed[0].error;
  t.round = 2;
  round = std::async(std::launch::async, [&] { return pool2.execute({t}); });
  ASSERT_EQ(pool2.poll(1, 5s, &offer), RemoteClientPool::Poll::kTask);
  header.task_id = offer.task_id;
  const auto mine = ModelState({{"head.weight", torch::ones({4, 2})}});
  auto p = packed_update(mine);
  EXPECT_FALSE(pool2.upload(1, header, p.manifest, p.bytes));
  auto results = round.get();
  ASSERT_TRUE(results.at(0).ok) << results[0].error;
  EXPECT_TRUE(results[0].model.equal(mine));
}

// An upload that began while its task was current but completes after the round went on without
// it (the deadline passed mid-stream) is refused, not stored and acknowledged: it would never count.
TEST(FederationService, AnUploadThatOutlivesItsRoundIsRefusedNotStored) {
  Harness h("late_upload");
  ASSERT_TRUE(h.register_client("a").ok());
  RemotePoolOptions o;
  o.round_deadline = 300ms;
  RemoteClientPool pool(*h.store, "r", o);
  pool.set_run_model(ModelDeclaration::of_state("mlp", tiny_model(0)));
  ASSERT_EQ(pool.register_client("a", 10, 0), 0);
  ClientTask t;
  t.round = 1;
  t.client_id = 0;
  t.model = tiny_model(1.0f);
  auto round = std::async(std::launch::async, [&] { return pool.execute({t}); });
  TaskOffer offer;
  ASSERT_EQ(pool.poll(0, 5s, &offer), RemoteClientPool::Poll::kTask);
  UploadHeader header;
  header.task_id = offer.task_id;
  header.ok = true;
  header.num_examples = 10;
  auto session = pool.begin_upload(0, header);  // the upload starts in time...
  const auto p = packed_update(tiny_model(2.0f));
  session.append(p.bytes);
  const auto results = round.get();  // ...and the round goes on without it at its deadline
  ASSERT_EQ(results.size(), 1u);
  EXPECT_FALSE(results[0].ok);
  EXPECT_NE(results[0].error.find("missed the round deadline"), std::string::npos) << results[0].error;
  fl::testing_util::expect_error_of<std::invalid_argument>(
      [&] { pool.finish_upload(session, p.manifest, p.bytes); },
      "task '" + offer.task_id + "' ended before its upload completed");
  EXPECT_FALSE(h.store->has_update("r", 1, 0));
}

TEST(FederationService, SilentClientIsDroppedAtTheDeadline) {
  Harness h("deadline");
  ASSERT_TRUE(h.register_client("a").ok());
  RemotePoolOptions o;
  o.round_deadline = 300ms;
  RemoteClientPool pool(*h.store, "r", o);
  pool.set_run_model(ModelDeclaration::of_state("mlp", tiny_model(0)));
  ClientTask t;
  t.round = 1;
  t.client_id = 0;
  t.model = tiny_model(1.0f);
  const auto t0 = std::chrono::steady_clock::now();
  auto results = pool.execute({t});
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 5s);
  ASSERT_EQ(results.size(), 1u);
  EXPECT_FALSE(results[0].ok);
  EXPECT_NE(results[0].error.find("deadline"), std::string::npos) << results[0].error;
}

// A client cannot hold streams open for nothing: an upload that stalls is cancelled by the
// watchdog (its partial file removed), a second upload while one is open is refused, a
// manifest cannot announce more than the task's update can take, and an upload that reports a
// failure carries no payload.
TEST(FederationService, StreamsAreBoundedAndIdleOnesCancelled) {
  StreamGuard::Options streams;
  streams.idle_timeout = 1s;
  Harness h("streams", streams);
  ASSERT_TRUE(h.register_client("a").ok());
  auto round = h.start_round(1);
  const auto task = h.poll("a");
  const auto payload = packed_update(tiny_model(2.0f));

  // Header, manifest, part of the data, then nothing.
  auto stalled_ctx = h.ctx("a");
  v1::UploadReply stalled_reply;
  auto stalled = h.stub->UploadUpdate(stalled_ctx.get(), &stalled_reply);
  v1::UploadChunk m;
  m.mutable_header()->set_task_id(task.task_id());
  m.mutable_header()->set_ok(true);
  m.mutable_header()->set_num_examples(10);
  ASSERT_TRUE(stalled->Write(m));
  m.Clear();
  *m.mutable_chunk()->mutable_manifest() = payload.manifest;
  ASSERT_TRUE(stalled->Write(m));
  m.Clear();
  m.mutable_chunk()->set_data(payload.bytes.substr(0, 8));
  ASSERT_TRUE(stalled->Write(m));
  for (int i = 0; i < 100 && h.service->streams().open_streams() == 0; ++i) std::this_thread::sleep_for(10ms);
  ASSERT_EQ(h.service->streams().open_streams(), 1);

  // Meanwhile a second upload from the same client is refused.
  auto s = h.upload("a", task.task_id(), payload);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << s.error_message();
  EXPECT_NE(s.error_message().find("upload in progress"), std::string::npos) << s.error_message();

  // The watchdog cancels the stalled one; its partial payload file goes with it.
  const auto t0 = std::chrono::steady_clock::now();
  s = stalled->Finish();
  EXPECT_EQ(s.error_code(), grpc::StatusCode::CANCELLED) << s.error_message();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 5s);
  for (int i = 0; i < 100 && h.service->streams().open_streams() > 0; ++i) std::this_thread::sleep_for(10ms);
  EXPECT_EQ(h.service->streams().open_streams(), 0);
  int files = 0;
  for (const auto& e : std::filesystem::recursive_directory_iterator(h.dir))
    files += e.path().string().find("payloads/") != std::string::npos && e.is_regular_file();
  EXPECT_EQ(files, 0) << "a partial payload file is left";

  // A manifest announcing 4 GiB for a model of 8 floats: refused before anything is reserved,
  // and that is the client's answer for the task.
  auto huge = payload;
  huge.manifest.set_total_bytes(uint64_t{4} << 30);
  s = h.upload("a", task.task_id(), huge);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();
  EXPECT_NE(s.error_message().find("more than the limit"), std::string::npos) << s.error_message();
  auto results = round.get();
  ASSERT_EQ(results.size(), 1u);
  EXPECT_FALSE(results[0].ok);
  EXPECT_NE(results[0].error.find("announces 4294967296 bytes"), std::string::npos) << results[0].error;

  // An upload that reports a failure and then sends data.
  round = h.start_round(2);
  const auto task2 = h.poll("a");
  auto c = h.ctx("a");
  v1::UploadReply reply;
  auto w = h.stub->UploadUpdate(c.get(), &reply);
  m.Clear();
  m.mutable_header()->set_task_id(task2.task_id());
  m.mutable_header()->set_ok(false);
  m.mutable_header()->set_error("out of memory");
  w->Write(m);
  m.Clear();
  *m.mutable_chunk()->mutable_manifest() = payload.manifest;
  w->Write(m);
  w->WritesDone();
  s = w->Finish();
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();
  EXPECT_NE(s.error_message().find("carries no payload"), std::string::npos) << s.error_message();
  results = round.get();
  EXPECT_FALSE(results[0].ok);
  EXPECT_EQ(results[0].error, "client reported: out of memory");
}

// An update acknowledged by an older coordinator that no longer decodes (or a damaged file)
// fails its client when the round resumes: it cannot take the coordinator down at every restart.
TEST(FederationService, AStoredUpdateThatNoLongerDecodesFailsItsClientNotTheCoordinator) {
  Harness h("unreadable");
  ASSERT_TRUE(h.register_client("a").ok());
  auto writer = h.store->begin_update("r", 1, 0, "fit");
  ASSERT_TRUE(writer);
  writer->append("not the bytes the manifest describes");
  StoredUpdate u;
  u.round = 1;
  u.phase = "fit";
  u.client_index = 0;
  u.num_examples = 5;
  u.manifest = packed_update(tiny_model(2.0f)).manifest.SerializeAsString();
  ASSERT_TRUE(writer->commit(u));
  ClientTask t;
  t.round = 1;
  t.client_id = 0;
  t.model = tiny_model(1.0f);
  const auto results = h.pool->execute({t});  // answered from the store at once
  ASSERT_EQ(results.size(), 1u);
  EXPECT_FALSE(results[0].ok);
  EXPECT_NE(results[0].error.find("stored update unreadable: payload"), std::string::npos) << results[0].error;
  EXPECT_EQ(results[0].metrics.count("rejected"), 1u);
}

TEST(FederationService, ExampleCountsBeyondTheRunLimitAreRefusedAtRegistration) {
  const std::string dir = ::testing::TempDir() + "/fedsvc_examples";
  std::filesystem::remove_all(dir);
  StateStore store(dir);
  RemotePoolOptions o;
  o.max_examples_per_client = 1000;
  RemoteClientPool pool(store, "r", o);
  pool.set_run_model(ModelDeclaration::of_state("mlp", tiny_model(0)));
  testing_util::expect_error_of<std::invalid_argument>([&] { pool.register_client("big", int64_t{1} << 62, 0); },
                                                     "this run takes at most 1000 per client");
  testing_util::expect_error_of<std::invalid_argument>([&] { pool.register_client("big-test", 10, 1001); },
                                                     "1001 test examples");
  EXPECT_EQ(pool.register_client("fine", 1000, 10), 0);
  EXPECT_EQ(pool.num_clients(), 1);
}

// A run with a roster: each client's index is its place in the roster, whatever order they
// register in; a name not in it is refused (PERMISSION_DENIED, naming the roster); a rostered
// client that never registered is dropped from a round at once, not at the deadline; and a
// store whose clients hold other indices than the roster gives them cannot be resumed with it.
TEST(FederationService, TheRosterGivesEachClientItsIndexWhateverOrderTheyRegisterIn) {
  Harness h("roster", StreamGuard::Options(), {"h1", "h2", "h3"});
  EXPECT_EQ(h.pool->num_clients(), 3);
  EXPECT_EQ(h.pool->num_registered(), 0);
  v1::RegisterReply reply;
  ASSERT_TRUE(h.register_client("h3", v1::PROTOCOL_VERSION_1, &reply).ok());
  EXPECT_EQ(reply.client_index(), 2);
  ASSERT_TRUE(h.register_client("h1", v1::PROTOCOL_VERSION_1, &reply).ok());
  EXPECT_EQ(reply.client_index(), 0);
  EXPECT_EQ(h.pool->num_registered(), 2);
  EXPECT_EQ(h.pool->num_clients(), 3);
  const auto refused = h.register_client("stranger");
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(refused.error_message(), "client 'stranger' is not one of run 'r''s client_names (h1, h2, h3)");
  EXPECT_EQ(h.pool->num_registered(), 2);

  // h2 has not registered: dropped at once; h1 and h3 upload.
  auto round = h.start_round(1, {0, 1, 2});
  for (const std::string who : {"h1", "h3"}) {
    const auto task = h.poll(who);
    ASSERT_TRUE(h.upload(who, task.task_id(), packed_update(tiny_model(2.0f))).ok()) << who;
  }
  const auto t0 = std::chrono::steady_clock::now();
  ASSERT_EQ(round.wait_for(10s), std::future_status::ready);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 5s);  // not the 20 s deadline
  const auto results = round.get();
  ASSERT_EQ(results.size(), 3u);
  EXPECT_TRUE(results[0].ok);
  EXPECT_FALSE(results[1].ok);
  EXPECT_EQ(results[1].error, "client not alive (no heartbeat)");
  EXPECT_TRUE(results[2].ok);

  RemotePoolOptions other;
  other.roster = {"h3", "h2", "h1"};
  testing_util::expect_error_of<std::invalid_argument>([&] { RemoteClientPool(*h.store, "r", other); },
                                                     "client 'h1' registered as #0, which the run's client_names");
  // Without the pool's check, the store itself keeps an index to one name.
  testing_util::expect_error_of<std::invalid_argument>([&] { h.store->register_client("r", "h9", 1, 0, "", 0); },
                                                     "client #0 of run 'r' is registered under another name");
}

}  // namespace
