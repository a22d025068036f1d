#include "client/edge_client.h"

#include <grpcpp/grpcpp.h>
#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <optional>
#include <random>
#include <sstream>
#include <thread>

#include "common/core/compute_setup.h"
#include "common/core/device.h"
#include "common/engine/strategy.h"
#include "common/io/safetensors.h"
#include "common/net/codec.h"
#include "common/net/tls.h"
#include "common/ops/metrics_server.h"
#include "common/util/logging.h"
#include "common/util/text.h"
#include "common/run/run_spec.h"
#include "federation.grpc.pb.h"
#include "strategies/registry.h"

namespace fl {
namespace {

// What fedclient tells Prometheus (--metrics-listen): its tasks, their time and results, bytes.
namespace client_metrics {
const std::vector<double> kTaskBuckets = {0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800};

void task_done(const std::string& run, const std::string& phase, const ClientResult& r, double seconds) {
  auto& reg = metrics::global();
  const metrics::Labels l = {{"run", run}};
  reg.counter("fl_client_tasks_total", "Tasks run, by phase and outcome",
              {{"run", run}, {"phase", phase}, {"outcome", r.ok ? "ok" : "failed"}})
      .inc();
  reg.histogram("fl_client_task_duration_seconds", "A task's local time (download excluded)", kTaskBuckets,
                {{"run", run}, {"phase", phase}})
      .observe(seconds);
  if (!r.ok) return;
  const auto gauge = [&](const char* key, const char* name, const char* help) {
    if (auto it = r.metrics.find(key); it != r.metrics.end()) reg.gauge(name, help, l).set(it->second);
  };
  gauge("train_loss", "fl_client_train_loss", "The last local training's loss");
  gauge("train_accuracy", "fl_client_train_accuracy", "The last local training's accuracy on its batches");
  gauge("personalized_accuracy", "fl_client_local_accuracy",
        "Accuracy of the received model on this site's test split (before training)");
  if (auto it = r.metrics.find("samples"); it != r.metrics.end())
    reg.counter("fl_client_samples_total", "Training examples processed", l).inc(it->second);
}

void round(const std::string& run, int round) {
  metrics::global().gauge("fl_client_round", "The round of the last task", {{"run", run}}).set(round);
}

void bytes_received(uint64_t n) {
  static auto& c = metrics::global().counter("fl_payload_bytes_received_total", "Model bytes received from the coordinator");
  c.inc(static_cast<double>(n));
}

void bytes_sent(uint64_t n) {
  static auto& c = metrics::global().counter("fl_payload_bytes_sent_total", "Update bytes sent to the coordinator");
  c.inc(static_cast<double>(n));
}

void update_refused(const std::string& code) {
  metrics::global().counter("fl_client_updates_refused_total", "Updates the coordinator refused, by gRPC status",
                            {{"code", code}}).inc();
}
}  // namespace client_metrics

namespace fs = std::filesystem;
using namespace std::chrono_literals;

// An error no retry fixes: the daemon stops and says why.
struct Fatal : std::runtime_error {
  using std::runtime_error::runtime_error;
};

bool retryable(const grpc::Status& s) {
  switch (s.error_code()) {
    case grpc::StatusCode::UNAVAILABLE:
    case grpc::StatusCode::DEADLINE_EXCEEDED:
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
    case grpc::StatusCode::ABORTED:
    case grpc::StatusCode::CANCELLED:
    case grpc::StatusCode::INTERNAL:
      return true;
    default:
      return false;
  }
}

// Who this site is to the coordinator: its certificate's common name ("" when unreadable; the
// TLS handshake reports that better).
std::string certificate_name(const std::string& cert_file) {
  std::ifstream in(cert_file);
  std::stringstream pem;
  pem << in.rdbuf();
  try {
    return printable(certificate_common_name(pem.str()), 64);
  } catch (const std::exception&) {
    return "";
  }
}

std::string describe(const grpc::Status& s) {
  return "gRPC status " + std::to_string(static_cast<int>(s.error_code())) + ": " + s.error_message();
}

// Personal tensors live in <state>/personal/<key>.safetensors, tagged with the run they belong to.
class PersonalStore {
 public:
  explicit PersonalStore(const std::string& dir) : dir_(fs::path(dir) / "personal") { fs::create_directories(dir_); }

