// fedsim: replays a non-IID partition of a data set with many virtual clients on one machine,
// with the same strategies, round engine and trainer as a real deployment.
//
//   fedsim --dataset fashion-mnist --model lenet5 --partition dirichlet --alpha 0.5
//          --clients 10 --rounds 50 --local-epochs 10 --report out/run.json
//   fedsim partition --partition shards --clients 20         # per-client class histogram
//   fedsim central --model lenet5 --local-epochs 1            # centralized baseline
#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <fstream>
#include <iostream>
#include <map>
#include <thread>

#include "common/config/data_flags.h"
#include "common/config/validators.h"
#include "common/config/yaml_config.h"
#include "common/core/compute_setup.h"
#include "common/core/device.h"
#include "common/data/client_data.h"
#include "common/data/csv.h"
#include "common/data/idx.h"
#include "common/data/partition.h"
#include "common/engine/round_engine.h"
#include "common/run/run_spec.h"
#include "common/train/local_trainer.h"
#include "common/util/logging.h"
#include "common/util/text.h"
#include "common/engine/run_loop.h"
#include "simulations/checkpoint_store.h"
#include "simulations/byzantine.h"
#include "simulations/distributed.h"
#include "simulations/in_process_pool.h"
#include "simulations/report.h"
#include "strategies/registry.h"

namespace fl {
namespace {

// Simulation options + the RunSpec (model, training, strategy, rounds: common/run/run_spec.h).
struct SimConfig {
  std::string dataset = "fashion-mnist";
  std::string data_dir;
  std::string train_csv, test_csv, label_column = "label";
  DataSource dicom;  // its --dicom-* fields (add_dicom_options); load_data starts from it
  std::string model_path;
  PartitionOptions partition;
  std::string pool = "train";  // train | train+test: which examples the partition splits
  std::string partition_file, save_partition;
  std::string selection_file;  // replayed client selection: a JSON array of rounds, each an array of ids
  // Mixed architectures: client i trains client_models[i % n] (mlp with --hidden); empty: every
  // client the run's model. The strategy must accept them (feddistill does).
  std::vector<std::string> client_models;
  ByzantineOptions byzantine;  // attacking clients (seeded by the run's seed)
  RunSpec run = default_run_spec();
  std::string device = "auto";
  int workers = 0;  // 0: one per core on CPU, 1 on CUDA
  int threads = 1;
  int64_t eval_batch = 0;  // 0: by device (eval_batch_size)
  int64_t train_limit = -1;
  std::string report;
  std::string checkpoint_dir;  // commit every round here; a restart with the same command resumes
  DistributedOptions dist;     // the ranks of a distributed run (flags; resolved with the environment)
  std::string log_level = "info";
  std::string log_format = "text";
  bool progress = true;

