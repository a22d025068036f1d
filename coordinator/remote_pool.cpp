#include "coordinator/remote_pool.h"

#include "common/net/buffer_pool.h"
#include "common/util/text.h"

#include <spdlog/spdlog.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <malloc.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>

namespace fl {

using Clock = std::chrono::steady_clock;

namespace {

// A task's client failing it: why, and whether its upload was refused (counted as rejected).
ClientResult failure_of(const ClientTask& task, std::string error, bool rejected = false) {
  ClientResult r;
  r.round = task.round;
  r.client_id = task.client_id;
  r.ok = false;
  r.error = std::move(error);
  if (rejected) r.metrics["rejected"] = 1;
  return r;
}

}  // namespace

std::string make_task_id(const std::string& run_id, int round, int client, const std::string& phase) {
  return run_id + "/" + std::to_string(round) + "/" + std::to_string(client) + "/" + phase;
}

RemoteClientPool::RemoteClientPool(StateStore& store, std::string run_id, RemotePoolOptions options)
    : store_(store), run_id_(std::move(run_id)), options_(options) {
  // Known clients get a full liveness window after a (re)start to reconnect.
  for (const auto& c : store_.clients(run_id_)) {
    const auto& roster = options_.roster;
    if (!roster.empty() && (c.index >= static_cast<int>(roster.size()) || roster[c.index] != c.name))
      throw std::invalid_argument("run '" + run_id_ + "': client '" + printable(c.name) + "' registered as #" +
                                  std::to_string(c.index) + ", which the run's client_names setting does not give it");
    index_by_name_[c.name] = c.index;
    registered_examples_[c.index] = {c.num_train_examples, c.num_test_examples};
    if (!c.model_json.empty())
      declared_[c.index] = std::make_shared<const ModelDeclaration>(ModelDeclaration::from_json(nlohmann::json::parse(c.model_json)));
    if (static_cast<int>(last_seen_.size()) <= c.index) last_seen_.resize(c.index + 1, Clock::now());
  }
}

int RemoteClientPool::num_clients() const {
  if (!options_.roster.empty()) return static_cast<int>(options_.roster.size());
  return num_registered();
}

int RemoteClientPool::num_registered() const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int>(index_by_name_.size());
}

void RemoteClientPool::set_run_model(ModelDeclaration run_model, ModelAcceptance accepts) {
  std::lock_guard<std::mutex> lock(mu_);
  run_model_ = std::make_shared<const ModelDeclaration>(std::move(run_model));
  accepts_ = std::move(accepts);
}

void RemoteClientPool::set_result_check(ResultCheck check) {
  std::lock_guard<std::mutex> lock(mu_);
  check_ = std::move(check);
}

std::shared_ptr<const ModelDeclaration> RemoteClientPool::model_locked(int index) const {
  auto it = declared_.find(index);
  if (it != declared_.end()) return it->second;
  if (!run_model_) throw std::logic_error("remote pool: the run's model was not set (set_run_model)");
  return run_model_;
}

ModelDeclaration RemoteClientPool::client_model(int index) const {
  std::lock_guard<std::mutex> lock(mu_);
  return *model_locked(index);
}

