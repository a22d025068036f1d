#pragma once
// Coordinator: owns the run. Opens (or resumes) the run in the StateStore, serves the gRPC
// services, waits for clients, drives the RoundEngine round by round and commits each round
// (model, strategy state, metrics) atomically.
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "coordinator/store/state_store.h"

namespace fl {

struct CoordinatorConfig {
  std::string listen = "0.0.0.0:50051";
  std::string tls_ca, tls_cert, tls_key;
  std::string tls_crl;                      // CRL (PEM) re-read when it changes; "" = none
  bool insecure = false;
  bool keep_serving = false;                // after the last run, wait for `fedctl runs create/start`
  std::string data_dir = "fedcoord-data";  // RocksDB
  std::string run_id = "run-1";             // the run these flags define; "" = only admin-created runs
  std::string strategy = "fedavg";
  double mu = 0.01;                         // fedprox
  std::vector<std::string> strategy_params; // key=value
  std::string model = "cnn";
  std::string model_path;                   // torchscript
  std::vector<int64_t> hidden{200, 200};    // mlp
  std::vector<int64_t> input_shape{1, 28, 28};
  int64_t num_classes = 10;
  int rounds = 5;
  double fraction = 1.0;
  int min_clients = 1;
  std::string workflow = "scatter-gather";  // scatter-gather | cyclic (RoundEngine's Workflow)
  double round_deadline_s = 600;
  int eval_every = 1;
  std::string eval_dataset = "fashion-mnist";  // server-side test set: fashion-mnist | mnist | none
  std::string eval_data_dir;
  int64_t local_epochs = 1;
  int64_t local_steps = 0;
  int64_t batch_size = 64;
  std::string optimizer = "sgd";
  double lr = 0.01, momentum = 0.0, weight_decay = 0.0;
  std::string update_encoding = "fp32";     // fp32 | fp16 | bf16 | int8 | topk
  double topk_fraction = 0.01;
  uint64_t seed = 0;
  double registration_timeout_s = 600;
  double liveness_timeout_s = 30;
  int heartbeat_ms = 2000;
  double finish_grace_s = 10;               // after the last round, time for clients to hear "done"
  int64_t max_upload_mb = 4096;
  // Stored updates of this many committed rounds are kept, older ones deleted (0: keep all).
  int keep_update_rounds = StateStore::kDefaultKeepUpdateRounds;
};

struct CoordinatorResult {
  int rounds_done = 0;
  double global_accuracy = -1;
  bool interrupted = false;
};

// Serves the federation: executes the run these flags define (created, or resumed when it
// exists) and the runs admins start (`fedctl runs ...`), one at a time in start order.
// Returns when no started run is left (never, with keep_serving) or `stop` becomes true (a
// signal), leaving the store consistent for a resume. Throws on configuration errors. The
// result describes the last run executed.
CoordinatorResult run_coordinator(const CoordinatorConfig& config, const std::atomic<bool>& stop);

}  // namespace fl
