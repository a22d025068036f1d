#pragma once
// RemoteClientPool: the RoundEngine's ClientPool for real sites. execute() posts one task per
// selected client and waits until every result is in, the round deadline passes, or a client
// stops heartbeating (stragglers are dropped, the round goes on with what arrived). The gRPC
// service feeds it: clients poll for their task, download its payload and upload results.
//
// Every accepted update is written to the StateStore (synced) before it is acknowledged, and
// execute() takes updates already in the store instead of asking again, so a coordinator
// restarted mid-round only waits for the clients it had not heard from.
//
// Deferred models (streaming aggregation, common/engine/streaming_aggregation.h): while the round
// engine asks for it, an upload's bytes go to its file only (the receiver keeps none in memory),
// are read back and validated one upload at a time, and the round's results come back without
// their models; the engine reads each back (load_result_model) when it folds it into the mean.
// The coordinator then holds the global model, the mean being built and one update, whatever the
// number of clients.
#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/engine/round_engine.h"
#include "common/engine/streaming_aggregation.h"
#include "common/models/model_declaration.h"
#include "common/net/codec.h"
#include "coordinator/store/state_store.h"

namespace fl {

struct RemotePoolOptions {
  std::chrono::milliseconds round_deadline{std::chrono::minutes(10)};
  std::chrono::milliseconds liveness_timeout{std::chrono::seconds(30)};  // no heartbeat this long: dropped
  uint64_t max_upload_bytes = uint64_t{4} << 30;
  // > 0: a client registering with more training or test examples than this is refused (an
  // update's weight is its example count, bounded by what its client registered with).
  int64_t max_examples_per_client = 0;
  // The run's clients by name (RunSpec::client_names): client i is roster[i], whenever it registers,
  // and other names are refused (NotInRoster). Empty: indices in order of first registration.
  std::vector<std::string> roster;
};

// What a client says of its result before the payload: the wire's UpdateHeader in C++, so the
// pool's API carries no protobuf message of its own (the service converts).
struct UploadHeader {
  std::string task_id;
  bool ok = true;
  std::string error;       // why, when !ok
  int64_t num_examples = 0;
  Metrics metrics;
};

// What a client learns when it polls.
struct TaskOffer {
  std::string task_id;
  int round = 0;
  std::string phase;
  std::map<std::string, double> config;
  uint64_t seed = 0;
  uint64_t payload_bytes = 0;
  std::string encoding;  // for the result; empty: the run's update encoding
};

class RemoteClientPool : public ClientPool, public DeferredResultModels {
 public:
  static constexpr size_t kMaxMetrics = 64;  // per upload
  RemoteClientPool(StateStore& store, std::string run_id, RemotePoolOptions options);

  // ClientPool: the run's clients, indices 0..n-1 stable across restarts: the roster's, or
  // without one those registered so far. A rostered client that has not registered yet is not
  // alive: a round that selects it drops it.
  int num_clients() const override;
  // How many of them have registered.
  int num_registered() const;
  std::vector<ClientResult> execute(const std::vector<ClientTask>& tasks) override;
  // DeferredResultModels: fit exchanges only, and only with a result check (set_result_check).
  bool defer_result_models(bool on) override;
  bool result_models_deferred() const override;
  void load_result_model(ClientResult& r) override;
  // A model-only fp32 update is read from its file in 8 MiB pieces, checksum verified.
  bool add_result_model(const ClientResult& r, WeightedMeanAccumulator& mean, double weight) override;

  // Whether a client's declared model may join the run: "" when it may, else why not.
  using ModelAcceptance = std::function<std::string(const ModelDeclaration& run, const ModelDeclaration& client)>;
  // The run's model: what a client that declares none trains, and so what its uploads'
  // "model/<name>" entries are checked against. `accepts` (the strategy's rule) judges the
  // models clients declare; null: only the run's model, layout for layout.
  void set_run_model(ModelDeclaration run_model, ModelAcceptance accepts = nullptr);
  // Whether a decoded result may be aggregated ("" or why not): the run's result_problem with
  // its strategy. Every upload is checked with it before it is stored and acknowledged; a
  // problem refuses the upload (PayloadError, field "update", naming it) and is that client's
  // failure for the task, so the round does not wait for it and nothing malformed is stored.
  // Null (the default): only the decoding's and the example-count checks.
  using ResultCheck = std::function<std::string(const ClientTask& task, const ClientResult& result)>;
  void set_result_check(ResultCheck check);

