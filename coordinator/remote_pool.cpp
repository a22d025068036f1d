#include "coordinator/remote_pool.h"

#include <spdlog/spdlog.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>

namespace fl {

using Clock = std::chrono::steady_clock;

std::string make_task_id(const std::string& run_id, int round, int client, const std::string& phase) {
  return run_id + "/" + std::to_string(round) + "/" + std::to_string(client) + "/" + phase;
}

RemoteClientPool::RemoteClientPool(StateStore& store, std::string run_id, RemotePoolOptions options)
    : store_(store), run_id_(std::move(run_id)), options_(options) {
  // Known clients get a full liveness window after a (re)start to reconnect.
  for (const auto& c : store_.clients(run_id_)) {
    index_by_name_[c.name] = c.index;
    if (!c.model_json.empty())
      declared_[c.index] = std::make_shared<const ModelDeclaration>(ModelDeclaration::from_json(nlohmann::json::parse(c.model_json)));
    if (static_cast<int>(last_seen_.size()) <= c.index) last_seen_.resize(c.index + 1, Clock::now());
  }
}

int RemoteClientPool::num_clients() const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int>(index_by_name_.size());
}

void RemoteClientPool::set_run_model(ModelDeclaration run_model, ModelAcceptance accepts) {
  std::lock_guard<std::mutex> lock(mu_);
  run_model_ = std::make_shared<const ModelDeclaration>(std::move(run_model));
  accepts_ = std::move(accepts);
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
  const int index = store_.register_client(run_id_, name, n_train, n_test, model ? model->to_json().dump() : "");
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (model)
      declared_[index] = model;
    else
      declared_.erase(index);
    index_by_name_[name] = index;
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
  return index >= 0 && index < static_cast<int>(last_seen_.size()) && !denied_.count(index) &&
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
      offer->payload_bytes = p.payload->bytes.size();
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

RemoteClientPool::UploadSession RemoteClientPool::begin_upload(int index, const UploadHeader& header) {
  UploadSession session;
  session.index = index;
  session.header = header;
  {
    std::unique_lock<std::mutex> lock(mu_);
    auto it = pending_.find(index);
    if (it == pending_.end() || it->second.task_id != header.task_id)
      throw std::invalid_argument("task '" + header.task_id + "' is not this client's current task" +
                                  (it == pending_.end() ? std::string(" (it has none)")
                                                        : " (current: '" + it->second.task_id + "')"));
    Pending& p = it->second;
    if (p.result) {  // a retried upload: the first one stands
      session.duplicate = true;
      return session;
    }
    if (!header.ok) {
      ClientResult r;
      r.round = p.task.round;
      r.client_id = index;
      r.ok = false;
      r.error = "client reported: " + header.error;
      p.result = std::move(r);
      lock.unlock();
      cv_.notify_all();
      return session;
    }
    session.task = p.task;  // tensors shared, not copied
    session.packed = p.packed;
    session.model = p.model;
  }
  if (header.num_examples <= 0)
    throw std::invalid_argument("num_examples must be > 0, got " + std::to_string(header.num_examples));
  for (const auto& kv : header.metrics)
    if (!std::isfinite(kv.second)) throw std::invalid_argument("metric '" + kv.first + "' is not finite");
  session.writer = store_.begin_update(run_id_, session.task.round, index, session.task.phase);
  session.duplicate = !session.writer;  // stored already (before a restart)
  return session;
}

bool RemoteClientPool::finish_upload(UploadSession& session, const v1::PayloadManifest& manifest, std::string bytes) {
  if (session.duplicate) return true;
  if (!session.header.ok) return false;  // the failure was recorded by begin_upload
  const auto& header = session.header;
  std::map<std::string, double> metrics = header.metrics;
  // Decoding validates everything; polls and heartbeats go on meanwhile (no lock held).
  if (session.writer->bytes_appended() != bytes.size())
    throw std::logic_error("upload: " + std::to_string(session.writer->bytes_appended()) + " bytes streamed to disk, " +
                           std::to_string(bytes.size()) + " received");
  ClientResult r = decode_result(session.task, session.packed, *session.model, header.num_examples, metrics, manifest,
                                 std::move(bytes), session.received_checksum);
  StoredUpdate u;
  u.round = session.task.round;
  u.phase = session.task.phase;
  u.client_index = session.index;
  u.num_examples = header.num_examples;
  u.metrics = std::move(metrics);
  u.manifest = manifest.SerializeAsString();
  // Durable before acknowledged: a restarted coordinator will not ask for it again.
  const bool fresh = session.writer->commit(u);
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = pending_.find(session.index);
    if (it != pending_.end() && it->second.task_id == header.task_id && !it->second.result)
      it->second.result = std::move(r);
  }
  cv_.notify_all();
  return !fresh;
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
      if (recovering)
        for (auto& u : store_.updates(run_id_, tasks[0].round, tasks[0].phase)) stored.emplace(u.client_index, std::move(u));
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
        // Downloads are lossless: the encoding choice applies to uploads.
        p.payload = std::make_shared<EncodedPayload>(encode_state(p.packed, EncodeOptions{}));
        if (key) encoded[key] = {p.packed, p.payload};
      }
      // Accepted before a restart: take it from the store instead of asking again.
      auto su = stored.find(t.client_id);
      if (su != stored.end()) {
        StoredUpdate& u = su->second;  // read once for this round; its payload is moved into the decode
        v1::PayloadManifest m;
        if (!m.ParseFromString(u.manifest))
          throw std::runtime_error("stored update of client " + std::to_string(t.client_id) + " round " +
                                   std::to_string(t.round) + " has a corrupt manifest");
        p.result = decode_result(p.task, p.packed, *p.model, u.num_examples, u.metrics, m, std::move(u.payload));
        ++from_store;
      }
      if (!p.result && !alive_locked(t.client_id, now)) {
        ClientResult r;
        r.round = t.round;
        r.client_id = t.client_id;
        r.ok = false;
        r.error = "client not alive (no heartbeat)";
        p.result = std::move(r);
      }
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
    for (auto& kv : pending_) {
      if (kv.second.result) continue;
      if (!alive_locked(kv.first, now)) {  // went silent mid-round: a straggler, dropped
        ClientResult r;
        r.round = kv.second.task.round;
        r.client_id = kv.first;
        r.ok = false;
        r.error = "client went silent (no heartbeat for " +
                  std::to_string(options_.liveness_timeout.count() / 1000) + " s)";
        kv.second.result = std::move(r);
        continue;
      }
      ++missing;
    }
    if (missing == 0) break;
    if (now >= deadline) {
      for (auto& kv : pending_)
        if (!kv.second.result) {
          ClientResult r;
          r.round = kv.second.task.round;
          r.client_id = kv.first;
          r.ok = false;
          r.error = "missed the round deadline";
          kv.second.result = std::move(r);
        }
      break;
    }
    cv_.wait_until(lock, std::min(deadline, now + std::chrono::seconds(1)));
  }
  for (size_t i = 0; i < tasks.size(); ++i) {
    auto& p = pending_.at(tasks[i].client_id);
    results[i] = std::move(*p.result);
    if (!results[i].ok) spdlog::warn("round {}: client {} dropped: {}", tasks[i].round, tasks[i].client_id, results[i].error);
  }
  pending_.clear();
  return results;
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