int RemoteClientPool::register_client(const std::string& name, int64_t n_train, int64_t n_test,
                                      const std::optional<ModelDeclaration>& declared) {
  int rostered = -1;
  if (!options_.roster.empty()) {
    const auto& roster = options_.roster;
    const auto at = std::find(roster.begin(), roster.end(), name);
    if (at == roster.end())
      throw NotInRoster("client '" + printable(name) + "' is not one of run '" + run_id_ + "''s client_names (" +
                        join(roster) + ")");
    rostered = static_cast<int>(at - roster.begin());
  }
  const int64_t most = options_.max_examples_per_client;
  if (most > 0 && (n_train > most || n_test > most))
    throw std::invalid_argument("client '" + name + "' registers " + std::to_string(n_train) + " training / " +
                                std::to_string(n_test) + " test examples; this run takes at most " +
                                std::to_string(most) + " per client (max_examples_per_client)");
  std::shared_ptr<const ModelDeclaration> model;
  if (declared) {
    std::lock_guard<std::mutex> lock(mu_);
    if (!run_model_) throw std::logic_error("remote pool: the run's model was not set (set_run_model)");
    const std::string why = accepts_ ? accepts_(*run_model_, *declared) : [&] {
      const std::string d = declared->layout_difference(*run_model_);
      return d.empty() ? d : "the run trains " + run_model_->describe() + " only (" + d + ")";
    }();
    if (!why.empty()) throw ModelRefused(why);
    // The run's own model, declared: nothing to keep apart.
    if (declared->architecture != run_model_->architecture || !declared->layout_difference(*run_model_).empty())
      model = std::make_shared<const ModelDeclaration>(*declared);
  }
  const int index =
      store_.register_client(run_id_, name, n_train, n_test, model ? model->to_json().dump() : "", rostered);
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (model)
      declared_[index] = model;
    else
      declared_.erase(index);
    index_by_name_[name] = index;
    registered_examples_[index] = {n_train, n_test};
    if (static_cast<int>(last_seen_.size()) <= index) last_seen_.resize(index + 1, Clock::now());
    last_seen_[index] = Clock::now();
  }
  cv_.notify_all();
  return index;
}

std::optional<int> RemoteClientPool::client_index(const std::string& name) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = index_by_name_.find(name);
  if (it == index_by_name_.end()) return std::nullopt;
  return it->second;
}

void RemoteClientPool::heartbeat(int index) {
  std::lock_guard<std::mutex> lock(mu_);
  if (index >= 0 && index < static_cast<int>(last_seen_.size())) last_seen_[index] = Clock::now();
}

bool RemoteClientPool::alive_locked(int index, Clock::time_point now) const {
  return index >= 0 && index < static_cast<int>(last_seen_.size()) && registered_examples_.count(index) &&
         !denied_.count(index) &&
         now - last_seen_[index] <= options_.liveness_timeout;
}

void RemoteClientPool::deny(int index) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    denied_.insert(index);
  }
  cv_.notify_all();  // a round waiting for it drops it now
}

RemoteClientPool::Poll RemoteClientPool::poll(int index, std::chrono::milliseconds wait, TaskOffer* offer) {
  std::unique_lock<std::mutex> lock(mu_);
  const auto until = Clock::now() + wait;
  for (;;) {
    if (index >= 0 && index < static_cast<int>(last_seen_.size())) last_seen_[index] = Clock::now();
    auto it = pending_.find(index);
    // A task is offered until its result is in: a client that restarted mid-task gets it again.
    if (it != pending_.end() && !it->second.result) {
      const Pending& p = it->second;
      offer->task_id = p.task_id;
      offer->round = p.task.round;
      offer->phase = p.task.phase;
      offer->config = p.task.config;
      offer->seed = p.task.seed;
      offer->payload_bytes = p.payload->data().size();
      offer->encoding = p.task.encoding;
      return Poll::kTask;
    }
    if (finished_) return Poll::kDone;
    if (task_cv_.wait_until(lock, until) == std::cv_status::timeout) return Poll::kWait;
  }
}

std::shared_ptr<const EncodedPayload> RemoteClientPool::payload(int index, const std::string& task_id) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = pending_.find(index);
  if (it == pending_.end() || it->second.task_id != task_id) return nullptr;
  return it->second.payload;
}

