#include "coordinator/federation_service.h"

#include <spdlog/spdlog.h>

#include <nlohmann/json.hpp>

#include <algorithm>

#include "common/net/tls.h"

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

FederationService::FederationService(RemoteClientPool& pool, RunDescription run, bool insecure)
    : pool_(pool), run_(std::move(run)), insecure_(insecure) {}

grpc::Status FederationService::identify(grpc::ServerContext* ctx, CallerIdentity* who) const {
  if (auto peer = peer_identity(*ctx)) {
    who->name = peer->common_name;
    who->role = peer->role;
    if (who->name.empty())
      return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "the client certificate has no common name");
    if (!who->role.empty() && who->role != "client")
      return grpc::Status(grpc::StatusCode::PERMISSION_DENIED,
                          "certificate '" + who->name + "' has role '" + who->role + "'; only 'client' may train");
    return grpc::Status::OK;
  }
  if (!insecure_) return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "no verified client certificate");
  const auto& md = ctx->client_metadata();
  auto it = md.find("fl-client-name");
  if (it == md.end() || it->second.empty())
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "insecure mode: send the 'fl-client-name' metadata");
  who->name.assign(it->second.data(), it->second.size());
  return grpc::Status::OK;
}

grpc::Status FederationService::registered_index(grpc::ServerContext* ctx, const std::string& run_id,
                                                 int* index) const {
  CallerIdentity who;
  if (auto s = identify(ctx, &who); !s.ok()) return s;
  if (!run_id.empty() && run_id != run_.run_id)
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                        "run '" + run_id + "' is not this coordinator's run ('" + run_.run_id + "'): register again");
  auto i = pool_.client_index(who.name);
  if (!i) return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "client '" + who.name + "' is not registered");
  *index = *i;
  return grpc::Status::OK;
}

grpc::Status FederationService::Register(grpc::ServerContext* ctx, const v1::RegisterRequest* req,
                                         v1::RegisterReply* reply) {
  if (auto s = check_protocol(req->protocol()); !s.ok()) return s;
  CallerIdentity who;
  if (auto s = identify(ctx, &who); !s.ok()) return s;
  if (req->num_train_examples() <= 0)
    return invalid("num_train_examples must be > 0, got " + std::to_string(req->num_train_examples()));
  if (req->num_test_examples() < 0)
    return invalid("num_test_examples must be >= 0, got " + std::to_string(req->num_test_examples()));
  if (!req->model().empty() && req->model() != run_.model)
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                        "client model '" + req->model() + "' differs from the run's model '" + run_.model + "'");
  int index;
  try {
    index = pool_.register_client(who.name, req->num_train_examples(), req->num_test_examples());
  } catch (const std::exception& e) {
    return grpc::Status(grpc::StatusCode::INTERNAL, std::string("registration failed: ") + e.what());
  }
  spdlog::info("client '{}' registered as #{} ({} train / {} test examples)", who.name, index,
               req->num_train_examples(), req->num_test_examples());
  reply->set_protocol(v1::PROTOCOL_VERSION_1);
  reply->set_run_id(run_.run_id);
  reply->set_client_index(index);
  reply->set_strategy(run_.strategy);
  for (const auto& kv : run_.strategy_params) (*reply->mutable_strategy_params())[kv.first] = kv.second;
  reply->set_model(run_.model);
  *reply->mutable_train() = run_.train;
  reply->set_update_encoding(run_.update_encoding);
  reply->set_topk_fraction(run_.topk_fraction);
  reply->set_heartbeat_interval_ms(run_.heartbeat_interval_ms);
  return grpc::Status::OK;
}

grpc::Status FederationService::Heartbeat(grpc::ServerContext* ctx, const v1::HeartbeatRequest* req,
                                          v1::HeartbeatReply* reply) {
  int index;
  if (auto s = registered_index(ctx, req->run_id(), &index); !s.ok()) return s;
  pool_.heartbeat(index);
  reply->set_round(current_round_);
  reply->set_run_finished(pool_.finished());
  return grpc::Status::OK;
}

grpc::Status FederationService::PollTask(grpc::ServerContext* ctx, const v1::PollTaskRequest* req,
                                         v1::PollTaskReply* reply) {
  int index;
  if (auto s = registered_index(ctx, req->run_id(), &index); !s.ok()) return s;
  if (req->wait_ms() < 0) return invalid("wait_ms must be >= 0, got " + std::to_string(req->wait_ms()));
  TaskOffer offer;
  const auto wait = std::chrono::milliseconds(std::min(req->wait_ms(), kMaxPollMs));
  switch (pool_.poll(index, wait, &offer)) {
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
      t->set_run_id(run_.run_id);
      t->set_round(offer.round);
      t->set_phase(offer.phase);
      for (const auto& kv : offer.config) (*t->mutable_config())[kv.first] = kv.second;
      t->set_seed(offer.seed);
      t->set_payload_bytes(offer.payload_bytes);
      break;
    }
  }
  return grpc::Status::OK;
}

