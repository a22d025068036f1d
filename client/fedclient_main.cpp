// fedclient: the edge daemon run at each site. Trains the coordinator's model on local data
// (never sent) and exchanges model updates with fedcoord over gRPC with mutual TLS.
//
//   fedclient --coordinator coord.example:50051 --tls-ca pki/ca.crt
//             --tls-cert pki/hospital-1.crt --tls-key pki/hospital-1.key
//             --partition-file part.json --client-index 0 --state-dir /var/lib/fedclient
#include <ATen/Parallel.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <iostream>

#include "client/edge_client.h"
#include "common/core/compute_setup.h"
#include "common/net/tls.h"
#include "common/config/data_flags.h"
#include "common/config/validators.h"
#include "common/config/yaml_config.h"
#include "common/data/feature_stats.h"
#include "common/data/partition.h"
#include "common/models/model.h"
#include "common/util/logging.h"
#include "common/util/signals.h"

int main(int argc, char** argv) {
  using namespace fl;
  EdgeClientConfig c;
  DataSource src;
  std::string partition_file;
  int client_index = -1;
  uint64_t seed = 0;
  std::string log_level = "info";
  CLI::App app{"fedclient: federated learning edge client (trains locally, shares only model updates)"};
  const auto pos = positive();
  app.add_option("--coordinator", c.coordinator, "coordinator address host:port")->capture_default_str();
  add_tls_flags(app, c.tls, c.insecure,
                {"CA certificate (PEM) the coordinator's certificate must chain to",
                 "this site's certificate (PEM); its CN is the site's identity", "this site's private key (PEM)"});
  app.add_option("--tls-server-name", c.server_name_override, "name expected in the coordinator's certificate");
  app.add_option("--name", c.name, "--insecure only: the identity to announce");
  app.add_option("--dataset", src.dataset, "fashion-mnist | mnist | csv | dicom")
      ->check(CLI::IsMember({"fashion-mnist", "mnist", "csv", "dicom"}))->capture_default_str();
  app.add_option("--data-dir", src.data_dir, "directory with the IDX files");
  app.add_option("--train-csv", src.train_csv, "csv: local training file");
  app.add_option("--test-csv", src.test_csv, "csv: local test file");
  app.add_option("--label-column", src.label_column, "csv, dicom: name of the label column");
  std::string feature_stats_out;
  app.add_option("--feature-stats-out", feature_stats_out,
                 "csv: write this site's feature statistics (row count, per-feature sums and sums of squares of "
                 "--train-csv; no rows) to FILE as JSON and exit, for `fedctl stats pool`");
  app.add_option("--feature-stats", src.feature_stats,
                 "csv: standardise the training and test features with this statistics file's mean/std (e.g. "
                 "pooled over the sites by `fedctl stats pool`) instead of --train-csv's own")
      ->check(CLI::ExistingFile);
  add_dicom_options(app, src);
  app.add_option("--train-limit", src.train_limit, "use only the first N training examples (the partition's data set)");
  app.add_option("--partition-file", partition_file, "IDX data: the partition (from fedsim --save-partition)")
      ->check(CLI::ExistingFile);
  app.add_option("--client-index", client_index, "IDX data: this site's index in the partition");
  app.add_option("--seed", seed, "seed of the partition's feature-skew transforms");
  auto* model_flag = app.add_option("--model", c.model,
                 "train this architecture instead of the run's (declared when registering; the run's strategy "
                 "must accept it, e.g. feddistill)")
      ->check(CLI::IsMember(registered_models()));
  app.add_option("--hidden", c.hidden, "with --model mlp: hidden layer widths; creamfl-*: the shared dimension D")
      ->check(pos)->needs(model_flag)->capture_default_str();
  app.add_option("--model-path", c.model_path, "torchscript models: the .pt file");
  app.add_option("--device", c.device, "auto | cpu | cuda | cuda:N")->capture_default_str();
  int threads = 0;
  app.add_option("--threads", threads, "CPU threads for training (0: one per core)")->check(CLI::Range(0, 4096));
  app.add_option("--state-dir", c.state_dir, "local state (personal layers)")->capture_default_str();
  app.add_option("--metrics-listen", c.metrics_listen,
                 "serve Prometheus metrics (GET /metrics) on HOST:PORT, e.g. 0.0.0.0:9465 (port 0: any free one)");
  // Both become integer milliseconds: bounded so that the conversion cannot overflow.
  app.add_option("--max-backoff-s", c.max_backoff_s, "longest wait between reconnection attempts (at most an hour)")
      ->check(positive(3600));
  app.add_option("--poll-wait-ms", c.poll_wait_ms, "long-poll duration (at most an hour)")->check(positive(3.6e6));
  app.add_flag("!--stay", c.exit_when_done, "keep running after the run is finished");
  std::string log_format = "text";
  add_logging_options(app, log_level, log_format);
  add_config_option(app);
  return run_cli(app, argc, argv, [&] {
    init_logging(log_level, "fedclient", log_format);
    if (!feature_stats_out.empty()) {  // local only: no coordinator, no TLS files needed
      if (src.dataset != "csv" || src.train_csv.empty())
        throw std::invalid_argument("--feature-stats-out needs --dataset csv and --train-csv");
      const FeatureStats st = compute_feature_stats(src.train_csv, src.label_column);
      write_feature_stats(feature_stats_out, st);
      std::cout << "fedclient: feature statistics of " << st.count << " rows x " << st.names.size()
                << " features of " << src.train_csv << " written to " << feature_stats_out << "\n";
      return 0;
    }
    set_intra_op_threads(threads);
    require_tls_files(c.tls, c.insecure);
    if (c.name.empty()) {
      char host[256] = {0};
      gethostname(host, sizeof host - 1);
      c.name = host;
    }
    auto tt = load_data(src);
    ClientData data;
    if (src.dataset == "csv" || src.dataset == "dicom") {  // the site's own files: no partition
      data.train = std::move(tt.train);
      data.test = std::move(tt.test);
    } else {
      if (partition_file.empty() || client_index < 0)
        throw std::invalid_argument("IDX data needs --partition-file and --client-index");
      data = client_data(tt.train, load_partition(partition_file), client_index, seed);
    }
    spdlog::info("local data: {} training and {} test examples", data.train.size(), data.test.size());
    const auto& stop = install_stop_signals();
    auto r = run_edge_client(c, std::move(data), stop);
    std::cout << "fedclient: tasks=" << r.tasks_done << (r.run_finished ? " run finished" : " stopped") << "\n";
    return 0;
  });
}