  // fedsim's defaults for a run: LeNet-5 (the FedCMD experiments), 10 rounds.
  static RunSpec default_run_spec() {
    RunSpec r;
    r.model = "lenet5";
    r.rounds = 10;
    return r;
  }
};

// The simulation's own flags; the run's come from RunOptions.
void add_options(CLI::App& app, SimConfig& c) {
  const auto pos = positive();
  app.add_option("--dataset", c.dataset, "fashion-mnist, mnist (IDX files), csv or dicom")
      ->check(CLI::IsMember({"fashion-mnist", "mnist", "csv", "dicom"}))->capture_default_str();
  app.add_option("--data-dir", c.data_dir, "directory with the IDX files (default: $FASHION_MNIST_DIR or "
                                           "/usr/share/datasets/fashion-mnist)");
  app.add_option("--train-csv", c.train_csv, "csv: training file");
  app.add_option("--test-csv", c.test_csv, "csv: test file");
  app.add_option("--label-column", c.label_column, "csv, dicom: name of the label column")->capture_default_str();
  add_dicom_options(app, c.dicom);
  app.add_option("--train-limit", c.train_limit, "use only the first N training examples (-1: all)");
  app.add_option("--model-path", c.model_path, "torchscript: the .pt file");
  app.add_option("--partition", c.partition.method, "iid | dirichlet | shards | quantity | feature")
      ->check(CLI::IsMember({"iid", "dirichlet", "shards", "quantity", "feature"}))->capture_default_str();
  app.add_option("--alpha", c.partition.alpha, "Dirichlet concentration")->check(pos)->capture_default_str();
  app.add_option("--min-samples", c.partition.min_samples, "minimum examples per client")->capture_default_str();
  app.add_option("--shards-per-client", c.partition.shards_per_client, "shards: shards per client")
      ->check(pos)->capture_default_str();
  app.add_option("--quantity-distribution", c.partition.quantity_distribution, "quantity: dirichlet | lognormal")
      ->check(CLI::IsMember({"dirichlet", "lognormal"}));
  app.add_option("--lognormal-sigma", c.partition.lognormal_sigma, "quantity+lognormal: sigma")->check(pos);
  app.add_option("--feature-skew", c.partition.feature_skew, "feature: noise | rotation")
      ->check(CLI::IsMember({"noise", "rotation"}));
  app.add_option("--feature-level", c.partition.feature_level, "feature: max noise std or max rotation (degrees)")
      ->check(non_negative());
  app.add_option("--client-test-fraction", c.partition.client_test_fraction,
                 "per-client test split for personalized accuracy")->check(CLI::Range(0.0, 0.99));
  app.add_option("--partition-pool", c.pool,
                 "train: partition the training file, evaluate the global model on the test file; "
                 "train+test: partition both files together (FL-bench's convention; needs "
                 "--client-test-fraction) and evaluate the global model on the union of the clients' test splits")
      ->check(CLI::IsMember({"train", "train+test"}))->capture_default_str();
  app.add_option("--partition-file", c.partition_file, "replay this saved partition")->check(CLI::ExistingFile);
  app.add_option("--save-partition", c.save_partition, "write the partition (JSON) here");
  app.add_option("--selection-file", c.selection_file,
                 "replay this client selection instead of sampling: a JSON array with one array of client ids "
                 "per round (e.g. from scripts/flbench_partition.py --selection-out)")
      ->check(CLI::ExistingFile);
  app.add_option("--client-models", c.client_models,
                 "mixed architectures: client i trains the i-th of these, round robin (e.g. cnn,mlp); the run's "
                 "strategy must accept them (feddistill does)")
      ->delimiter(',')
      ->check(CLI::IsMember(registered_models()));
  app.add_option("--byzantine-fraction", c.byzantine.fraction,
                 "this fraction of the clients (seeded) attacks: see --byzantine-attack")
      ->check(CLI::Range(0.0, 0.99))->capture_default_str();
  app.add_option("--byzantine-attack", c.byzantine.attack,
                 "sign-flip: sends w - scale * update; scale: w + scale * update; noise: a random update of scale "
                 "times the honest norm; label-flip: trains on labels C - 1 - y")
      ->check(CLI::IsMember(byzantine_attack_names()))->capture_default_str();
  app.add_option("--byzantine-scale", c.byzantine.scale, "the sign-flip, scale and noise attacks' factor")
      ->check(non_negative())->capture_default_str();
  app.add_option("--clients", c.partition.num_clients, "number of virtual clients")->check(pos)
      ->capture_default_str();
  app.add_option("--device", c.device, "auto | cpu | cuda | cuda:N")->capture_default_str();
  app.add_option("--workers", c.workers, "clients trained concurrently (0: one per core on CPU, 1 on CUDA)")
      ->check(non_negative());
  app.add_option("--threads", c.threads, "intra-op threads per worker")->check(pos);
  app.add_option("--eval-batch", c.eval_batch, "batch of the global model's evaluation (0: 64 on CPU, 1024 on a GPU)")
      ->check(non_negative());
  app.add_option("--report", c.report, "write the JSON report here (plus .csv and .svg beside it)");
  app.add_option("--checkpoint-dir", c.checkpoint_dir,
                 "commit every round here (model, strategy and clients' state, reports); the same command run "
                 "again resumes after the last committed round");
  add_logging_options(app, c.log_level, c.log_format);
  app.add_flag("--progress,!--no-progress", c.progress, "progress bar on a terminal");
  add_distributed_options(app, c.dist);
}

// The report's "config": the simulation options, then the run's settings (its RunSpec as JSON).
nlohmann::ordered_json config_json(const SimConfig& c) {
  nlohmann::ordered_json j;
  j["dataset"] = c.dataset;
  j["partition"] = c.partition.method;
  j["alpha"] = c.partition.alpha;
  j["min_samples"] = c.partition.min_samples;
  j["partition_pool"] = c.pool;
  j["clients"] = c.partition.num_clients;
  j["client_test_fraction"] = c.partition.client_test_fraction;
  if (!c.selection_file.empty()) j["selection_file"] = c.selection_file;
  if (!c.client_models.empty()) j["client_models"] = c.client_models;
  if (c.byzantine.fraction > 0) {
    j["byzantine_fraction"] = c.byzantine.fraction;
    j["byzantine_attack"] = c.byzantine.attack;
    j["byzantine_scale"] = c.byzantine.scale;
  }
  j["device"] = c.device;
  j["workers"] = c.workers;
  j["threads"] = c.threads;
  j["eval_batch"] = c.eval_batch;
  const auto run = c.run.to_json();  // a named object: items() only refers to it
  for (const auto& [key, value] : run.items()) j[key] = value;
  return j;
}

// The global model's evaluation: the run's (robust accuracy) at fedsim's --eval-batch.
EvalOptions global_eval_options(const SimConfig& c) {
  EvalOptions e = c.run.eval_options();
  e.batch_size = c.eval_batch;
  return e;
}

TrainTest load_data(const SimConfig& c) {
  DataSource src = c.dicom;
  src.dataset = c.dataset;
  src.data_dir = c.data_dir;
  src.train_csv = c.train_csv;
  src.test_csv = c.test_csv;
  src.label_column = c.label_column;
  src.train_limit = c.train_limit;
  return fl::load_data(src);
}

// The examples the partition splits, and the set the global model is judged on.
struct SimData {
  TensorDataset pool;
  TensorDataset global_test;  // the test file; for a train+test pool, set once the clients exist
};

SimData sim_data(const SimConfig& c) {
  auto data = load_data(c);
  if (c.pool == "train") return SimData{std::move(data.train), std::move(data.test)};
  if (!(c.partition.client_test_fraction > 0))
    throw std::invalid_argument("--partition-pool train+test needs --client-test-fraction > 0: the test file's "
                                "examples go to the clients, so only their test splits are left to evaluate on");
  return SimData{concat({data.train, data.test}), TensorDataset{}};
}

// The run's model for this data set; the spec records the shape and classes the data gave.
ModelSpec model_spec(SimConfig& c, const TensorDataset& data) {
  auto spec = model_spec_for(c.run.model, data, c.model_path, c.run.hidden);
  c.run.input_shape = spec.input_shape;
  c.run.num_classes = spec.num_classes;
  return spec;
}

// What a checkpoint directory must agree on with the command that resumes it: everything but
// the device and the worker counts, which do not change a seeded run's numbers.
nlohmann::ordered_json checkpoint_identity(const SimConfig& c) {
  auto j = config_json(c);
  for (const char* key : {"device", "workers", "threads", "eval_batch"}) j.erase(key);
  return j;
}

// A distributed run's CUDA device is LOCAL_RANK's unless --device names one.
c10::Device rank_device(const c10::Device& device, const std::string& flag, const DistributedOptions& d) {
  if (!d.enabled() || !device.is_cuda() || flag.rfind("cuda:", 0) == 0) return device;
  return c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(std::max(0, d.local_rank)));
}

// Every rank needs a client of its own.
void check_world_fits(const DistributedOptions& d, size_t clients) {
  if (d.world_size > static_cast<int>(clients))
    throw std::invalid_argument("a distributed run of " + std::to_string(d.world_size) + " ranks needs at least as many "
                                "clients, it has " + std::to_string(clients));
}

// This rank's share of the clients (all of them outside a distributed run) in a pool.
std::unique_ptr<ClientPool> make_pool(std::vector<VirtualClient> clients, const std::vector<ModelSpec>& specs,
                                      const c10::Device& device, const std::shared_ptr<const ClientAlgorithm>& algorithm,
                                      const SimConfig& c, const DistributedOptions& d, Communicator* comm) {
  const PoolOptions po{c.workers, c.threads, c.run.eval_options()};
  if (!d.enabled())
    return std::make_unique<InProcessPool>(std::move(clients), specs, device, algorithm, c.run.train_options(), po);
  check_world_fits(d, clients.size());
  std::vector<int64_t> examples;
  for (const auto& vc : clients) examples.push_back(vc.train.size());
  auto owner = assign_clients(examples, d.world_size);
  std::vector<VirtualClient> mine;
  for (size_t i = 0; i < clients.size(); ++i)
    if (owner[i] == d.rank) mine.push_back(std::move(clients[i]));
  spdlog::info("rank {} of {} trains {} of the {} clients", d.rank, d.world_size, mine.size(), clients.size());
  auto local = std::make_unique<InProcessPool>(std::move(mine), specs, device, algorithm, c.run.train_options(), po);
  return std::make_unique<DistributedPool>(std::move(local), std::move(owner), d.rank, comm, d.reduce == "allreduce");
}

// --selection-file: the rounds' client ids. The engine checks them against the run (rounds,
// client count, duplicates); this checks the file's shape.
std::vector<std::vector<int>> load_selection(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::invalid_argument("selection file " + path + ": cannot be read");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(in);
  } catch (const nlohmann::json::parse_error& e) {
    throw std::invalid_argument("selection file " + path + ": not JSON (" + e.what() + ")");
  }
  if (!j.is_array()) throw std::invalid_argument("selection file " + path + ": expected an array of rounds");
  std::vector<std::vector<int>> rounds;
  for (size_t r = 0; r < j.size(); ++r) {
    const auto bad = [&] {
      return std::invalid_argument("selection file " + path + ": round " + std::to_string(r + 1) +
                                   " is not an array of client ids");
    };
    if (!j[r].is_array()) throw bad();
    std::vector<int> ids;
    for (const auto& id : j[r]) {
      if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > (1 << 30)) throw bad();
      ids.push_back(id.get<int>());
    }
    rounds.push_back(std::move(ids));
  }
  return rounds;
}