  std::map<std::string, ModelState> load(const std::string& run_id) const {
    std::map<std::string, ModelState> out;
    std::ifstream tag(dir_ / "RUN");
    std::string stored_run;
    std::getline(tag, stored_run);
    if (stored_run != run_id) {
      if (!stored_run.empty())
        spdlog::info("personal state belongs to run '{}', not '{}': starting fresh", stored_run, run_id);
      return out;
    }
    for (const auto& e : fs::directory_iterator(dir_))
      if (e.path().extension() == ".safetensors") out[e.path().stem().string()] = read_safetensors(e.path().string());
    return out;
  }

  void save(const std::string& run_id, const std::map<std::string, ModelState>& personal) const {
    for (const auto& e : fs::directory_iterator(dir_))
      if (e.path().extension() == ".safetensors" && !personal.count(e.path().stem().string())) fs::remove(e.path());
    for (const auto& kv : personal) write_safetensors((dir_ / (kv.first + ".safetensors")).string(), kv.second);
    const auto tmp = dir_ / "RUN.tmp";
    std::ofstream(tmp) << run_id << "\n";
    fs::rename(tmp, dir_ / "RUN");
  }

 private:
  fs::path dir_;
};

class Session {
 public:
  Session(const EdgeClientConfig& cfg, const std::atomic<bool>& stop) : cfg_(cfg), stop_(stop) { connect(); }

  // A fresh channel: after the coordinator went away, the old one may sit in its own reconnect
  // backoff, or in a handshake with a server that is gone, longer than a restarted coordinator lives.
  void connect() {
    const auto& cfg = cfg_;
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(4 << 20);
    // The channel's own reconnect backoff (gRPC's default grows to 120 s) must not outlast ours:
    // while it waits, every call fails at once with the last error.
    // (GRPC_ARG_MIN_RECONNECT_BACKOFF_MS is left alone: it is the connect timeout, TLS included.)
    const int max_backoff_ms = static_cast<int>(std::max(0.1, cfg.max_backoff_s) * 1000);
    const int initial_backoff_ms = std::min(max_backoff_ms, static_cast<int>(std::max(0.1, cfg.initial_backoff_s) * 1000));
    args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, initial_backoff_ms);
    args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, max_backoff_ms);
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);  // a new channel must not inherit the old connection
    // A dead coordinator (or a link that silently dropped) is noticed within 40 s, not at TCP's pace.
    args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 30000);
    args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 10000);
    args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
    if (!cfg.server_name_override.empty()) args.SetSslTargetNameOverride(cfg.server_name_override);
    auto creds = cfg.insecure ? grpc::InsecureChannelCredentials()
                              : make_channel_credentials(cfg.tls);
    stub_ = v1::Federation::NewStub(grpc::CreateCustomChannel(cfg.coordinator, creds, args));
  }

  void prepare(grpc::ClientContext& ctx, std::chrono::milliseconds timeout) const {
    ctx.set_deadline(std::chrono::system_clock::now() + timeout);
    if (cfg_.insecure) ctx.AddMetadata("fl-client-name", cfg_.name);
  }

  v1::Federation::Stub& stub() { return *stub_; }

 private:
  const EdgeClientConfig& cfg_;
  const std::atomic<bool>& stop_;
  std::unique_ptr<v1::Federation::Stub> stub_;
};

