#include "coordinator/coordinator.h"

#include <malloc.h>
#include <grpcpp/grpcpp.h>
#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <chrono>
#include <filesystem>
#include <thread>

#include "common/core/device.h"
#include "common/data/client_data.h"
#include "common/engine/round_engine.h"
#include "common/engine/run_loop.h"
#include "common/net/tls.h"
#include "common/net/pki.h"
#include "common/util/logging.h"
#include "common/util/process_memory.h"
#include "common/util/text.h"
#include "common/ops/metrics_server.h"
#include "coordinator/admin_service.h"
#include "coordinator/coordinator_metrics.h"
#include "coordinator/federation_service.h"
#include "coordinator/run_control.h"
#include "coordinator/remote_pool.h"
#include "coordinator/store/state_store.h"
#include "strategies/registry.h"

namespace fl {

RunSpec CoordinatorConfig::default_run_spec() {
  RunSpec r;
  r.model = "cnn";
  r.rounds = 5;
  return r;
}

namespace {

using namespace std::chrono_literals;

// The settings a resumed run must not change (the rest, like deadlines, may be tuned).
void check_resumable(const nlohmann::json& stored, const nlohmann::ordered_json& ordered) {
  const nlohmann::json now = nlohmann::json::parse(ordered.dump());
  for (const char* key : {"strategy", "strategy_params", "model", "hidden", "input_shape", "num_classes", "seed",
                          "fraction", "workflow"}) {
    if (stored.contains(key) && stored[key] != now[key])
      throw std::invalid_argument(std::string("run exists with ") + key + " = " + stored[key].dump() +
                                  "; this configuration says " + now[key].dump() +
                                  " (use another --run-id for a new run)");
  }
}

std::string round_json(const RoundReport& r) {
  nlohmann::ordered_json j;
  j["round"] = r.round;
  j["participants"] = r.selected;
  j["failures"] = r.failures;
  j["dropped"] = r.dropped;
  if (r.rejected > 0) j["rejected"] = r.rejected;
  if (!r.aggregation_error.empty()) j["aggregation_error"] = r.aggregation_error;
  j["samples"] = r.samples;
  j["train_loss"] = r.train_loss;
  j["federated_accuracy"] = r.personalized_accuracy;
  j["global_accuracy"] = r.global_accuracy;
  j["global_loss"] = r.global_loss;
  if (!r.global_metrics.empty()) j["global_metrics"] = r.global_metrics;
  j["wall_s"] = r.wall_s;
  j["aggregate_s"] = r.aggregate_s;
  j["eval_s"] = r.eval_s;
  for (const auto& [client, why] : r.failure_reasons) j["failed"][std::to_string(client)] = why;
  if (r.exchanges > 1) j["exchanges"] = r.exchanges;
  if (!r.federated_evaluation.empty()) {
    j["federated_evaluation"] = r.federated_evaluation;
    j["evaluate_failures"] = r.evaluate_failures;
  }
  for (const auto& kv : r.strategy_metrics) j["strategy"][kv.first] = kv.second;
  return j.dump();
}

std::string fmt_acc(double a) { return a >= 0 ? fmt::format("{:.4f}", a) : "-"; }


// fedcoord's RunStore: the run's records in RocksDB, under the StateStore's durability rule (a
// round's model, strategy state and record in one atomic write). Committing also prunes the
// stored updates of older rounds.
class StoreRunStore : public RunStore {
 public:
  StoreRunStore(StateStore& store, RunController& runs, std::string run_id, int keep_update_rounds)
      : store_(store), runs_(runs), run_id_(std::move(run_id)), keep_update_rounds_(keep_update_rounds) {}

