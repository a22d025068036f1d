#include "coordinator/federation_service.h"

#include "common/util/text.h"

#include <spdlog/spdlog.h>

#include <nlohmann/json.hpp>

#include <algorithm>

#include "common/net/tls.h"
#include "common/util/logging.h"
#include "coordinator/coordinator_metrics.h"

namespace fl {
namespace {

constexpr int kMaxPollMs = 10000;

grpc::Status invalid(const std::string& msg) { return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, msg); }

}  // namespace

grpc::Status check_protocol(v1::ProtocolVersion got) {
  if (got == v1::PROTOCOL_VERSION_1) return grpc::Status::OK;
  return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                      "incompatible protocol version " + std::to_string(static_cast<int>(got)) +
                          ": this coordinator speaks version " + std::to_string(v1::PROTOCOL_VERSION_1));
}

grpc::Status Authenticator::authenticate(const grpc::ServerContext& ctx, CallerIdentity* who) const {
  if (auto peer = peer_identity(ctx)) {
    who->name = peer->common_name;
    who->role = peer->role;
    if (!peer->error.empty()) return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, peer->error);
    if (who->name.empty())
      return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "the certificate has no common name");
    if (revoked_ && revoked_(peer->serial))
      return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                          "certificate '" + who->name + "' (serial " + peer->serial + ") is revoked");
  } else {
    if (!insecure_) return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "no verified client certificate");
    const auto& md = ctx.client_metadata();
    auto it = md.find("fl-client-name");
    who->name = it == md.end() ? "" : std::string(it->second.data(), it->second.size());
    who->role.clear();
  }
  if (!who->name.empty()) {
    std::optional<std::string> denied;
    try {
      denied = store_.denied(who->name);
    } catch (const std::exception& e) {
      return grpc::Status(grpc::StatusCode::INTERNAL, std::string("cannot check revocations: ") + e.what());
    }
    if (denied) return grpc::Status(grpc::StatusCode::PERMISSION_DENIED, "'" + who->name + "' was revoked by an admin");
  }
  return grpc::Status::OK;
}

grpc::Status FederationService::identify(grpc::ServerContext* ctx, CallerIdentity* who,
                                         std::shared_ptr<ActiveRun>* run) const {
  if (auto s = auth_.authenticate(*ctx, who); !s.ok()) return s;
  // Fail closed: over mutual TLS only a certificate that says "client" trains (no role: refused).
  if (!auth_.insecure() && who->role != "client")
    return grpc::Status(grpc::StatusCode::PERMISSION_DENIED,
                        "certificate '" + printable(who->name) + "' has role '" +
                            (who->role.empty() ? "none" : printable(who->role)) + "'; only 'client' may train");
  if (who->name.empty())
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "insecure mode: send the 'fl-client-name' metadata");
  set_thread_log_client(printable(who->name, 64));  // what this thread logs from now on is about this client
  *run = slot_.get();
  if (!*run) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "no run is active yet; waiting for an admin to start one");
  return grpc::Status::OK;
}

grpc::Status FederationService::registered_index(grpc::ServerContext* ctx, const std::string& run_id,
                                                 std::shared_ptr<ActiveRun>* run, int* index) const {
  CallerIdentity who;
  if (auto s = identify(ctx, &who, run); !s.ok()) return s;
  const auto& active = (*run)->desc.run_id;
  if (!run_id.empty() && run_id != active)
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                        "run '" + run_id + "' is not this coordinator's run ('" + active + "'): register again");
  auto i = (*run)->pool->client_index(who.name);
  if (!i) return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "client '" + who.name + "' is not registered");
  *index = *i;
  return grpc::Status::OK;
}

