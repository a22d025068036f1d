#include "simulations/distributed.h"

#include <spdlog/spdlog.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <limits>
#include <map>
#include <mutex>
#include <numeric>
#include <stdexcept>
#include <thread>

#include "common/config/validators.h"
#include "common/engine/payload.h"
#include "common/io/safetensors.h"
#include "common/util/text.h"

namespace fl {

void add_distributed_options(CLI::App& app, DistributedOptions& f) {
  app.add_option("--world-size", f.world_size, "distributed run: number of ranks (default: $WORLD_SIZE)")
      ->check(CLI::Range(1, 1 << 20));
  app.add_option("--rank", f.rank, "distributed run: this process's rank in [0, world size) (default: $RANK)")
      ->check(CLI::Range(0, 1 << 20));
  app.add_option("--master-addr", f.master_addr, "distributed run: rank 0's host (default: $MASTER_ADDR)");
  app.add_option("--master-port", f.master_port,
                 "distributed run: the rendezvous port rank 0 listens on (default: $MASTER_PORT)")
      ->check(CLI::Range(1, 65535));
  app.add_option("--local-rank", f.local_rank,
                 "distributed run: this rank on its machine, the CUDA device it uses (default: $LOCAL_RANK, else 0)")
      ->check(CLI::Range(0, 1 << 20));
  app.add_option("--dist-timeout-s", f.timeout_s,
                 "distributed run: how long ranks wait for each other at the rendezvous and in one exchange")
      ->check(positive(kMaxSeconds))->capture_default_str();
  app.add_option("--dist-silence-s", f.silence_s,
                 "distributed run: a rank whose heartbeat stops this long has failed; the others stop naming it")
      ->check(positive(3600))->capture_default_str();
  app.add_option("--dist-reduce", f.reduce,
                 "distributed run: FedAvg-family rounds 'allreduce' the models' sums in fixed point (the same bits "
                 "for any number of ranks) or 'gather' every model to every rank (the one-process run's bits)")
      ->check(CLI::IsMember({"allreduce", "gather"}))->capture_default_str();
}

EnvLookup process_environment() {
  return [](const std::string& name) -> std::optional<std::string> {
    const char* v = std::getenv(name.c_str());
    if (!v) return std::nullopt;
    return std::string(v);
  };
}

namespace {

// A flag's value when given (>= 0), else the environment variable's, parsed strictly.
int int_setting(int flag, const std::string& flag_name, const EnvLookup& env, const std::string& var, int lo,
                int hi) {
  if (flag >= 0) return flag;
  const auto v = env(var);
  if (!v) return -1;
  size_t used = 0;
  long long n = 0;
  try {
    n = std::stoll(*v, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (v->empty() || used != v->size())
    throw std::invalid_argument(var + "='" + *v + "' is not a whole number (or pass " + flag_name + ")");
  if (n < lo || n > hi)
    throw std::invalid_argument(var + "=" + *v + " is outside [" + std::to_string(lo) + ", " + std::to_string(hi) +
                                "] (or pass " + flag_name + ")");
  return static_cast<int>(n);
}

}  // namespace

DistributedOptions resolve_distributed(const DistributedOptions& flags, const EnvLookup& env) {
  DistributedOptions o = flags;
  o.world_size = int_setting(flags.world_size, "--world-size", env, "WORLD_SIZE", 1, 1 << 20);
  o.rank = int_setting(flags.rank, "--rank", env, "RANK", 0, 1 << 20);
  if (o.world_size < 0 && o.rank < 0) {
    if (!flags.master_addr.empty() || flags.master_port >= 0 || flags.local_rank >= 0)
      throw std::invalid_argument("--master-addr, --master-port and --local-rank are for a distributed run: give "
                                  "--world-size and --rank (or WORLD_SIZE and RANK) too");
    return DistributedOptions();
  }
  if (o.world_size < 0)
    throw std::invalid_argument("RANK (or --rank) is set but WORLD_SIZE (or --world-size) is not: a distributed run "
                                "needs both");
  if (o.rank < 0)
    throw std::invalid_argument("WORLD_SIZE (or --world-size) is set but RANK (or --rank) is not: a distributed run "
                                "needs both");
  if (o.rank >= o.world_size)
    throw std::invalid_argument("rank " + std::to_string(o.rank) + " is not below the world size " +
                                std::to_string(o.world_size) + " (ranks are 0 .. WORLD_SIZE - 1)");
  o.local_rank = int_setting(flags.local_rank, "--local-rank", env, "LOCAL_RANK", 0, 1 << 20);
  if (o.master_addr.empty()) o.master_addr = env("MASTER_ADDR").value_or("");
  o.master_port = int_setting(flags.master_port, "--master-port", env, "MASTER_PORT", 1, 65535);
  if (o.world_size > 1) {  // one rank needs no rendezvous
    if (o.master_addr.empty())
      throw std::invalid_argument("a distributed run of " + std::to_string(o.world_size) +
                                  " ranks needs MASTER_ADDR (or --master-addr): rank 0's host");
    if (o.master_port < 0)
      throw std::invalid_argument("a distributed run of " + std::to_string(o.world_size) +
                                  " ranks needs MASTER_PORT (or --master-port): the port rank 0 listens on");
  }
  if (env("TORCHELASTIC_USE_AGENT_STORE").value_or("") == "True" && o.world_size > 1) {
    o.agent_store = true;
    const int attempt = int_setting(-1, "a torchrun launch", env, "TORCHELASTIC_RESTART_COUNT", 0, 1 << 20);
    o.store_prefix = "/worker/attempt_" + std::to_string(std::max(0, attempt));
  }
  if (!(o.timeout_s > 0)) throw std::invalid_argument("--dist-timeout-s must be > 0");
  if (!(o.silence_s > 0)) throw std::invalid_argument("--dist-silence-s must be > 0");
  if (o.reduce != "allreduce" && o.reduce != "gather")
    throw std::invalid_argument("--dist-reduce '" + o.reduce + "' is neither allreduce nor gather");
  return o;
}

std::vector<int> assign_clients(const std::vector<int64_t>& examples, int world_size) {
  if (world_size < 1) throw std::invalid_argument("assign_clients: world size must be >= 1");
  std::vector<int> order(examples.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return examples[a] > examples[b]; });
  std::vector<int64_t> load(world_size, 0);
  std::vector<int> owner(examples.size(), 0);
  for (int c : order) {
    const int r = static_cast<int>(std::min_element(load.begin(), load.end()) - load.begin());  // lowest on ties
    owner[c] = r;
    load[r] += examples[c];
  }
  return owner;
}

// ---------------------------------------------------------------------------------------------
// Communicator

namespace {

std::chrono::milliseconds millis(double seconds) {
  return std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000));
}

std::string rank_list(const std::vector<int>& ranks, int world) {
  std::vector<std::string> s;
  for (int r : ranks) s.push_back(std::to_string(r));
  return (ranks.size() == 1 ? "rank " : "ranks ") + join(s) + " of " + std::to_string(world);
}

// True when host:port accepts a TCP connection within a second.
bool port_open(const std::string& host, int port) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  if (getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &found) != 0) return false;
  bool open = false;
  for (addrinfo* a = found; a && !open; a = a->ai_next) {
    const int fd = ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, a->ai_protocol);
    if (fd < 0) continue;
    if (::connect(fd, a->ai_addr, a->ai_addrlen) == 0) {
      open = true;
    } else if (errno == EINPROGRESS) {
      pollfd p{fd, POLLOUT, 0};
      int error = 0;
      socklen_t len = sizeof error;
      open = ::poll(&p, 1, 1000) == 1 && ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &len) == 0 && error == 0;
    }
    ::close(fd);
  }
  freeaddrinfo(found);
  return open;
}