  std::optional<RunCheckpoint> load() override {
    const auto v = store_.latest_model_version(run_id_);
    if (!v) return std::nullopt;
    RunCheckpoint c;
    c.round = *v;
    c.global = *store_.load_model(run_id_, *v);
    c.strategy_state = store_.load_strategy_state(run_id_);
    return c;
  }
  void begin(const ModelState& initial) override { store_.save_initial_model(run_id_, initial); }
  void commit(const RoundReport& report, const RunCheckpoint& state) override {
    const auto t0 = std::chrono::steady_clock::now();
    runs_.commit_round(run_id_, state.round, state.global, state.strategy_state, RoundRecord{state.round, round_json(report)});
    if (keep_update_rounds_ > 0) store_.prune_updates(run_id_, keep_update_rounds_);
    last_commit_s_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  // How long the last commit (and the pruning after it) took.
  double last_commit_s() const { return last_commit_s_; }

 private:
  StateStore& store_;
  RunController& runs_;
  const std::string run_id_;
  const int keep_update_rounds_;
  double last_commit_s_ = 0;
};

// Everything one run's execution needs from the coordinator around it.
struct Services {
  StateStore& store;
  RunController& runs;
  RunSlot& slot;
  const std::atomic<bool>& stop;
};

// Executes one run (its rounds from where it stands) with the settings stored with it.
CoordinatorResult execute_run(const CoordinatorConfig& base, const RunRecord& record, Services& env) {
  CoordinatorConfig c = base;
  c.run_id = record.run_id;
  set_log_run(c.run_id);  // until EndRun: what is logged is about this run
  auto settings = nlohmann::json::parse(record.config_json);
  settings.erase("run_id");  // stored by earlier versions: the run's key, not one of its settings
  c.run.apply_json(settings);
  const RunSpec& run = c.run;
  StateStore& store = env.store;
  const auto& stop = env.stop;
  // Shared: uploads still in flight when the run ends check against it (set_result_check).
  std::shared_ptr<Strategy> strategy = run.create_strategy();

  // Server-side test set: the global model's accuracy each evaluated round.
  TensorDataset test;
  ModelSpec spec = run.model_spec(c.model_path);
  if (c.eval_dataset != "none") {
    DataSource src;
    src.dataset = c.eval_dataset;
    src.data_dir = c.eval_data_dir;
    src.train_limit = 1;  // only the test split is used
    test = load_data(src).test;
    spec = model_spec_for(run.model, test, c.model_path, run.hidden);
  }

  RemotePoolOptions po;
  po.round_deadline = std::chrono::milliseconds(static_cast<int64_t>(c.round_deadline_s * 1000));
  po.liveness_timeout = std::chrono::milliseconds(static_cast<int64_t>(c.liveness_timeout_s * 1000));
  po.max_upload_bytes = static_cast<uint64_t>(c.max_upload_mb) << 20;
  po.max_examples_per_client = run.max_examples_per_client;
  po.roster = run.client_names;
  auto active = std::make_shared<ActiveRun>();
  active->pool = std::make_shared<RemoteClientPool>(store, c.run_id, po);
  RemoteClientPool& pool = *active->pool;

  // The global model: the last committed version, or a fresh seeded initialisation.
  StoreRunStore run_store(store, env.runs, c.run_id, c.keep_update_rounds);
  const int start_round = resume_run(*strategy, pool, run_store, [&] {
    seed_everything(run.seed);
    auto model = build_model(spec);
    spdlog::info("run '{}': new, model {} with {} parameters", c.run_id, run.model, model->num_parameters());
    return model->state();
  });
  if (start_round > 1) spdlog::info("run '{}': resuming after round {} of {}", c.run_id, start_round - 1, run.rounds);
  // The run's model (sites that declare none train it) and the strategy's rule for the others.
  // Kept only when there is a test set to evaluate on: a model's worth of memory otherwise.
  auto eval_model = build_model(spec);
  pool.set_run_model(ModelDeclaration::of(*eval_model),
                     [name = run.strategy](const ModelDeclaration& run_model, const ModelDeclaration& client) {
                       return check_client_model(name, run_model, client);
                     });
  // Without a test set the model was built for its declaration only: it goes before the rounds.
  if (test.size() == 0) eval_model.reset();
  // Every upload is checked as the round engine will check it, before it is stored and acknowledged.
  pool.set_result_check([strategy, max = run.max_examples_per_client](const ClientTask& t, const ClientResult& r) {
    return result_problem(*strategy, t, r, max);
  });
  for (const auto& client : store.clients(c.run_id))  // revoked by an admin earlier: never waited for
    if (store.denied(client.name)) pool.deny(client.index);

  RunDescription& desc = active->desc;
  desc.run_id = c.run_id;
  {
    // What every client receives: not who else takes part (the roster is the coordinator's).
    RunSpec shared = run;
    shared.client_names.clear();
    desc.run_spec_json = shared.to_json().dump();
  }
  desc.heartbeat_interval_ms = c.heartbeat_ms;

  CoordinatorResult result;
  result.rounds_done = start_round - 1;
  env.runs.begin(c.run_id, [&pool] { pool.abort(); });
  env.slot.set(active);  // from now on clients (re-)register into this run
  struct EndRun {
    Services& env;
    std::string id;
    ~EndRun() {
      env.runs.end(id);
      set_log_run("");
      set_log_round(0);
    }
  } end_run{env, c.run_id};

  // A signal (or an admin's abort) turns into an aborted round; everything accepted so far is stored.
  std::atomic<bool> run_over{false};
  std::thread watcher([&] {
    while (!stop && !run_over) std::this_thread::sleep_for(100ms);
    if (stop) pool.abort();
  });
  struct JoinWatcher {
    std::atomic<bool>& over;
    std::thread& t;
    ~JoinWatcher() {
      over = true;
      t.join();
    }
  } join_watcher{run_over, watcher};

  // Wait for enough clients (all known ones count: their indices are stable).
  const auto reg_deadline = std::chrono::steady_clock::now() +
                            std::chrono::milliseconds(static_cast<int64_t>(c.registration_timeout_s * 1000));
  while (!stop && !env.runs.aborted(c.run_id) && pool.num_registered() < run.min_clients) {
    if (!c.keep_serving && std::chrono::steady_clock::now() > reg_deadline)
      throw std::runtime_error("only " + std::to_string(pool.num_registered()) + " of --min-clients " +
                               std::to_string(run.min_clients) + " registered within " +
                               std::to_string(c.registration_timeout_s) + " s");
    const int registered = pool.wait_for_clients(run.min_clients, 5s);
    coordinator_metrics::run_state(c.run_id, registered, start_round);
    spdlog::info("run '{}': waiting for clients: {}/{} registered", c.run_id, registered, run.min_clients);
  }

  const EngineOptions eo = run.engine_options();
  GlobalEvaluator evaluate;
  if (test.size() > 0)
    evaluate = [&](const ModelState& global) {
      eval_model->assign_state(global);
      return LocalTrainer::evaluate(*eval_model, test, run.eval_options());
    };

  RunLoopHooks hooks;
  hooks.may_start = [&](int r) {
    if (!env.runs.wait_until_runnable(c.run_id, stop)) return false;
    active->round = r;
    set_log_round(r);
    coordinator_metrics::run_state(c.run_id, pool.num_registered(), r);
    return true;
  };
  hooks.retry = [&](int r, const std::exception& e) {
    // Every selected client failed: nothing to aggregate. Accepted updates stay stored; try the
    // round again once clients are back. A shutdown (PoolAborted) ends the loop instead.
    if (dynamic_cast<const PoolAborted*>(&e) || !dynamic_cast<const std::runtime_error*>(&e)) return false;
    spdlog::warn("round {}: {}; retrying in 5 s", r, e.what());
    for (int i = 0; i < 50 && !stop; ++i) std::this_thread::sleep_for(100ms);
    return true;
  };
  hooks.committed = [&](const RoundReport& rep) {
    result.rounds_done = rep.round;
    coordinator_metrics::round_committed(c.run_id, rep);
    if (rep.global_accuracy >= 0) result.global_accuracy = rep.global_accuracy;
    spdlog::info("round {}/{}: clients {} (dropped {}) loss {:.4f} federated_accuracy {} global_accuracy {}{} ({:.1f}s)",
                 rep.round, run.rounds, rep.selected.size() - rep.failures, rep.failures, rep.train_loss,
                 fmt_acc(rep.personalized_accuracy), fmt_acc(rep.global_accuracy), metrics_text(rep.global_metrics),
                 rep.wall_s + rep.eval_s);
    malloc_trim(0);  // what the round freed inside the heap goes back to the system between rounds
    const ProcessMemory mem = process_memory();
    spdlog::debug("round {}: {} samples, {:.2f} s to aggregate, {:.2f} s to evaluate, {:.2f} s to commit; memory {} MB, "
                  "peak {} MB",
                  rep.round, rep.samples, rep.aggregate_s, rep.eval_s, run_store.last_commit_s(), mem.rss_bytes >> 20,
                  mem.peak_bytes >> 20);
    if (!rep.aggregation_error.empty())
      spdlog::error("round {}: aggregation failed, the global model stays as it was: {}", rep.round,
                    rep.aggregation_error);
  };
  try {
    run_rounds(start_round, run.rounds,
               [&](int r) {
                 RoundEngine engine(*strategy, pool, eo, evaluate);  // re-reads the client count each round
                 return engine.run_round(r);
               },
               *strategy, pool, run_store, hooks);
  } catch (const PoolAborted&) {
  }
  const int r = result.rounds_done + 1;  // the first round not committed
  if (env.runs.aborted(c.run_id)) {
    spdlog::warn("run '{}' was aborted by an admin after {} committed round(s)", c.run_id, result.rounds_done);
  } else if (r <= run.rounds) {
    result.interrupted = true;
    spdlog::info("interrupted during round {}; a restart resumes it", r);
  }
  if (!result.interrupted) pool.finish();  // clients hear "done" (and follow into the next run)
  return result;
}

// The run these flags define: created (and started) when new, checked when it exists.
void adopt_flag_run(const std::string& run_id, const RunSpec& spec, StateStore& store, RunController& runs) {
  const auto settings = spec.to_json();
  if (auto run = store.load_run(run_id)) {
    check_resumable(nlohmann::json::parse(run->config_json), settings);
    // The flags win for what may change on a resume (rounds, training settings, encoding).
    run->config_json = settings.dump();
    run->total_rounds = spec.rounds;
    if (run->state == "finished" && run->current_round <= spec.rounds) run->state = "running";  // more rounds
    store.save_run(*run);
    if (run->state == "created") runs.control(run_id, RunController::Action::kStart);
    return;
  }
  runs.create(run_id, settings.dump(), spec.rounds, /*start=*/true);
}

}  // namespace

CoordinatorResult run_coordinator(const CoordinatorConfig& c, const std::atomic<bool>& stop) {
  if (!c.run_id.empty())
    if (auto why = run_id_problem(c.run_id); !why.empty()) throw std::invalid_argument("--run-id: " + why);
  if (!c.insecure) validate_tls_files(c.tls);
  RunSpec flag_run = c.run;
  flag_run.validate();  // a run these flags cannot define is refused before anything starts
  std::shared_ptr<pki::RevocationList> crl;
  if (!c.tls_crl.empty()) {
    if (c.insecure) throw std::invalid_argument("--tls-crl needs mutual TLS (not --insecure)");
    crl = std::make_shared<pki::RevocationList>(c.tls_crl, c.tls.ca);
    spdlog::info("enforcing the CRL {} ({} revoked certificate(s)); changes apply without a restart", c.tls_crl,
                 crl->size());
  }

  std::unique_ptr<metrics::MetricsServer> metrics_server;
  if (!c.metrics_listen.empty()) {
    const auto where = metrics::parse_listen_address(c.metrics_listen, "--metrics-listen");
    metrics::add_process_metrics(metrics::global(), "fedcoord", "cpu");
    metrics_server = std::make_unique<metrics::MetricsServer>(metrics::global(), where);
    spdlog::info("serving Prometheus metrics on http://{}:{}/metrics", where.host, metrics_server->port());
  }

  std::filesystem::create_directories(c.data_dir);
  StateStore store(c.data_dir);
  RunController runs(store);
  if (!c.run_id.empty()) adopt_flag_run(c.run_id, flag_run, store, runs);

  RunSlot slot;
  Authenticator auth(store, c.insecure,
                     crl ? Authenticator::RevokedSerial([crl](const std::string& s) { return crl->is_revoked(s); })
                         : Authenticator::RevokedSerial());
  StreamGuard::Options streams;
  streams.idle_timeout = std::chrono::milliseconds(static_cast<int64_t>(c.stream_idle_timeout_s * 1000));
  FederationService federation(slot, auth, streams);
  AdminService admin(slot, store, runs, auth, flag_run);

  grpc::ServerBuilder builder;
  if (c.insecure) {
    spdlog::warn("*** INSECURE MODE: no TLS, client identities are NOT verified. Never use this outside a test. ***");
    builder.AddListeningPort(c.listen, grpc::InsecureServerCredentials());
  } else {
    builder.AddListeningPort(c.listen, make_server_credentials(c.tls));
  }
  builder.SetMaxReceiveMessageSize(4 << 20);  // chunks are <= 1 MiB; nothing legitimate is larger
  // Dead peers are found by keepalive pings (a client may ping every 20 s; fedclient pings every
  // 30 s), one connection opens at most 32 streams at once, and the server's threads are bounded.
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, 30000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 10000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 20000);
  builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS, 32);
  grpc::ResourceQuota quota("fedcoord");
  quota.SetMaxThreads(c.max_threads);
  builder.SetResourceQuota(quota);
  builder.RegisterService(&federation);
  builder.RegisterService(&admin);
  auto server = builder.BuildAndStart();
  if (!server) throw std::runtime_error("cannot listen on " + c.listen + " (address in use or invalid?)");
  spdlog::info("listening on {} ({})", c.listen, c.insecure ? "insecure" : "mutual TLS");