class EdgeClient {
 public:
  EdgeClient(const EdgeClientConfig& cfg, ClientData data, const std::atomic<bool>& stop)
      : cfg_(cfg), stop_(stop), session_(cfg, stop), personal_store_(cfg.state_dir),
        rng_(std::random_device{}()) {
    device_ = resolve_device(cfg.device);
    log_compute_setup(device_);
    set_log_client(cfg.insecure ? cfg.name : certificate_name(cfg.tls.cert));
    if (!cfg.metrics_listen.empty()) {
      const auto where = metrics::parse_listen_address(cfg.metrics_listen, "--metrics-listen");
      metrics::add_process_metrics(metrics::global(), "fedclient", device_.str());
      metrics_server_ = std::make_unique<metrics::MetricsServer>(metrics::global(), where);
      spdlog::info("serving Prometheus metrics on http://{}:{}/metrics", where.host, metrics_server_->port());
    }
    data_.train = data.train.to(device_);
    if (data.test.size() > 0) data_.test = data.test.to(device_);
    // A model of its own (--model), or the site's own TorchScript file (--model-path alone): declared
    // when registering, so that a file whose layout the run cannot take is refused then, with the
    // strategy's reason, instead of failing every task.
    own_model_name_ = !cfg.model.empty() ? cfg.model : !cfg.model_path.empty() ? "torchscript" : "";
    if (!own_model_name_.empty()) {
      own_spec_ = model_spec_for(own_model_name_, data_.train, cfg.model_path, cfg.hidden);
      declaration_to_wire(ModelDeclaration::of(*build_model(own_spec_)), &own_model_);
    }
  }

  EdgeClientResult run() {
    EdgeClientResult result;
    int attempt = 0;
    while (!stop_) {
      grpc::Status s = register_once();
      if (s.ok()) {
        attempt = 0;
        s = serve(result);
        if (s.ok()) return result;  // done or stopped
      }
      if (stop_) break;
      if (!retryable(s) && s.error_code() != grpc::StatusCode::FAILED_PRECONDITION) throw Fatal(describe(s));
      if (s.error_code() == grpc::StatusCode::FAILED_PRECONDITION && !registered_) throw Fatal(describe(s));
      registered_ = false;
      backoff(attempt++, s);
      if (s.error_code() == grpc::StatusCode::UNAVAILABLE) session_.connect();
    }
    return result;
  }

 private:
  void backoff(int attempt, const grpc::Status& why) {
    // Exponential with "equal jitter": half fixed, half random, so restarting sites spread out.
    const double cap = std::min(cfg_.max_backoff_s, cfg_.initial_backoff_s * std::pow(2.0, std::min(attempt, 20)));
    const double delay = cap / 2 + std::uniform_real_distribution<double>(0, cap / 2)(rng_);
    spdlog::warn("coordinator unreachable ({}); retrying in {:.1f} s", why.error_message(), delay);
    const auto until = std::chrono::steady_clock::now() + std::chrono::duration<double>(delay);
    while (!stop_ && std::chrono::steady_clock::now() < until) std::this_thread::sleep_for(50ms);
  }

  grpc::Status register_once() {
    v1::RegisterRequest req;
    req.set_protocol(v1::PROTOCOL_VERSION_1);
    req.set_client_name(cfg_.name);
    req.set_num_train_examples(data_.train.size());
    req.set_num_test_examples(data_.test.size());
    if (!own_model_name_.empty()) *req.mutable_model() = own_model_;
    grpc::ClientContext ctx;
    session_.prepare(ctx, 30s);
    v1::RegisterReply reply;
    auto s = session_.stub().Register(&ctx, req, &reply);
    if (!s.ok()) return s;
    if (reply.protocol() != v1::PROTOCOL_VERSION_1)
      throw Fatal("coordinator speaks protocol version " + std::to_string(reply.protocol()) + ", this client 1");
    const bool new_run = reply.run_id() != reply_.run_id();
    reply_ = reply;
    set_log_run(reply_.run_id());
    registered_ = true;
    if (new_run || !model_) setup();
    spdlog::info("registered with {} as client #{} of run '{}' (strategy {}, model {}{})", cfg_.coordinator,
                 reply_.client_index(), reply_.run_id(), run_.strategy, model_->spec().name,
                 own_model_name_.empty() || own_model_name_ == run_.model ? "" : " of its own; the run's is " + run_.model);
    return s;
  }