ClientResult RemoteClientPool::decode_result(const ClientTask& task, const ModelState& base,
                                             const ModelDeclaration& model, int64_t num_examples,
                                             const std::map<std::string, double>& metrics,
                                             const v1::PayloadManifest& manifest, std::string bytes,
                                             std::optional<uint64_t> checksum) const {
  // Taking the bytes over lets a large fp32 update be decoded without a copy.
  ModelState packed = decode_state(manifest, std::move(bytes), nullptr, &base, /*require_all=*/false, checksum);
  ClientResult r;
  r.round = task.round;
  r.client_id = task.client_id;
  r.num_examples = num_examples;
  r.metrics = metrics;
  unpack_payload(packed, r.model, r.tensors);
  // The model part must fit the client's model (its declaration, or the run's): names, shapes
  // and dtypes.
  for (const auto& e : r.model.entries()) {
    const TensorLayout* want = model.find(e.name);
    if (!want)
      throw PayloadError("name", "update tensor 'model/" + e.name + "' is not a tensor of the client's model " +
                                     model.describe());
    if (want->shape != e.tensor.sizes().vec())
      throw PayloadError("tensor 'model/" + e.name + "' shape",
                         "update tensor 'model/" + e.name + "' has shape " + c10::str(e.tensor.sizes()) +
                             ", the model has " + c10::str(at::IntArrayRef(want->shape)));
    if (want->dtype != e.tensor.scalar_type())
      throw PayloadError("dtype", "update tensor 'model/" + e.name + "' has dtype " +
                                      std::string(c10::toString(e.tensor.scalar_type())) + ", the model has " +
                                      std::string(c10::toString(want->dtype)));
  }
  return r;
}

void RemoteClientPool::refuse_locked(Pending& p, const std::string& why) {
  // `why` may quote the client: round records are JSON text.
  if (!p.result) p.result = failure_of(p.task, "update rejected: " + printable(why, 1024), /*rejected=*/true);
}

RemoteClientPool::UploadSession RemoteClientPool::begin_upload(int index, const UploadHeader& header) {
  UploadSession session;
  session.index = index;
  session.header = header;
  session.header.error = printable(header.error, 1024);  // it reaches logs and round records
  {
    std::unique_lock<std::mutex> lock(mu_);
    auto it = pending_.find(index);
    if (it == pending_.end() || it->second.task_id != header.task_id)
      throw std::invalid_argument("task '" + printable(header.task_id) + "' is not this client's current task" +
                                  (it == pending_.end() ? std::string(" (it has none)")
                                                        : " (current: '" + it->second.task_id + "')"));
    Pending& p = it->second;
    if (p.result) {
      // Refused already: that is this client's answer for the task, a retry changes nothing.
      if (!p.result->ok && p.result->metrics.count("rejected"))
        throw std::invalid_argument("task '" + header.task_id + "' was refused already: " + p.result->error);
      session.duplicate = true;  // a retried upload: the first one stands
      return session;
    }
    if (!header.ok) {
      p.result = failure_of(p.task, "client reported: " + session.header.error);
      lock.unlock();
      cv_.notify_all();
      return session;
    }
    // The example count is the update's weight: more than the client registered with is refused,
    // and so is the task (the round does not wait for a client that sent what it cannot take).
    const bool evaluation = p.task.phase == kEvaluatePhase;
    auto reg = registered_examples_.find(index);
    const int64_t most = reg == registered_examples_.end() ? 0 : evaluation ? reg->second.second : reg->second.first;
    std::string why;
    if (header.num_examples <= 0)
      why = "num_examples must be > 0, got " + std::to_string(header.num_examples);
    else if (reg != registered_examples_.end() && header.num_examples > most)
      why = "num_examples " + std::to_string(header.num_examples) + " is more than the " + std::to_string(most) +
            (evaluation ? " test" : " training") + " examples this client registered with";
    if (why.empty() && header.metrics.size() > kMaxMetrics)
      why = std::to_string(header.metrics.size()) + " metrics (at most " + std::to_string(kMaxMetrics) + ")";
    for (const auto& kv : header.metrics) {
      if (!why.empty()) break;
      // Metric names reach round records, logs and dashboards: short plain names only.
      if (kv.first.empty() || kv.first.size() > 64 || printable(kv.first) != kv.first)
        why = "metric name '" + printable(kv.first, 64) + "' is not 1 to 64 printable ASCII characters";
      else if (!std::isfinite(kv.second))
        why = "metric '" + kv.first + "' is not finite";
    }
    if (!why.empty()) {
      refuse_locked(p, why);
      lock.unlock();
      cv_.notify_all();
      throw std::invalid_argument(why);
    }
    session.task = p.task;  // tensors shared, not copied
    session.packed = p.packed;
    session.model = p.model;
    session.check = check_;
    session.defer = defer_ && last_deferred_ && p.task.phase == kFitPhase;
    uint64_t model_bytes = 0;
    for (const auto& t : p.model->layout) {
      uint64_t n = c10::elementSize(t.dtype);
      for (int64_t d : t.shape) n *= static_cast<uint64_t>(d);
      model_bytes += n;
    }
    session.max_bytes = std::min<uint64_t>(options_.max_upload_bytes,
                                           2 * model_bytes + p.payload->data().size() + (uint64_t{16} << 20));
  }
  session.store = &store_;
  session.run_id = run_id_;
  return session;
}