// Returns once host:port accepts connections; at the deadline, returns anyway (the store's own
// connect then fails with its message).
void wait_for_port(const std::string& host, int port, std::chrono::steady_clock::time_point deadline) {
  while (!port_open(host, port) && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
}

std::vector<uint8_t> bytes_of(const std::string& s) { return std::vector<uint8_t>(s.begin(), s.end()); }

bool loopback(const std::string& host) {
  return host == "localhost" || host.rfind("127.", 0) == 0 || host == "::1";
}

// Where Gloo listens: GLOO_SOCKET_IFNAME's interface (as torch.distributed), loopback when the
// rendezvous is on loopback (one machine), else the address this host's name resolves to.
std::shared_ptr<::gloo::transport::Device> gloo_device(const std::string& master_addr) {
  if (const char* ifname = std::getenv("GLOO_SOCKET_IFNAME"); ifname && *ifname)
    return c10d::ProcessGroupGloo::createDeviceForInterface(ifname);
  if (loopback(master_addr)) return c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1");
  return c10d::ProcessGroupGloo::createDefaultDevice();
}

}  // namespace

struct Communicator::Impl {
  DistributedOptions o;
  c10::intrusive_ptr<c10d::Store> store;  // the rendezvous (rank 0 or torchrun's agent hosts the server)
  c10::intrusive_ptr<c10d::Store> beats;  // the monitor thread's own connection
  c10::intrusive_ptr<c10d::ProcessGroupGloo> group;
  std::thread monitor;
  std::mutex mu;
  std::condition_variable cv;
  bool stop = false;
  std::string verdict;  // who failed (latched: the first answer stays)
  std::chrono::steady_clock::time_point verdict_at;
  bool in_exchange = false;
  bool failed = false;

