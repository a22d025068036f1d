#include "common/net/tls.h"

#include <sys/stat.h>

#include <CLI/CLI.hpp>

#include "common/net/openssl_util.h"

#include <grpc/grpc_security_constants.h>
#include <grpcpp/security/auth_context.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server_context.h>
#include <openssl/asn1.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>
#include <openssl/x509v3.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <vector>

namespace fl {
namespace {

namespace fs = std::filesystem;

constexpr std::uintmax_t kMaxPemBytes = 1 << 20;  // certificates and keys are a few KiB
constexpr const char* kRoleUriPrefix = "fl-role:";

using namespace ::fl::ossl;

std::string quoted(const std::string& what, const std::string& path) { return what + " '" + path + "'"; }

// Every certificate in a PEM text, in order. Throws if there is none or one is corrupt.
std::vector<X509Ptr> parse_certificates(const std::string& pem, const std::string& what, const std::string& path) {
  ERR_clear_error();
  auto bio = mem_bio(pem);
  std::vector<X509Ptr> certs;
  while (X509* c = PEM_read_bio_X509(bio.get(), nullptr, no_passphrase, nullptr)) certs.emplace_back(c);
  const unsigned long err = ERR_peek_last_error();
  if (certs.empty()) {
    const std::string reason = err ? openssl_error() : "no CERTIFICATE block";
    throw std::runtime_error(quoted(what, path) + " does not hold a PEM certificate (" + reason + ")");
  }
  // Running out of input ends the loop with PEM_R_NO_START_LINE; anything else is damage.
  if (err && !(ERR_GET_LIB(err) == ERR_LIB_PEM && ERR_GET_REASON(err) == PEM_R_NO_START_LINE))
    throw std::runtime_error(quoted(what, path) + ": certificate " + std::to_string(certs.size() + 1) +
                             " does not parse (" + openssl_error() + ")");
  ERR_clear_error();
  return certs;
}

PkeyPtr parse_private_key(const std::string& pem, const std::string& what, const std::string& path) {
  ERR_clear_error();
  auto bio = mem_bio(pem);
  PkeyPtr key(PEM_read_bio_PrivateKey(bio.get(), nullptr, no_passphrase, nullptr));
  if (!key) {
    if (pem.find("ENCRYPTED") != std::string::npos) {
      ERR_clear_error();
      throw std::runtime_error(quoted(what, path) + " is an encrypted private key; give an unencrypted one");
    }
    throw std::runtime_error(quoted(what, path) + " does not hold a PEM private key (" + openssl_error() + ")");
  }
  ERR_clear_error();
  return key;
}

std::string asn1_time_text(const ASN1_TIME* t) {
  if (!t) return "?";
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (!bio || ASN1_TIME_print(bio.get(), t) != 1) return "?";
  return bio_text(bio.get());
}

std::string subject_text(X509* c) {
  char buf[512];
  X509_NAME_oneline(X509_get_subject_name(c), buf, sizeof buf);
  return buf;
}

// Text of the first entry `nid` in a certificate's subject, "" when absent.
std::string subject_entry(X509* c, int nid) {
  X509_NAME* name = X509_get_subject_name(c);
  const int i = X509_NAME_get_index_by_NID(name, nid, -1);
  if (i < 0) return "";
  ASN1_STRING* data = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, i));
  unsigned char* utf8 = nullptr;
  const int n = ASN1_STRING_to_UTF8(&utf8, data);
  if (n < 0) return "";
  std::string out(reinterpret_cast<char*>(utf8), static_cast<std::size_t>(n));
  OPENSSL_free(utf8);
  return out;
}

// The role in a "fl-role:<role>" SAN URI, "" when there is none.
std::string san_role(X509* c) {
  GeneralNamesPtr names(static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(c, NID_subject_alt_name, nullptr, nullptr)));
  if (!names) return "";
  for (int i = 0; i < sk_GENERAL_NAME_num(names.get()); ++i) {
    const GENERAL_NAME* n = sk_GENERAL_NAME_value(names.get(), i);
    if (n->type != GEN_URI) continue;
    const ASN1_IA5STRING* uri = n->d.uniformResourceIdentifier;
    const std::string s(reinterpret_cast<const char*>(ASN1_STRING_get0_data(uri)),
                        static_cast<std::size_t>(ASN1_STRING_length(uri)));
    if (s.rfind(kRoleUriPrefix, 0) == 0) return s.substr(std::strlen(kRoleUriPrefix));
  }
  return "";
}

X509Ptr first_certificate(const std::string& pem) {
  ERR_clear_error();
  auto bio = mem_bio(pem);
  X509Ptr c(PEM_read_bio_X509(bio.get(), nullptr, no_passphrase, nullptr));
  if (!c) throw std::runtime_error("not a PEM certificate (" + openssl_error() + ")");
  ERR_clear_error();
  return c;
}

}  // namespace