  // The run as the coordinator specified it: this site builds its model, its half of the
  // strategy and its training settings from that alone.
  void setup() {
    try {
      const auto j = nlohmann::json::parse(reply_.run_spec_json());
      run_ = RunSpec::from_json(j);
    } catch (const std::exception& e) {
      throw Fatal(std::string("the coordinator's run specification is invalid: ") + e.what());
    }
    algorithm_ = run_.create_client_algorithm();
    model_ = build_model(own_model_name_.empty() ? model_spec_for(run_.model, data_.train, cfg_.model_path, run_.hidden)
                                                 : own_spec_);
    model_->to(device_);
    train_ = run_.train_options();
    evaluation_ = run_.eval_options();
    encode_.encoding = parse_encoding(run_.update_encoding);
    encode_.topk_fraction = run_.topk_fraction;
    personal_ = personal_store_.load(reply_.run_id());
    if (!personal_.empty()) spdlog::info("loaded {} personal state entr(ies) from {}", personal_.size(), cfg_.state_dir);
  }

  // Heartbeats from a side thread, so that long local training does not look like a dead site.
  struct Heartbeat {
    Heartbeat(EdgeClient& c) : client(c), thread([this] { loop(); }) {}
    ~Heartbeat() {
      done = true;
      thread.join();
    }
    void loop() {
      const auto every = std::chrono::milliseconds(std::max(100, client.reply_.heartbeat_interval_ms()));
      while (!done && !client.stop_) {
        auto next = std::chrono::steady_clock::now() + every;
        v1::HeartbeatRequest req;
        req.set_run_id(client.reply_.run_id());
        grpc::ClientContext ctx;
        client.session_.prepare(ctx, 5s);
        v1::HeartbeatReply reply;
        client.session_.stub().Heartbeat(&ctx, req, &reply);  // failures surface in the main loop
        while (!done && !client.stop_ && std::chrono::steady_clock::now() < next) std::this_thread::sleep_for(20ms);
      }
    }
    EdgeClient& client;
    std::atomic<bool> done{false};
    std::thread thread;
  };

  grpc::Status serve(EdgeClientResult& result) {
    Heartbeat hb(*this);
    while (!stop_) {
      v1::PollTaskRequest req;
      req.set_run_id(reply_.run_id());
      req.set_wait_ms(cfg_.poll_wait_ms);
      grpc::ClientContext ctx;
      session_.prepare(ctx, std::chrono::milliseconds(cfg_.poll_wait_ms) + 15s);
      v1::PollTaskReply poll;
      auto s = session_.stub().PollTask(&ctx, req, &poll);
      if (!s.ok()) return s;
      if (poll.kind() == v1::PollTaskReply::KIND_DONE) {
        if (finished_run_ != reply_.run_id())  // once per run (--stay polls on)
          spdlog::info("run '{}' finished", reply_.run_id());
        result.run_finished = true;
        finished_run_ = reply_.run_id();
        if (cfg_.exit_when_done) return grpc::Status::OK;
        std::this_thread::sleep_for(1s);
        continue;
      }
      if (poll.kind() != v1::PollTaskReply::KIND_TASK) continue;
      s = run_task(poll.task());
      // The task's round ended (at its deadline) before this site asked for the task's model:
      // a late site, not a refused one. The next poll brings the current task.
      if (s.error_code() == grpc::StatusCode::NOT_FOUND) {
        spdlog::warn("round {}: the {} task is gone ({}); polling for the current one", poll.task().round(),
                     poll.task().phase(), s.error_message());
        continue;
      }
      if (!s.ok()) return s;
      ++result.tasks_done;
    }
    return grpc::Status::OK;
  }

