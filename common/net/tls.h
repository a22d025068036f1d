#pragma once
// Mutual TLS for fedcoord, fedclient and fedctl: PEM loading with clear errors, an OpenSSL
// pre-flight check of the files (so that a wrong key or CA is reported by name instead of
// as a failed handshake), gRPC credentials, and the verified identity of a caller.
//
// Identities come from scripts/pki.sh: the certificate's CN is the site's name and its role
// (coordinator | client | admin) is in the SAN URI "fl-role:<role>" and in the OU.
//
// No torch, no gRPC implementation headers: the gRPC types are only declared here.

#include <memory>
#include <optional>
#include <string>

namespace grpc {
class AuthContext;
class ChannelCredentials;
class ServerContext;
class ServerCredentials;
}  // namespace grpc

namespace CLI {
class App;
}  // namespace CLI

namespace fl {

// PEM file paths: the CA that the peer's certificate must chain to, this side's certificate
// (leaf first; intermediates may follow) and its private key (unencrypted).
struct TlsFiles {
  std::string ca, cert, key;
};

// The --tls-ca, --tls-cert, --tls-key and --insecure flags of fedcoord and fedclient, defined
// once; the help texts say whose certificate each one is.
struct TlsFlagHelp {
  std::string ca, cert, key;
};
void add_tls_flags(CLI::App& app, TlsFiles& files, bool& insecure, const TlsFlagHelp& help);
// After parsing: mutual TLS needs all three files unless --insecure (std::invalid_argument).
void require_tls_files(const TlsFiles& files, bool insecure);

// Reads a PEM file whole. Throws std::runtime_error naming `what` (e.g. "--tls-cert") and
// the path when the file is missing, unreadable, not a regular file, empty, or not PEM
// (no "-----BEGIN" line).
std::string read_pem_file(const std::string& path, const std::string& what);

// Checks the three files with OpenSSL before they go to gRPC: each is PEM and parses, the
// key matches the certificate (X509_check_private_key), the certificate chains to the CA
// (X509_verify_cert with only the CA file as trust anchor) and is within its validity
// period (as is the CA). Throws std::runtime_error naming the file(s) and the reason
// ("... does not match ...", "... is not signed by the CA ...", "... expired on ...").
void validate_tls_files(const TlsFiles& f);

// Server side of mutual TLS: clients must present a certificate that chains to f.ca
// (GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY). Validates the files first.
std::shared_ptr<grpc::ServerCredentials> make_server_credentials(const TlsFiles& f);

// Client side: verifies the server against f.ca and presents f.cert/f.key. The server's
// certificate must name the host dialled (pki.sh: localhost, 127.0.0.1, --coordinator-host)
// unless the channel sets an SSL target-name override. Validates the files first.
std::shared_ptr<grpc::ChannelCredentials> make_channel_credentials(const TlsFiles& f);

// The verified peer of a server call.
struct PeerIdentity {
  std::string common_name;  // certificate CN
  std::string role;         // "fl-role:<role>" SAN URI, else the OU; empty when neither
  std::string serial;       // serial number, upper-case hex (certificate_serial)
  // Not empty when the verified certificate could not be read (no PEM in the auth context, a
  // PEM that does not parse): callers must refuse such a peer, since neither its role nor its
  // revocation can be checked.
  std::string error;
};

// The peer of a call whose certificate gRPC verified: CN from the auth context's
// "x509_common_name" property (or the PEM when absent), role parsed from "x509_pem_cert".
// Empty optional for an unauthenticated peer (insecure channel, no client certificate).
std::optional<PeerIdentity> peer_identity(const grpc::ServerContext& ctx);
std::optional<PeerIdentity> peer_identity(const grpc::AuthContext& auth);

// Fields of one PEM certificate (the first in `pem`). Throw std::runtime_error when `pem`
// holds no parsable certificate; return "" when the field is absent.
std::string certificate_common_name(const std::string& pem);
// "fl-role:<role>" SAN URI when present, else the subject's OU.
std::string certificate_role(const std::string& pem);
// The serial number as upper-case hex without leading zeros (OpenSSL's BN_bn2hex form), the
// key a CRL lookup uses.
std::string certificate_serial(const std::string& pem);

}  // namespace fl