  double interval_s() const { return std::clamp(o.silence_s / 5, 0.02, 1.0); }
  std::string where() const { return o.master_addr + ":" + std::to_string(o.master_port); }
  std::string host() const { return o.agent_store ? "torchrun's agent" : "rank 0"; }
  // A connection to the rendezvous store (hosting it when `serve`), under the run's prefix.
  c10::intrusive_ptr<c10d::Store> connect(bool serve) const {
    c10d::TCPStoreOptions so;
    so.port = static_cast<uint16_t>(o.master_port);
    so.isServer = serve;
    so.waitWorkers = false;  // the join below names the ranks that do not come
    so.timeout = millis(o.timeout_s);
    // LibTorch 1.13's client, started before the server listens, sometimes sat out its whole
    // timeout (seen: 20 s for a server up 70 ms later), and with less than a second left it gives
    // up at once: so wait for the port to accept connections first, then connect.
    if (!serve) wait_for_port(o.master_addr, o.master_port, std::chrono::steady_clock::now() + millis(o.timeout_s));
    c10::intrusive_ptr<c10d::Store> tcp = c10::make_intrusive<c10d::TCPStore>(o.master_addr, so);
    if (o.store_prefix.empty()) return tcp;
    return c10::make_intrusive<c10d::PrefixStore>(o.store_prefix, tcp);
  }

  void rendezvous();
  void watch();
  void set_verdict(const std::string& v) {
    std::lock_guard<std::mutex> lock(mu);
    if (!verdict.empty()) return;
    verdict = v;
    verdict_at = std::chrono::steady_clock::now();
    cv.notify_all();
  }

  // Runs one collective; a failure becomes an error naming the rank that stopped.
  template <class F>
  auto exchange(const std::string& what, F&& f) -> decltype(f()) {
    {
      std::lock_guard<std::mutex> lock(mu);
      in_exchange = true;
    }
    try {
      auto out = f();
      std::lock_guard<std::mutex> lock(mu);
      in_exchange = false;
      return out;
    } catch (const std::exception& e) {
      std::unique_lock<std::mutex> lock(mu);
      in_exchange = false;
      failed = true;
      // The heartbeats say who: a dead rank's stops, and silence_s later the monitor names it.
      cv.wait_for(lock, millis(o.silence_s + 3 * interval_s()), [&] { return !verdict.empty(); });
      const std::string who = verdict.empty() ? "every rank still answers, so the exchange itself failed" : verdict;
      throw std::runtime_error("rank " + std::to_string(o.rank) + ": " + what + " failed: " + who + " (" + e.what() +
                               "). Relaunch every rank with the same command: with --checkpoint-dir the run resumes "
                               "after the last round every rank committed");
    }
  }
};