Partition get_partition(const SimConfig& c, const TensorDataset& train) {
  Partition p;
  if (!c.partition_file.empty()) {
    p = load_partition(c.partition_file);
    if (p.dataset_size != train.size())
      throw std::invalid_argument("partition file " + c.partition_file + " was made for " +
                                  std::to_string(p.dataset_size) + " examples, the data set has " +
                                  std::to_string(train.size()));
  } else {
    auto opt = c.partition;
    opt.seed = c.run.seed;
    p = make_partition(labels_to_vector(train.y), train.num_classes, opt);
  }
  if (!c.save_partition.empty()) save_partition(p, c.save_partition);
  return p;
}

std::vector<VirtualClient> make_clients(const Partition& p, const TensorDataset& train, uint64_t seed) {
  std::vector<VirtualClient> clients;
  clients.reserve(p.clients.size());
  for (size_t i = 0; i < p.clients.size(); ++i) {
    auto d = client_data(train, p, static_cast<int>(i), seed);
    VirtualClient c;
    c.train = std::move(d.train);
    c.test = std::move(d.test);
    clients.push_back(std::move(c));
  }
  return clients;
}

// --client-models: the distinct architectures (the run's first), each client's index into them.
std::vector<ModelSpec> client_specs(const SimConfig& c, const ModelSpec& run_spec, const TensorDataset& data,
                                    std::vector<VirtualClient>& clients) {
  std::vector<ModelSpec> specs{run_spec};
  if (c.client_models.empty()) return specs;
  std::vector<std::string> names{run_spec.name};
  for (size_t i = 0; i < clients.size(); ++i) {
    const std::string& name = c.client_models[i % c.client_models.size()];
    auto it = std::find(names.begin(), names.end(), name);
    if (it == names.end()) {
      names.push_back(name);
      specs.push_back(model_spec_for(name, data, c.model_path, c.run.hidden));
      it = names.end() - 1;
    }
    clients[i].model = static_cast<int>(it - names.begin());
  }
  return specs;
}

