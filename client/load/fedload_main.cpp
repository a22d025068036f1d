// fedload: a load generator (issue 23). Runs N light clients as threads of one process, each the
// real client library (run_edge_client: register, heartbeat thread, long-poll PollTask, download,
// train, upload) with its own identity and its own gRPC channel, on a tiny synthetic data set
// (4 features, 3 classes: the run's model is e.g. mlp 4-8-3, --input-shape 4 --num-classes 3).
//
//   fedload --coordinator 127.0.0.1:50051 --insecure --clients 250 --first 0        # names load-0..load-249
//   fedload --coordinator 127.0.0.1:50051 --pki DIR --clients 250                   # mutual TLS, DIR/<name>.crt
//   fedload issue --pki DIR --clients 1000                                         # issue the client certificates
//
// Over mutual TLS each client needs its own certificate (the coordinator knows a client by its
// certificate's name): `fedload issue` issues the missing ones in-process (common/net/pki.h),
// once, before the load processes start (they only read them). With --insecure each client sends
// its name as the "fl-client-name" metadata instead.
//
// Prints one summary line and exits 0 when every client heard that the run finished, 1 otherwise
// (a client's error is printed once per distinct message, with how many clients it ended).
#include <pthread.h>
#include <sys/resource.h>

#include <ATen/CPUGeneratorImpl.h>
#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include <CLI/CLI.hpp>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <iostream>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "client/edge_client.h"
#include "common/config/yaml_config.h"
#include "common/core/compute_setup.h"
#include "common/net/pki.h"
#include "common/util/logging.h"
#include "common/util/signals.h"

namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

std::string client_name(const std::string& prefix, int index) { return prefix + std::to_string(index); }

// n examples, labels 0, 1, 2, 0, ..., features N(label, 1) drawn from `seed`: separable classes.
fl::ClientData synthetic_data(int64_t n, uint64_t seed) {
  auto gen = at::detail::createCPUGenerator(seed);
  fl::ClientData d;
  d.train.y = torch::arange(n, torch::kLong).remainder(3);
  d.train.x = torch::randn({n, 4}, gen) + d.train.y.unsqueeze(1).to(torch::kFloat);
  d.train.num_classes = 3;
  return d;
}

// The soft descriptor limit up to the hard one: each client holds a TCP connection (and gRPC a
// few more descriptors), far past the usual soft 1024.
rlim_t raise_fd_limit() {
  rlimit r{};
  if (getrlimit(RLIMIT_NOFILE, &r) != 0) return 0;
  if (r.rlim_cur < r.rlim_max) {
    r.rlim_cur = r.rlim_max;
    setrlimit(RLIMIT_NOFILE, &r);
    getrlimit(RLIMIT_NOFILE, &r);
  }
  return r.rlim_cur;
}

// Every thread started from now on (ours, the clients' heartbeat threads, gRPC's) gets this stack
// instead of RLIMIT_STACK's 8 MiB: 2,000 threads then reserve 0.5 GiB of address space, not 16.
void set_default_stack(size_t kib) {
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  if (pthread_attr_setstacksize(&attr, kib << 10) == 0) pthread_setattr_default_np(&attr);
  pthread_attr_destroy(&attr);
}

struct Options {
  std::string coordinator = "127.0.0.1:50051";
  bool insecure = false;
  std::string pki;  // DIR with ca.crt and <name>.crt/.key for every client (mutual TLS)
  std::string server_name;  // "": the address's own (the coordinator certificate names 127.0.0.1 and localhost)
  int clients = 100;
  int first = 0;
  std::string prefix = "load-";
  int examples = 16;
  std::string state_dir = "fedload-state";
  int poll_wait_ms = 5000;
  double ramp_per_s = 0;  // clients started per second (0: all at once)
  double max_backoff_s = 10;
  double timeout_s = 3600;
  size_t stack_kib = 512;
};

int issue(const Options& o) {
  const auto t0 = Clock::now();
  if (!fs::exists(fl::pki::ca_key_path(o.pki))) fl::pki::init_ca(o.pki);
  int issued = 0;
  if (!fs::exists(fs::path(o.pki) / "coordinator.crt")) {
    fl::pki::IssueRequest req;
    req.role = "coordinator";
    req.name = "coordinator";
    fl::pki::issue(o.pki, req);
  }
  for (int i = o.first; i < o.first + o.clients; ++i) {
    const std::string name = client_name(o.prefix, i);
    if (fs::exists(fs::path(o.pki) / (name + ".crt"))) continue;
    fl::pki::IssueRequest req;
    req.role = "client";
    req.name = name;
    fl::pki::issue(o.pki, req);
    ++issued;
  }
  const double s = std::chrono::duration<double>(Clock::now() - t0).count();
  std::cout << "fedload: issued " << issued << " client certificate(s) in " << fmt::format("{:.2f}", s) << " s into "
            << o.pki << "\n";
  return 0;
}

