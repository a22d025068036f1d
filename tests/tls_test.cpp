// Mutual TLS through a real gRPC server on 127.0.0.1 (port picked by the OS), with a PKI
// made by scripts/pki.sh, plus the OpenSSL pre-flight checks of common/net/tls.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>

#include "admin.grpc.pb.h"
#include "common/net/tls.h"
#include "coordinator/federation_service.h"
#include "coordinator/store/state_store.h"

namespace fs = std::filesystem;

namespace {

const std::string kPkiScript = std::string(FL_SOURCE_DIR) + "/scripts/pki.sh";

int run_sh(const std::string& cmd) {
  const int status = std::system(cmd.c_str());
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

void write_file(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
}

// Answers Status with the caller's verified CN as run_id and its role as state; "<none>"
// when the call has no authenticated peer.
class WhoAmI final : public fl::v1::Admin::Service {
  grpc::Status Status(grpc::ServerContext* ctx, const fl::v1::StatusRequest*, fl::v1::StatusReply* reply) override {
    if (auto peer = fl::peer_identity(*ctx)) {
      reply->set_run_id(peer->common_name);
      reply->set_state(peer->role);
    } else {
      reply->set_run_id("<none>");
    }
    return grpc::Status::OK;
  }
};

struct TestServer {
  WhoAmI service;
  std::unique_ptr<grpc::Server> server;
  int port = 0;

  explicit TestServer(std::shared_ptr<grpc::ServerCredentials> creds) {
    grpc::ServerBuilder b;
    b.AddListeningPort("127.0.0.1:0", std::move(creds), &port);
    b.RegisterService(&service);
    server = b.BuildAndStart();
    if (!server || port <= 0) throw std::runtime_error("test gRPC server did not start");
  }
  ~TestServer() { server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2)); }
  std::string address() const { return "127.0.0.1:" + std::to_string(port); }
};

grpc::Status call_status(const std::string& address, std::shared_ptr<grpc::ChannelCredentials> creds,
                         fl::v1::StatusReply* reply) {
  grpc::ChannelArguments args;
  // A fresh connection per call: no subchannel sharing between the differently-credentialed
  // channels of one test.
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  auto channel = grpc::CreateCustomChannel(address, std::move(creds), args);
  auto stub = fl::v1::Admin::NewStub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  fl::v1::StatusRequest req;
  req.set_protocol(fl::v1::PROTOCOL_VERSION_1);
  return stub->Status(&ctx, req, reply);
}

// Expects `fn` to throw std::runtime_error whose message contains every one of `parts`.
template <class Fn>
void expect_error(Fn fn, std::initializer_list<std::string> parts) {
  try {
    fn();
    ADD_FAILURE() << "expected an exception";
  } catch (const std::runtime_error& e) {
    const std::string what = e.what();
    for (const auto& p : parts) EXPECT_NE(what.find(p), std::string::npos) << "'" << p << "' not in: " << what;
  }
}

class TlsTest : public ::testing::Test {
 protected:
  static std::string root_, pki_, other_;

  static void SetUpTestSuite() {
    root_ = ::testing::TempDir() + "/tls_test_" + std::to_string(::getpid());
    fs::remove_all(root_);
    fs::create_directories(root_);
    pki_ = root_ + "/pki";
    other_ = root_ + "/other-pki";
    ASSERT_EQ(run_sh(kPkiScript + " " + pki_ + " > " + root_ + "/pki.log 2>&1"), 0) << slurp(root_ + "/pki.log");
    ASSERT_EQ(run_sh(kPkiScript + " " + other_ + " > " + root_ + "/other.log 2>&1"), 0) << slurp(root_ + "/other.log");
  }
  static void TearDownTestSuite() {
    std::error_code ec;
    fs::remove_all(root_, ec);
  }

  static fl::TlsFiles files(const std::string& dir, const std::string& name) {
    return {pki_ + "/ca.crt", dir + "/" + name + ".crt", dir + "/" + name + ".key"};
  }
  static fl::TlsFiles mine(const std::string& name) { return files(pki_, name); }
};
std::string TlsTest::root_, TlsTest::pki_, TlsTest::other_;