std::string read_pem_file(const std::string& path, const std::string& what) {
  if (path.empty()) throw std::runtime_error(what + ": no file given");
  std::error_code ec;
  const auto st = fs::status(path, ec);
  if (ec || !fs::exists(st)) {
    if (ec && ec != std::errc::no_such_file_or_directory)
      throw std::runtime_error(quoted(what, path) + ": cannot access file: " + ec.message());
    throw std::runtime_error(quoted(what, path) + ": file does not exist");
  }
  if (!fs::is_regular_file(st)) throw std::runtime_error(quoted(what, path) + " is not a regular file");
  const auto size = fs::file_size(path, ec);
  if (!ec && size > kMaxPemBytes)
    throw std::runtime_error(quoted(what, path) + " is too large for a PEM file (" + std::to_string(size) + " bytes)");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(quoted(what, path) + ": cannot open file: " + std::strerror(errno));
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) throw std::runtime_error(quoted(what, path) + ": read error: " + std::strerror(errno));
  std::string pem = text.str();
  if (pem.find_first_not_of(" \t\r\n") == std::string::npos)
    throw std::runtime_error(quoted(what, path) + " is empty");
  if (pem.find("-----BEGIN") == std::string::npos)
    throw std::runtime_error(quoted(what, path) + " is not PEM (no '-----BEGIN' line)");
  return pem;
}

void validate_tls_files(const TlsFiles& f) {
  const std::string ca_pem = read_pem_file(f.ca, "--tls-ca");
  const std::string cert_pem = read_pem_file(f.cert, "--tls-cert");
  const std::string key_pem = read_pem_file(f.key, "--tls-key");

  auto cas = parse_certificates(ca_pem, "--tls-ca", f.ca);
  auto chain = parse_certificates(cert_pem, "--tls-cert", f.cert);
  auto key = parse_private_key(key_pem, "--tls-key", f.key);
  // As ssh does: a private key others can read is not private any more.
  struct stat st {};
  if (::stat(f.key.c_str(), &st) == 0 && (st.st_mode & 077) != 0) {
    char mode[8];
    std::snprintf(mode, sizeof mode, "%04o", static_cast<unsigned>(st.st_mode & 07777));
    throw std::runtime_error(quoted("--tls-key", f.key) + " is accessible by group or others (mode " + mode +
                             "): make it private with chmod 600");
  }
  X509* leaf = chain.front().get();

  ERR_clear_error();
  if (X509_check_private_key(leaf, key.get()) != 1) {
    ERR_clear_error();
    throw std::runtime_error(quoted("--tls-key", f.key) + " does not match the certificate " +
                             quoted("--tls-cert", f.cert) + " (" + subject_text(leaf) + ")");
  }

  for (auto& c : cas)
    if (X509_check_ca(c.get()) == 0)
      throw std::runtime_error(quoted("--tls-ca", f.ca) + " holds a certificate that is not a CA (" +
                               subject_text(c.get()) + "); give the CA certificate (ca.crt)");

  StorePtr store(X509_STORE_new());
  StackPtr untrusted(sk_X509_new_null());
  StoreCtxPtr ctx(X509_STORE_CTX_new());
  if (!store || !untrusted || !ctx) throw std::runtime_error("out of memory (X509 store)");
  for (auto& c : cas)
    if (X509_STORE_add_cert(store.get(), c.get()) != 1) {
      const unsigned long err = ERR_peek_last_error();
      if (!(ERR_GET_LIB(err) == ERR_LIB_X509 && ERR_GET_REASON(err) == X509_R_CERT_ALREADY_IN_HASH_TABLE))
        throw std::runtime_error(quoted("--tls-ca", f.ca) + ": cannot use certificate (" + openssl_error() + ")");
      ERR_clear_error();
    }
  for (std::size_t i = 1; i < chain.size(); ++i) {
    if (!sk_X509_push(untrusted.get(), chain[i].get())) throw std::runtime_error("out of memory (X509 stack)");
    chain[i].release();  // now owned by the stack
  }
  if (X509_STORE_CTX_init(ctx.get(), store.get(), leaf, untrusted.get()) != 1)
    throw std::runtime_error("cannot set up certificate verification (" + openssl_error() + ")");
  if (X509_verify_cert(ctx.get()) != 1) {
    const int err = X509_STORE_CTX_get_error(ctx.get());
    X509* bad = X509_STORE_CTX_get_current_cert(ctx.get());
    const std::string which = bad ? " [" + subject_text(bad) + "]" : "";
    const std::string cert = quoted("--tls-cert", f.cert);
    const std::string ca = quoted("--tls-ca", f.ca);
    ERR_clear_error();
    switch (err) {
      case X509_V_ERR_CERT_HAS_EXPIRED:
        throw std::runtime_error(cert + ": certificate" + which + " expired on " +
                                 asn1_time_text(bad ? X509_get0_notAfter(bad) : nullptr));
      case X509_V_ERR_CERT_NOT_YET_VALID:
        throw std::runtime_error(cert + ": certificate" + which + " is not valid before " +
                                 asn1_time_text(bad ? X509_get0_notBefore(bad) : nullptr));
      case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
      case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
      case X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
      case X509_V_ERR_CERT_SIGNATURE_FAILURE:
      case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
      case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
        throw std::runtime_error(cert + " (" + subject_text(leaf) + ") is not signed by the CA in " + ca + ": " +
                                 X509_verify_cert_error_string(err));
      default:
        throw std::runtime_error(cert + " does not verify against the CA in " + ca + ": " +
                                 X509_verify_cert_error_string(err) + which);
    }
  }
}

