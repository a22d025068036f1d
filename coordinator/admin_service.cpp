#include "coordinator/admin_service.h"

#include "common/util/text.h"

#include "common/models/model_declaration.h"

#include <spdlog/spdlog.h>
#include <zlib.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>


namespace fl {
namespace {

using json = nlohmann::json;

constexpr size_t kExportChunk = size_t{1} << 20;

grpc::Status not_found(const std::string& m) { return grpc::Status(grpc::StatusCode::NOT_FOUND, m); }

json parse_or_empty(const std::string& text) {
  auto j = json::parse(text, nullptr, false);
  return j.is_discarded() || !j.is_object() ? json::object() : j;
}

std::string client_name(const std::vector<ClientRecord>& clients, int index) {
  for (const auto& c : clients)
    if (c.index == index) return c.name;
  return "#" + std::to_string(index);
}

}  // namespace

grpc::Status AdminService::audited(grpc::ServerContext* ctx, v1::ProtocolVersion protocol, const std::string& action,
                                   const std::string& target,
                                   const std::function<grpc::Status(const CallerIdentity&)>& body) {
  CallerIdentity who;
  grpc::Status status = auth_.authenticate(*ctx, &who);
  if (status.ok() && !auth_.insecure() && who.role != "admin")
    status = grpc::Status(grpc::StatusCode::PERMISSION_DENIED,
                          "Admin RPCs need an admin-role certificate; '" + who.name + "' has role '" +
                              (who.role.empty() ? "none" : who.role) + "'");
  const bool authorized = status.ok();
  if (authorized) status = check_protocol(protocol);
  if (status.ok()) {
    try {
      status = body(who);
    } catch (const std::invalid_argument& e) {
      const std::string m = e.what();
      status = grpc::Status(m.rfind("no ", 0) == 0 ? grpc::StatusCode::NOT_FOUND : grpc::StatusCode::FAILED_PRECONDITION, m);
    } catch (const std::exception& e) {
      status = grpc::Status(grpc::StatusCode::INTERNAL, e.what());
    }
  }
  std::string outcome = "ok";
  if (!status.ok()) outcome = std::string(authorized ? "error: " : "denied: ") + status.error_message();
  // The target (and errors quoting it) is the caller's choice, the caller possibly not an admin:
  // bounded and escaped before it is recorded or logged.
  json rec{{"time", unix_now()},          {"who", printable(who.name)},       {"role", printable(who.role)},
           {"action", action},            {"target", printable(target, 200)}, {"outcome", printable(outcome, 500)}};
  try {
    store_.append_audit(rec.dump());
  } catch (const std::exception& e) {
    // An action we cannot record is an action we must not report as done.
    spdlog::error("audit: cannot record {} by '{}': {}", action, who.name, e.what());
    if (status.ok()) return grpc::Status(grpc::StatusCode::INTERNAL, std::string("audit log unwritable: ") + e.what());
  }
  if (!authorized)
    spdlog::warn("admin: refused {} {} from '{}': {}", action, rec["target"].get<std::string>(),
                 rec["who"].get<std::string>(), rec["outcome"].get<std::string>());
  return status;
}

std::string AdminService::resolve_run(const std::string& run_id) const {
  if (!run_id.empty()) {
    if (!store_.load_run(run_id)) throw std::invalid_argument("no run '" + run_id + "'");
    return run_id;
  }
  if (auto active = runs_.active(); !active.empty()) return active;
  const auto all = store_.list_runs();
  if (all.empty()) throw std::invalid_argument("no runs yet");
  return std::max_element(all.begin(), all.end(), [](const RunRecord& a, const RunRecord& b) {
           return a.created_at < b.created_at;
         })->run_id;
}

void AdminService::fill_run(const RunRecord& r, v1::RunInfo* info) const {
  info->set_run_id(r.run_id);
  info->set_state(r.state);
  info->set_current_round(r.current_round);
  info->set_total_rounds(r.total_rounds);
  info->set_config_json(r.config_json);
  info->set_created_at(r.created_at);
  info->set_started_at(r.started_at);
  info->set_ended_at(r.ended_at);
  info->set_active(runs_.active() == r.run_id);
  double acc = -1;
  const auto rounds = store_.rounds(r.run_id);
  for (auto it = rounds.rbegin(); it != rounds.rend() && acc < 0; ++it)
    acc = parse_or_empty(it->json).value("global_accuracy", -1.0);
  info->set_last_global_accuracy(acc);
}

void AdminService::fill_round(const RoundRecord& r, const std::vector<ClientRecord>& clients,
                              v1::RoundDetail* out) const {
  const json j = parse_or_empty(r.json);
  auto* info = out->mutable_info();
  info->set_round(r.round);
  for (int p : j.value("participants", std::vector<int>{})) {
    info->add_participants(p);
    out->add_participant_names(client_name(clients, p));
  }
  info->set_failures(j.value("failures", 0));
  info->set_global_accuracy(j.value("global_accuracy", -1.0));
  info->set_federated_accuracy(j.value("federated_accuracy", -1.0));
  info->set_train_loss(j.value("train_loss", 0.0));
  info->set_wall_s(j.value("wall_s", 0.0));
  for (int d : j.value("dropped", std::vector<int>{})) {
    out->add_dropped(d);
    out->add_dropped_names(client_name(clients, d));
  }
  out->set_samples(j.value("samples", int64_t{0}));
  out->set_eval_s(j.value("eval_s", 0.0));
  out->set_global_loss(j.value("global_loss", -1.0));
  auto copy_numbers = [&j](const char* key, google::protobuf::Map<std::string, double>* to) {
    if (j.contains(key) && j[key].is_object())
      for (const auto& [k, v] : j[key].items())
        if (v.is_number()) (*to)[k] = v.get<double>();
  };
  copy_numbers("global_metrics", out->mutable_global_metrics());
  copy_numbers("federated_evaluation", out->mutable_federated_evaluation());
  copy_numbers("strategy", out->mutable_strategy_metrics());
}

AdminService::ClientView AdminService::client_view(const std::string& run_id,
                                                   const std::vector<RoundRecord>& rounds) const {
  ClientView view;
  if (auto active = slot_.get(); active && active->desc.run_id == run_id) {
    view.seen_s_ago = active->pool->seconds_since_seen();
    view.liveness_s = std::chrono::duration<double>(active->pool->options().liveness_timeout).count();
  }
  for (const auto& r : rounds) {
    const json j = parse_or_empty(r.json);
    view.rounds.push_back({r.round, j.value("participants", std::vector<int>{}), j.value("dropped", std::vector<int>{})});
  }
  return view;
}

void AdminService::fill_client(const ClientRecord& c, const ClientView& view, v1::ClientDetail* out) const {
  auto* info = out->mutable_info();
  info->set_index(c.index);
  info->set_name(c.name);
  info->set_num_train_examples(c.num_train_examples);
  if (!c.model_json.empty()) info->set_model(ModelDeclaration::from_json(json::parse(c.model_json)).describe());
  const double ago = c.index < static_cast<int>(view.seen_s_ago.size()) ? view.seen_s_ago[c.index] : -1;
  info->set_last_seen_s_ago(ago);
  out->set_num_test_examples(c.num_test_examples);
  out->set_registered_at(c.registered_at);
  out->set_revoked(store_.denied(c.name).has_value());
  info->set_alive(ago >= 0 && ago <= view.liveness_s && !out->revoked());
  auto has = [&](const std::vector<int>& v) { return std::find(v.begin(), v.end(), c.index) != v.end(); };
  for (const auto& r : view.rounds) {
    if (has(r.participants)) out->add_rounds(r.round);
    if (has(r.dropped)) out->add_dropped_in(r.round);
  }
}

std::optional<ClientRecord> AdminService::find_client(const std::string& run_id, const std::string& name) const {
  for (auto& c : store_.clients(run_id))
    if (c.name == name) return c;
  return std::nullopt;
}

grpc::Status AdminService::Status(grpc::ServerContext* ctx, const v1::StatusRequest* req, v1::StatusReply* reply) {
  return audited(ctx, req->protocol(), "status", "", [&](const CallerIdentity&) {
    reply->set_protocol(v1::PROTOCOL_VERSION_1);
    std::string run_id;
    try {
      run_id = resolve_run("");
    } catch (const std::invalid_argument&) {
      reply->set_state("idle");  // no run yet: a server waiting for `runs create`
      return grpc::Status::OK;
    }
    const auto run = store_.load_run(run_id);
    reply->set_run_id(run_id);
    reply->set_state(run->state);
    reply->set_round(run->current_round);
    reply->set_total_rounds(run->total_rounds);
    const auto clients = store_.clients(run_id);
    const auto rounds = store_.rounds(run_id);
    const ClientView view = client_view(run_id, rounds);
    for (const auto& c : clients) {
      v1::ClientDetail d;
      fill_client(c, view, &d);
      *reply->add_clients() = d.info();
    }
    for (const auto& r : rounds) {
      v1::RoundDetail d;
      fill_round(r, clients, &d);
      *reply->add_rounds() = d.info();
    }
    return grpc::Status::OK;
  });
}

grpc::Status AdminService::ListClients(grpc::ServerContext* ctx, const v1::ListClientsRequest* req,
                                       v1::ListClientsReply* reply) {
  return audited(ctx, req->protocol(), "clients.list", req->run_id(), [&](const CallerIdentity&) {
    const auto run_id = resolve_run(req->run_id());
    reply->set_run_id(run_id);
    const ClientView view = client_view(run_id, store_.rounds(run_id));
    for (const auto& c : store_.clients(run_id)) fill_client(c, view, reply->add_clients());
    return grpc::Status::OK;
  });
}

grpc::Status AdminService::ShowClient(grpc::ServerContext* ctx, const v1::ClientRequest* req,
                                      v1::ClientDetail* reply) {
  return audited(ctx, req->protocol(), "clients.show", req->name(), [&](const CallerIdentity&) {
    const auto run_id = resolve_run(req->run_id());
    const auto client = find_client(run_id, req->name());
    if (!client) return not_found("no client '" + req->name() + "' in run '" + run_id + "'");
    fill_client(*client, client_view(run_id, store_.rounds(run_id)), reply);
    return grpc::Status::OK;
  });
}

grpc::Status AdminService::RevokeClient(grpc::ServerContext* ctx, const v1::ClientRequest* req,
                                        v1::ClientDetail* reply) {
  return audited(ctx, req->protocol(), "clients.revoke", req->name(), [&](const CallerIdentity& who) -> grpc::Status {
    const auto run_id = resolve_run(req->run_id());
    const auto client = find_client(run_id, req->name());
    if (!client) return not_found("no client '" + req->name() + "' in run '" + run_id + "'");
    if (store_.denied(client->name))
      return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "client '" + client->name + "' is revoked already");
    store_.deny_client(client->name, json{{"by", who.name}, {"at", unix_now()}}.dump());
    // Whichever run is executing, a round waiting for this client stops waiting.
    if (auto active = slot_.get())
      if (auto i = active->pool->client_index(client->name)) active->pool->deny(*i);
    spdlog::warn("admin '{}' revoked client '{}'", who.name, client->name);
    fill_client(*client, client_view(run_id, store_.rounds(run_id)), reply);
    return grpc::Status::OK;
  });
}