  grpc::Status download(const v1::Task& task, ModelState* packed) {
    v1::DownloadRequest req;
    req.set_task_id(task.task_id());
    grpc::ClientContext ctx;
    session_.prepare(ctx, 10min);
    auto reader = session_.stub().DownloadModel(&ctx, req);
    PayloadAssembler assembler(task.payload_bytes() + (1 << 20));
    v1::PayloadChunk chunk;
    try {
      while (reader->Read(&chunk)) {
        if (chunk.has_data()) client_metrics::bytes_received(chunk.data().size());
        assembler.add(chunk);
      }
      auto s = reader->Finish();
      if (!s.ok()) return s;
      const uint64_t sum = assembler.checksum();
      *packed = decode_state(assembler.manifest(), assembler.take_bytes(), nullptr, nullptr, false, sum);
    } catch (const PayloadError& e) {
      // A corrupt download is retried like a network failure.
      return grpc::Status(grpc::StatusCode::ABORTED, std::string("bad model payload: ") + e.what());
    }
    return grpc::Status::OK;
  }

  grpc::Status run_task(const v1::Task& task) {
    set_log_round(task.round());
    // Trained already, but the coordinator went away before acknowledging: send the same update
    // again instead of training the round twice (the coordinator keeps one copy per task).
    if (unacked_ && unacked_->task_id == task.task_id()) {
      spdlog::info("round {}: re-sending the {} update the coordinator did not acknowledge", task.round(),
                   task.phase());
      return final_answer(send_upload(), task);
    }
    ModelState packed;
    if (auto s = download(task, &packed); !s.ok()) return s;
    ClientTask t;
    t.round = task.round();
    t.client_id = reply_.client_index();
    t.phase = task.phase();
    t.config = std::map<std::string, double>(task.config().begin(), task.config().end());
    t.seed = task.seed();
    t.encoding = task.encoding();
    unpack_payload(packed, t.model, t.tensors);
    for (auto& kv : t.tensors) kv.second = kv.second.to(device_);
    t.model = t.model.to(device_);
    ClientContext ctx{*model_, data_.train, data_.test.size() > 0 ? &data_.test : nullptr, train_, personal_,
                      evaluation_};
    ClientResult r;
    EncodeOptions encoding = encode_;
    const auto t0 = std::chrono::steady_clock::now();
    try {
      if (!task.encoding().empty()) encoding.encoding = parse_encoding(task.encoding());  // the strategy's choice
      r = algorithm_->run(t, ctx);
      personal_store_.save(reply_.run_id(), personal_);
    } catch (const std::exception& e) {
      r.ok = false;
      r.error = e.what();
    }
    const double task_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    client_metrics::round(reply_.run_id(), t.round);
    client_metrics::task_done(reply_.run_id(), t.phase, r, task_s);
    const auto train_s = r.metrics.find("train_s");
    spdlog::info("round {}: {} done in {:.2f} s{}{}", t.round, t.phase, task_s,
                 train_s == r.metrics.end() ? "" : fmt::format(" (training {:.2f} s)", train_s->second),
                 r.ok ? "" : " (failed: " + r.error + ")");
    prepare_upload(task, packed, r, encoding);
    return final_answer(send_upload(), task);
  }

  // The coordinator refusing an update (NaN values, more examples than registered, a stale task)
  // is its verdict on this task, not on the site: logged, and the daemon goes on with the next
  // task. Transport errors and identity refusals go up as before.
  grpc::Status final_answer(grpc::Status s, const v1::Task& task) const {
    if (s.ok() || retryable(s) || s.error_code() == grpc::StatusCode::UNAUTHENTICATED ||
        s.error_code() == grpc::StatusCode::PERMISSION_DENIED)
      return s;
    client_metrics::update_refused(std::to_string(static_cast<int>(s.error_code())));
    spdlog::error("round {}: the coordinator refused the {} update: {}", task.round(), task.phase(), describe(s));
    return grpc::Status::OK;
  }