  // ---- called by the gRPC service ----
  // Registers (or re-registers, keeping its index) the client. `declared`: the model it trains,
  // when it says (else the run's). Throws ModelRefused with the strategy's reason when the run
  // cannot take that model; the declaration is stored with the client, so that uploads are
  // checked against it after a coordinator restart too. Throws std::invalid_argument for an
  // example count beyond RemotePoolOptions::max_examples_per_client, NotInRoster for a name
  // the run's roster does not have.
  int register_client(const std::string& name, int64_t n_train, int64_t n_test,
                      const std::optional<ModelDeclaration>& declared = std::nullopt);
  // The model a client trains: its declaration, or the run's model.
  ModelDeclaration client_model(int index) const;
  std::optional<int> client_index(const std::string& name) const;
  void heartbeat(int index);
  enum class Poll { kWait, kTask, kDone };
  // Long-poll: returns as soon as this client has a task (or the run ended), else after `wait`.
  Poll poll(int index, std::chrono::milliseconds wait, TaskOffer* offer);
  // The encoded payload of the client's current task; nullptr when task_id is not its task.
  std::shared_ptr<const EncodedPayload> payload(int index, const std::string& task_id) const;
  // An upload in progress: the task it answers and the file its payload streams to while it
  // arrives (so that the synced write overlaps the transfer).
  struct UploadSession {
    int index = -1;
    UploadHeader header;
    ClientTask task;
    ModelState packed;                                 // what was sent: the base of TOPK deltas
    std::shared_ptr<const ModelDeclaration> model;     // what the upload's model part must fit
    // The file the payload streams to: opened with the first data chunk (a header alone costs
    // neither a file nor a thread); null for duplicates and failure reports.
    std::unique_ptr<StateStore::UpdateWriter> writer;
    bool duplicate = false;
    std::optional<uint64_t> received_checksum;        // payload_checksum of the bytes, if the receiver computed it
    ResultCheck check;                                 // the pool's, when the upload began
    // The round defers models: the receiver keeps no bytes (finish_upload reads them back from
    // the file) and the accepted result keeps no model.
    bool defer = false;
    // The most this task's update may take: two of the client's model (an update and as much
    // again: SCAFFOLD's delta_c, FedCMD's deltas), what it was sent and 16 MiB, within
    // RemotePoolOptions::max_upload_bytes.
    uint64_t max_bytes = 0;
    // Streams payload bytes to disk (data chunks, in order); a no-op for duplicates and failures.
    void append(std::string data);

   private:
    friend class RemoteClientPool;
    StateStore* store = nullptr;
    std::string run_id;
    bool open_writer();  // false: the update is stored already (a duplicate)
  };
  // Checks that the header answers this client's current task and is sane. Throws
  // std::invalid_argument: a stale or unknown task (the client may try again), or a header the
  // run cannot take (num_examples <= 0 or more than the client registered for the phase, its
  // train or its test examples; a non-finite metric), which also fails the task.
  UploadSession begin_upload(int index, const UploadHeader& header);
  // Validates and decodes the payload, makes it durable and hands it to the waiting round.
  // Returns true when it was a duplicate of an update already accepted. Throws PayloadError.
  bool finish_upload(UploadSession& session, const v1::PayloadManifest& manifest, std::string bytes);
  // The upload of `task_id` cannot be taken (`why`): that client's failure for the task, when
  // it is still the pending one. For refusals found outside finish_upload (an announced size).
  void refuse(int index, const std::string& task_id, const std::string& why);
  // begin_upload + append + finish_upload, for a payload already in memory.
  bool upload(int index, const UploadHeader& header, const v1::PayloadManifest& manifest, std::string bytes);
  // The run is over: polls answer kDone from now on.
  void finish();
  bool finished() const;
  // Shutting down (or an admin aborted the run): a waiting execute() throws PoolAborted;
  // accepted updates stay stored.
  void abort();
  // An admin revoked the client: it counts as dead from now on (a round waiting for it drops it).
  void deny(int index);
  // Blocks until at least n clients are registered (or `timeout` passes); returns the count.
  int wait_for_clients(int n, std::chrono::milliseconds timeout);
  // Seconds since each registered client was last heard from (index order).
  std::vector<double> seconds_since_seen() const;
  const RemotePoolOptions& options() const { return options_; }
  const std::string& run_id() const { return run_id_; }

