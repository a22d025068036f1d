#pragma once
// The gRPC services of fedcoord: Federation (sites) and Admin (operators). They translate
// RPCs into calls on the RemoteClientPool and the StateStore and never touch strategies.
#include <grpcpp/grpcpp.h>

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "admin.grpc.pb.h"
#include "coordinator/remote_pool.h"
#include "coordinator/stream_guard.h"
#include "federation.grpc.pb.h"

namespace fl {

// What the Register reply tells every client about the run.
struct RunDescription {
  std::string run_id;
  std::string run_spec_json;  // the run's RunSpec as stored, sent to every client unchanged
  int heartbeat_interval_ms = 2000;
};

// Who is calling: the verified certificate's CN (mutual TLS) or, only with --insecure, the
// name the client sends in the "fl-client-name" metadata.
struct CallerIdentity {
  std::string name;
  std::string role;  // from the certificate; empty in insecure mode
};

// The run the coordinator executes now, as the services see it. Replaced (not mutated) when
// the coordinator moves to the next run, so a call holds a consistent view.
struct ActiveRun {
  std::shared_ptr<RemoteClientPool> pool;
  RunDescription desc;
  std::atomic<int> round{0};
};

// An ActiveRun over a pool the caller owns and keeps alive longer (tests, benchmarks).
inline std::shared_ptr<ActiveRun> borrowed_run(RemoteClientPool& pool, RunDescription desc) {
  auto run = std::make_shared<ActiveRun>();
  run->pool = std::shared_ptr<RemoteClientPool>(&pool, [](RemoteClientPool*) {});
  run->desc = std::move(desc);
  return run;
}

class RunSlot {
 public:
  std::shared_ptr<ActiveRun> get() const {
    std::lock_guard<std::mutex> lock(mu_);
    return run_;
  }
  void set(std::shared_ptr<ActiveRun> run) {
    std::lock_guard<std::mutex> lock(mu_);
    run_ = std::move(run);
  }

 private:
  mutable std::mutex mu_;
  std::shared_ptr<ActiveRun> run_;
};

// Authentication shared by both services: a certificate that gRPC verified against the CA,
// whose serial is not on the CRL (checked on every call, so a revocation needs no restart)
// and whose CN no admin revoked (`fedctl clients revoke`). With --insecure only: the
// "fl-client-name" metadata, and every caller counts as an admin.
class Authenticator {
 public:
  using RevokedSerial = std::function<bool(const std::string& serial_hex)>;
  Authenticator(StateStore& store, bool insecure, RevokedSerial revoked = {})
      : store_(store), insecure_(insecure), revoked_(std::move(revoked)) {}
  grpc::Status authenticate(const grpc::ServerContext& ctx, CallerIdentity* who) const;
  bool insecure() const { return insecure_; }

 private:
  StateStore& store_;
  bool insecure_;
  RevokedSerial revoked_;
};

class FederationService final : public v1::Federation::Service {
 public:
  FederationService(const RunSlot& slot, const Authenticator& auth, StreamGuard::Options streams = StreamGuard::Options())
      : slot_(slot), auth_(auth), streams_(streams) {}
  const StreamGuard& streams() const { return streams_; }

  grpc::Status Register(grpc::ServerContext* ctx, const v1::RegisterRequest* req, v1::RegisterReply* reply) override;
  grpc::Status Heartbeat(grpc::ServerContext* ctx, const v1::HeartbeatRequest* req,
                         v1::HeartbeatReply* reply) override;
  grpc::Status PollTask(grpc::ServerContext* ctx, const v1::PollTaskRequest* req, v1::PollTaskReply* reply) override;
  grpc::Status DownloadModel(grpc::ServerContext* ctx, const v1::DownloadRequest* req,
                             grpc::ServerWriter<v1::PayloadChunk>* writer) override;
  grpc::Status UploadUpdate(grpc::ServerContext* ctx, grpc::ServerReader<v1::UploadChunk>* reader,
                            v1::UploadReply* reply) override;

 private:
  // A training client (role 'client') of the active run; a non-OK status says why not.
  grpc::Status identify(grpc::ServerContext* ctx, CallerIdentity* who, std::shared_ptr<ActiveRun>* run) const;
  grpc::Status registered_index(grpc::ServerContext* ctx, const std::string& run_id, std::shared_ptr<ActiveRun>* run,
                                int* index) const;

  const RunSlot& slot_;
  const Authenticator& auth_;
  StreamGuard streams_;
};

// Checks the protocol version a peer announced; the error names both versions.
grpc::Status check_protocol(v1::ProtocolVersion got);

}  // namespace fl
