#pragma once
// StateStore: everything fedcoord must remember across a crash (kill -9 included), kept in
// one RocksDB database with a column family per kind of record:
//
//   runs      run_id                                   -> RunRecord (JSON)
//   clients   run_id \0 'i' BE32(index)                -> ClientRecord (JSON)
//             run_id \0 'n' name                       -> BE32(index)   (name -> index lookup)
//   updates   run_id \0 BE64(round) phase \0 BE32(client) 'm'
//                                                      -> "FLU1" BE32(n) JSON(n bytes) manifest
//             (the payload itself is a file: <dir>/payloads/<hex run_id>-<round>-<phase>-<client>.bin;
//             a round has several exchanges with a client: "fit", "evaluate", "fit-2", ...)
//   models    run_id \0 BE64(version)                  -> "FLM1" BE64(size) file name: the model is the
//             safetensors file <dir>/models/<hex run_id>-<version>.safetensors (stores written
//             before it hold the safetensors bytes themselves, which still load)
//   strategy  run_id                                   -> strategy state blob
//   rounds    run_id \0 BE64(round)                    -> the round's report (JSON text)
//   audit     BE64(sequence)                           -> one JSON line (append-only)
//   denied    certificate CN                           -> JSON {by, at}: clients an admin revoked
//
// Numbers in keys are fixed-width big-endian, so RocksDB's bytewise order is numeric order
// (round 10 sorts after round 9). Run ids are run_id_problem's: 1..64 letters, digits, '.', '_'
// and '-' (they name payload files and appear in task ids, logs and URLs).
// Every write is synced (WriteOptions::sync), so whatever a call has returned from survives a
// process crash; multi-record writes (commit_round, register_client) are single atomic
// WriteBatches. Update payloads (up to gigabytes) bypass RocksDB's WAL and memtable: they stream
// to a file while they arrive (UpdateWriter), which is fsynced and renamed into place before the
// metadata record is written, so a metadata record always has its complete payload. Global
// models likewise: the file is durable before the batch that names it. The class is thread-safe. Errors are std::runtime_error naming the
// database directory and RocksDB's status; undecodable values name the column family and key.
//
// The header deliberately includes neither torch/torch.h nor RocksDB (pimpl).
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "common/core/model_state.h"

namespace fl {

// Why `run_id` cannot name a run ("" when it can): 1 to 64 characters of [A-Za-z0-9._-],
// starting with a letter or a digit.
std::string run_id_problem(const std::string& run_id);

struct RunRecord {
  std::string run_id;
  std::string config_json;
  // created (by an admin, not started) | waiting (started, its turn not come) | running |
  // paused | finished | aborted
  std::string state;
  int current_round = 0;  // round in progress, 1-based; 0 = not started
  int total_rounds = 0;
  double created_at = 0;  // seconds since the Unix epoch; 0 = unknown
  double started_at = 0;  // when it was started (queue order of waiting runs)
  double ended_at = 0;    // finished or aborted
};

struct ClientRecord {
  int index = 0;                   // 0-based, stable, in registration order within a run
  std::string name;                // certificate CN
  int64_t num_train_examples = 0;
  int64_t num_test_examples = 0;
  double registered_at = 0;        // seconds since the Unix epoch (wall clock)
  // The model the client declared (ModelDeclaration JSON), kept opaque here; empty: the run's.
  std::string model_json;
};

struct StoredUpdate {
  int round = 0;
  std::string phase = "fit";              // which exchange of the round (valid_phase_name)
  int client_index = 0;
  int64_t num_examples = 0;
  std::map<std::string, double> metrics;  // non-finite values round-trip too
  std::string manifest;                   // serialized PayloadManifest (opaque bytes)
  std::string payload;                    // encoded bytes (opaque)
};

struct RoundRecord {
  int round = 0;
  std::string json;  // the round's report (participants, metrics, durations, dropped); stored verbatim
};

class StateStore {
 public:
  // Opens or creates the database at `dir` (create_if_missing), opening every column family an
  // existing database has and creating the missing ones among: runs, rounds, models, strategy,
  // clients, updates, audit. Failure -> std::runtime_error naming `dir` and RocksDB's status.
  explicit StateStore(const std::string& dir);
  ~StateStore();
  StateStore(const StateStore&) = delete;
  StateStore& operator=(const StateStore&) = delete;

