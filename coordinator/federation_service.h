#pragma once
// The gRPC services of fedcoord: Federation (sites) and Admin (operators). They translate
// RPCs into calls on the RemoteClientPool and the StateStore and never touch strategies.
#include <grpcpp/grpcpp.h>

#include <functional>
#include <string>

#include "admin.grpc.pb.h"
#include "coordinator/remote_pool.h"
#include "federation.grpc.pb.h"

namespace fl {

// What the Register reply tells every client about the run.
struct RunDescription {
  std::string run_id;
  std::string strategy;
  std::map<std::string, double> strategy_params;
  std::string model;
  v1::TrainConfig train;
  v1::Encoding update_encoding = v1::ENCODING_FP32;
  double topk_fraction = 0.01;
  int heartbeat_interval_ms = 2000;
  int total_rounds = 0;
};

// Who is calling: the verified certificate's CN (mutual TLS) or, only with --insecure, the
// name the client sends in the "fl-client-name" metadata.
struct CallerIdentity {
  std::string name;
  std::string role;  // from the certificate; empty in insecure mode
};

class FederationService final : public v1::Federation::Service {
 public:
  FederationService(RemoteClientPool& pool, RunDescription run, bool insecure);

  grpc::Status Register(grpc::ServerContext* ctx, const v1::RegisterRequest* req, v1::RegisterReply* reply) override;
  grpc::Status Heartbeat(grpc::ServerContext* ctx, const v1::HeartbeatRequest* req,
                         v1::HeartbeatReply* reply) override;
  grpc::Status PollTask(grpc::ServerContext* ctx, const v1::PollTaskRequest* req, v1::PollTaskReply* reply) override;
  grpc::Status DownloadModel(grpc::ServerContext* ctx, const v1::DownloadRequest* req,
                             grpc::ServerWriter<v1::PayloadChunk>* writer) override;
  grpc::Status UploadUpdate(grpc::ServerContext* ctx, grpc::ServerReader<v1::UploadChunk>* reader,
                            v1::UploadReply* reply) override;

  void set_current_round(int round) { current_round_ = round; }

 private:
  // Authenticates the caller and finds its client index; a non-OK status says why not.
  grpc::Status identify(grpc::ServerContext* ctx, CallerIdentity* who) const;
  grpc::Status registered_index(grpc::ServerContext* ctx, const std::string& run_id, int* index) const;

  RemoteClientPool& pool_;
  RunDescription run_;
  bool insecure_;
  std::atomic<int> current_round_{0};
};

// Status of the run for fedctl (admin-role certificates only, unless --insecure).
class AdminService final : public v1::Admin::Service {
 public:
  AdminService(RemoteClientPool& pool, StateStore& store, RunDescription run, bool insecure)
      : pool_(pool), store_(store), run_(std::move(run)), insecure_(insecure) {}
  grpc::Status Status(grpc::ServerContext* ctx, const v1::StatusRequest* req, v1::StatusReply* reply) override;

 private:
  RemoteClientPool& pool_;
  StateStore& store_;
  RunDescription run_;
  bool insecure_;
};

// Checks the protocol version a peer announced; the error names both versions.
grpc::Status check_protocol(v1::ProtocolVersion got);

}  // namespace fl
