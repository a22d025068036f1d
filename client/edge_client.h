#pragma once
// EdgeClient: the loop a hospital's fedclient runs. Register -> poll for a task -> download
// the model -> train (or evaluate) locally with the strategy's ClientAlgorithm -> upload the
// update. Reconnects with exponential backoff and jitter whenever the coordinator is away,
// and keeps personal tensors (never sent) in its state directory across restarts.
#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

#include "common/data/client_data.h"
#include "common/net/tls.h"

namespace fl {

struct EdgeClientConfig {
  std::string coordinator = "localhost:50051";
  TlsFiles tls;
  bool insecure = false;
  std::string name;                 // insecure mode only: the identity sent in metadata
  std::string server_name_override;  // TLS: expected name in the coordinator's certificate
  std::string model_path;           // torchscript models: this site's copy of the run's .pt file
  // The architecture this site trains instead of the run's (declared at registration; the run's
  // strategy must accept it: feddistill does). Empty: the run's model.
  std::string model;
  std::vector<int64_t> hidden{200, 200};  // with `model` mlp: its hidden widths
  std::string device = "auto";
  std::string state_dir = "fedclient-state";
  double max_backoff_s = 30;
  double initial_backoff_s = 0.5;
  bool exit_when_done = true;
  int poll_wait_ms = 5000;
  // HOST:PORT of the Prometheus endpoint (GET /metrics); "" = none.
  std::string metrics_listen;
};

struct EdgeClientResult {
  int tasks_done = 0;
  bool run_finished = false;  // the coordinator said "done"
};

// Runs until the coordinator says the run is done (or forever with exit_when_done = false)
// or `stop` becomes true. Throws for errors no retry can fix (bad files, refused protocol
// version or model, permission denied).
EdgeClientResult run_edge_client(const EdgeClientConfig& config, ClientData data, const std::atomic<bool>& stop);

}  // namespace fl
