// fedcoord: the coordinator service. Serves the Federation and Admin gRPC services over
// mutual TLS, drives the rounds with the shared RoundEngine and keeps every piece of state
// in RocksDB, so that a coordinator killed at any moment resumes where it was.
//
//   fedcoord --tls-ca pki/ca.crt --tls-cert pki/coordinator.crt --tls-key pki/coordinator.key
//            --data-dir /var/lib/fedcoord --model cnn --rounds 5 --min-clients 3
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <iostream>

#include "common/config/validators.h"
#include "common/config/yaml_config.h"
#include "common/engine/round_engine.h"
#include "common/util/logging.h"
#include "common/util/signals.h"
#include "coordinator/coordinator.h"

int main(int argc, char** argv) {
  using namespace fl;
  CoordinatorConfig c;
  std::string log_level = "info";
  CLI::App app{"fedcoord: federated learning coordinator (gRPC + mutual TLS, state in RocksDB)"};
  const auto pos = positive();
  app.add_option("--listen", c.listen, "address to serve on")->capture_default_str();
  app.add_option("--tls-ca", c.tls_ca, "CA certificate (PEM) that client certificates must chain to");
  app.add_option("--tls-cert", c.tls_cert, "the coordinator's certificate (PEM)");
  app.add_option("--tls-key", c.tls_key, "the coordinator's private key (PEM)");
  app.add_option("--tls-crl", c.tls_crl, "certificate revocation list (PEM, from `fedctl pki revoke`); re-read when it changes");
  app.add_flag("--keep-serving", c.keep_serving, "after the last started run, wait for admins to start more (fedctl runs)");
  app.add_flag("--insecure", c.insecure, "plaintext, unauthenticated: tests only (logs a loud warning)");
  app.add_option("--data-dir", c.data_dir, "RocksDB directory (run state, models, updates)")->capture_default_str();
  app.add_option("--run-id", c.run_id, "run these flags define; an existing run is resumed (\"\" = only runs created with fedctl)")->capture_default_str();
  app.add_option("--strategy", c.strategy, "strategy: fedavg, fedprox, fedavgm, fedadam, fedyogi, fedadagrad, fedmedian, trimmedmean, krum, multikrum, scaffold, fedbn, fedper, fedrep, local (parameters: --strategy-param)")->capture_default_str();
  app.add_option("--mu", c.mu, "fedprox: proximal coefficient")->check(non_negative());
  app.add_option("--strategy-param", c.strategy_params, "a strategy parameter key=value (repeatable)");
  app.add_option("--model", c.model, "mlp | cnn | lenet5 | resnet | torchscript")->capture_default_str();
  app.add_option("--model-path", c.model_path, "torchscript: the .pt file");
  app.add_option("--hidden", c.hidden, "mlp: hidden layer widths");
  app.add_option("--input-shape", c.input_shape, "one example's shape when there is no evaluation set");
  app.add_option("--num-classes", c.num_classes, "classes when there is no evaluation set")->check(pos);
  app.add_option("--rounds", c.rounds, "federated rounds")->check(pos)->capture_default_str();
  app.add_option("--fraction", c.fraction, "fraction of clients per round")->check(CLI::Range(0.0, 1.0));
  app.add_option("--min-clients", c.min_clients, "clients needed to start, and per round")->check(pos)
      ->capture_default_str();
  app.add_option("--workflow", c.workflow, "scatter-gather (clients train at once, then aggregate) | cyclic (one "
                 "after another, each from the previous one's model)")
      ->check(CLI::IsMember(workflow_names()))->capture_default_str();
  app.add_option("--round-deadline-s", c.round_deadline_s, "stragglers later than this are dropped")->check(pos);
  app.add_option("--eval-every", c.eval_every, "evaluate the global model every k rounds")->check(non_negative());
  app.add_option("--eval-dataset", c.eval_dataset, "server-side test set: fashion-mnist | mnist | none")
      ->check(CLI::IsMember({"fashion-mnist", "mnist", "none"}))->capture_default_str();
  app.add_option("--eval-data-dir", c.eval_data_dir, "directory of the test set's IDX files");
  app.add_option("--local-epochs", c.local_epochs, "client epochs per round")->check(non_negative());
  app.add_option("--local-steps", c.local_steps, "client steps per round instead of epochs")->check(non_negative());
  app.add_option("--batch-size", c.batch_size, "client batch size")->check(pos);
  app.add_option("--optimizer", c.optimizer, "sgd | adam")->check(CLI::IsMember({"sgd", "adam"}));
  app.add_option("--lr", c.lr, "client learning rate")->check(pos);
  app.add_option("--momentum", c.momentum, "client SGD momentum")->check(CLI::Range(0.0, 0.999));
  app.add_option("--weight-decay", c.weight_decay, "client weight decay")->check(non_negative());
  app.add_option("--update-encoding", c.update_encoding, "fp32 | fp16 | bf16 | int8 | topk")
      ->check(CLI::IsMember({"fp32", "fp16", "bf16", "int8", "topk"}))->capture_default_str();
  app.add_option("--topk-fraction", c.topk_fraction, "topk: fraction of entries sent")->check(CLI::Range(1e-6, 1.0));
  app.add_option("--seed", c.seed, "seed for initialisation, selection and client shuffling");
  app.add_option("--registration-timeout-s", c.registration_timeout_s, "give up waiting for --min-clients")
      ->check(pos);
  app.add_option("--liveness-timeout-s", c.liveness_timeout_s, "drop clients silent this long")->check(pos);
  app.add_option("--heartbeat-ms", c.heartbeat_ms, "client heartbeat interval")->check(pos);
  app.add_option("--finish-grace-s", c.finish_grace_s, "after the last round, time for clients to hear 'done'")
      ->check(non_negative());
  app.add_option("--max-upload-mb", c.max_upload_mb, "largest accepted update")->check(pos);
  app.add_option("--keep-update-rounds", c.keep_update_rounds,
                 "keep the stored updates of this many committed rounds, delete older ones (0: keep all)")
      ->check(non_negative())->capture_default_str();
  app.add_option("--log-level", log_level, "trace | debug | info | warn | error | off");
  add_config_option(app);
  return run_cli(app, argc, argv, [&] {
    init_logging(log_level, "fedcoord");
    if (!c.insecure && (c.tls_ca.empty() || c.tls_cert.empty() || c.tls_key.empty()))
      throw CLI::ValidationError("--tls-ca/--tls-cert/--tls-key",
                                 "mutual TLS needs all three files (or --insecure for a test)");
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