// A mixed-model run is the strategy's to allow, as fedcoord asks it when a site registers.
void check_client_models(const SimConfig& c, const std::vector<ModelSpec>& specs) {
  const auto run_model = ModelDeclaration::of(*build_model(specs[0]));
  for (size_t m = 1; m < specs.size(); ++m) {
    const std::string why = check_client_model(c.run.strategy, run_model, ModelDeclaration::of(*build_model(specs[m])));
    if (!why.empty()) throw std::invalid_argument("--client-models: " + why);
  }
}

// --byzantine-fraction: the attackers get the attack's client half, or flipped labels.
void make_byzantine(SimConfig& c, const std::shared_ptr<const ClientAlgorithm>& honest,
                    std::vector<VirtualClient>& clients) {
  if (c.byzantine.fraction <= 0) return;
  c.byzantine.seed = c.run.seed;
  const auto attackers = byzantine_clients(static_cast<int>(clients.size()), c.byzantine);
  const auto attack = byzantine_algorithm(honest, c.byzantine);
  std::vector<std::string> names;
  for (int id : attackers) {
    names.push_back(std::to_string(id));
    if (attack) {
      clients[id].algorithm = attack;
    } else {
      flip_labels(clients[id].train);
    }
  }
  spdlog::warn("{} of {} clients attack ({}, scale {}): {}", attackers.size(), clients.size(), c.byzantine.attack,
               c.byzantine.scale, join(names));
}

