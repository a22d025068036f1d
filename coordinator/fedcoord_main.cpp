// fedcoord: the coordinator service. Serves the Federation and Admin gRPC services over
// mutual TLS, drives the rounds with the shared RoundEngine and keeps every piece of state
// in RocksDB, so that a coordinator killed at any moment resumes where it was.
//
//   fedcoord --tls-ca pki/ca.crt --tls-cert pki/coordinator.crt --tls-key pki/coordinator.key
//            --data-dir /var/lib/fedcoord --model cnn --rounds 5 --min-clients 3
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <malloc.h>
#include <iostream>

#include "common/core/compute_setup.h"
#include "common/config/validators.h"
#include "common/config/yaml_config.h"
#include "common/run/run_spec.h"
#include "common/util/logging.h"
#include "common/util/signals.h"
#include "common/net/tls.h"
#include "coordinator/coordinator.h"

int main(int argc, char** argv) {
  // A fixed mmap threshold: every allocation of 128 KiB or more (payload chunks, gRPC messages,
  // update buffers) is its own mapping, returned to the system when freed. glibc's default raises
  // the threshold to the largest chunk freed so far, after which the 1 MiB chunks of every upload
  // come from per-thread arenas that keep them: fedcoord's peak memory in scripts/bench_round.sh
  // went from 1,017 to 757 MB with this alone (docs/performance.md).
  mallopt(M_MMAP_THRESHOLD, 128 * 1024);
  // Two malloc arenas instead of glibc's 8 per core: gRPC's receive slices for concurrent uploads
  // are freed by other threads than the ones that allocated them, and every arena kept its own
  // share of them; with two, bench_round's peak went from 777 to 548 MB (docs/performance.md).
  mallopt(M_ARENA_MAX, 2);
  using namespace fl;
  CoordinatorConfig c;
  std::string log_level = "info";
  CLI::App app{"fedcoord: federated learning coordinator (gRPC + mutual TLS, state in RocksDB)"};
  auto* listen = app.add_option("--listen", c.listen, "address to serve on (with --insecure: 127.0.0.1:50051 unless given)")
                    ->capture_default_str();
  add_tls_flags(app, c.tls, c.insecure,
                {"CA certificate (PEM) that client certificates must chain to", "the coordinator's certificate (PEM)",
                 "the coordinator's private key (PEM)"});
  app.add_option("--tls-crl", c.tls_crl, "certificate revocation list (PEM, from `fedctl pki revoke`); re-read when it changes");
  app.add_flag("--keep-serving", c.keep_serving, "after the last started run, wait for admins to start more (fedctl runs)");
  app.add_option("--data-dir", c.data_dir, "RocksDB directory (run state, models, updates)")->capture_default_str();
  app.add_option("--run-id", c.run_id, "run these flags define; an existing run is resumed (\"\" = only runs created with fedctl)")->capture_default_str();
  RunOptions run_options(app, c.run, kRunScopeDeploy);  // the run's settings: model, training, strategy, rounds...
  app.add_option("--model-path", c.model_path, "torchscript: the .pt file");
  app.add_option("--round-deadline-s", c.round_deadline_s, "stragglers later than this are dropped")->check(positive(kMaxSeconds));
  app.add_option("--eval-dataset", c.eval_dataset, "server-side test set: fashion-mnist | mnist | none")
      ->check(CLI::IsMember({"fashion-mnist", "mnist", "none"}))->capture_default_str();
  app.add_option("--eval-data-dir", c.eval_data_dir, "directory of the test set's IDX files");
  app.add_option("--registration-timeout-s", c.registration_timeout_s, "give up waiting for --min-clients")
      ->check(positive(kMaxSeconds));
  app.add_option("--liveness-timeout-s", c.liveness_timeout_s, "drop clients silent this long")->check(positive(kMaxSeconds));
  app.add_option("--heartbeat-ms", c.heartbeat_ms, "client heartbeat interval")->check(positive(3.6e6));
  app.add_option("--finish-grace-s", c.finish_grace_s, "after the last round, time for clients to hear 'done'")
      ->check(non_negative(kMaxSeconds));
  app.add_option("--stream-idle-timeout-s", c.stream_idle_timeout_s,
                 "cancel an upload or download that sends nothing for this long")
      ->check(positive(kMaxSeconds))->capture_default_str();
  app.add_option("--max-threads", c.max_threads, "most gRPC server threads (each waiting client holds one)")
      ->check(CLI::Range(16, 65536))->capture_default_str();
  app.add_option("--max-upload-mb", c.max_upload_mb, "largest accepted update")->check(positive(1 << 20));
  app.add_option("--keep-update-rounds", c.keep_update_rounds,
                 "keep the stored updates of this many committed rounds, delete older ones (0: keep all)")
      ->check(non_negative())->capture_default_str();
  app.add_option("--metrics-listen", c.metrics_listen,
                 "serve Prometheus metrics (GET /metrics) on HOST:PORT, e.g. 0.0.0.0:9464 (port 0: any free one)");
  int threads = 0;
  app.add_option("--threads", threads, "CPU threads for aggregation and the global model's evaluation (0: one per core)")
      ->check(CLI::Range(0, 4096))->capture_default_str();
  std::string log_format = "text";
  add_logging_options(app, log_level, log_format);
  add_config_option(app);
  return run_cli(app, argc, argv, [&] {
    init_logging(log_level, "fedcoord", log_format);
    set_intra_op_threads(threads);
    log_compute_setup(c10::Device(c10::kCPU));  // the global model's evaluation
    run_options.finish();
    // Without TLS nobody is who they say: only this machine may connect unless told otherwise.
    if (c.insecure && listen->count() == 0) c.listen = "127.0.0.1:50051";
    require_tls_files(c.tls, c.insecure);
    const auto& stop = install_stop_signals();
    auto r = run_coordinator(c, stop);
    if (r.interrupted) {
      std::cout << "fedcoord: interrupted after round " << r.rounds_done << "\n";
      return 0;
    }
    if (c.run_id.empty()) {
      std::cout << "fedcoord: stopped\n";
      return 0;
    }
    std::cout << "fedcoord: run=" << c.run_id << " rounds=" << r.rounds_done
              << " global_accuracy=" << (r.global_accuracy >= 0 ? fmt::format("{:.4f}", r.global_accuracy) : "-")
              << "\n";
    return 0;
  });
}