grpc::Status FederationService::DownloadModel(grpc::ServerContext* ctx, const v1::DownloadRequest* req,
                                              grpc::ServerWriter<v1::PayloadChunk>* writer) {
  int index;
  if (auto s = registered_index(ctx, "", &index); !s.ok()) return s;
  auto payload = pool_.payload(index, req->task_id());
  if (!payload)
    return grpc::Status(grpc::StatusCode::NOT_FOUND,
                        "task '" + req->task_id() + "' is not the current task of client #" + std::to_string(index));
  bool ok = true;
  for_each_chunk(*payload, [&](const v1::PayloadChunk& c) { return ok = writer->Write(c); });
  if (!ok) return grpc::Status(grpc::StatusCode::CANCELLED, "download interrupted by the client");
  return grpc::Status::OK;
}

grpc::Status FederationService::UploadUpdate(grpc::ServerContext* ctx, grpc::ServerReader<v1::UploadChunk>* reader,
                                             v1::UploadReply* reply) {
  int index;
  if (auto s = registered_index(ctx, "", &index); !s.ok()) return s;
  v1::UploadChunk msg;
  if (!reader->Read(&msg) || !msg.has_header())
    return invalid("an upload must start with an UpdateHeader");
  const v1::UpdateHeader header = msg.header();
  PayloadAssembler assembler(pool_.options().max_upload_bytes);
  try {
    // The payload goes to disk chunk by chunk while it arrives; it counts only once validated.
    auto session = pool_.begin_upload(index, header);
    while (reader->Read(&msg)) {
      if (msg.has_header()) return invalid("a second UpdateHeader inside one upload");
      assembler.add(msg.chunk());
      if (msg.chunk().has_data()) session.append(std::move(*msg.mutable_chunk()->mutable_data()));
    }
    if (header.ok() && !assembler.complete())
      return invalid("upload of task '" + header.task_id() + "' ended before its payload was complete");
    const v1::PayloadManifest manifest = header.ok() ? assembler.manifest() : v1::PayloadManifest();
    std::string bytes = header.ok() ? assembler.take_bytes() : std::string();
    const bool duplicate = pool_.finish_upload(session, manifest, std::move(bytes));
    reply->set_accepted(true);
    reply->set_duplicate(duplicate);
    pool_.heartbeat(index);
    spdlog::debug("accepted {} from client #{}{}", header.task_id(), index, duplicate ? " (duplicate)" : "");
    return grpc::Status::OK;
  } catch (const PayloadError& e) {
    spdlog::warn("rejected upload {} from client #{}: {}", header.task_id(), index, e.what());
    const auto code = e.field() == "checksum" ? grpc::StatusCode::DATA_LOSS : grpc::StatusCode::INVALID_ARGUMENT;
    return grpc::Status(code, std::string("payload rejected: ") + e.what());
  } catch (const std::invalid_argument& e) {
    spdlog::warn("rejected upload {} from client #{}: {}", header.task_id(), index, e.what());
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, e.what());
  } catch (const std::exception& e) {
    return grpc::Status(grpc::StatusCode::INTERNAL, std::string("upload failed: ") + e.what());
  }
}

grpc::Status AdminService::Status(grpc::ServerContext* ctx, const v1::StatusRequest* req, v1::StatusReply* reply) {
  auto peer = peer_identity(*ctx);
  if (!insecure_ && (!peer || peer->role != "admin"))
    return grpc::Status(grpc::StatusCode::PERMISSION_DENIED, "Admin RPCs need an admin-role certificate");
  if (auto s = check_protocol(req->protocol()); !s.ok()) return s;
  reply->set_protocol(v1::PROTOCOL_VERSION_1);
  reply->set_run_id(run_.run_id);
  reply->set_total_rounds(run_.total_rounds);
  if (auto run = store_.load_run(run_.run_id)) {
    reply->set_state(run->state);
    reply->set_round(run->current_round);
  }
  const auto seen = pool_.seconds_since_seen();
  for (const auto& c : store_.clients(run_.run_id)) {
    auto* ci = reply->add_clients();
    ci->set_index(c.index);
    ci->set_name(c.name);
    ci->set_num_train_examples(c.num_train_examples);
    const double ago = c.index < static_cast<int>(seen.size()) ? seen[c.index] : -1;
    ci->set_last_seen_s_ago(ago);
    ci->set_alive(ago >= 0 && ago * 1000 <= pool_.options().liveness_timeout.count());
  }
  for (const auto& r : store_.rounds(run_.run_id)) {
    auto j = nlohmann::json::parse(r.json, nullptr, false);
    auto* ri = reply->add_rounds();
    ri->set_round(r.round);
    if (j.is_discarded()) continue;
    for (const auto& p : j.value("participants", std::vector<int>{})) ri->add_participants(p);
    ri->set_failures(j.value("failures", 0));
    ri->set_global_accuracy(j.value("global_accuracy", -1.0));
    ri->set_federated_accuracy(j.value("federated_accuracy", -1.0));
    ri->set_train_loss(j.value("train_loss", 0.0));
    ri->set_wall_s(j.value("wall_s", 0.0));
  }
  return grpc::Status::OK;
}

}  // namespace fl
