#pragma once
// fedsim on several processes ("ranks", one machine or many) over torch.distributed's c10d:
// rendezvous through a TCPStore hosted by rank 0, exchanges over a Gloo process group, with
// PyTorch's launch conventions (MASTER_ADDR, MASTER_PORT, WORLD_SIZE, RANK, LOCAL_RANK), so that
// torchrun, Slurm's srun or a shell loop starts it (docs/distributed.md).
//
// Every rank loads the same data, derives the same partition, selection and tasks from the seed
// and runs the same RoundEngine and RunLoop. Only the pool differs: a DistributedPool trains the
// clients this rank owns (a fixed assignment balanced by example count) and all-gathers the
// results, so that every rank aggregates all of them, in task order, with the same strategy code:
// the final model is bit-identical for any number of ranks, for every strategy (FedAvg's sums,
// the median, Krum and FedCMD's similarities alike). A client's personal state lives on its rank
// and is checkpointed there (<checkpoint-dir>/rank-<r>).
//
// FedAvg-family strategies (MeanAggregation: FedAvg, FedProx, FedAvgM, FedAdam, FedYogi,
// FedAdagrad) need only the results' example-weighted mean. With --dist-reduce allreduce (the
// default) their results' models never travel: each rank sums the models it trained
// (ExactWeightedSum: 64-bit fixed point, whose sums are associative), one all-reduce adds the
// ranks' sums, and only the results' metadata is all-gathered. A rank then puts one model's
// elements (8 bytes each) into the all-reduce per round, not one model per client it trained, and
// the mean has the same bits for any number of ranks (tested for 1, 2 and 3 ranks). It is not
// the bits of the one-process fp32 fold (weighted_average_of): within 1e-6 of it after a few
// FedAvg rounds; --dist-reduce gather gives those bits, for any rank count.
//
// Liveness: each rank beats a counter in the store; a rank whose beat stops for --dist-silence-s
// (killed, hung, its machine gone) fails the run on every other rank with an error naming it,
// and relaunching every rank with the same command resumes from the last round all of them
// committed (RankRunStore).
#include <nlohmann/json.hpp>

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "common/engine/round_engine.h"
#include "common/engine/run_loop.h"
#include "common/engine/streaming_aggregation.h"
#include "simulations/checkpoint_store.h"
#include "simulations/in_process_pool.h"

namespace CLI {
class App;
}

namespace fl {

struct DistributedOptions {
  std::string master_addr;   // rank 0's host (MASTER_ADDR)
  int master_port = -1;      // the rendezvous port rank 0 listens on (MASTER_PORT)
  int world_size = -1;       // ranks in the run (WORLD_SIZE); -1: not a distributed run
  int rank = -1;             // this process (RANK), in [0, world_size)
  int local_rank = -1;       // this process on its machine (LOCAL_RANK): its GPU; -1: not given
  double timeout_s = 1800;   // rendezvous and one exchange (c10d's default: 30 minutes)
  double silence_s = 15;     // a rank whose heartbeat stops this long has failed
  // torchrun with its static rendezvous hosts the store itself (TORCHELASTIC_USE_AGENT_STORE=True):
  // every rank, rank 0 included, connects to it, under "/worker/attempt_<TORCHELASTIC_RESTART_COUNT>".
  bool agent_store = false;
  std::string store_prefix;
  // How FedAvg-family results come together: "allreduce" (their models summed where they were
  // trained, the sums all-reduced) or "gather" (every result to every rank).
  std::string reduce = "allreduce";
  bool enabled() const { return world_size > 0; }
};

// --master-addr, --master-port, --world-size, --rank, --local-rank, --dist-timeout-s,
// --dist-silence-s, --dist-reduce: the flags win over the environment.
void add_distributed_options(CLI::App& app, DistributedOptions& flags);

using EnvLookup = std::function<std::optional<std::string>(const std::string& name)>;
EnvLookup process_environment();
// The flags completed from MASTER_ADDR, MASTER_PORT, WORLD_SIZE, RANK and LOCAL_RANK (and torchrun's
// TORCHELASTIC_USE_AGENT_STORE, TORCHELASTIC_RESTART_COUNT), validated:
// neither WORLD_SIZE nor RANK anywhere: not distributed (world_size -1). Throws
// std::invalid_argument naming the variable or flag and the value that is wrong.
DistributedOptions resolve_distributed(const DistributedOptions& flags, const EnvLookup& env);

// Which rank owns each client: longest processing time first (clients by example count,
// descending, ties by id, each to the rank with the fewest examples so far, ties to the lowest
// rank). Every rank computes the same answer.
std::vector<int> assign_clients(const std::vector<int64_t>& examples, int world_size);

// The rendezvous, the Gloo process group and the heartbeats. Collectives throw
// std::runtime_error naming the rank that stopped (or rank 0's rendezvous host that is gone).
class Communicator {
 public:
  explicit Communicator(const DistributedOptions& options);
  ~Communicator();
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;
  int rank() const;
  int world_size() const;
  // Every rank's bytes, in rank order. `what` names the exchange in errors.
  std::vector<std::string> all_gather(const std::string& mine, const std::string& what);
  int64_t all_min(int64_t value, const std::string& what);
  // Every rank's `values` (a contiguous CPU tensor, the same shape and dtype on every rank)
  // summed (or their elementwise maximum), in place; every rank gets the same bits.
  enum class Reduce { kSum, kMax };
  void all_reduce(at::Tensor& values, Reduce op, const std::string& what);
  // Throws std::invalid_argument when a rank's settings differ from rank 0's, naming the rank
  // and the first key that differs.
  void check_same_settings(const nlohmann::ordered_json& settings);
  // Every rank got here (the run's end): afterwards no rank needs the others any more.
  void finish();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// A result (or a rank's results) as bytes and back: safetensors of its tensors with the rest in
// the metadata; exact (metrics as their 64 bits). Decoding throws std::runtime_error naming `what`.
std::string encode_results(const std::vector<std::pair<size_t, ClientResult>>& results);
std::vector<std::pair<size_t, ClientResult>> decode_results(const std::string& bytes, const std::string& what);

// The ClientPool of one rank: `local` holds this rank's clients (owner[c] == rank), in ascending
// global id; execute() trains those of the tasks and returns every task's result, gathered from
// all ranks. comm == nullptr: a world of one rank.
class DistributedPool : public ClientPool, public DeferredResultModels {
 public:
  // all_reduce: FedAvg-family rounds all-reduce the models' sums (DeferredResultModels) instead of
  // gathering the models, once a result check is set.
  DistributedPool(std::unique_ptr<InProcessPool> local, std::vector<int> owner, int rank, Communicator* comm,
                  bool all_reduce = false);
  int num_clients() const override { return static_cast<int>(owner_.size()); }
  std::vector<ClientResult> execute(const std::vector<ClientTask>& tasks) override;