grpc::Status FederationService::Register(grpc::ServerContext* ctx, const v1::RegisterRequest* req,
                                         v1::RegisterReply* reply) {
  LogClientScope log_scope;  // lines of this request name its client
  if (auto s = check_protocol(req->protocol()); !s.ok()) return s;
  CallerIdentity who;
  std::shared_ptr<ActiveRun> run;
  if (auto s = identify(ctx, &who, &run); !s.ok()) return s;
  const RunDescription& desc = run->desc;
  if (req->num_train_examples() <= 0)
    return invalid("num_train_examples must be > 0, got " + std::to_string(req->num_train_examples()));
  if (req->num_test_examples() < 0)
    return invalid("num_test_examples must be >= 0, got " + std::to_string(req->num_test_examples()));
  std::optional<ModelDeclaration> declared;
  if (req->has_model()) {
    try {
      declared = declaration_from_wire(req->model());
    } catch (const std::exception& e) {
      return invalid(e.what());
    }
  }
  int index;
  try {
    index = run->pool->register_client(who.name, req->num_train_examples(), req->num_test_examples(), declared);
  } catch (const ModelRefused& e) {
    spdlog::warn("client '{}' refused: {}", who.name, e.what());
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, e.what());
  } catch (const NotInRoster& e) {
    spdlog::warn("client '{}' refused: {}", printable(who.name), e.what());
    return grpc::Status(grpc::StatusCode::PERMISSION_DENIED, e.what());
  } catch (const std::invalid_argument& e) {
    spdlog::warn("client '{}' refused: {}", who.name, e.what());
    return invalid(e.what());
  } catch (const std::exception& e) {
    return grpc::Status(grpc::StatusCode::INTERNAL, std::string("registration failed: ") + e.what());
  }
  spdlog::info("client '{}' registered as #{} ({} train / {} test examples, model {})", who.name, index,
               req->num_train_examples(), req->num_test_examples(), run->pool->client_model(index).describe());
  reply->set_protocol(v1::PROTOCOL_VERSION_1);
  reply->set_run_id(desc.run_id);
  reply->set_client_index(index);
  reply->set_run_spec_json(desc.run_spec_json);
  reply->set_heartbeat_interval_ms(desc.heartbeat_interval_ms);
  return grpc::Status::OK;
}

grpc::Status FederationService::Heartbeat(grpc::ServerContext* ctx, const v1::HeartbeatRequest* req,
                                          v1::HeartbeatReply* reply) {
  LogClientScope log_scope;  // lines of this request name its client
  int index;
  std::shared_ptr<ActiveRun> run;
  if (auto s = registered_index(ctx, req->run_id(), &run, &index); !s.ok()) return s;
  run->pool->heartbeat(index);
  reply->set_round(run->round);
  reply->set_run_finished(run->pool->finished());
  return grpc::Status::OK;
}

grpc::Status FederationService::PollTask(grpc::ServerContext* ctx, const v1::PollTaskRequest* req,
                                         v1::PollTaskReply* reply) {
  LogClientScope log_scope;  // lines of this request name its client
  int index;
  std::shared_ptr<ActiveRun> run;
  if (auto s = registered_index(ctx, req->run_id(), &run, &index); !s.ok()) return s;
  if (req->wait_ms() < 0) return invalid("wait_ms must be >= 0, got " + std::to_string(req->wait_ms()));
  TaskOffer offer;
  const auto wait = std::chrono::milliseconds(std::min(req->wait_ms(), kMaxPollMs));
  switch (run->pool->poll(index, wait, &offer)) {
    case RemoteClientPool::Poll::kWait:
      reply->set_kind(v1::PollTaskReply::KIND_WAIT);
      break;
    case RemoteClientPool::Poll::kDone:
      reply->set_kind(v1::PollTaskReply::KIND_DONE);
      break;
    case RemoteClientPool::Poll::kTask: {
      reply->set_kind(v1::PollTaskReply::KIND_TASK);
      auto* t = reply->mutable_task();
      t->set_task_id(offer.task_id);
      t->set_run_id(run->desc.run_id);
      t->set_round(offer.round);
      t->set_phase(offer.phase);
      for (const auto& kv : offer.config) (*t->mutable_config())[kv.first] = kv.second;
      t->set_seed(offer.seed);
      t->set_payload_bytes(offer.payload_bytes);
      t->set_encoding(offer.encoding);
      break;
    }
  }
  return grpc::Status::OK;
}

grpc::Status FederationService::DownloadModel(grpc::ServerContext* ctx, const v1::DownloadRequest* req,
                                              grpc::ServerWriter<v1::PayloadChunk>* writer) {
  LogClientScope log_scope;  // lines of this request name its client
  int index;
  std::shared_ptr<ActiveRun> run;
  if (auto s = registered_index(ctx, "", &run, &index); !s.ok()) return s;
  auto payload = run->pool->payload(index, req->task_id());
  if (!payload)
    return grpc::Status(grpc::StatusCode::NOT_FOUND, "task '" + printable(req->task_id()) +
                                                         "' is not the current task of client #" + std::to_string(index));
  auto lease = streams_.open(ctx, std::to_string(index), StreamGuard::Kind::kDownload);
  if (!lease)
    return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                        "client #" + std::to_string(index) + " has " +
                            std::to_string(streams_.options().downloads_per_client) + " downloads open already");
  bool ok = true;
  for_each_chunk(*payload, [&](const v1::PayloadChunk& c) {
    ok = writer->Write(c);
    if (ok && c.has_data()) coordinator_metrics::bytes_sent(c.data().size());
    lease.touch();
    return ok;
  });
  if (lease.timed_out()) return grpc::Status(grpc::StatusCode::CANCELLED, "download stalled: cancelled as idle");
  if (!ok) return grpc::Status(grpc::StatusCode::CANCELLED, "download interrupted by the client");
  return grpc::Status::OK;
}