TEST_F(TlsTest, PkiScriptMakesRolesAndPrivateKeys) {
  for (const char* name : {"ca", "coordinator", "hospital-1", "hospital-2", "hospital-3", "admin"}) {
    const std::string key = pki_ + "/" + name + ".key";
    ASSERT_TRUE(fs::exists(pki_ + "/" + name + ".crt")) << name;
    ASSERT_TRUE(fs::exists(key)) << name;
    struct stat st {};
    ASSERT_EQ(::stat(key.c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0600u) << key;
  }
  EXPECT_EQ(fl::certificate_common_name(slurp(pki_ + "/hospital-2.crt")), "hospital-2");
  EXPECT_EQ(fl::certificate_role(slurp(pki_ + "/hospital-2.crt")), "client");
  EXPECT_EQ(fl::certificate_role(slurp(pki_ + "/coordinator.crt")), "coordinator");
  EXPECT_EQ(fl::certificate_role(slurp(pki_ + "/admin.crt")), "admin");
  EXPECT_THROW(fl::certificate_common_name("garbage"), std::runtime_error);

  // Idempotent: a second run keeps the CA and every certificate.
  const std::string ca = slurp(pki_ + "/ca.crt"), h1 = slurp(pki_ + "/hospital-1.crt");
  ASSERT_EQ(run_sh(kPkiScript + " " + pki_ + " > /dev/null 2>&1"), 0);
  EXPECT_EQ(slurp(pki_ + "/ca.crt"), ca);
  EXPECT_EQ(slurp(pki_ + "/hospital-1.crt"), h1);
  // Usage errors exit non-zero.
  EXPECT_NE(run_sh(kPkiScript + " > /dev/null 2>&1"), 0);
  EXPECT_NE(run_sh(kPkiScript + " " + root_ + "/x --bogus > /dev/null 2>&1"), 0);
}

TEST_F(TlsTest, ValidFilesPassValidation) {
  for (const char* name : {"coordinator", "hospital-1", "admin"}) EXPECT_NO_THROW(fl::validate_tls_files(mine(name)));
}

TEST_F(TlsTest, ClientCertificateIdentifiesCaller) {
  TestServer server(fl::make_server_credentials(mine("coordinator")));
  fl::v1::StatusReply reply;
  auto s = call_status(server.address(), fl::make_channel_credentials(mine("hospital-1")), &reply);
  ASSERT_TRUE(s.ok()) << s.error_code() << ": " << s.error_message();
  EXPECT_EQ(reply.run_id(), "hospital-1");
  EXPECT_EQ(reply.state(), "client");

  fl::v1::StatusReply admin;
  s = call_status(server.address(), fl::make_channel_credentials(mine("admin")), &admin);
  ASSERT_TRUE(s.ok()) << s.error_code() << ": " << s.error_message();
  EXPECT_EQ(admin.run_id(), "admin");
  EXPECT_EQ(admin.state(), "admin");
}

TEST_F(TlsTest, ClientWithoutCertificateIsRefused) {
  TestServer server(fl::make_server_credentials(mine("coordinator")));
  grpc::SslCredentialsOptions opts;
  opts.pem_root_certs = slurp(pki_ + "/ca.crt");  // trusts the server, presents nothing
  fl::v1::StatusReply reply;
  auto s = call_status(server.address(), grpc::SslCredentials(opts), &reply);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE) << s.error_message();
  EXPECT_TRUE(reply.run_id().empty());
}

TEST_F(TlsTest, ClientCertificateFromAnotherCaIsRefused) {
  TestServer server(fl::make_server_credentials(mine("coordinator")));
  // Our pre-flight check already refuses the combination...
  expect_error([&] { fl::validate_tls_files(files(other_, "hospital-1")); }, {"not signed by the CA"});
  // ...and so does the server when a client goes around it.
  grpc::SslCredentialsOptions opts;
  opts.pem_root_certs = slurp(pki_ + "/ca.crt");
  opts.pem_cert_chain = slurp(other_ + "/hospital-1.crt");
  opts.pem_private_key = slurp(other_ + "/hospital-1.key");
  fl::v1::StatusReply reply;
  auto s = call_status(server.address(), grpc::SslCredentials(opts), &reply);
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE) << s.error_message();
  EXPECT_TRUE(reply.run_id().empty());
}

TEST_F(TlsTest, ServerFromAnotherCaIsRefusedByClient) {
  fl::TlsFiles foreign{other_ + "/ca.crt", other_ + "/coordinator.crt", other_ + "/coordinator.key"};
  TestServer server(fl::make_server_credentials(foreign));
  fl::v1::StatusReply reply;
  auto s = call_status(server.address(), fl::make_channel_credentials(mine("hospital-1")), &reply);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE) << s.error_message();
}

TEST_F(TlsTest, InsecureCallHasNoPeerIdentity) {
  TestServer server(grpc::InsecureServerCredentials());
  fl::v1::StatusReply reply;
  auto s = call_status(server.address(), grpc::InsecureChannelCredentials(), &reply);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(reply.run_id(), "<none>");
}