int default_workers(const c10::Device& device) {
  if (device.is_cuda()) return 1;
  return std::max(1u, std::thread::hardware_concurrency());
}

int run_simulation(SimConfig c) {
  const DistributedOptions dist = resolve_distributed(c.dist, process_environment());
  const auto device = rank_device(resolve_device(c.device), c.device, dist);
  if (c.workers == 0) c.workers = default_workers(device);
  if (c.partition_file.empty()) check_world_fits(dist, static_cast<size_t>(c.partition.num_clients));  // before waiting
  std::unique_ptr<Communicator> comm;
  if (dist.world_size > 1) comm = std::make_unique<Communicator>(dist);
  const bool lead = dist.rank <= 0;  // writes the partition and the report, evaluates the global model
  if (!lead) c.save_partition.clear();
  auto strategy = c.run.create_strategy();
  auto schedule = c.selection_file.empty() ? std::vector<std::vector<int>>{} : load_selection(c.selection_file);
  auto data = sim_data(c);
  auto partition = get_partition(c, data.pool);
  spdlog::info("{} clients on {} ({} workers x {} threads); {} partition", partition.clients.size(), device.str(),
               c.workers, c.threads, partition.options.method);
  log_compute_setup(device);
  auto spec = model_spec(c, data.pool);
  if (comm) {
    auto settings = checkpoint_identity(c);
    settings["dist_reduce"] = dist.reduce;  // one rank gathering while another all-reduces would hang
    comm->check_same_settings(settings);
  }
  seed_everything(c.run.seed);
  const ModelState initial = build_model(spec)->state();  // drawn on a resume too: the same random stream

  auto clients = make_clients(partition, data.pool, c.run.seed);
  if (c.pool == "train+test") {  // the test file went to the clients: judge on their test splits
    std::vector<TensorDataset> tests;
    for (const auto& vc : clients) tests.push_back(vc.test);
    data.global_test = concat(tests);
  }
  const auto specs = client_specs(c, spec, data.pool, clients);
  const auto algorithm = c.run.create_client_algorithm();
  make_byzantine(c, algorithm, clients);
  auto pool_owner = make_pool(std::move(clients), specs, device, algorithm, c, dist, comm.get());
  ClientPool& pool = *pool_owner;
  if (specs.size() > 1) check_client_models(c, specs);
  auto eval_model = build_model(spec);
  eval_model->to(device);
  auto test = data.global_test.to(device);
  EngineOptions eo = c.run.engine_options();
  eo.min_clients = std::min(c.run.min_clients, pool.num_clients());
  eo.schedule = std::move(schedule);
  const EvalOptions global_eval = global_eval_options(c);
  GlobalEvaluator evaluate;
  if (lead) evaluate = [&](const ModelState& global) {
    eval_model->assign_state(global);
    // The workers are idle while the global model is evaluated: give it every core they had
    // (the pool may have left this thread at one intra-op thread per worker).
    at::set_num_threads(c.workers * c.threads);
    return LocalTrainer::evaluate(*eval_model, test, global_eval);
  };
  RoundEngine engine(*strategy, pool, eo, evaluate);
  if (auto* d = dynamic_cast<DistributedPool*>(&pool))  // screens what it sums without the engine
    d->set_result_check([&s = *strategy, max = eo.max_examples](const ClientTask& t, const ClientResult& r) {
      return result_problem(s, t, r, max);
    });

  std::unique_ptr<RunStore> store = std::make_unique<NoRunStore>();
  DirectoryRunStore* checkpoints = nullptr;
  std::unique_ptr<DirectoryRunStore> rank_dir;
  if (!c.checkpoint_dir.empty() && dist.enabled()) {  // each rank its own: its clients' personal state
    auto identity = checkpoint_identity(c);
    identity["world_size"] = dist.world_size;
    identity["rank"] = dist.rank;
    rank_dir = std::make_unique<DirectoryRunStore>(c.checkpoint_dir + "/rank-" + std::to_string(dist.rank), identity,
                                                   /*keep_previous=*/true);
    checkpoints = rank_dir.get();
    store = std::make_unique<RankRunStore>(*rank_dir, comm.get());
  } else if (!c.checkpoint_dir.empty()) {
    auto d = std::make_unique<DirectoryRunStore>(c.checkpoint_dir, checkpoint_identity(c));
    checkpoints = d.get();
    store = std::move(d);
  }
  const int first = resume_run(*strategy, pool, *store, [&] { return initial; });
  SimulationSummary summary;
  summary.config = config_json(c);
  if (dist.enabled()) summary.config["world_size"] = dist.world_size;
  if (checkpoints) summary.rounds = checkpoints->reports();
  if (first > 1) spdlog::info("resuming from {} after round {} of {}", c.checkpoint_dir, first - 1, c.run.rounds);
  const bool bar = c.progress && stderr_is_terminal();
  const auto start = std::chrono::steady_clock::now();
  double train_wall = 0;
  int64_t samples = 0;
  RunLoopHooks hooks;
  hooks.committed = [&](const RoundReport& rep) {
    const int r = rep.round;
    train_wall += rep.wall_s;
    samples += rep.samples;
    summary.rounds.push_back(rep);
    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const double eta = elapsed / (r - first + 1) * (c.run.rounds - r);
    if (bar) {
      std::cerr << '\r' << progress_line(r, c.run.rounds, rep.global_accuracy, rep.personalized_accuracy, eta)
                << "\033[K" << std::flush;
    } else {
      spdlog::info("round {}/{}: loss {:.4f} global_accuracy {}{} personalized_accuracy {} ({:.2f}s train, {:.2f}s eval)",
                   r, c.run.rounds, rep.train_loss, rep.global_accuracy >= 0 ? fmt::format("{:.4f}", rep.global_accuracy) : "-",
                   metrics_text(rep.global_metrics),
                   rep.personalized_accuracy >= 0 ? fmt::format("{:.4f}", rep.personalized_accuracy) : "-",
                   rep.wall_s, rep.eval_s);
    }
  };
  run_rounds(first, c.run.rounds, [&](int r) { return engine.run_round(r); }, *strategy, pool, *store, hooks);
  if (comm) comm->finish();
  if (const auto* d = dynamic_cast<const DistributedPool*>(&pool); d && comm)
    spdlog::info("rank {} of {}: training {:.3f} s, exchanges {:.3f} s (encode {:.3f}, all-gather {:.3f}, decode {:.3f}), "
                 "{:.1f} MB of results sent; all-reduce {:.3f} s, {:.1f} MB of sums (summing {:.3f} s)", dist.rank,
                 dist.world_size, d->stats().train_s, d->stats().exchange_s, d->stats().encode_s, d->stats().gather_s,
                 d->stats().decode_s, d->stats().bytes_sent / 1e6, d->stats().reduce_s, d->stats().bytes_reduced / 1e6,
                 d->stats().sum_s);
  if (bar) std::cerr << '\n';
  if (!lead) {  // rank 0 reports the run
    std::cout << "fedsim: rank " << dist.rank << " of " << dist.world_size << " done after round " << c.run.rounds << "\n";
    return 0;
  }
  summary.total_wall_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  summary.samples_per_s = train_wall > 0 ? samples / train_wall : 0;
  auto j = report_json(summary);
  if (!c.report.empty()) {
    for (const auto& path : write_report(summary, c.report)) spdlog::info("wrote {}", path);
  }
  std::cout << "fedsim: rounds=" << c.run.rounds << " global_accuracy=" << j["final"]["global_accuracy"].dump()
            << " personalized_accuracy=" << j["final"]["personalized_accuracy"].dump();
  for (const auto& [key, value] : j["final"].items())
    if (key.rfind("robust_accuracy_", 0) == 0) std::cout << " " << key << "=" << value.dump();
  if (!summary.rounds.empty())  // a retrieval strategy's recalls (creamfl), from its last aggregation
    for (const auto& [key, value] : summary.rounds.back().strategy_metrics)
      if (key.rfind("i2t_", 0) == 0 || key.rfind("t2i_", 0) == 0 || key == "rsum") std::cout << " " << key << "=" << value;
  std::cout << " samples_per_s=" << static_cast<int64_t>(summary.samples_per_s) << "\n";
  return 0;
}

