// fedbench_upload: upload throughput of a 37M-parameter model (784-4096x3-10 MLP, 147 MB of
// fp32) through the real coordinator path over mutual TLS on loopback (gRPC stream of 1 MiB
// chunks -> reassembly -> checksum and layout validation -> decode -> synced RocksDB write ->
// ack), as a ratio to a raw TLS socket copy of the same bytes measured in the same run.
//
//   fedbench_upload [--pki DIR] [--repeat 3]
#include <arpa/inet.h>
#include <grpcpp/grpcpp.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <sys/socket.h>
#include <torch/torch.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <filesystem>
#include <future>
#include <iostream>
#include <thread>

#include "common/models/model.h"
#include "common/net/codec.h"
#include "common/net/tls.h"
#include "common/util/logging.h"
#include "coordinator/federation_service.h"
#include "coordinator/remote_pool.h"
#include "coordinator/store/state_store.h"

namespace {

using namespace fl;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

[[noreturn]] void ssl_fail(const std::string& what) {
  char buf[256];
  ERR_error_string_n(ERR_get_error(), buf, sizeof buf);
  throw std::runtime_error(what + ": " + buf);
}

SSL_CTX* make_ctx(bool server, const TlsFiles& f) {
  SSL_CTX* ctx = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
  if (SSL_CTX_use_certificate_chain_file(ctx, f.cert.c_str()) != 1) ssl_fail("certificate " + f.cert);
  if (SSL_CTX_use_PrivateKey_file(ctx, f.key.c_str(), SSL_FILETYPE_PEM) != 1) ssl_fail("key " + f.key);
  if (SSL_CTX_load_verify_locations(ctx, f.ca.c_str(), nullptr) != 1) ssl_fail("CA " + f.ca);
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  return ctx;
}

// The baseline: one TLS 1.3 connection (same certificates, mutual), the client writes the
// bytes in 1 MiB records' worth, the server reads them all and answers one byte.
double raw_tls_copy(const TlsFiles& server_files, const TlsFiles& client_files, const std::string& bytes) {
  const int ls = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(ls, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t len = sizeof a;
  getsockname(ls, reinterpret_cast<sockaddr*>(&a), &len);
  listen(ls, 1);
  SSL_CTX* sctx = make_ctx(true, server_files);
  SSL_CTX* cctx = make_ctx(false, client_files);
  auto server = std::async(std::launch::async, [&] {
    const int fd = accept(ls, nullptr, nullptr);
    SSL* ssl = SSL_new(sctx);
    SSL_set_fd(ssl, fd);
    if (SSL_accept(ssl) != 1) ssl_fail("SSL_accept");
    std::string sink(1 << 20, '\0');
    size_t got = 0;
    while (got < bytes.size()) {
      const int n = SSL_read(ssl, sink.data(), static_cast<int>(sink.size()));
      if (n <= 0) ssl_fail("SSL_read");
      got += static_cast<size_t>(n);
    }
    SSL_write(ssl, "k", 1);
    SSL_shutdown(ssl);
    SSL_free(ssl);
    close(fd);
  });
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) throw std::runtime_error("connect failed");
  SSL* ssl = SSL_new(cctx);
  SSL_set_fd(ssl, fd);
  if (SSL_connect(ssl) != 1) ssl_fail("SSL_connect");
  const auto t0 = Clock::now();
  for (size_t off = 0; off < bytes.size();) {
    const size_t n = std::min<size_t>(kMaxChunkBytes, bytes.size() - off);
    const int w = SSL_write(ssl, bytes.data() + off, static_cast<int>(n));
    if (w <= 0) ssl_fail("SSL_write");
    off += static_cast<size_t>(w);
  }
  char ack;
  SSL_read(ssl, &ack, 1);
  const double s = seconds_since(t0);
  server.get();
  SSL_free(ssl);
  close(fd);
  close(ls);
  SSL_CTX_free(sctx);
  SSL_CTX_free(cctx);
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  std::string pki;
  int repeat = 3;
  int round_gap_ms = 1000;
  int keep_update_rounds = StateStore::kDefaultKeepUpdateRounds;
  CLI::App app{"fedbench_upload: coordinator upload throughput vs a raw TLS copy (same bytes, same run)"};
  app.add_option("--pki", pki, "PKI directory from scripts/pki.sh (default: a fresh one in a temp dir)");
  app.add_option("--repeat", repeat, "uploads per method; the best of each is compared")->check(CLI::PositiveNumber);
  app.add_option("--round-gap-ms", round_gap_ms,
                 "pause between rounds (untimed), standing in for the clients' download and training, in "
                 "which the round commit's background writes finish")
      ->check(CLI::NonNegativeNumber)->capture_default_str();
  app.add_option("--keep-update-rounds", keep_update_rounds, "as fedcoord's flag (0: keep all stored updates)")
      ->check(CLI::NonNegativeNumber)->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  init_logging("warn", "fedbench_upload");
  namespace fs = std::filesystem;
  const fs::path tmp = fs::temp_directory_path() / ("fedbench_upload_" + std::to_string(getpid()));
  // Removed last, after the store (declared later, destroyed first) has stopped its threads.
  struct RemoveOnExit {
    fs::path path;
    ~RemoveOnExit() {
      std::error_code ec;
      fs::remove_all(path, ec);
    }
  } remove_on_exit{tmp};
  fs::create_directories(tmp);
  if (pki.empty()) {
    pki = (tmp / "pki").string();
    if (std::system(("scripts/pki.sh " + pki + " > /dev/null").c_str()) != 0) {
      std::cerr << "cannot create the PKI with scripts/pki.sh (run from the repository root or pass --pki)\n";
      return 2;
    }
  }
  const TlsFiles server_files{pki + "/ca.crt", pki + "/coordinator.crt", pki + "/coordinator.key"};
  const TlsFiles client_files{pki + "/ca.crt", pki + "/hospital-1.crt", pki + "/hospital-1.key"};

  ModelSpec spec;
  spec.name = "mlp";
  spec.input_shape = {784};
  spec.hidden = {4096, 4096, 4096};
  spec.num_classes = 10;
  torch::manual_seed(0);
  const ModelState global = build_model(spec)->state();
  ModelState update = global.clone();
  update.flat().add_(0.01);
  const EncodedPayload payload = encode_state(pack_payload(update, {}), {});
  const double mb = static_cast<double>(payload.bytes.size()) / 1e6;
  std::cout << "model: mlp 784-4096x3-10, " << global.numel() << " parameters, payload " << mb << " MB\n";

  // The real coordinator path: FederationService + RemoteClientPool + RocksDB, mutual TLS.
  StateStore store((tmp / "db").string());
  RemotePoolOptions po;
  po.round_deadline = 600s;
  RemoteClientPool pool(store, "bench", po);
  pool.set_run_model(ModelDeclaration::of_state("mlp", global));
  RunDescription run;
  run.run_id = "bench";
  Authenticator auth(store, /*insecure=*/false);
  RunSlot slot;
  slot.set(borrowed_run(pool, run));
  FederationService service(slot, auth);
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", make_server_credentials(server_files), &port);
  builder.SetMaxReceiveMessageSize(4 << 20);
  builder.RegisterService(&service);
  auto server = builder.BuildAndStart();
  grpc::ChannelArguments args;
  args.SetSslTargetNameOverride("localhost");
  auto stub = v1::Federation::NewStub(grpc::CreateCustomChannel(
      "127.0.0.1:" + std::to_string(port), make_channel_credentials(client_files), args));
  {
    grpc::ClientContext ctx;
    v1::RegisterRequest req;
    req.set_protocol(v1::PROTOCOL_VERSION_1);
    req.set_num_train_examples(1);
    v1::RegisterReply reply;
    auto s = stub->Register(&ctx, req, &reply);
    if (!s.ok()) {
      std::cerr << "register failed: " << s.error_message() << "\n";
      return 1;
    }
  }

  double best_grpc = 1e9, best_raw = 1e9, first_grpc = 0;
  for (int i = 1; i <= repeat; ++i) {
    ClientTask t;
    t.round = i;
    t.client_id = 0;
    t.model = global;
    auto round = std::async(std::launch::async, [&] { return pool.execute({t}); });
    TaskOffer offer;
    while (pool.poll(0, 1s, &offer) != RemoteClientPool::Poll::kTask) {
    }
    const auto t0 = Clock::now();
    grpc::ClientContext ctx;
    v1::UploadReply reply;
    auto w = stub->UploadUpdate(&ctx, &reply);
    v1::UploadChunk h;
    h.mutable_header()->set_task_id(offer.task_id);
    h.mutable_header()->set_ok(true);
    h.mutable_header()->set_num_examples(1);
    w->Write(h);
    v1::UploadChunk m;  // as fedclient sends it: the chunk filled in place
    for_each_chunk(payload, m.mutable_chunk(), [&] { return w->Write(m); });
    w->WritesDone();
    auto s = w->Finish();
    const double grpc_s = seconds_since(t0);
    if (!s.ok()) {
      std::cerr << "upload failed: " << s.error_message() << "\n";
      return 1;
    }
    auto results = round.get();
    if (!results[0].ok || !results[0].model.equal(update)) {
      std::cerr << "the coordinator did not receive the update intact\n";
      return 1;
    }
    const double raw_s = raw_tls_copy(server_files, client_files, payload.bytes);
    // What fedcoord does after each round (untimed; after the raw copy, so that RocksDB's
    // background work from the commit can only slow the next coordinator upload, never the
    // baseline): commit the round, prune the stored updates.
    results.clear();
    RunRecord rec;
    rec.run_id = run.run_id;
    rec.state = "running";
    rec.total_rounds = repeat;
    store.commit_round(rec, i, update, "", RoundRecord{i, "{}"});
    if (keep_update_rounds > 0) store.prune_updates(run.run_id, keep_update_rounds);
    std::this_thread::sleep_for(std::chrono::milliseconds(round_gap_ms));
    if (i == 1) first_grpc = grpc_s;  // into a fresh receive buffer; later ones reuse it (BufferPool)
    best_grpc = std::min(best_grpc, grpc_s);
    best_raw = std::min(best_raw, raw_s);
    std::cout << "run " << i << ": coordinator upload " << mb / grpc_s << " MB/s, raw TLS copy " << mb / raw_s
              << " MB/s\n";
  }
  pool.abort();
  server->Shutdown(std::chrono::system_clock::now() + 1s);
  std::cout << "bench_upload: coordinator_MBps=" << static_cast<int>(mb / best_grpc)
            << " raw_tls_MBps=" << static_cast<int>(mb / best_raw) << " ratio=" << best_raw / best_grpc
            << " (goal >= 0.5) first_upload_MBps=" << static_cast<int>(mb / first_grpc)
            << " first_upload_ratio=" << best_raw / first_grpc << "\n";
  return 0;
}