  // An encoded update kept until the coordinator acknowledges it.
  struct Upload {
    std::string task_id;
    v1::UploadChunk header;
    EncodedPayload payload;
  };

  void prepare_upload(const v1::Task& task, const ModelState& base, const ClientResult& r, const EncodeOptions& opt) {
    Upload u;
    u.task_id = task.task_id();
    auto* h = u.header.mutable_header();
    h->set_task_id(task.task_id());
    h->set_ok(r.ok);
    h->set_error(r.error);
    h->set_num_examples(r.num_examples);
    for (const auto& kv : r.metrics) (*h->mutable_metrics())[kv.first] = kv.second;
    if (r.ok) {
      ModelState packed = pack_payload(r.model.to(torch::kCPU), r.tensors);
      u.payload = encode_state(packed, opt, opt.encoding == v1::ENCODING_TOPK ? &base : nullptr);
    }
    unacked_ = std::move(u);
  }

  grpc::Status send_upload() {
    const Upload& u = *unacked_;
    const bool has_payload = u.header.header().ok();
    for (int attempt = 0;; ++attempt) {
      grpc::ClientContext ctx;
      session_.prepare(ctx, 10min);
      v1::UploadReply reply;
      auto writer = session_.stub().UploadUpdate(&ctx, &reply);
      bool ok = writer->Write(u.header);
      if (has_payload && ok) {
        v1::UploadChunk m;
        for_each_chunk(u.payload, m.mutable_chunk(), [&] {
          ok = writer->Write(m);
          if (ok && m.chunk().has_data()) client_metrics::bytes_sent(m.chunk().data().size());
          return ok;
        });
      }
      writer->WritesDone();
      auto s = writer->Finish();
      if (s.ok()) {
        if (reply.duplicate()) spdlog::info("update for {} was already accepted", u.task_id);
        unacked_.reset();
        return s;
      }
      if (!retryable(s)) unacked_.reset();  // refused for good: a fresh task gets a fresh try
      // The same task id again is safe: the coordinator keeps the first accepted copy. Past the
      // retries the update stays in unacked_ and goes again once the coordinator offers the task.
      if (!retryable(s) || attempt >= 4 || stop_) return s;
      backoff(attempt, s);
    }
  }

  const EdgeClientConfig& cfg_;
  const std::atomic<bool>& stop_;
  Session session_;
  PersonalStore personal_store_;
  std::mt19937_64 rng_;
  c10::Device device_{torch::kCPU};
  ClientData data_;
  v1::RegisterReply reply_;
  bool registered_ = false;
  std::string finished_run_;  // the last run we heard "done" for
  std::unique_ptr<Model> model_;
  std::string own_model_name_;        // --model, or "torchscript" for a --model-path alone; "" = the run's
  ModelSpec own_spec_;                // its spec, when the site trains a model of its own
  v1::ModelDeclaration own_model_;    // ... and its declaration
  std::shared_ptr<const ClientAlgorithm> algorithm_;
  RunSpec run_;
  TrainOptions train_;
  EvalOptions evaluation_;
  EncodeOptions encode_;
  std::map<std::string, ModelState> personal_;
  std::optional<Upload> unacked_;  // trained, not yet acknowledged
  std::unique_ptr<metrics::MetricsServer> metrics_server_;
};

}  // namespace

EdgeClientResult run_edge_client(const EdgeClientConfig& config, ClientData data, const std::atomic<bool>& stop) {
  if (!config.insecure) validate_tls_files(config.tls);
  if (config.insecure && config.name.empty()) throw std::invalid_argument("--insecure needs --name (the identity)");
  if (data.train.size() == 0) throw std::invalid_argument("the client has no training examples");
  EdgeClient client(config, std::move(data), stop);
  try {
    return client.run();
  } catch (const Fatal& e) {
    throw std::runtime_error(std::string("coordinator refused: ") + e.what());
  }
}

}  // namespace fl