 private:
  struct Pending {
    ClientTask task;
    std::string task_id;
    ModelState packed;                             // what was sent: the base of TOPK deltas
    std::shared_ptr<const ModelDeclaration> model;  // the client's model (its uploads must fit it)
    std::shared_ptr<const EncodedPayload> payload;
    std::optional<ClientResult> result;
    int committing = 0;  // uploads being written to the store: the round waits for them, even at its deadline
  };
  ClientResult decode_result(const ClientTask& task, const ModelState& packed, const ModelDeclaration& model,
                             int64_t num_examples,
                             const std::map<std::string, double>& metrics, const v1::PayloadManifest& manifest,
                             std::string bytes, std::optional<uint64_t> checksum = std::nullopt) const;
  bool alive_locked(int index, std::chrono::steady_clock::time_point now) const;
  // Deferring rounds: whether the upload is a model alone, fp32, with exactly the task model's
  // layout (then check_in_pieces validates it from its file without holding it), and that check:
  // "" or why the run cannot take it (PayloadError "checksum" when the bytes are not the client's).
  bool fp32_model_alone(const UploadSession& session, const v1::PayloadManifest& m) const;
  std::string check_in_pieces(UploadSession& session, const v1::PayloadManifest& m, ClientResult& r) const;
  // The client's failure for the pending task: its upload was refused for `why` (rejected).
  void refuse_locked(Pending& p, const std::string& why);
  std::shared_ptr<const ModelDeclaration> model_locked(int index) const;

  StateStore& store_;
  const std::string run_id_;
  RemotePoolOptions options_;
  mutable std::mutex mu_;
  std::condition_variable cv_;        // results arrived / clients registered
  std::condition_variable task_cv_;   // tasks posted / run finished
  std::map<int, Pending> pending_;    // the round in progress, by client index
  std::map<std::string, int> index_by_name_;
  std::vector<std::chrono::steady_clock::time_point> last_seen_;
  std::shared_ptr<const ModelDeclaration> run_model_;
  ModelAcceptance accepts_;
  std::map<int, std::shared_ptr<const ModelDeclaration>> declared_;  // clients that declared a model
  std::map<int, std::pair<int64_t, int64_t>> registered_examples_;    // train, test: what uploads may claim
  ResultCheck check_;
  int round_ = 0;
  bool finished_ = false;
  bool aborted_ = false;
  std::set<int> denied_;
  bool defer_ = false;          // defer_result_models(true) is in force
  bool last_deferred_ = false;  // the last execute() deferred its results' models
  // What load_result_model needs of the last execute()'s deferred results, by client.
  struct DeferredRead {
    ClientTask task;
    ModelState packed;
    std::shared_ptr<const ModelDeclaration> model;
  };
  std::map<int, DeferredRead> deferred_reads_;
  DeferredRead deferred_read(int client_id) const;
  // The stored update's metadata (no payload) and its manifest; std::runtime_error when it is gone.
  StoredUpdate stored_update_of(const DeferredRead& d, int client_id, v1::PayloadManifest* manifest) const;
  // Uploads read back from their file are validated one at a time: one update in memory.
  std::mutex validate_mu_;
};

// A client's declared model that the run's strategy does not take (the message says why).
struct ModelRefused : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// A client whose name is not on the run's roster (RemotePoolOptions::roster).
struct NotInRoster : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct PoolAborted : std::runtime_error {
  PoolAborted() : std::runtime_error("the round was interrupted (shutdown)") {}
};

// "<run>/<round>/<client>/<phase>"
std::string make_task_id(const std::string& run_id, int round, int client, const std::string& phase);

}  // namespace fl