void Communicator::Impl::rendezvous() {
  const bool serve = o.rank == 0 && !o.agent_store;
  try {
    store = connect(serve);
    beats = connect(false);
  } catch (const std::exception& e) {
    throw std::runtime_error(serve ? "rank 0: cannot host the rendezvous on " + where() + ": " + e.what()
                                   : "rank " + std::to_string(o.rank) + ": cannot reach the rendezvous at " + where() +
                                         " (" + host() + " hosts it) within " + fmt::format("{}", o.timeout_s) +
                                         " s: " + e.what());
  }
  const std::string me = std::to_string(o.rank);
  if (store->add("fedsim/rank/" + me, 1) > 1)
    throw std::runtime_error("rank " + me + " joined the rendezvous at " + where() +
                             " twice: two processes were started with RANK=" + me);
  store->set("fedsim/world/" + me, bytes_of(std::to_string(o.world_size)));
  std::vector<std::string> keys;
  for (int r = 0; r < o.world_size; ++r) keys.push_back("fedsim/world/" + std::to_string(r));
  const auto deadline = std::chrono::steady_clock::now() + millis(o.timeout_s);
  while (!store->check(keys)) {
    if (std::chrono::steady_clock::now() > deadline) {
      std::vector<int> missing;
      for (int r = 0; r < o.world_size; ++r)
        if (!store->check({keys[r]})) missing.push_back(r);
      throw std::runtime_error("rendezvous at " + where() + ": " + rank_list(missing, o.world_size) +
                               " did not join within " + fmt::format("{}", o.timeout_s) + " s (--dist-timeout-s)");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  for (int r = 0; r < o.world_size; ++r) {
    const auto v = store->get(keys[r]);
    const std::string theirs(v.begin(), v.end());
    if (theirs != std::to_string(o.world_size))
      throw std::runtime_error("rank " + std::to_string(r) + " was started with WORLD_SIZE=" + theirs + ", rank " + me +
                               " with " + std::to_string(o.world_size) + ": every rank needs the same world size");
  }
  auto gopts = c10d::ProcessGroupGloo::Options::create(millis(o.timeout_s));
  gopts->devices.push_back(gloo_device(o.master_addr));
  group = c10::make_intrusive<c10d::ProcessGroupGloo>(c10::make_intrusive<c10d::PrefixStore>("fedsim/gloo", store),
                                                      o.rank, o.world_size, gopts);
}

// The monitor thread: beats this rank's counter, and latches a verdict when another rank's stops
// changing for silence_s (or the rendezvous host is gone). When the main thread sits in an
// exchange that the failure does not break (it waits on a rank that is itself stuck), the
// process ends here with the verdict.
void Communicator::Impl::watch() {
  using clock = std::chrono::steady_clock;
  std::vector<std::string> last(o.world_size);
  std::vector<clock::time_point> changed(o.world_size, clock::now());
  uint64_t count = 0;
  std::unique_lock<std::mutex> lock(mu);
  while (!stop) {
    lock.unlock();
    try {
      beats->set("fedsim/beat/" + std::to_string(o.rank), bytes_of(std::to_string(++count)));
      std::vector<int> silent;
      const auto now = clock::now();
      for (int r = 0; r < o.world_size; ++r) {
        if (r == o.rank) continue;
        const std::string key = "fedsim/beat/" + std::to_string(r);
        if (beats->check({key})) {
          const auto v = beats->get(key);
          std::string s(v.begin(), v.end());
          if (s != last[r]) {
            last[r] = std::move(s);
            changed[r] = now;
          }
        }
        if (now - changed[r] > millis(o.silence_s)) silent.push_back(r);
      }
      if (!silent.empty())
        set_verdict(rank_list(silent, o.world_size) + " stopped: no heartbeat for " + fmt::format("{}", o.silence_s) +
                    " s (--dist-silence-s)");
    } catch (const std::exception& e) {
      lock.lock();
      if (stop) break;
      lock.unlock();
      set_verdict((o.agent_store ? "torchrun's agent, which hosts the rendezvous at " + where()
                                 : "rank 0 of " + std::to_string(o.world_size) + ", which hosts the rendezvous at " +
                                       where()) +
                  ", is gone (" + e.what() + ")");
    }
    lock.lock();
    if (!verdict.empty() && in_exchange && clock::now() - verdict_at > millis(o.silence_s + 1)) {
      // The exchange did not fail by itself within silence_s: end the process with the verdict.
      spdlog::default_logger()->flush();
      std::cerr << "error: rank " << o.rank << ": an exchange waits on a rank that failed: " << verdict
                << ". Relaunch every rank with the same command: with --checkpoint-dir the run resumes after the last "
                   "round every rank committed"
                << std::endl;
      std::_Exit(1);
    }
    cv.wait_for(lock, millis(interval_s()), [&] { return stop; });
  }
}

Communicator::Communicator(const DistributedOptions& options) : impl_(std::make_unique<Impl>()) {
  impl_->o = options;
  if (options.world_size < 2) throw std::invalid_argument("Communicator: a world of " +
                                                          std::to_string(options.world_size) + " rank needs none");
  spdlog::info("rank {} of {}: rendezvous at {}", options.rank, options.world_size, impl_->where());
  impl_->rendezvous();
  impl_->monitor = std::thread([this] { impl_->watch(); });
  spdlog::info("rank {} of {}: every rank joined", options.rank, options.world_size);
}

Communicator::~Communicator() {
  if (impl_->failed && impl_->o.rank == 0) {
    // The others learn who failed from the store this process hosts: keep it up long enough.
    std::unique_lock<std::mutex> lock(impl_->mu);
    impl_->cv.wait_for(lock, millis(impl_->o.silence_s + 3 * impl_->interval_s()), [] { return false; });
  }
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    impl_->stop = true;
    impl_->cv.notify_all();
  }
  if (impl_->monitor.joinable()) impl_->monitor.join();
  impl_->group.reset();
  impl_->beats.reset();
  impl_->store.reset();
}

int Communicator::rank() const { return impl_->o.rank; }
int Communicator::world_size() const { return impl_->o.world_size; }

std::vector<std::string> Communicator::all_gather(const std::string& mine, const std::string& what) {
  return impl_->exchange(what, [&] {
    const int world = impl_->o.world_size;
    std::vector<at::Tensor> size_in{at::full({1}, static_cast<int64_t>(mine.size()), at::kLong)};
    std::vector<std::vector<at::Tensor>> size_out(1);
    for (int r = 0; r < world; ++r) size_out[0].push_back(at::empty({1}, at::kLong));
    impl_->group->allgather(size_out, size_in)->wait();
    // Then each rank's bytes broadcast from it, straight into the strings: no padding to the
    // longest, and on loopback about 4x faster than Gloo's allgather (26 MB from each of 2 ranks:
    // 0.04-0.05 s against 0.18 s, measured here under load).
    std::vector<std::string> all(world);
    for (int r = 0; r < world; ++r) {
      const int64_t n = size_out[0][r].item<int64_t>();
      if (n < 0) throw std::runtime_error("rank " + std::to_string(r) + " announced " + std::to_string(n) + " bytes");
      if (n == 0) continue;
      if (r == impl_->o.rank) {
        all[r] = mine;
      } else {
        all[r].resize(static_cast<size_t>(n));
      }
      std::vector<at::Tensor> buf{at::from_blob(all[r].data(), {n}, at::kByte)};
      c10d::BroadcastOptions opts;
      opts.rootRank = r;
      impl_->group->broadcast(buf, opts)->wait();
    }
    return all;
  });
}

int64_t Communicator::all_min(int64_t value, const std::string& what) {
  return impl_->exchange(what, [&] {
    std::vector<at::Tensor> t{at::full({1}, value, at::kLong)};
    c10d::AllreduceOptions opts;
    opts.reduceOp = c10d::ReduceOp::MIN;
    impl_->group->allreduce(t, opts)->wait();
    return t[0].item<int64_t>();
  });
}

void Communicator::all_reduce(at::Tensor& values, Reduce op, const std::string& what) {
  if (!values.is_contiguous() || !values.device().is_cpu())
    throw std::invalid_argument(what + ": all_reduce needs a contiguous CPU tensor");
  impl_->exchange(what, [&] {
    std::vector<at::Tensor> t{values};
    c10d::AllreduceOptions opts;
    opts.reduceOp = op == Reduce::kMax ? c10d::ReduceOp::MAX : c10d::ReduceOp::SUM;
    impl_->group->allreduce(t, opts)->wait();
    return 0;
  });
}

void Communicator::check_same_settings(const nlohmann::ordered_json& settings) {
  const auto all = all_gather(settings.dump(), "the settings check");
  const auto first = nlohmann::ordered_json::parse(all[0]);
  for (int r = 1; r < world_size(); ++r) {
    if (all[r] == all[0]) continue;
    const auto theirs = nlohmann::ordered_json::parse(all[r]);
    std::string key = "(key order)";
    for (const auto& [k, v] : first.items())
      if (!theirs.contains(k) || theirs[k] != v) {
        key = k;
        break;
      }
    if (key == "(key order)")
      for (const auto& [k, v] : theirs.items())
        if (!first.contains(k)) {
          key = k;
          break;
        }
    const auto show = [&](const nlohmann::ordered_json& j) { return j.contains(key) ? j[key].dump() : "not set"; };
    throw std::invalid_argument("rank " + std::to_string(r) + " runs other settings than rank 0: its " + key + " is " +
                                show(theirs) + ", rank 0's " + show(first) +
                                " (every rank must run the same command)");
  }
}

void Communicator::finish() {
  all_min(0, "the run's end");
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    impl_->stop = true;
    impl_->cv.notify_all();
  }
  if (impl_->monitor.joinable()) impl_->monitor.join();
  // No rank's monitor uses rank 0's store past this point.
  all_min(0, "the run's end");
}