TEST_F(TlsTest, KeyOfAnotherIdentityDoesNotMatch) {
  auto f = mine("hospital-1");
  f.key = pki_ + "/hospital-2.key";
  expect_error([&] { fl::validate_tls_files(f); }, {"does not match", f.key, f.cert});
  expect_error([&] { fl::make_server_credentials(f); }, {"does not match"});
  expect_error([&] { fl::make_channel_credentials(f); }, {"does not match"});
}

TEST_F(TlsTest, CertificateSignedByAnotherCa) {
  fl::TlsFiles f{pki_ + "/ca.crt", other_ + "/hospital-1.crt", other_ + "/hospital-1.key"};
  expect_error([&] { fl::validate_tls_files(f); }, {"not signed by the CA", f.cert, f.ca});
}

TEST_F(TlsTest, LeafCertificateAsCaIsRefused) {
  auto f = mine("hospital-1");
  f.ca = f.cert;
  expect_error([&] { fl::validate_tls_files(f); }, {"--tls-ca", f.ca, "not a CA"});
}

TEST_F(TlsTest, ExpiredCertificate) {
  const std::string dir = root_ + "/expired";
  fs::create_directories(dir);
  // `-days -1` gives a notAfter in the past (signed by the real CA, matching key).
  ASSERT_EQ(run_sh("openssl req -new -key " + pki_ + "/hospital-1.key -subj /CN=old -out " + dir +
                   "/old.csr 2>/dev/null && openssl x509 -req -in " + dir + "/old.csr -CA " + pki_ + "/ca.crt -CAkey " +
                   pki_ + "/ca.key -days -1 -out " + dir + "/old.crt 2>/dev/null"),
            0);
  fl::TlsFiles f{pki_ + "/ca.crt", dir + "/old.crt", pki_ + "/hospital-1.key"};
  expect_error([&] { fl::validate_tls_files(f); }, {"expired", f.cert});
}

TEST_F(TlsTest, MissingFileIsNamed) {
  auto f = mine("hospital-1");
  f.cert = root_ + "/no-such.crt";
  expect_error([&] { fl::validate_tls_files(f); }, {"--tls-cert", f.cert, "does not exist"});
  f = mine("hospital-1");
  f.ca = root_ + "/no-such-ca.crt";
  expect_error([&] { fl::validate_tls_files(f); }, {"--tls-ca", f.ca});
}

TEST_F(TlsTest, GarbageFileIsNotPem) {
  const std::string garbage = root_ + "/garbage.key";
  write_file(garbage, "this is not a key\n");
  auto f = mine("hospital-1");
  f.key = garbage;
  expect_error([&] { fl::validate_tls_files(f); }, {"--tls-key", garbage, "PEM"});

  const std::string empty = root_ + "/empty.crt";
  write_file(empty, "");
  expect_error([&] { fl::read_pem_file(empty, "--tls-cert"); }, {"--tls-cert", empty, "empty"});
  expect_error([&] { fl::read_pem_file(root_, "--tls-ca"); }, {"--tls-ca", "not a regular file"});

  // PEM framing around something that is not a certificate.
  const std::string fake = root_ + "/fake.crt";
  write_file(fake, "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n");
  f = mine("hospital-1");
  f.cert = fake;
  expect_error([&] { fl::validate_tls_files(f); }, {"--tls-cert", fake, "certificate"});

  // A certificate given as the key.
  f = mine("hospital-1");
  f.key = f.cert;
  expect_error([&] { fl::validate_tls_files(f); }, {"--tls-key", "private key"});
}

// The TLS version a raw OpenSSL client allowed [min_version, max_version] (security level 0, so
// that the old versions are the server's to refuse) gets from the server at `port`, presenting
// `client`'s certificate; "" when the handshake fails.
std::string negotiated_version(int port, int min_version, int max_version, const fl::TlsFiles& client) {
  std::unique_ptr<SSL_CTX, decltype(&SSL_CTX_free)> ctx(SSL_CTX_new(TLS_client_method()), SSL_CTX_free);
  SSL_CTX_set_security_level(ctx.get(), 0);
  SSL_CTX_set_min_proto_version(ctx.get(), min_version);
  SSL_CTX_set_max_proto_version(ctx.get(), max_version);
  SSL_CTX_set_cipher_list(ctx.get(), "ALL:@SECLEVEL=0");
  if (SSL_CTX_use_certificate_file(ctx.get(), client.cert.c_str(), SSL_FILETYPE_PEM) != 1 ||
      SSL_CTX_use_PrivateKey_file(ctx.get(), client.key.c_str(), SSL_FILETYPE_PEM) != 1)
    throw std::runtime_error("test: cannot load the client's certificate");
  static const unsigned char kAlpn[] = {2, 'h', '2'};  // what gRPC servers require
  SSL_CTX_set_alpn_protos(ctx.get(), kAlpn, sizeof kAlpn);
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    ::close(fd);
    throw std::runtime_error("test: cannot connect");
  }
  std::unique_ptr<SSL, decltype(&SSL_free)> ssl(SSL_new(ctx.get()), SSL_free);
  SSL_set_fd(ssl.get(), fd);
  const std::string version = SSL_connect(ssl.get()) == 1 ? SSL_get_version(ssl.get()) : "";
  ERR_clear_error();
  ::close(fd);
  return version;
}

