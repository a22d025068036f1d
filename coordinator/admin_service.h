#pragma once
// The Admin gRPC service (fedctl's side of fedcoord). Every RPC needs an admin-role
// certificate (any caller with --insecure) and is recorded in the audit column family, refused
// or not: who (certificate CN and role), what (action and target), when, and the outcome.
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "admin.grpc.pb.h"
#include "common/run/run_spec.h"
#include "coordinator/federation_service.h"
#include "coordinator/run_control.h"

namespace fl {

class AdminService final : public v1::Admin::Service {
 public:
  // `base` is the run the coordinator's own flags define: what `runs create` settings override.
  AdminService(const RunSlot& slot, StateStore& store, RunController& runs, const Authenticator& auth, RunSpec base)
      : slot_(slot), store_(store), runs_(runs), auth_(auth), base_(std::move(base)) {}

  grpc::Status Status(grpc::ServerContext* ctx, const v1::StatusRequest* req, v1::StatusReply* reply) override;
  grpc::Status ListClients(grpc::ServerContext* ctx, const v1::ListClientsRequest* req,
                           v1::ListClientsReply* reply) override;
  grpc::Status ShowClient(grpc::ServerContext* ctx, const v1::ClientRequest* req, v1::ClientDetail* reply) override;
  grpc::Status RevokeClient(grpc::ServerContext* ctx, const v1::ClientRequest* req, v1::ClientDetail* reply) override;
  grpc::Status CreateRun(grpc::ServerContext* ctx, const v1::CreateRunRequest* req, v1::RunInfo* reply) override;
  grpc::Status ControlRun(grpc::ServerContext* ctx, const v1::ControlRunRequest* req, v1::RunInfo* reply) override;
  grpc::Status ListRuns(grpc::ServerContext* ctx, const v1::ListRunsRequest* req, v1::ListRunsReply* reply) override;
  grpc::Status ShowRun(grpc::ServerContext* ctx, const v1::RunRequest* req, v1::RunInfo* reply) override;
  grpc::Status ListRounds(grpc::ServerContext* ctx, const v1::RunRequest* req, v1::ListRoundsReply* reply) override;
  grpc::Status ShowRound(grpc::ServerContext* ctx, const v1::RoundRequest* req, v1::RoundDetail* reply) override;
  grpc::Status ExportModel(grpc::ServerContext* ctx, const v1::ExportModelRequest* req,
                           grpc::ServerWriter<v1::ExportChunk>* writer) override;
  grpc::Status Audit(grpc::ServerContext* ctx, const v1::AuditRequest* req, v1::AuditReply* reply) override;

 private:
  // Checks the protocol version and the caller's role, runs `body`, and appends the audit
  // record with the outcome. Exceptions from `body` become statuses: std::invalid_argument ->
  // FAILED_PRECONDITION (or NOT_FOUND when it says "no ..."), others -> INTERNAL.
  // `body` gets the authenticated caller.
  grpc::Status audited(grpc::ServerContext* ctx, v1::ProtocolVersion protocol, const std::string& action,
                       const std::string& target, const std::function<grpc::Status(const CallerIdentity&)>& body);
  // "" -> the active run, else the most recently created one; throws when there is none.
  std::string resolve_run(const std::string& run_id) const;
  void fill_run(const RunRecord& r, v1::RunInfo* info) const;
  void fill_round(const RoundRecord& r, const std::vector<ClientRecord>& clients, v1::RoundDetail* out) const;
  // What describing a run's clients needs, read once per request (not once per client).
  struct ClientView {
    std::vector<double> seen_s_ago;  // by client index; empty when the run is not executing
    double liveness_s = 0;
    struct Round {
      int round = 0;
      std::vector<int> participants, dropped;
    };
    std::vector<Round> rounds;
  };
  ClientView client_view(const std::string& run_id, const std::vector<RoundRecord>& rounds) const;
  void fill_client(const ClientRecord& c, const ClientView& view, v1::ClientDetail* out) const;
  // The client named `name` in the run, or nullopt.
  std::optional<ClientRecord> find_client(const std::string& run_id, const std::string& name) const;

  const RunSlot& slot_;
  StateStore& store_;
  RunController& runs_;
  const Authenticator& auth_;
  const RunSpec base_;
};

}  // namespace fl