grpc::Status AdminService::CreateRun(grpc::ServerContext* ctx, const v1::CreateRunRequest* req, v1::RunInfo* reply) {
  return audited(ctx, req->protocol(), req->start() ? "runs.create+start" : "runs.create", req->run_id(),
                 [&](const CallerIdentity&) -> grpc::Status {
                   const auto& id = req->run_id();
                   if (auto why = run_id_problem(id); !why.empty())
                     return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, why);
                   RunSpec run = base_;
                   try {
                     auto s = json::object();
                     if (!req->settings_json().empty()) {
                       s = json::parse(req->settings_json(), nullptr, false);
                       if (s.is_discarded())
                         throw std::invalid_argument("settings are not valid JSON: " + req->settings_json());
                     }
                     run.apply_json(s);  // validates, the strategy's own checks included
                   } catch (const std::invalid_argument& e) {
                     return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, e.what());
                   }
                   fill_run(runs_.create(id, run.to_json().dump(), run.rounds, req->start()), reply);
                   return grpc::Status::OK;
                 });
}

grpc::Status AdminService::ControlRun(grpc::ServerContext* ctx, const v1::ControlRunRequest* req,
                                      v1::RunInfo* reply) {
  std::string action = "runs.?";
  std::optional<RunController::Action> a;
  switch (req->action()) {
    case v1::ControlRunRequest::ACTION_START: a = RunController::Action::kStart; break;
    case v1::ControlRunRequest::ACTION_PAUSE: a = RunController::Action::kPause; break;
    case v1::ControlRunRequest::ACTION_RESUME: a = RunController::Action::kResume; break;
    case v1::ControlRunRequest::ACTION_ABORT: a = RunController::Action::kAbort; break;
    default: break;
  }
  if (a) action = std::string("runs.") + action_name(*a);
  return audited(ctx, req->protocol(), action, req->run_id(), [&](const CallerIdentity&) -> grpc::Status {
    if (!a) return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "unknown run action " + std::to_string(req->action()));
    fill_run(runs_.control(req->run_id(), *a), reply);
    return grpc::Status::OK;
  });
}