int run_partition(const SimConfig& c) {
  auto data = sim_data(c);
  auto p = get_partition(c, data.pool);
  std::cout << partition_table(p, labels_to_vector(data.pool.y), data.pool.num_classes);
  return 0;
}

// Centralized training of the same model with the same trainer: the baseline fedsim's speed
// and accuracy are compared against.
int run_central(SimConfig& c) {
  const auto device = resolve_device(c.device);
  at::set_num_threads(c.threads);
  log_compute_setup(device);
  auto data = load_data(c);
  seed_everything(c.run.seed);
  auto model = build_model(model_spec(c, data.train));
  model->to(device);
  auto train = data.train.to(device);
  auto test = data.test.to(device);
  auto r = LocalTrainer(c.run.train_options()).train(*model, train);
  const auto e0 = std::chrono::steady_clock::now();
  auto ev = LocalTrainer::evaluate(*model, test, global_eval_options(c));
  const double eval_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - e0).count();
  const double sps = r.samples_seen / r.wall_s;
  nlohmann::ordered_json j;
  j["config"] = config_json(c);
  j["samples"] = r.samples_seen;
  j["wall_s"] = r.wall_s;
  j["samples_per_s"] = sps;
  j["eval_s"] = eval_s;
  j["eval_examples"] = test.size();
  j["train_loss"] = r.loss;
  j["test_accuracy"] = ev.accuracy;
  for (const auto& [key, value] : ev.metrics) j[key] = value;
  if (!c.report.empty()) {
    std::ofstream(c.report) << j.dump(2) << "\n";
  }
  std::cout << "central: model=" << c.run.model << " samples=" << r.samples_seen << " samples_per_s="
            << static_cast<int64_t>(sps) << " test_accuracy=" << ev.accuracy << " eval_s=" << eval_s;
  for (const auto& [key, value] : ev.metrics) std::cout << " " << key << "=" << value;
  std::cout << "\n";
  return 0;
}

}  // namespace
}  // namespace fl