// Fail closed: over mutual TLS only a certificate whose role is "client" may train; one with no
// role at all (here: CN only, signed by the real CA) is refused like an admin's.
TEST_F(TlsTest, OnlyAClientRoleCertificateMayTrain) {
  const std::string dir = root_ + "/roleless";
  fs::create_directories(dir);
  ASSERT_EQ(run_sh("openssl req -new -key " + pki_ + "/hospital-1.key -subj /CN=nobody -out " + dir +
                   "/nobody.csr 2>/dev/null && openssl x509 -req -in " + dir + "/nobody.csr -CA " + pki_ +
                   "/ca.crt -CAkey " + pki_ + "/ca.key -days 2 -out " + dir + "/nobody.crt 2>/dev/null"),
            0);
  fl::StateStore store(root_ + "/roleless-db");
  fl::Authenticator auth(store, /*insecure=*/false);
  fl::RunSlot slot;  // no run: a caller that passes the identity checks hears UNAVAILABLE
  fl::FederationService federation(slot, auth);
  grpc::ServerBuilder b;
  int port = 0;
  b.AddListeningPort("127.0.0.1:0", fl::make_server_credentials(mine("coordinator")), &port);
  b.RegisterService(&federation);
  auto server = b.BuildAndStart();
  ASSERT_TRUE(server);
  auto register_as = [&](const fl::TlsFiles& who) {
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    auto stub = fl::v1::Federation::NewStub(
        grpc::CreateCustomChannel("127.0.0.1:" + std::to_string(port), fl::make_channel_credentials(who), args));
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    fl::v1::RegisterRequest req;
    req.set_protocol(fl::v1::PROTOCOL_VERSION_1);
    req.set_num_train_examples(10);
    fl::v1::RegisterReply reply;
    return stub->Register(&ctx, req, &reply);
  };
  auto s = register_as({pki_ + "/ca.crt", dir + "/nobody.crt", pki_ + "/hospital-1.key"});
  EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED) << s.error_message();
  EXPECT_NE(s.error_message().find("'nobody' has role 'none'"), std::string::npos) << s.error_message();
  s = register_as(mine("admin"));
  EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED) << s.error_message();
  s = register_as(mine("hospital-2"));
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE) << s.error_message();  // identified; no run yet
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
}

TEST_F(TlsTest, ServerSpeaksTls13AndRefusesAnythingBelowTls12) {
  TestServer server(fl::make_server_credentials(mine("coordinator")));
  EXPECT_EQ(negotiated_version(server.port, TLS1_VERSION, TLS1_3_VERSION, mine("hospital-1")), "TLSv1.3");
  EXPECT_EQ(negotiated_version(server.port, TLS1_2_VERSION, TLS1_2_VERSION, mine("hospital-1")), "TLSv1.2");
  EXPECT_EQ(negotiated_version(server.port, TLS1_VERSION, TLS1_1_VERSION, mine("hospital-1")), "");
  EXPECT_EQ(negotiated_version(server.port, TLS1_VERSION, TLS1_VERSION, mine("hospital-1")), "");
}

TEST_F(TlsTest, APrivateKeyOthersCanReadIsRefused) {
  const std::string key = root_ + "/shared.key";
  fs::copy_file(pki_ + "/hospital-1.key", key, fs::copy_options::overwrite_existing);
  auto f = mine("hospital-1");
  f.key = key;
  ::chmod(key.c_str(), 0644);
  expect_error([&] { fl::validate_tls_files(f); }, {"--tls-key", key, "mode 0644", "chmod 600"});
  ::chmod(key.c_str(), 0640);
  expect_error([&] { fl::validate_tls_files(f); }, {"mode 0640"});
  ::chmod(key.c_str(), 0600);
  EXPECT_NO_THROW(fl::validate_tls_files(f));
}

}  // namespace