grpc::Status AdminService::ListRuns(grpc::ServerContext* ctx, const v1::ListRunsRequest* req,
                                    v1::ListRunsReply* reply) {
  return audited(ctx, req->protocol(), "runs.list", "", [&](const CallerIdentity&) {
    auto runs = store_.list_runs();
    std::stable_sort(runs.begin(), runs.end(),
                     [](const RunRecord& a, const RunRecord& b) { return a.created_at < b.created_at; });
    for (const auto& r : runs) fill_run(r, reply->add_runs());
    return grpc::Status::OK;
  });
}

grpc::Status AdminService::ShowRun(grpc::ServerContext* ctx, const v1::RunRequest* req, v1::RunInfo* reply) {
  return audited(ctx, req->protocol(), "runs.show", req->run_id(), [&](const CallerIdentity&) {
    fill_run(*store_.load_run(resolve_run(req->run_id())), reply);
    return grpc::Status::OK;
  });
}

grpc::Status AdminService::ListRounds(grpc::ServerContext* ctx, const v1::RunRequest* req,
                                      v1::ListRoundsReply* reply) {
  return audited(ctx, req->protocol(), "rounds.list", req->run_id(), [&](const CallerIdentity&) {
    const auto run_id = resolve_run(req->run_id());
    reply->set_run_id(run_id);
    const auto clients = store_.clients(run_id);
    for (const auto& r : store_.rounds(run_id)) fill_round(r, clients, reply->add_rounds());
    return grpc::Status::OK;
  });
}