grpc::Status FederationService::UploadUpdate(grpc::ServerContext* ctx, grpc::ServerReader<v1::UploadChunk>* reader,
                                             v1::UploadReply* reply) {
  LogClientScope log_scope;  // lines of this request name its client
  int index;
  std::shared_ptr<ActiveRun> run;
  if (auto s = registered_index(ctx, "", &run, &index); !s.ok()) return s;
  RemoteClientPool& pool = *run->pool;
  auto lease = streams_.open(ctx, std::to_string(index), StreamGuard::Kind::kUpload);
  if (!lease)
    return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                        "client #" + std::to_string(index) + " has an upload in progress already");
  v1::UploadChunk msg;
  if (!reader->Read(&msg) || !msg.has_header())
    return invalid("an upload must start with an UpdateHeader");
  lease.touch();
  UploadHeader header;
  header.task_id = msg.header().task_id();
  header.ok = msg.header().ok();
  header.error = msg.header().error();
  header.num_examples = msg.header().num_examples();
  header.metrics = Metrics(msg.header().metrics().begin(), msg.header().metrics().end());
  try {
    // The payload goes to disk chunk by chunk while it arrives; it counts only once validated.
    auto session = pool.begin_upload(index, header);
    // No more than this task's update can take: a manifest cannot make us reserve gigabytes.
    PayloadAssembler assembler(session.max_bytes);
    assembler.keep_bytes(!session.defer);  // a deferring round reads the update back from its file
    while (reader->Read(&msg)) {
      lease.touch();
      if (msg.has_header()) return invalid("a second UpdateHeader inside one upload");
      if (!header.ok) return invalid("an upload that reports a failure (ok=false) carries no payload");
      try {
        assembler.add(msg.chunk());
      } catch (const PayloadError& e) {
        pool.refuse(index, header.task_id, e.what());  // what it announces the run cannot take
        throw;
      }
      if (msg.chunk().has_data()) {
        coordinator_metrics::bytes_received(msg.chunk().data().size());
        session.append(std::move(*msg.mutable_chunk()->mutable_data()));
      }
    }
    if (lease.timed_out())
      return grpc::Status(grpc::StatusCode::CANCELLED,
                          "upload stalled: cancelled after " +
                              std::to_string(streams_.options().idle_timeout.count()) + " ms without a chunk");
    if (header.ok && !assembler.complete())
      return invalid("upload of task '" + printable(header.task_id) + "' ended before its payload was complete");
    const v1::PayloadManifest manifest = header.ok ? assembler.manifest() : v1::PayloadManifest();
    if (header.ok) session.received_checksum = assembler.checksum();
    std::string bytes = header.ok ? assembler.take_bytes() : std::string();
    const bool duplicate = pool.finish_upload(session, manifest, std::move(bytes));
    reply->set_accepted(true);
    reply->set_duplicate(duplicate);
    pool.heartbeat(index);
    spdlog::debug("accepted {} from client #{}{}", printable(header.task_id), index, duplicate ? " (duplicate)" : "");
    return grpc::Status::OK;
  } catch (const PayloadError& e) {
    coordinator_metrics::update_rejected(coordinator_metrics::rejection_reason(e.field()));
    spdlog::warn("rejected upload {} from client #{}: {}", printable(header.task_id), index, printable(e.what(), 1024));
    const auto code = e.field() == "checksum" ? grpc::StatusCode::DATA_LOSS : grpc::StatusCode::INVALID_ARGUMENT;
    return grpc::Status(code, std::string("payload rejected: ") + e.what());
  } catch (const std::invalid_argument& e) {
    coordinator_metrics::update_rejected("header");  // not the current task, refused already, bad counts
    spdlog::warn("rejected upload {} from client #{}: {}", printable(header.task_id), index, printable(e.what(), 1024));
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, e.what());
  } catch (const std::exception& e) {
    return grpc::Status(grpc::StatusCode::INTERNAL, std::string("upload failed: ") + e.what());
  }
}

}  // namespace fl
