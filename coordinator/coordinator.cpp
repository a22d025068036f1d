#include "coordinator/coordinator.h"

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
#include "common/net/tls.h"
#include "coordinator/federation_service.h"
#include "coordinator/remote_pool.h"
#include "coordinator/store/state_store.h"
#include "strategies/registry.h"

namespace fl {
namespace {

using namespace std::chrono_literals;

v1::Encoding parse_encoding(const std::string& s) {
  if (s == "fp32") return v1::ENCODING_FP32;
  if (s == "fp16") return v1::ENCODING_FP16;
  if (s == "bf16") return v1::ENCODING_BF16;
  if (s == "int8") return v1::ENCODING_INT8;
  if (s == "topk") return v1::ENCODING_TOPK;
  throw std::invalid_argument("--update-encoding '" + s + "' is unknown (fp32, fp16, bf16, int8, topk)");
}

StrategyParams strategy_params(const CoordinatorConfig& c) {
  return strategy_params_from_flags(c.strategy, c.strategy_params, c.mu);
}

nlohmann::ordered_json config_json(const CoordinatorConfig& c) {
  nlohmann::ordered_json j;
  j["run_id"] = c.run_id;
  j["strategy"] = c.strategy;
  j["strategy_params"] = strategy_params(c);
  j["model"] = c.model;
  j["input_shape"] = c.input_shape;
  j["num_classes"] = c.num_classes;
  j["rounds"] = c.rounds;
  j["fraction"] = c.fraction;
  j["min_clients"] = c.min_clients;
  j["local_epochs"] = c.local_epochs;
  j["local_steps"] = c.local_steps;
  j["batch_size"] = c.batch_size;
  j["optimizer"] = c.optimizer;
  j["lr"] = c.lr;
  j["momentum"] = c.momentum;
  j["weight_decay"] = c.weight_decay;
  j["update_encoding"] = c.update_encoding;
  j["seed"] = c.seed;
  return j;
}

// The settings a resumed run must not change (the rest, like deadlines, may be tuned).
void check_resumable(const nlohmann::json& stored, const nlohmann::ordered_json& ordered) {
  const nlohmann::json now = nlohmann::json::parse(ordered.dump());
  for (const char* key : {"strategy", "strategy_params", "model", "input_shape", "num_classes", "seed", "fraction"}) {
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
  j["samples"] = r.samples;
  j["train_loss"] = r.train_loss;
  j["federated_accuracy"] = r.personalized_accuracy;
  j["global_accuracy"] = r.global_accuracy;
  j["global_loss"] = r.global_loss;
  j["wall_s"] = r.wall_s;
  j["eval_s"] = r.eval_s;
  for (const auto& kv : r.strategy_metrics) j["strategy"][kv.first] = kv.second;
  return j.dump();
}

std::string fmt_acc(double a) { return a >= 0 ? fmt::format("{:.4f}", a) : "-"; }

}  // namespace

CoordinatorResult run_coordinator(const CoordinatorConfig& c, const std::atomic<bool>& stop) {
  const auto encoding = parse_encoding(c.update_encoding);
  if (!c.insecure) validate_tls_files({c.tls_ca, c.tls_cert, c.tls_key});
  const StrategyParams params = strategy_params(c);
  auto strategy = create_strategy(c.strategy, params);

  // Server-side test set: the global model's accuracy each evaluated round.
  TensorDataset test;
  ModelSpec spec;
  spec.name = c.model;
  spec.path = c.model_path;
  spec.hidden = c.hidden;
  spec.input_shape = c.input_shape;
  spec.num_classes = c.num_classes;
  if (c.eval_dataset != "none") {
    DataSource src;
    src.dataset = c.eval_dataset;
    src.data_dir = c.eval_data_dir;
    src.train_limit = 1;  // only the test split is used
    test = load_data(src).test;
    spec = model_spec_for(c.model, test, c.model_path, c.hidden);
  }

  std::filesystem::create_directories(c.data_dir);
  StateStore store(c.data_dir);
  auto cfg = config_json(c);
  auto run = store.load_run(c.run_id);
  if (run) {
    check_resumable(nlohmann::json::parse(run->config_json), cfg);
  } else {
    run = RunRecord{c.run_id, cfg.dump(), "waiting", 1, c.rounds};
    store.save_run(*run);
  }
  run->total_rounds = c.rounds;

  // The global model: the last committed version, or a fresh seeded initialisation.
  int start_round = 1;
  if (auto v = store.latest_model_version(c.run_id)) {
    auto model = store.load_model(c.run_id, *v);
    strategy->initialize(*model);
    strategy->load_state(store.load_strategy_state(c.run_id));
    start_round = *v + 1;
    spdlog::info("run '{}': resuming after round {} of {}", c.run_id, *v, c.rounds);
  } else {
    seed_everything(c.seed);
    auto model = build_model(spec);
    strategy->initialize(model->state());
    store.save_initial_model(c.run_id, strategy->global_model());
    spdlog::info("run '{}': new, model {} with {} parameters", c.run_id, c.model, model->num_parameters());
  }

  RemotePoolOptions po;
  po.round_deadline = std::chrono::milliseconds(static_cast<int64_t>(c.round_deadline_s * 1000));
  po.liveness_timeout = std::chrono::milliseconds(static_cast<int64_t>(c.liveness_timeout_s * 1000));
  po.max_upload_bytes = static_cast<uint64_t>(c.max_upload_mb) << 20;
  RemoteClientPool pool(store, c.run_id, po);
  pool.set_model_layout(strategy->global_model());

  RunDescription desc;
  desc.run_id = c.run_id;
  desc.strategy = c.strategy;
  desc.strategy_params = params;
  desc.model = c.model;
  desc.train.set_epochs(static_cast<int32_t>(c.local_epochs));
  desc.train.set_max_steps(c.local_steps);
  desc.train.set_batch_size(static_cast<int32_t>(c.batch_size));
  desc.train.set_optimizer(c.optimizer);
  desc.train.set_lr(c.lr);
  desc.train.set_momentum(c.momentum);
  desc.train.set_weight_decay(c.weight_decay);
  desc.update_encoding = encoding;
  desc.topk_fraction = c.topk_fraction;
  desc.heartbeat_interval_ms = c.heartbeat_ms;
  desc.total_rounds = c.rounds;
  FederationService federation(pool, desc, c.insecure);
  AdminService admin(pool, store, desc, c.insecure);

  grpc::ServerBuilder builder;
  if (c.insecure) {
    spdlog::warn("*** INSECURE MODE: no TLS, client identities are NOT verified. Never use this outside a test. ***");
    builder.AddListeningPort(c.listen, grpc::InsecureServerCredentials());
  } else {
    builder.AddListeningPort(c.listen, make_server_credentials({c.tls_ca, c.tls_cert, c.tls_key}));
  }
  builder.SetMaxReceiveMessageSize(4 << 20);  // chunks are <= 1 MiB; nothing legitimate is larger
  builder.RegisterService(&federation);
  builder.RegisterService(&admin);
  auto server = builder.BuildAndStart();
  if (!server) throw std::runtime_error("cannot listen on " + c.listen + " (address in use or invalid?)");
  spdlog::info("listening on {} ({})", c.listen, c.insecure ? "insecure" : "mutual TLS");

  // A signal turns into an aborted round; everything accepted so far is already stored.
  std::thread watcher([&] {
    while (!stop && !pool.finished()) std::this_thread::sleep_for(100ms);
    if (stop) pool.abort();
  });
  CoordinatorResult result;
  auto shutdown = [&] {
    pool.finish();
    if (!stop) {  // let the clients hear "done" before the server goes away
      const auto until = std::chrono::steady_clock::now() +
                         std::chrono::milliseconds(static_cast<int64_t>(c.finish_grace_s * 1000));
      while (!stop && std::chrono::steady_clock::now() < until) std::this_thread::sleep_for(100ms);
    }
    pool.abort();
    watcher.join();
    server->Shutdown(std::chrono::system_clock::now() + 2s);
  };

  if (start_round > c.rounds) {
    spdlog::info("run '{}' already finished ({} rounds)", c.run_id, c.rounds);
    run->state = "finished";
    store.save_run(*run);
    result.rounds_done = c.rounds;
    shutdown();
    return result;
  }

  // Wait for enough clients (all known ones count: their indices are stable).
  const auto reg_deadline = std::chrono::steady_clock::now() +
                            std::chrono::milliseconds(static_cast<int64_t>(c.registration_timeout_s * 1000));
  while (!stop && pool.num_clients() < c.min_clients) {
    if (std::chrono::steady_clock::now() > reg_deadline) {
      shutdown();
      throw std::runtime_error("only " + std::to_string(pool.num_clients()) + " of --min-clients " +
                               std::to_string(c.min_clients) + " registered within " +
                               std::to_string(c.registration_timeout_s) + " s");
    }
    spdlog::info("waiting for clients: {}/{} registered", pool.wait_for_clients(c.min_clients, 5s), c.min_clients);
  }

  auto eval_model = build_model(spec);
  EngineOptions eo;
  eo.rounds = c.rounds;
  eo.fraction = c.fraction;
  eo.min_clients = c.min_clients;
  eo.seed = c.seed;
  eo.eval_every = c.eval_every;
  GlobalEvaluator evaluate;
  if (test.size() > 0)
    evaluate = [&](const ModelState& global) {
      auto s = eval_model->state();
      s.assign(global);
      eval_model->load_state(s);
      return LocalTrainer::evaluate(*eval_model, test);
    };

  run->state = "running";
  store.save_run(*run);
  int r = start_round;
  while (!stop && r <= c.rounds) {
    federation.set_current_round(r);
    RoundReport rep;
    try {
      RoundEngine engine(*strategy, pool, eo, evaluate);  // re-read the client count each round
      rep = engine.run_round(r);
    } catch (const PoolAborted&) {
      break;
    } catch (const std::runtime_error& e) {
      // Every selected client failed: nothing to aggregate. Accepted updates stay stored;
      // try the round again once clients are back.
      spdlog::warn("round {}: {}; retrying in 5 s", r, e.what());
      for (int i = 0; i < 50 && !stop; ++i) std::this_thread::sleep_for(100ms);
      continue;
    }
    if (r == c.rounds) run->state = "finished";
    RoundRecord rec{r, round_json(rep)};
    store.commit_round(*run, r, strategy->global_model(), strategy->save_state(), rec);
    if (c.keep_update_rounds > 0) store.prune_updates(c.run_id, c.keep_update_rounds);
    result.rounds_done = r;
    if (rep.global_accuracy >= 0) result.global_accuracy = rep.global_accuracy;
    spdlog::info("round {}/{}: clients {} (dropped {}) loss {:.4f} federated_accuracy {} global_accuracy {} ({:.1f}s)",
                 r, c.rounds, rep.selected.size() - rep.failures, rep.failures, rep.train_loss,
                 fmt_acc(rep.personalized_accuracy), fmt_acc(rep.global_accuracy), rep.wall_s + rep.eval_s);
    ++r;
  }
  if (r <= c.rounds) {
    result.interrupted = true;
    spdlog::info("interrupted during round {}; a restart resumes it", r);
  }
  shutdown();
  return result;
}

}  // namespace fl