bool RemoteClientPool::UploadSession::open_writer() {
  if (!writer && !duplicate) {
    writer = store->begin_update(run_id, task.round, index, task.phase);
    duplicate = !writer;  // stored already (before a restart)
  }
  return !duplicate;
}

void RemoteClientPool::UploadSession::append(std::string data) {
  if (!header.ok || !store || !open_writer()) return;
  writer->append(std::move(data));
}

void RemoteClientPool::refuse(int index, const std::string& task_id, const std::string& why) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = pending_.find(index);
    if (it == pending_.end() || it->second.task_id != task_id) return;
    refuse_locked(it->second, why);
  }
  cv_.notify_all();
}

bool RemoteClientPool::finish_upload(UploadSession& session, const v1::PayloadManifest& manifest, std::string bytes) {
  if (session.duplicate) return true;
  if (!session.header.ok) return false;  // the failure was recorded by begin_upload
  if (!session.open_writer()) return true;  // no data chunk came (an empty payload): the store decides now
  const auto& header = session.header;
  std::map<std::string, double> metrics = header.metrics;
  ClientResult r;
  std::string refused;  // a well-formed payload the run cannot aggregate: this client's failure for the task
  // A deferring round's receiver kept no bytes. A model alone in fp32 with the task model's
  // layout is checked from its file piece by piece; anything else is read back whole, one upload
  // at a time (the update's memory is held only while it is validated).
  std::unique_lock<std::mutex> validating(validate_mu_, std::defer_lock);
  const bool from_file = session.defer && bytes.empty() && session.writer->bytes_appended() > 0;
  if (from_file && fp32_model_alone(session, manifest)) {
    refused = check_in_pieces(session, manifest, r);
  } else {
    if (from_file) {
      validating.lock();
      bytes = BufferPool::payloads().acquire(session.writer->bytes_appended());  // one buffer goes round
      session.writer->read_back(bytes);
    }
    // Decoding validates everything; polls and heartbeats go on meanwhile (no lock held).
    if (session.writer->bytes_appended() != bytes.size())
      throw std::logic_error("upload: " + std::to_string(session.writer->bytes_appended()) +
                             " bytes streamed to disk, " + std::to_string(bytes.size()) + " received");
    try {
      r = decode_result(session.task, session.packed, *session.model, header.num_examples, metrics, manifest,
                        std::move(bytes), session.received_checksum);
      if (session.check) refused = session.check(session.task, r);
    } catch (const PayloadError& e) {
      if (e.field() == "checksum") throw;  // damaged in transit: the client may send it again
      refused = e.what();
    }
  }
  if (session.defer) {  // read back from the store when the round aggregates
    r.model = ModelState();
    r.tensors.clear();
  }
  if (validating.owns_lock()) validating.unlock();
  if (!refused.empty()) {
    refuse(session.index, header.task_id, refused);
    throw PayloadError("update", "update rejected: " + refused);  // the writer's temp file goes with the session
  }
  StoredUpdate u;
  u.round = session.task.round;
  u.phase = session.task.phase;
  u.client_index = session.index;
  u.num_examples = header.num_examples;
  u.metrics = std::move(metrics);
  u.manifest = manifest.SerializeAsString();
  // Stored only while its round still waits for it: once the round went on without it (its
  // deadline passed while the upload streamed), storing and acknowledging it would tell the client
  // it counts when it never will. From here until the write is done the round waits for it.
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = pending_.find(session.index);
    if (it == pending_.end() || it->second.task_id != header.task_id || it->second.result)
      throw std::invalid_argument("task '" + header.task_id +
                                  "' ended before its upload completed (the round went on without it at its "
                                  "deadline); the update is not stored");
    ++it->second.committing;
  }
  const auto done = [&](std::optional<ClientResult> result) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = pending_.find(session.index);
      if (it != pending_.end() && it->second.task_id == header.task_id) {
        --it->second.committing;
        if (result && !it->second.result) it->second.result = std::move(result);
      }
    }
    cv_.notify_all();
  };
  bool fresh;
  try {
    // Durable before acknowledged: a restarted coordinator will not ask for it again.
    fresh = session.writer->commit(u);
  } catch (...) {
    done(std::nullopt);
    throw;
  }
  done(std::move(r));
  return !fresh;
}