  // The run's screening of a result (result_problem: "" or why it is refused). Deferred results
  // skip the engine's screening, so each rank screens those it trained before they are summed.
  using ResultCheck = std::function<std::string(const ClientTask& task, const ClientResult& result)>;
  void set_result_check(ResultCheck check) { check_ = std::move(check); }
  // DeferredResultModels, all-reduce mode with a result check only: a fit exchange's results are
  // all-gathered without their models, each rank keeping the models it trained for reduce_mean,
  // which every rank calls with the same results.
  bool defer_result_models(bool on) override;
  bool result_models_deferred() const override { return last_deferred_; }
  // This rank's results only (another rank's model is not here: std::runtime_error).
  void load_result_model(ClientResult& r) override;
  std::optional<ReducedMean> reduce_mean(const std::vector<ClientResult>& ok) override;
  // This rank's clients' personal tensors, named by their global ids.
  ModelState save_state() const override;
  void load_state(const ModelState& state) override;

  // Where this rank's time went (for docs/distributed.md's scaling numbers): training its own
  // clients, and the exchanges (encoding, all-gather, which includes waiting for slower ranks,
  // and decoding); the bytes of results it sent.
  struct Stats {
    double train_s = 0;
    double exchange_s = 0;  // encode_s + gather_s + decode_s
    double encode_s = 0;
    double gather_s = 0;
    double decode_s = 0;
    double reduce_s = 0;        // summing this rank's models and the all-reduces (waits included)
    double sum_s = 0;           // of which the arithmetic (magnitudes, fixed-point terms, the mean)
    int64_t bytes_sent = 0;     // results (with models when gathered, metadata when all-reduced)
    int64_t bytes_reduced = 0;  // the sums this rank put into all-reduces
  };
  const Stats& stats() const { return stats_; }

 private:
  Stats stats_;
  std::unique_ptr<InProcessPool> local_;
  std::vector<int> owner_;
  std::vector<int> local_id_;   // global id -> index in local_ (-1: another rank's)
  std::vector<int> global_id_;  // index in local_ -> global id
  int rank_;
  Communicator* comm_;
  bool all_reduce_;
  ResultCheck check_;
  bool defer_ = false;          // defer_result_models(true) is in force
  bool last_deferred_ = false;  // the last execute() deferred its results' models
  std::map<int, ModelState> held_;  // the last deferred execute()'s models this rank trained, by client
  ModelState layout_;               // that exchange's task model (a rank may hold none of the results)
};

// A rank's checkpoints (a DirectoryRunStore keeping the round before its last): load() resumes
// from the last round that every rank committed, which is this rank's last or the one before.
class RankRunStore : public RunStore {
 public:
  RankRunStore(DirectoryRunStore& inner, Communicator* comm) : inner_(inner), comm_(comm) {}
  std::optional<RunCheckpoint> load() override;
  void begin(const ModelState& initial) override { inner_.begin(initial); }
  void commit(const RoundReport& report, const RunCheckpoint& state) override { inner_.commit(report, state); }

 private:
  DirectoryRunStore& inner_;
  Communicator* comm_;
};

}  // namespace fl
