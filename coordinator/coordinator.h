#pragma once
// Coordinator: owns the run. Opens (or resumes) the run in the StateStore, serves the gRPC
// services, waits for clients, drives the RoundEngine round by round and commits each round
// (model, strategy state, metrics) atomically.
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/net/tls.h"
#include "common/run/run_spec.h"
#include "coordinator/store/state_store.h"

namespace fl {

// Server options + the RunSpec of the run these flags define (and the defaults that
// `fedctl runs create` overrides key by key).
struct CoordinatorConfig {
  std::string listen = "0.0.0.0:50051";
  TlsFiles tls;
  std::string tls_crl;                      // CRL (PEM) re-read when it changes; "" = none
  bool insecure = false;
  bool keep_serving = false;                // after the last run, wait for `fedctl runs create/start`
  std::string data_dir = "fedcoord-data";  // RocksDB
  std::string run_id = "run-1";             // the run these flags define; "" = only admin-created runs
  RunSpec run = default_run_spec();         // validated (RunOptions::finish or RunSpec::validate)
  std::string model_path;                   // torchscript: the .pt file on this machine
  double round_deadline_s = 600;
  std::string eval_dataset = "fashion-mnist";  // server-side test set: fashion-mnist | mnist | none
  std::string eval_data_dir;
  double registration_timeout_s = 600;
  double liveness_timeout_s = 30;
  int heartbeat_ms = 2000;
  double stream_idle_timeout_s = 120;       // an upload or download idle this long is cancelled
  int max_threads = 1024;                   // gRPC server threads (each long poll holds one)
  double finish_grace_s = 10;               // after the last round, time for clients to hear "done"
  int64_t max_upload_mb = 4096;
  // HOST:PORT of the Prometheus endpoint (GET /metrics); "" = none.
  std::string metrics_listen;
  // Stored updates of this many committed rounds are kept, older ones deleted (0: keep all).
  int keep_update_rounds = StateStore::kDefaultKeepUpdateRounds;

  // fedcoord's defaults for a run: the cnn, 5 rounds.
  static RunSpec default_run_spec();
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