namespace {

// Whether the payload is the task's model alone, every tensor fp32 in the task model's order and
// shape, the floats back to back (total_bytes: all of them): it can then be read in pieces.
bool fp32_model_of_task(const ClientTask& task, const v1::PayloadManifest& m) {
  const ModelState& layout = task.model;
  if (!task.tensors.empty() || layout.empty() || m.tensors_size() != static_cast<int>(layout.size())) return false;
  uint64_t total = 0;
  for (int k = 0; k < m.tensors_size(); ++k) {
    const auto& h = m.tensors(k);
    const auto& e = layout.entries()[static_cast<size_t>(k)];
    if (h.name() != "model/" + e.name || h.dtype() != v1::DTYPE_F32 || h.encoding() != v1::ENCODING_FP32 ||
        e.tensor.scalar_type() != at::kFloat ||
        std::vector<int64_t>(h.shape().begin(), h.shape().end()) != e.tensor.sizes().vec() ||
        h.encoded_bytes() != static_cast<uint64_t>(e.tensor.numel()) * 4)
      return false;
    total += h.encoded_bytes();
  }
  return total == m.total_bytes();
}

}  // namespace

bool RemoteClientPool::fp32_model_alone(const UploadSession& session, const v1::PayloadManifest& m) const {
  if (!fp32_model_of_task(session.task, m) || m.total_bytes() != session.writer->bytes_appended()) return false;
  for (const auto& e : session.task.model.entries()) {  // and the client's own declaration agrees
    const TensorLayout* declared = session.model->find(e.name);
    if (!declared || declared->dtype != at::kFloat || declared->shape != e.tensor.sizes().vec()) return false;
  }
  return true;
}

std::string RemoteClientPool::check_in_pieces(UploadSession& session, const v1::PayloadManifest& m,
                                              ClientResult& r) const {
  // The bytes are what the client sent (the receiver's checksum) and the layout is the task
  // model's (fp32_model_alone): what is left of decode_result's checks is finiteness, and the run's
  // check sees a result with the task model's layout (its values, finite) and the upload's counts.
  if (!session.received_checksum || *session.received_checksum != m.checksum())
    throw PayloadError("checksum", "payload: checksum mismatch: the manifest says " + std::to_string(m.checksum()) +
                                       ", the bytes received give " +
                                       (session.received_checksum ? std::to_string(*session.received_checksum) : "none"));
  r.round = session.task.round;
  r.client_id = session.task.client_id;
  r.num_examples = session.header.num_examples;
  r.metrics = session.header.metrics;
  constexpr size_t kPiece = size_t{8} << 20;  // whole floats
  std::vector<uint32_t> piece(kPiece / 4);
  uint64_t offset = 0;
  for (const auto& e : session.task.model.entries()) {
    const uint64_t end = offset + static_cast<uint64_t>(e.tensor.numel()) * 4;
    for (uint64_t at_byte = offset; at_byte < end; at_byte += kPiece) {
      const size_t n = static_cast<size_t>(std::min<uint64_t>(kPiece, end - at_byte));
      session.writer->read_at(at_byte, n, reinterpret_cast<char*>(piece.data()));
      uint32_t bad = 0;  // an exponent of all ones: Inf or NaN (ModelState::non_finite_entry's test)
      for (size_t i = 0; i < n / 4; ++i) bad |= static_cast<uint32_t>((piece[i] & 0x7f800000u) == 0x7f800000u);
      if (bad) return "model tensor '" + e.name + "' is not finite";
    }
    offset = end;
  }
  if (!session.check) return "";
  r.model = session.task.model;  // the layout twin, for the check only: finalize clears it
  return session.check(session.task, r);
}