int main(int argc, char** argv) {
  using namespace fl;
  SimConfig cfg;
  CLI::App app{"fedsim: federated learning simulator (virtual clients on one machine)"};
  app.fallthrough();  // subcommands accept every option of the main command
  add_options(app, cfg);
  RunOptions run_options(app, cfg.run, kRunScopeSim);
  add_config_option(app);
  auto* partition_cmd = app.add_subcommand("partition", "print the per-client class histogram and exit");
  auto* central_cmd = app.add_subcommand("central", "train centrally (the speed and accuracy baseline)");
  bool markdown = false;
  auto* strategies_cmd = app.add_subcommand("strategies", "list the strategies and their parameters, and exit");
  strategies_cmd->add_flag("--markdown", markdown, "as the README's table");
  const bool no_flags = argc == 1;
  return run_cli(app, argc, argv, [&] {
    if (*strategies_cmd) {
      std::cout << (markdown ? strategies_markdown() : strategies_text());
      return 0;
    }
    init_logging(cfg.log_level, "fedsim", cfg.log_format);
    if (no_flags) {  // a first look: small enough for a minute on a laptop, non-IID like the real thing
      cfg.partition.method = "dirichlet";
      cfg.train_limit = 12000;
      cfg.run.rounds = 5;
      std::cerr << "fedsim: no flags, so a small default run: FedAvg, lenet5, 10 clients on a Dirichlet(0.5) split of "
                   "12,000 Fashion-MNIST images, 5 rounds. `fedsim --help` lists every flag; try --strategy fedprox, "
                   "--partition shards or --clients 100 --fraction 0.1.\n";
    }
    run_options.finish();  // a run the strategy cannot use is refused here, before any data is read
    if (*partition_cmd) return run_partition(cfg);
    if (*central_cmd) return run_central(cfg);
    return run_simulation(cfg);
  });
}