  auto shutdown = [&](bool grace) {
    if (auto active = slot.get()) active->pool->finish();
    if (grace) {  // let the clients hear "done" before the server goes away
      const auto until = std::chrono::steady_clock::now() +
                         std::chrono::milliseconds(static_cast<int64_t>(c.finish_grace_s * 1000));
      while (!stop && std::chrono::steady_clock::now() < until) std::this_thread::sleep_for(100ms);
    }
    if (auto active = slot.get()) active->pool->abort();
    server->Shutdown(std::chrono::system_clock::now() + 2s);
  };

  CoordinatorResult result;
  Services env{store, runs, slot, stop};
  bool ran = false;
  try {
    while (!stop) {
      auto next = runs.next_runnable();
      if (!next) {
        if (!c.keep_serving) break;
        runs.wait_for_change(500ms);
        continue;
      }
      if (next->current_round > next->total_rounds) {  // finished but not marked (a crash at the very end)
        next->state = "finished";
        store.save_run(*next);
        continue;
      }
      ran = true;
      result = execute_run(c, *next, env);
      if (result.interrupted) break;
    }
  } catch (...) {
    shutdown(false);
    throw;
  }
  if (!ran && !c.run_id.empty()) {
    if (auto run = store.load_run(c.run_id)) {
      spdlog::info("run '{}' is {} ({} of {} rounds)", c.run_id, run->state, run->current_round - 1, run->total_rounds);
      result.rounds_done = std::min(run->current_round - 1, run->total_rounds);
    }
  }
  shutdown(ran && !stop && !result.interrupted);
  return result;
}

}  // namespace fl