bool RemoteClientPool::upload(int index, const UploadHeader& header, const v1::PayloadManifest& manifest,
                              std::string bytes) {
  auto session = begin_upload(index, header);
  session.append(bytes);
  return finish_upload(session, manifest, std::move(bytes));
}

std::vector<ClientResult> RemoteClientPool::execute(const std::vector<ClientTask>& tasks) {
  std::vector<ClientResult> results(tasks.size());
  std::map<const void*, std::pair<ModelState, std::shared_ptr<const EncodedPayload>>> encoded;  // shared models once
  {
    std::unique_lock<std::mutex> lock(mu_);
    pending_.clear();
    deferred_reads_.clear();
    last_deferred_ = defer_ && !tasks.empty() && tasks[0].phase == kFitPhase;
    const auto now = Clock::now();
    int from_store = 0;
    // Updates accepted before a restart, read once for the round (each read loads every payload),
    // and only when one of these tasks has one: a cyclic round asks one client at a time while
    // the earlier clients' updates of the round are in the store.
    std::map<int, StoredUpdate> stored;
    if (!tasks.empty()) {
      // One exchange at a time: the tasks share a round and a phase (the store keys by both).
      for (const auto& t : tasks)
        if (t.round != tasks[0].round || t.phase != tasks[0].phase)
          throw std::invalid_argument("remote pool: one execute() per round and phase, got " + tasks[0].phase + " " +
                                      std::to_string(tasks[0].round) + " and " + t.phase + " " + std::to_string(t.round));
      const auto have = store_.update_clients(run_id_, tasks[0].round, tasks[0].phase);
      const bool recovering = std::any_of(tasks.begin(), tasks.end(), [&](const ClientTask& t) {
        return std::binary_search(have.begin(), have.end(), t.client_id);
      });
      if (recovering && last_deferred_) {
        // Their payloads stay on disk until the aggregation reads them back, one at a time.
        for (const auto& t : tasks)
          if (std::binary_search(have.begin(), have.end(), t.client_id))
            if (auto u = store_.update(run_id_, t.round, t.client_id, t.phase))
              stored.emplace(t.client_id, std::move(*u));
      } else if (recovering) {
        for (auto& u : store_.updates(run_id_, tasks[0].round, tasks[0].phase)) stored.emplace(u.client_index, std::move(u));
      }
    }
    for (const auto& t : tasks) {
      Pending p;
      p.task = t;
      p.task_id = make_task_id(run_id_, t.round, t.client_id, t.phase);
      p.model = model_locked(t.client_id);
      const void* key = t.tensors.empty() && t.model.flat().defined() ? t.model.flat().data_ptr() : nullptr;
      auto cached = key ? encoded.find(key) : encoded.end();
      if (cached != encoded.end()) {
        p.packed = cached->second.first;
        p.payload = cached->second.second;
      } else {
        p.packed = pack_payload(t.model, t.tensors);
        // Downloads are lossless: the encoding choice applies to uploads. A model alone travels
        // as its own packed buffer (no copy: strategies replace the global model, never write into it).
        EncodeOptions download;
        download.share_buffer = true;
        p.payload = std::make_shared<EncodedPayload>(encode_state(p.packed, download));
        if (key) encoded[key] = {p.packed, p.payload};
      }
      // Accepted before a restart: take it from the store instead of asking again.
      auto su = stored.find(t.client_id);
      if (su != stored.end()) {
        StoredUpdate& u = su->second;  // read once for this round; its payload is moved into the decode
        // Stored updates were checked before they were acknowledged; one that no longer decodes
        // (a store from an older version, a damaged file) fails its client, not the coordinator.
        try {
          if (last_deferred_) {  // checked when it was accepted; read back (and decoded) when aggregated
            ClientResult r;
            r.round = t.round;
            r.client_id = t.client_id;
            r.num_examples = u.num_examples;
            r.metrics = u.metrics;
            p.result = std::move(r);
          } else {
            v1::PayloadManifest m;
            if (!m.ParseFromString(u.manifest)) throw std::runtime_error("its manifest is corrupt");
            p.result = decode_result(p.task, p.packed, *p.model, u.num_examples, u.metrics, m, std::move(u.payload));
          }
        } catch (const std::exception& e) {
          p.result = failure_of(t, std::string("stored update unreadable: ") + e.what(), /*rejected=*/true);
        }
        ++from_store;
      }
      if (!p.result && !alive_locked(t.client_id, now)) p.result = failure_of(t, "client not alive (no heartbeat)");
      pending_[t.client_id] = std::move(p);
    }
    if (from_store > 0)
      spdlog::info("round {}: {} update(s) recovered from the store ({})", tasks[0].round, from_store, tasks[0].phase);
    round_ = tasks.empty() ? round_ : tasks[0].round;
  }
  task_cv_.notify_all();

  std::unique_lock<std::mutex> lock(mu_);
  const auto deadline = Clock::now() + options_.round_deadline;
  for (;;) {
    if (aborted_) {
      pending_.clear();
      throw PoolAborted();
    }
    int missing = 0;
    const auto now = Clock::now();
    bool committing = false;
    for (auto& kv : pending_) {
      if (kv.second.result) continue;
      if (kv.second.committing > 0) {  // its update is being written: a moment, and it is in
        committing = true;
        ++missing;
        continue;
      }
      if (!alive_locked(kv.first, now)) {  // went silent mid-round: a straggler, dropped
        kv.second.result = failure_of(kv.second.task, "client went silent (no heartbeat for " +
                                                          std::to_string(options_.liveness_timeout.count() / 1000) +
                                                          " s)");
        continue;
      }
      ++missing;
    }
    if (missing == 0) break;
    if (now >= deadline) {
      for (auto& kv : pending_)
        if (!kv.second.result && kv.second.committing == 0)
          kv.second.result = failure_of(kv.second.task, "missed the round deadline");
      if (!committing) break;
    }
    // Past the deadline only uploads being written are waited for; their writes notify.
    cv_.wait_until(lock, now >= deadline ? now + std::chrono::seconds(1) : std::min(deadline, now + std::chrono::seconds(1)));
  }
  for (size_t i = 0; i < tasks.size(); ++i) {
    auto& p = pending_.at(tasks[i].client_id);
    results[i] = std::move(*p.result);
    if (!results[i].ok) spdlog::warn("round {}: client {} dropped: {}", tasks[i].round, tasks[i].client_id, results[i].error);
    if (last_deferred_ && results[i].ok) {
      results[i].model = ModelState();
      results[i].tensors.clear();
      deferred_reads_[tasks[i].client_id] = DeferredRead{p.task, p.packed, p.model};
    }
  }
  pending_.clear();
  // Before the fold allocates the mean: the buffer that validated uploads goes (the fold reads the
  // updates piece by piece), and so does what the uploads freed inside the heap (gRPC's receive
  // slices, ~200 MB for four concurrent 147 MB streams, stayed in glibc's arenas until trimmed).
  if (last_deferred_) {
    BufferPool::payloads().release_idle();
    malloc_trim(0);
  }
  return results;
}