std::shared_ptr<grpc::ServerCredentials> make_server_credentials(const TlsFiles& f) {
  validate_tls_files(f);
  grpc::SslServerCredentialsOptions opts(GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  opts.pem_root_certs = read_pem_file(f.ca, "--tls-ca");
  opts.pem_key_cert_pairs.push_back({read_pem_file(f.key, "--tls-key"), read_pem_file(f.cert, "--tls-cert")});
  return grpc::SslServerCredentials(opts);
}

std::shared_ptr<grpc::ChannelCredentials> make_channel_credentials(const TlsFiles& f) {
  validate_tls_files(f);
  grpc::SslCredentialsOptions opts;
  opts.pem_root_certs = read_pem_file(f.ca, "--tls-ca");
  opts.pem_private_key = read_pem_file(f.key, "--tls-key");
  opts.pem_cert_chain = read_pem_file(f.cert, "--tls-cert");
  return grpc::SslCredentials(opts);
}

std::optional<PeerIdentity> peer_identity(const grpc::AuthContext& auth) {
  if (!auth.IsPeerAuthenticated()) return std::nullopt;
  PeerIdentity id;
  const auto cns = auth.FindPropertyValues(GRPC_X509_CN_PROPERTY_NAME);
  if (!cns.empty()) id.common_name.assign(cns.front().data(), cns.front().size());
  const auto pems = auth.FindPropertyValues(GRPC_X509_PEM_CERT_PROPERTY_NAME);
  // Authenticated but not by an X.509 certificate (e.g. ALTS): not an identity we know.
  if (cns.empty() && pems.empty()) return std::nullopt;
  if (pems.empty()) {
    id.error = "the verified certificate is not available to check its role and revocation";
    return id;
  }
  const std::string pem(pems.front().data(), pems.front().size());
  try {
    if (id.common_name.empty()) id.common_name = certificate_common_name(pem);
    id.role = certificate_role(pem);
    id.serial = certificate_serial(pem);
  } catch (const std::exception& e) {
    id.error = std::string("the verified certificate cannot be read: ") + e.what();  // fail closed
  }
  if (id.error.empty() && id.serial.empty()) id.error = "the verified certificate has no serial number";
  return id;
}

std::optional<PeerIdentity> peer_identity(const grpc::ServerContext& ctx) {
  const auto auth = ctx.auth_context();
  if (!auth) return std::nullopt;
  return peer_identity(*auth);
}

std::string certificate_common_name(const std::string& pem) {
  auto c = first_certificate(pem);
  return subject_entry(c.get(), NID_commonName);
}

std::string certificate_role(const std::string& pem) {
  auto c = first_certificate(pem);
  std::string role = san_role(c.get());
  if (role.empty()) role = subject_entry(c.get(), NID_organizationalUnitName);
  return role;
}

std::string certificate_serial(const std::string& pem) {
  auto c = first_certificate(pem);
  return asn1_int_hex(X509_get0_serialNumber(c.get()));
}

void add_tls_flags(CLI::App& app, TlsFiles& files, bool& insecure, const TlsFlagHelp& help) {
  app.add_option("--tls-ca", files.ca, help.ca);
  app.add_option("--tls-cert", files.cert, help.cert);
  app.add_option("--tls-key", files.key, help.key);
  app.add_flag("--insecure", insecure, "plaintext, unauthenticated: tests only (logs a loud warning)");
}

void require_tls_files(const TlsFiles& files, bool insecure) {
  if (!insecure && (files.ca.empty() || files.cert.empty() || files.key.empty()))
    throw std::invalid_argument("mutual TLS needs --tls-ca, --tls-cert and --tls-key (or --insecure for a test)");
}

}  // namespace fl