 private:
  void collect_orphans();
  // Writes a model version's file (durably) and returns the record that names it.
  std::string write_model_file(const std::string& run_id, int version, const ModelState& global);

 public:

  const std::string& dir() const;
  // Payload files a crash left behind (temporary files, payloads without their record) that
  // the constructor removed.
  size_t orphans_collected() const;

  // ---- runs
  std::optional<RunRecord> load_run(const std::string& run_id) const;
  void save_run(const RunRecord& run);
  std::vector<RunRecord> list_runs() const;  // ordered by run_id

  // ---- clients
  // Returns the client's index in the run: the existing one when `name` is already registered
  // (the stored record is left unchanged but for its model_json, rewritten when the client now
  // declares another model), otherwise the next free one (0, 1, 2, ...).
  // `index` >= 0 (a run with a roster): a new client takes that index, which must be free
  // (std::invalid_argument otherwise), and a known one must have it.
  int register_client(const std::string& run_id, const std::string& name, int64_t n_train, int64_t n_test,
                      const std::string& model_json = {}, int index = -1);
  std::vector<ClientRecord> clients(const std::string& run_id) const;  // ordered by index
  std::optional<int> client_index(const std::string& run_id, const std::string& name) const;

  // ---- updates (a client's upload for a round)
  // Streams one update's payload to disk while it arrives, so that the durable write overlaps
  // the transfer: append() queues the bytes (at most kMaxQueuedBytes, then it waits) and the
  // writer's own thread writes them. One caller at a time per writer; several writers may run
  // at once. Destroying a writer that was not committed removes what it wrote.
  class UpdateWriter {
   public:
    // Bytes queued for the writer thread: a receiver faster than the disk waits (gRPC's flow
    // control then slows the sender) instead of holding the update in memory.
    static constexpr size_t kMaxQueuedBytes = size_t{8} << 20;
    ~UpdateWriter();
    UpdateWriter(const UpdateWriter&) = delete;
    UpdateWriter& operator=(const UpdateWriter&) = delete;
    void append(std::string bytes);
    void append(const char* data, size_t n) { append(std::string(data, n)); }
    uint64_t bytes_appended() const { return appended_; }
    // Everything appended so far, read back from the file into `out` (resized, its capacity
    // reused), its writes finished first: nothing may be appended after it. For a receiver that
    // streamed the bytes here without keeping them and validates them before commit(). A write
    // or read error throws std::runtime_error.
    void read_back(std::string& out);
    // Bytes [offset, offset + n) of what was appended, into out (the same conditions).
    void read_at(uint64_t offset, size_t n, char* out);
    // Makes the payload durable (fsync, rename, directory fsync), then writes u's metadata
    // (u.payload is ignored: the appended bytes are the payload). Durable when it returns true;
    // false, keeping nothing, when an update for the key exists already (the first one stands).
    bool commit(const StoredUpdate& u);

   private:
    friend class StateStore;
    UpdateWriter(StateStore& store, std::string run_id, int round, std::string phase, int client);
    void write_loop();
    void finish_writes();  // drains the queue, joins the thread, rethrows a write error
    StateStore& store_;
    std::string run_id_, phase_, tmp_path_, final_path_;
    int round_, client_, fd_ = -1;
    uint64_t appended_ = 0;
    uint64_t written_ = 0, writeback_from_ = 0;  // writer thread only
    bool committed_ = false;
    std::mutex mu_;
    std::condition_variable cv_;
    std::deque<std::string> queue_;
    size_t queued_bytes_ = 0;
    bool closing_ = false;
    std::string error_;  // the first write error, reported by commit()
    std::thread thread_;
  };
  // A writer for (run, round, phase, client); nullptr when that update is stored already.
  std::unique_ptr<UpdateWriter> begin_update(const std::string& run_id, int round, int client_index,
                                             const std::string& phase = "fit");
  // The whole payload at once (begin_update + append + commit). Durable (synced) when it
  // returns: call it BEFORE acknowledging the upload. Returns false, writing nothing, when an
  // update for (run, u.round, u.phase, u.client_index) already exists (a duplicate: the first is kept).
  bool put_update(const std::string& run_id, const StoredUpdate& u);
  // One client's update of a round's phase (nullopt when there is none), its metadata; its payload
  // too when `payload` is given: read into *payload (resized, its capacity reused; u.payload
  // stays empty), so that a caller reading one update after another can reuse one buffer.
  std::optional<StoredUpdate> update(const std::string& run_id, int round, int client_index,
                                     const std::string& phase = "fit", std::string* payload = nullptr) const;
  // An update's payload file, open for reading in pieces: for a reader that folds an update range
  // by range instead of holding it whole (streaming aggregation).
  class PayloadFile {
   public:
    ~PayloadFile();
    PayloadFile(const PayloadFile&) = delete;
    PayloadFile& operator=(const PayloadFile&) = delete;
    uint64_t size() const { return size_; }
    // Bytes [offset, offset + n) into out; std::runtime_error naming the file when it cannot.
    void read(uint64_t offset, size_t n, char* out) const;