bool RemoteClientPool::defer_result_models(bool on) {
  std::lock_guard<std::mutex> lock(mu_);
  defer_ = on && static_cast<bool>(check_);  // deferred results skip the engine's screening: the pool must check them
  if (!defer_) deferred_reads_.clear();      // the round is over: the task models they held go
  return defer_;
}

bool RemoteClientPool::result_models_deferred() const {
  std::lock_guard<std::mutex> lock(mu_);
  return last_deferred_;
}

RemoteClientPool::DeferredRead RemoteClientPool::deferred_read(int client_id) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = deferred_reads_.find(client_id);
  if (it == deferred_reads_.end())
    throw std::logic_error("remote pool: client " + std::to_string(client_id) + " has no deferred result in the last round");
  return it->second;
}

StoredUpdate RemoteClientPool::stored_update_of(const DeferredRead& d, int client_id, v1::PayloadManifest* manifest) const {
  auto meta = store_.update(run_id_, d.task.round, client_id, d.task.phase);
  if (!meta)
    throw std::runtime_error("the update of client " + std::to_string(client_id) + " for round " +
                             std::to_string(d.task.round) + " is no longer in the store");
  if (!manifest->ParseFromString(meta->manifest))
    throw std::runtime_error("stored update unreadable: its manifest is corrupt");
  return std::move(*meta);
}