grpc::Status AdminService::ShowRound(grpc::ServerContext* ctx, const v1::RoundRequest* req, v1::RoundDetail* reply) {
  return audited(ctx, req->protocol(), "rounds.show", req->run_id() + "/" + std::to_string(req->round()), [&](const CallerIdentity&) {
    const auto run_id = resolve_run(req->run_id());
    const auto clients = store_.clients(run_id);
    for (const auto& r : store_.rounds(run_id))
      if (r.round == req->round()) {
        fill_round(r, clients, reply);
        return grpc::Status::OK;
      }
    return not_found("run '" + run_id + "' has no committed round " + std::to_string(req->round()));
  });
}

grpc::Status AdminService::ExportModel(grpc::ServerContext* ctx, const v1::ExportModelRequest* req,
                                       grpc::ServerWriter<v1::ExportChunk>* writer) {
  return audited(ctx, req->protocol(), "model.export", req->run_id() + "/" + std::to_string(req->round()),
                 [&](const CallerIdentity&) -> grpc::Status {
                   if (!req->format().empty() && req->format() != "safetensors")
                     return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                                         "format '" + req->format() + "' is not supported (safetensors)");
                   if (req->round() < -1)
                     return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                                         "round must be >= 0 (or -1 for the latest), got " + std::to_string(req->round()));
                   const auto run_id = resolve_run(req->run_id());
                   int version = req->round();
                   if (version < 0) {
                     auto latest = store_.latest_model_version(run_id);
                     if (!latest) return not_found("run '" + run_id + "' has no model yet");
                     version = *latest;
                   }
                   const auto bytes = store_.model_bytes(run_id, version);
                   if (!bytes)
                     return not_found("run '" + run_id + "' has no model for round " + std::to_string(version) +
                                      " (0 = initial; rounds are stored once committed)");
                   const auto crc = static_cast<uint32_t>(
                       ::crc32(0L, reinterpret_cast<const Bytef*>(bytes->data()), static_cast<uInt>(bytes->size())));
                   size_t off = 0;
                   do {
                     v1::ExportChunk c;
                     if (off == 0) {
                       c.set_total_bytes(bytes->size());
                       c.set_crc32(crc);
                       c.set_version(version);
                     }
                     const size_t n = std::min(kExportChunk, bytes->size() - off);
                     c.set_data(bytes->data() + off, n);
                     off += n;
                     if (!writer->Write(c)) return grpc::Status(grpc::StatusCode::CANCELLED, "export interrupted");
                   } while (off < bytes->size());
                   return grpc::Status::OK;
                 });
}

grpc::Status AdminService::Audit(grpc::ServerContext* ctx, const v1::AuditRequest* req, v1::AuditReply* reply) {
  return audited(ctx, req->protocol(), "audit", "", [&](const CallerIdentity&) -> grpc::Status {
    if (req->limit() < 0)
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "limit must be >= 0, got " + std::to_string(req->limit()));
    const auto lines = store_.audit();
    const size_t from = req->limit() > 0 && lines.size() > static_cast<size_t>(req->limit())
                            ? lines.size() - static_cast<size_t>(req->limit())
                            : 0;
    for (size_t i = from; i < lines.size(); ++i) {
      const json j = parse_or_empty(lines[i]);
      auto* r = reply->add_records();
      r->set_seq(i);
      r->set_time(j.value("time", 0.0));
      r->set_who(j.value("who", ""));
      r->set_role(j.value("role", ""));
      r->set_action(j.value("action", ""));
      r->set_target(j.value("target", ""));
      r->set_outcome(j.value("outcome", ""));
    }
    return grpc::Status::OK;
  });
}

}  // namespace fl