   private:
    friend class StateStore;
    PayloadFile(int fd, uint64_t size, std::string path) : fd_(fd), size_(size), path_(std::move(path)) {}
    int fd_;
    uint64_t size_;
    std::string path_;
  };
  // The payload file of a stored update; nullptr when the update is not stored. Throws
  // std::runtime_error when it is stored but its file is missing or its size is not the recorded one.
  std::unique_ptr<PayloadFile> open_update_payload(const std::string& run_id, int round, int client_index,
                                                   const std::string& phase = "fit") const;
  // A round's updates of one phase, by client index.
  std::vector<StoredUpdate> updates(const std::string& run_id, int round, const std::string& phase = "fit") const;
  bool has_update(const std::string& run_id, int round, int client_index, const std::string& phase = "fit") const;
  // Client indices that have an update for the round's phase (ascending), without reading payloads.
  std::vector<int> update_clients(const std::string& run_id, int round, const std::string& phase = "fit") const;
  // Deletes the updates of rounds r <= last_committed - keep_last_rounds, where last_committed is
  // latest_model_version(run) (the last round committed by commit_round). Updates of the round in
  // progress are never touched. keep_last_rounds >= 0.
  void prune_updates(const std::string& run_id, int keep_last_rounds);
  // fedcoord's default: the last committed round's updates stay (for inspection), older ones
  // go. Recovery after a restart only needs the round in progress, and payload files that are
  // never deleted fill the disk and the page cache (new writes then crawl: see
  // docs/performance.md).
  static constexpr int kDefaultKeepUpdateRounds = 1;

  // ---- end of a round
  // ONE atomic, synced WriteBatch with: `global` (safetensors) as model version `round`, the
  // strategy state blob, the round record, and `run` with current_round set to round + 1 (the
  // next round; total_rounds + 1 once the last round is committed: set run.state = "finished"
  // for that one). round >= 1 and rec.round == round. The round's updates are kept (see
  // prune_updates).
  void commit_round(const RunRecord& run, int round, const ModelState& global,
                    const std::string& strategy_state, const RoundRecord& rec);

  // ---- models
  void save_initial_model(const std::string& run_id, const ModelState& global);  // version 0
  std::optional<ModelState> load_model(const std::string& run_id, int version) const;  // CPU tensors
  std::optional<int> latest_model_version(const std::string& run_id) const;
  // The stored safetensors bytes of a version, verbatim (what `fedctl model export` writes).
  std::optional<std::string> model_bytes(const std::string& run_id, int version) const;

  // ---- strategy state and round reports
  std::string load_strategy_state(const std::string& run_id) const;  // "" when none was stored
  std::vector<RoundRecord> rounds(const std::string& run_id) const;  // ascending round

  // ---- audit log (append-only, global order of appends)
  void append_audit(const std::string& json_line);
  std::vector<std::string> audit() const;

  // ---- clients revoked by an admin (by certificate CN, for every run)
  void deny_client(const std::string& name, const std::string& json);
  std::optional<std::string> denied(const std::string& name) const;  // the JSON given to deny_client

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace fl