bool RemoteClientPool::add_result_model(const ClientResult& r, WeightedMeanAccumulator& mean, double weight) {
  const DeferredRead d = deferred_read(r.client_id);
  const ModelState& layout = d.task.model;
  // Packed fp32 entries only: the payload's floats are then the mean's flat buffer, in order.
  if (!layout.flat().defined() || layout.flat().scalar_type() != at::kFloat) return false;
  for (const auto& e : layout.entries())
    if (!e.tensor.is_floating_point()) return false;
  v1::PayloadManifest m;
  stored_update_of(d, r.client_id, &m);
  if (!fp32_model_of_task(d.task, m)) return false;  // another encoding (int8, topk...): decoded whole
  const uint64_t total = static_cast<uint64_t>(layout.flat().numel()) * 4;
  auto file = store_.open_update_payload(run_id_, d.task.round, r.client_id, d.task.phase);
  if (!file || file->size() != total)
    throw std::runtime_error("stored update of client " + std::to_string(r.client_id) + " for round " +
                             std::to_string(d.task.round) + " is not the " + std::to_string(total) +
                             " bytes its manifest describes");
  constexpr uint64_t kPiece = uint64_t{8} << 20;  // a multiple of 4: pieces hold whole floats
  std::vector<float> piece(static_cast<size_t>(std::min(kPiece, total) / 4));
  PayloadChecksum checksum;
  mean.begin_model(layout);
  for (uint64_t off = 0; off < total; off += kPiece) {
    const size_t n = static_cast<size_t>(std::min(kPiece, total - off));
    char* bytes = reinterpret_cast<char*>(piece.data());
    file->read(off, n, bytes);
    checksum.update(std::string_view(bytes, n));
    mean.add_flat_range(static_cast<int64_t>(off / 4),
                        at::from_blob(piece.data(), {static_cast<int64_t>(n / 4)}, at::TensorOptions().dtype(at::kFloat)),
                        weight);
  }
  if (checksum.value() != m.checksum())
    throw std::runtime_error("stored update of client " + std::to_string(r.client_id) + " for round " +
                             std::to_string(d.task.round) + " fails its checksum (its file changed on disk)");
  mean.end_model();
  spdlog::debug("round {}: folded the update of client {} from its file ({} bytes)", d.task.round, r.client_id, total);
  return true;
}

void RemoteClientPool::load_result_model(ClientResult& r) {
  const DeferredRead d = deferred_read(r.client_id);
  v1::PayloadManifest m;
  const StoredUpdate meta = stored_update_of(d, r.client_id, &m);
  // Read into the payload pool's buffer that the previous update went back to: the fold reuses one.
  std::string bytes = BufferPool::payloads().acquire(m.total_bytes());
  store_.update(run_id_, d.task.round, r.client_id, d.task.phase, &bytes);
  ClientResult full = decode_result(d.task, d.packed, *d.model, meta.num_examples, meta.metrics, m, std::move(bytes));
  r.model = std::move(full.model);
  r.tensors = std::move(full.tensors);
}

void RemoteClientPool::finish() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    finished_ = true;
  }
  task_cv_.notify_all();
}

void RemoteClientPool::abort() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    aborted_ = true;
  }
  cv_.notify_all();
  task_cv_.notify_all();
}

bool RemoteClientPool::finished() const {
  std::lock_guard<std::mutex> lock(mu_);
  return finished_;
}

int RemoteClientPool::wait_for_clients(int n, std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait_for(lock, timeout, [&] { return static_cast<int>(index_by_name_.size()) >= n; });
  return static_cast<int>(index_by_name_.size());
}

std::vector<double> RemoteClientPool::seconds_since_seen() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<double> out;
  const auto now = Clock::now();
  for (const auto& t : last_seen_) out.push_back(std::chrono::duration<double>(now - t).count());
  return out;
}

}  // namespace fl