int run(const Options& o) {
  const rlim_t fds = raise_fd_limit();
  if (fds < static_cast<rlim_t>(2 * o.clients + 64))
    spdlog::warn("descriptor limit {} may be too low for {} clients", fds, o.clients);
  set_default_stack(o.stack_kib);
  // One thread per client trains: ATen must not start a pool of its own per caller.
  fl::set_intra_op_threads(1);
  const auto& stop = fl::install_stop_signals();

  // The configs live as long as their clients (run_edge_client keeps a reference).
  std::vector<fl::EdgeClientConfig> configs(o.clients);
  for (int k = 0; k < o.clients; ++k) {
    auto& c = configs[k];
    const std::string name = client_name(o.prefix, o.first + k);
    c.coordinator = o.coordinator;
    c.insecure = o.insecure;
    c.name = name;
    if (!o.insecure) {
      c.tls.ca = (fs::path(o.pki) / "ca.crt").string();
      c.tls.cert = (fs::path(o.pki) / (name + ".crt")).string();
      c.tls.key = (fs::path(o.pki) / (name + ".key")).string();
      c.server_name_override = o.server_name;
    }
    c.device = "cpu";
    c.state_dir = (fs::path(o.state_dir) / name).string();
    c.poll_wait_ms = o.poll_wait_ms;
    c.max_backoff_s = o.max_backoff_s;
  }

  std::atomic<bool> halt{false};  // a signal or --timeout-s
  std::atomic<int> finished{0}, running{0}, tasks{0};
  std::mutex mu;
  std::map<std::string, int> errors;  // message -> clients it ended
  std::vector<std::thread> threads;
  threads.reserve(o.clients);
  const auto t0 = Clock::now();
  const auto deadline = t0 + std::chrono::milliseconds(static_cast<int64_t>(o.timeout_s * 1000));
  for (int k = 0; k < o.clients && !stop && !halt; ++k) {
    if (o.ramp_per_s > 0) {
      const auto at = t0 + std::chrono::microseconds(static_cast<int64_t>(k / o.ramp_per_s * 1e6));
      while (!stop && Clock::now() < at) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    ++running;
    threads.emplace_back([&, k] {
      fl::set_thread_log_client(configs[k].name);  // the process-wide client name is the last one set
      try {
        const auto r = fl::run_edge_client(configs[k], synthetic_data(o.examples, o.first + k + 1), halt);
        tasks += r.tasks_done;
        if (r.run_finished) ++finished;
      } catch (const std::exception& e) {
        std::lock_guard<std::mutex> lock(mu);
        ++errors[e.what()];
      }
      --running;
    });
  }
  while (running > 0) {
    if (stop || Clock::now() > deadline) halt = true;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  for (auto& t : threads) t.join();
  const double s = std::chrono::duration<double>(Clock::now() - t0).count();
  for (const auto& [what, n] : errors) std::cerr << "fedload: " << n << " client(s) failed: " << what << "\n";
  const bool timed_out = halt && !stop;
  std::cout << "fedload: clients=" << o.clients << " finished=" << finished << " tasks=" << tasks
            << " failed=" << (o.clients - finished) << " wall_s=" << fmt::format("{:.1f}", s)
            << (timed_out ? " (timed out)" : "") << "\n";
  return finished == o.clients ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  std::string log_level = "warn", log_format = "text";
  CLI::App app{"fedload: many light federated clients in one process (the real client library), for load tests"};
  app.add_option("--coordinator", o.coordinator, "HOST:PORT of fedcoord")->capture_default_str();
  app.add_flag("--insecure", o.insecure, "plaintext; each client sends its name as metadata (fedcoord --insecure)");
  app.add_option("--pki", o.pki, "PKI directory: ca.crt and <name>.crt/.key of every client (fedload issue)");
  app.add_option("--server-name", o.server_name, "expected name in the coordinator's certificate")->capture_default_str();
  app.add_option("--clients", o.clients, "clients in this process")->check(CLI::Range(1, 100000))->capture_default_str();
  app.add_option("--first", o.first, "index of the first client (names PREFIX<index>)")->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--prefix", o.prefix, "client name prefix")->capture_default_str();
  app.add_option("--examples", o.examples, "training examples per client (4 features, 3 classes)")
      ->check(CLI::Range(1, 1000000))->capture_default_str();
  app.add_option("--state-dir", o.state_dir, "each client's state directory is DIR/<name>")->capture_default_str();
  app.add_option("--poll-wait-ms", o.poll_wait_ms, "long-poll wait of each PollTask")->check(CLI::Range(0, 60000))
      ->capture_default_str();
  app.add_option("--ramp-per-s", o.ramp_per_s, "clients started per second (0: all at once)")
      ->check(CLI::NonNegativeNumber)->capture_default_str();
  app.add_option("--max-backoff-s", o.max_backoff_s, "longest reconnect backoff")->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--timeout-s", o.timeout_s, "stop every client after this long")->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--stack-kib", o.stack_kib, "stack of every thread started (clients, heartbeats, gRPC)")
      ->check(CLI::Range(128, 65536))->capture_default_str();
  fl::add_logging_options(app, log_level, log_format);
  auto* issue_cmd = app.add_subcommand("issue", "issue the missing client certificates (and the CA, coordinator) into --pki");
  issue_cmd->fallthrough();  // `fedload issue --pki DIR --clients N`
  app.require_subcommand(0, 1);
  return fl::run_cli(app, argc, argv, [&] {
    fl::init_logging(log_level, "fedload", log_format);
    if (!o.insecure && o.pki.empty()) throw std::invalid_argument("give --pki DIR (mutual TLS) or --insecure");
    if (issue_cmd->parsed()) return issue(o);
    return run(o);
  });
}