// ---------------------------------------------------------------------------------------------
// Results as bytes

namespace {

constexpr char kMagic[8] = {'F', 'L', 'R', 'E', 'S', 'v', '1', '\n'};

void put_u64(std::string& out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

uint64_t get_u64(const std::string& in, size_t& at, const std::string& what) {
  if (in.size() - at < 8 || at > in.size()) throw std::runtime_error(what + ": truncated");
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= static_cast<uint64_t>(static_cast<unsigned char>(in[at + i])) << (8 * i);
  at += 8;
  return v;
}

std::string double_bits(double d) {
  uint64_t u;
  std::memcpy(&u, &d, 8);
  return fmt::format("{:016x}", u);
}

double bits_double(const std::string& s, const std::string& what) {
  size_t used = 0;
  uint64_t u = 0;
  try {
    u = std::stoull(s, &used, 16);
  } catch (const std::exception&) {
    used = 0;
  }
  if (s.size() != 16 || used != 16) throw std::runtime_error(what + ": metric bits '" + s + "' are not 16 hex digits");
  double d;
  std::memcpy(&d, &u, 8);
  return d;
}

int64_t meta_int(const std::map<std::string, std::string>& m, const std::string& key, const std::string& what) {
  const auto it = m.find(key);
  if (it == m.end()) throw std::runtime_error(what + ": no '" + key + "'");
  size_t used = 0;
  int64_t v = 0;
  try {
    v = std::stoll(it->second, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (it->second.empty() || used != it->second.size())
    throw std::runtime_error(what + ": '" + key + "' is not a whole number");
  return v;
}

}  // namespace

std::string encode_results(const std::vector<std::pair<size_t, ClientResult>>& results) {
  std::string out(kMagic, sizeof kMagic);
  put_u64(out, results.size());
  for (const auto& [index, r] : results) {
    std::map<std::string, std::string> meta{{"index", std::to_string(index)},
                                            {"round", std::to_string(r.round)},
                                            {"client", std::to_string(r.client_id)},
                                            {"ok", r.ok ? "1" : "0"},
                                            {"error", r.error},
                                            {"num_examples", std::to_string(r.num_examples)}};
    nlohmann::ordered_json metrics = nlohmann::ordered_json::object();
    for (const auto& [k, v] : r.metrics) metrics[k] = double_bits(v);
    meta["metrics"] = metrics.dump();
    const std::string bytes = to_safetensors_bytes(pack_payload(r.model, r.tensors), meta);
    put_u64(out, bytes.size());
    out += bytes;
  }
  return out;
}

std::vector<std::pair<size_t, ClientResult>> decode_results(const std::string& in, const std::string& what) {
  if (in.size() < sizeof kMagic || in.compare(0, sizeof kMagic, kMagic, sizeof kMagic) != 0)
    throw std::runtime_error(what + ": not a block of client results");
  size_t at = sizeof kMagic;
  const uint64_t n = get_u64(in, at, what);
  if (n > in.size()) throw std::runtime_error(what + ": claims " + std::to_string(n) + " results");
  std::vector<std::pair<size_t, ClientResult>> out;
  for (uint64_t i = 0; i < n; ++i) {
    const uint64_t len = get_u64(in, at, what);
    if (len > in.size() - at) throw std::runtime_error(what + ": result " + std::to_string(i) + " is truncated");
    const std::string item = what + ", result " + std::to_string(i);
    std::map<std::string, std::string> meta;
    const ModelState packed = from_safetensors_bytes(in.substr(at, len), &meta, item);
    at += len;
    ClientResult r;
    const int64_t index = meta_int(meta, "index", item);
    if (index < 0) throw std::runtime_error(item + ": negative task index");
    r.round = static_cast<int>(meta_int(meta, "round", item));
    r.client_id = static_cast<int>(meta_int(meta, "client", item));
    r.ok = meta_int(meta, "ok", item) != 0;
    r.error = meta["error"];
    r.num_examples = meta_int(meta, "num_examples", item);
    const auto metrics = nlohmann::json::parse(meta["metrics"], nullptr, false);
    if (metrics.is_discarded() || !metrics.is_object()) throw std::runtime_error(item + ": metrics are not an object");
    for (const auto& [k, v] : metrics.items()) {
      if (!v.is_string()) throw std::runtime_error(item + ": metric '" + k + "' is not a string of bits");
      r.metrics[k] = bits_double(v.get<std::string>(), item);
    }
    unpack_payload(packed, r.model, r.tensors);
    out.emplace_back(static_cast<size_t>(index), std::move(r));
  }
  if (at != in.size()) throw std::runtime_error(what + ": " + std::to_string(in.size() - at) + " bytes after the results");
  return out;
}

// ---------------------------------------------------------------------------------------------
// DistributedPool

DistributedPool::DistributedPool(std::unique_ptr<InProcessPool> local, std::vector<int> owner, int rank,
                                 Communicator* comm, bool all_reduce)
    : local_(std::move(local)),
      owner_(std::move(owner)),
      local_id_(owner_.size(), -1),
      rank_(rank),
      comm_(comm),
      all_reduce_(all_reduce) {
  for (size_t c = 0; c < owner_.size(); ++c)
    if (owner_[c] == rank_) {
      local_id_[c] = static_cast<int>(global_id_.size());
      global_id_.push_back(static_cast<int>(c));
    }
  if (!local_ || local_->num_clients() != static_cast<int>(global_id_.size()))
    throw std::invalid_argument("distributed pool: rank " + std::to_string(rank_) + " owns " +
                                std::to_string(global_id_.size()) + " clients, its local pool holds " +
                                std::to_string(local_ ? local_->num_clients() : 0));
}

std::vector<ClientResult> DistributedPool::execute(const std::vector<ClientTask>& tasks) {
  std::vector<ClientTask> mine;
  std::vector<size_t> index;
  for (size_t i = 0; i < tasks.size(); ++i) {
    const int id = tasks[i].client_id;
    if (id < 0 || id >= num_clients()) throw std::out_of_range("distributed pool: no client " + std::to_string(id));
    if (owner_[id] != rank_) continue;
    mine.push_back(tasks[i]);
    mine.back().client_id = local_id_[id];
    index.push_back(i);
  }
  // A fit exchange of a round that all-reduces: the models stay here (held_), screened first.
  const bool defer = defer_ && !tasks.empty() &&
                     std::none_of(tasks.begin(), tasks.end(), [](const ClientTask& t) { return t.phase == kEvaluatePhase; });
  held_.clear();
  layout_ = defer ? tasks.front().model : ModelState();
  last_deferred_ = defer;
  using clock = std::chrono::steady_clock;
  const auto t0 = clock::now();
  auto done = local_->execute(mine);
  const auto t1 = clock::now();
  stats_.train_s += std::chrono::duration<double>(t1 - t0).count();
  std::vector<std::pair<size_t, ClientResult>> out;
  for (size_t k = 0; k < done.size(); ++k) {
    ClientResult& r = done[k];
    const ClientTask& task = tasks[index[k]];
    r.client_id = task.client_id;
    if (defer) {
      if (r.ok) {
        const std::string why = check_(task, r);
        if (!why.empty()) reject_result(r, why);  // as RoundEngine::screen would
      }
      if (r.ok) held_[r.client_id] = std::move(r.model);
      r.model = ModelState();
      r.tensors.clear();
    }
    out.emplace_back(index[k], std::move(r));
  }
  std::vector<ClientResult> results(tasks.size());
  std::vector<bool> filled(tasks.size(), false);
  if (!comm_) {
    for (auto& [i, r] : out) results[i] = std::move(r);
    return results;
  }
  const std::string what = tasks.empty() ? std::string("an empty exchange")
                                         : "round " + std::to_string(tasks.front().round) + "'s " +
                                               tasks.front().phase + " exchange";
  const std::string encoded = encode_results(out);
  stats_.bytes_sent += static_cast<int64_t>(encoded.size());
  const auto t2 = clock::now();
  const auto all = comm_->all_gather(encoded, what);
  const auto t3 = clock::now();
  for (int r = 0; r < comm_->world_size(); ++r) {
    const std::string from = what + ": rank " + std::to_string(r) + "'s results";
    for (auto& [i, res] : decode_results(all[r], from)) {
      if (i >= tasks.size() || owner_[tasks[i].client_id] != r || filled[i] || res.client_id != tasks[i].client_id)
        throw std::runtime_error(from + " hold one for task " + std::to_string(i) + " that is not rank " +
                                 std::to_string(r) + "'s (or came twice)");
      results[i] = std::move(res);
      filled[i] = true;
    }
  }
  for (size_t i = 0; i < tasks.size(); ++i)
    if (!filled[i])
      throw std::runtime_error(what + ": rank " + std::to_string(owner_[tasks[i].client_id]) +
                               " sent no result for client " + std::to_string(tasks[i].client_id));
  const auto t4 = clock::now();
  stats_.encode_s += std::chrono::duration<double>(t2 - t1).count();
  stats_.gather_s += std::chrono::duration<double>(t3 - t2).count();
  stats_.decode_s += std::chrono::duration<double>(t4 - t3).count();
  stats_.exchange_s += std::chrono::duration<double>(t4 - t1).count();
  return results;
}

bool DistributedPool::defer_result_models(bool on) {
  defer_ = on && all_reduce_ && static_cast<bool>(check_);
  if (!defer_) {  // the round is over: the models it kept go
    held_.clear();
    layout_ = ModelState();
  }
  return defer_;
}

void DistributedPool::load_result_model(ClientResult& r) {
  const auto it = held_.find(r.client_id);
  if (it == held_.end())
    throw std::runtime_error("rank " + std::to_string(rank_) + " holds no model of client " +
                             std::to_string(r.client_id) + " (rank " +
                             std::to_string(r.client_id >= 0 && r.client_id < num_clients() ? owner_[r.client_id] : -1) +
                             " trained it)");
  r.model = it->second;
}

// Each rank sums the models it trained (ExactWeightedSum), then one all-reduce adds the ranks'
// sums. A model that cannot be summed blames its client on every rank: the lowest such task index
// is agreed with the magnitudes' all-reduce (so every rank asks again without the same result),
// and its rank says why.
std::optional<ReducedMean> DistributedPool::reduce_mean(const std::vector<ClientResult>& ok) {
  if (!last_deferred_) return std::nullopt;
  using clock = std::chrono::steady_clock;
  const auto t0 = clock::now();
  const std::string what = ok.empty() ? std::string("an all-reduce")
                                      : "round " + std::to_string(ok.front().round) + "'s all-reduce of the models' sums";
  double total = 0;
  for (const auto& r : ok) total += static_cast<double>(r.num_examples);
  ExactWeightedSum sum(layout_, total);
  std::vector<std::pair<const ModelState*, double>> mine;  // this rank's models, in task order
  constexpr int64_t kNone = std::numeric_limits<int64_t>::max();
  int64_t failed = kNone;
  std::string error;
  for (size_t i = 0; i < ok.size() && failed == kNone; ++i) {
    const int id = ok[i].client_id;
    if (id < 0 || id >= num_clients() || owner_[id] != rank_) continue;
    try {
      const auto it = held_.find(id);
      if (it == held_.end()) throw std::runtime_error("rank " + std::to_string(rank_) + " kept no model of it");
      sum.observe(it->second);
      mine.emplace_back(&it->second, static_cast<double>(ok[i].num_examples));
    } catch (const std::exception& e) {
      failed = static_cast<int64_t>(i);
      error = e.what();
    }
  }
  // One all-reduce MAX agrees on the magnitudes and on the lowest failed index (as -index, last).
  const auto observed = clock::now();
  ReducedMean out;
  int64_t blamed = failed;
  if (comm_) {
    constexpr double kNoFailure = -std::numeric_limits<double>::infinity();
    at::Tensor agree = at::cat(
        {sum.magnitudes(), at::full({1}, failed == kNone ? kNoFailure : -static_cast<double>(failed), at::kDouble)});
    comm_->all_reduce(agree, Communicator::Reduce::kMax, what + " (the values' magnitudes)");
    const double lowest = agree[-1].item<double>();
    blamed = lowest == kNoFailure ? kNone : static_cast<int64_t>(-lowest);
    sum.magnitudes().copy_(agree.narrow(0, 0, sum.magnitudes().numel()));
  }
  if (blamed != kNone) {
    out.rejected = static_cast<int>(blamed);
    if (comm_) {  // the rank that owns it says why
      for (const auto& why : comm_->all_gather(blamed == failed ? error : std::string(), what + " (why)"))
        out.error += why;
    } else {
      out.error = error;
    }
    return out;
  }
  const auto t1 = clock::now();
  for (const auto& [model, weight] : mine) sum.add(*model, weight);
  const auto t2 = clock::now();
  if (comm_) {
    comm_->all_reduce(sum.sums(), Communicator::Reduce::kSum, what);
    stats_.bytes_reduced += sum.sums().numel() * static_cast<int64_t>(sizeof(int64_t));
  }
  const auto t3 = clock::now();
  out.mean = sum.mean();
  const auto t4 = clock::now();
  auto seconds = [](clock::duration d) { return std::chrono::duration<double>(d).count(); };
  stats_.sum_s += seconds(observed - t0) + seconds(t2 - t1) + seconds(t4 - t3);
  stats_.reduce_s += seconds(t4 - t0);
  return out;
}

namespace {

// "<a>/<rest>" -> (a, rest) with a a whole number, or nullopt.
std::optional<std::pair<int, std::string>> split_client(const std::string& name) {
  const auto slash = name.find('/');
  if (slash == std::string::npos || slash == 0) return std::nullopt;
  size_t used = 0;
  int id = -1;
  try {
    id = std::stoi(name.substr(0, slash), &used);
  } catch (const std::exception&) {
    return std::nullopt;
  }
  if (used != slash || id < 0) return std::nullopt;
  return std::make_pair(id, name.substr(slash + 1));
}

}  // namespace

ModelState DistributedPool::save_state() const {
  std::vector<ModelState::Entry> entries;
  const ModelState local = local_->save_state();
  for (const auto& e : local.entries()) {
    const auto parts = split_client(e.name);
    if (!parts || parts->first >= static_cast<int>(global_id_.size()))
      throw std::logic_error("distributed pool: local state entry '" + e.name + "'");
    entries.push_back({std::to_string(global_id_[parts->first]) + "/" + parts->second, e.tensor});
  }
  return ModelState(std::move(entries));
}

void DistributedPool::load_state(const ModelState& state) {
  std::vector<ModelState::Entry> entries;
  for (const auto& e : state.entries()) {
    const auto parts = split_client(e.name);
    if (!parts || parts->first >= num_clients())
      throw std::invalid_argument("distributed pool state: entry '" + e.name + "' is not <client>/<key>/<tensor>");
    if (owner_[parts->first] != rank_)
      throw std::invalid_argument("distributed pool state: client " + std::to_string(parts->first) +
                                  " belongs to rank " + std::to_string(owner_[parts->first]) + ", not to rank " +
                                  std::to_string(rank_));
    entries.push_back({std::to_string(local_id_[parts->first]) + "/" + parts->second, e.tensor});
  }
  local_->load_state(ModelState(std::move(entries)));
}

// ---------------------------------------------------------------------------------------------
// RankRunStore

std::optional<RunCheckpoint> RankRunStore::load() {
  const auto latest = inner_.latest();
  const int64_t mine = latest ? *latest : -1;
  const int64_t agreed = comm_ ? comm_->all_min(mine, "agreeing on the round to resume from") : mine;
  if (agreed < 0 && mine > 0)
    throw std::runtime_error("this rank's checkpoint is at round " + std::to_string(mine) +
                             " but another rank has none: relaunch with every rank's checkpoint directory in place");
  if (agreed < mine - 1)
    throw std::runtime_error("this rank's checkpoint is at round " + std::to_string(mine) + ", another rank's at round " +
                             std::to_string(agreed) + ": the ranks' checkpoint directories are not of one run");
  if (agreed < 0) return std::nullopt;
  return inner_.load_round(static_cast<int>(agreed));
}

}  // namespace fl
