#include "common/net/pki.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/asn1.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <memory>
#include <regex>
#include <sstream>
#include <stdexcept>

#include "common/io/atomic_file.h"
#include "common/net/openssl_util.h"
#include "common/net/tls.h"
#include "common/util/text.h"

namespace fl::pki {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::ordered_json;

constexpr const char* kOrganization = "federated-dev";
constexpr long kCaDays = 3650;        // 10 years
constexpr long kCrlNextUpdateDays = 3650;  // a dev CRL is re-signed only on revocation: keep it valid
constexpr int kMaxDays = 3650;

using namespace ::fl::ossl;

void check(int ok, const char* what) {
  if (ok != 1) fail(what);
}

std::string path_in(const std::string& dir, const std::string& file) { return (fs::path(dir) / file).string(); }

X509Ptr parse_cert(const std::string& pem, const std::string& path) {
  ERR_clear_error();
  auto bio = mem_bio(pem);
  X509Ptr c(PEM_read_bio_X509(bio.get(), nullptr, no_passphrase, nullptr));
  if (!c) throw std::runtime_error("'" + path + "' does not hold a PEM certificate (" + openssl_error() + ")");
  return c;
}

PkeyPtr parse_key(const std::string& pem, const std::string& path) {
  ERR_clear_error();
  auto bio = mem_bio(pem);
  PkeyPtr k(PEM_read_bio_PrivateKey(bio.get(), nullptr, no_passphrase, nullptr));
  if (!k)
    throw std::runtime_error("'" + path + "' does not hold an unencrypted PEM private key (" + openssl_error() + ")");
  return k;
}

std::string cert_pem(X509* c) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (!bio || PEM_write_bio_X509(bio.get(), c) != 1) fail("PEM_write_bio_X509");
  return bio_text(bio.get());
}

std::string key_pem(EVP_PKEY* k) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (!bio || PEM_write_bio_PrivateKey(bio.get(), k, nullptr, nullptr, 0, nullptr, nullptr) != 1)
    fail("PEM_write_bio_PrivateKey");
  return bio_text(bio.get());
}

std::string crl_pem(X509_CRL* crl) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (!bio || PEM_write_bio_X509_CRL(bio.get(), crl) != 1) fail("PEM_write_bio_X509_CRL");
  return bio_text(bio.get());
}

PkeyPtr new_p256_key() {
  PkeyPtr k(EVP_EC_gen("P-256"));
  if (!k) fail("cannot generate an EC P-256 key");
  return k;
}

// A random positive serial of up to 128 bits (never zero).
AsnIntPtr random_serial() {
  BnPtr bn(BN_new());
  if (!bn) fail("BN_new");
  do {
    check(BN_rand(bn.get(), 128, BN_RAND_TOP_ANY, BN_RAND_BOTTOM_ANY), "BN_rand");
  } while (BN_is_zero(bn.get()));
  AsnIntPtr serial(BN_to_ASN1_INTEGER(bn.get(), nullptr));
  if (!serial) fail("BN_to_ASN1_INTEGER");
  return serial;
}

std::string iso_utc(std::time_t t) {
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::string iso_utc(const ASN1_TIME* t) {
  std::tm tm{};
  if (!t || ASN1_TIME_to_tm(t, &tm) != 1) return "";
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

// ---- files -------------------------------------------------------------------------------

// Certificates, keys, the index and the CRL are replaced atomically, so a reader (the
// coordinator's RevocationList) sees the old file or the new one, never half; keys get
// exactly 0600 whatever the umask, the rest exactly 0644.
void write_atomic(const std::string& path, const std::string& data, mode_t mode) {
  write_file_atomically(path, data, mode, /*exact_mode=*/true);
}

// Serialises fedctl processes working on the same directory (issue/revoke read-modify-write
// the index and the CRL).
class DirLock {
 public:
  explicit DirLock(const std::string& dir) {
    const std::string p = path_in(dir, ".lock");
    fd_ = ::open(p.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd_ < 0) throw std::runtime_error("cannot open lock file '" + p + "': " + std::strerror(errno));
    while (::flock(fd_, LOCK_EX) != 0) {
      if (errno == EINTR) continue;
      const std::string err = std::strerror(errno);
      ::close(fd_);
      throw std::runtime_error("cannot lock '" + p + "': " + err);
    }
  }
  ~DirLock() { ::close(fd_); }  // closing releases the flock
  DirLock(const DirLock&) = delete;
  DirLock& operator=(const DirLock&) = delete;

 private:
  int fd_ = -1;
};

// ---- the index ---------------------------------------------------------------------------

struct Entry {
  std::string name, role, serial, not_after, issued_at, cert, key;  // cert/key: file names in DIR
  bool revoked = false;
  std::int64_t revoked_epoch = 0;
};

struct Index {
  std::int64_t crl_number = 1;  // number of the CRL now in crl.pem
  std::vector<Entry> entries;   // issue order
};

Index load_index(const std::string& dir) {
  const std::string path = index_path(dir);
  Index idx;
  if (!fs::exists(path)) return idx;  // a CA from scripts/pki.sh has no index yet
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot read '" + path + "': " + std::strerror(errno));
  try {
    const auto j = json::parse(in);
    idx.crl_number = j.at("crl_number").get<std::int64_t>();
    for (const auto& e : j.at("certificates")) {
      Entry x;
      x.name = e.at("name").get<std::string>();
      x.role = e.at("role").get<std::string>();
      x.serial = e.at("serial").get<std::string>();
      x.not_after = e.at("not_after").get<std::string>();
      x.issued_at = e.value("issued_at", "");
      x.cert = e.at("cert").get<std::string>();
      x.key = e.at("key").get<std::string>();
      x.revoked = e.at("revoked").get<bool>();
      x.revoked_epoch = e.value("revoked_epoch", std::int64_t{0});
      idx.entries.push_back(std::move(x));
    }
  } catch (const json::exception& e) {
    throw std::runtime_error("'" + path + "' is not a valid PKI index: " + e.what());
  }
  return idx;
}

void save_index(const std::string& dir, const Index& idx) {
  json certs = json::array();
  for (const auto& e : idx.entries) {
    json j;
    j["name"] = e.name;
    j["role"] = e.role;
    j["serial"] = e.serial;
    j["not_after"] = e.not_after;
    j["issued_at"] = e.issued_at;
    j["cert"] = e.cert;
    j["key"] = e.key;
    j["revoked"] = e.revoked;
    if (e.revoked) {
      j["revoked_at"] = iso_utc(static_cast<std::time_t>(e.revoked_epoch));
      j["revoked_epoch"] = e.revoked_epoch;
    }
    certs.push_back(std::move(j));
  }
  json j;
  j["crl_number"] = idx.crl_number;
  j["certificates"] = std::move(certs);
  write_atomic(index_path(dir), j.dump(2) + "\n", 0644);
}

CertInfo to_info(const std::string& dir, const Entry& e) {
  CertInfo c;
  c.name = e.name;
  c.role = e.role;
  c.serial = e.serial;
  c.not_after = e.not_after;
  c.revoked = e.revoked;
  if (e.revoked) c.revoked_at = iso_utc(static_cast<std::time_t>(e.revoked_epoch));
  c.cert_path = e.cert.empty() ? "" : path_in(dir, e.cert);
  c.key_path = e.key.empty() ? "" : path_in(dir, e.key);
  return c;
}

// ---- certificates ------------------------------------------------------------------------

void add_ext(X509* cert, X509V3_CTX* ctx, int nid, const std::string& value) {
  ExtPtr ext(X509V3_EXT_nconf_nid(nullptr, ctx, nid, value.c_str()));
  if (!ext) fail("cannot build extension " + std::string(OBJ_nid2sn(nid)) + "=" + value);
  check(X509_add_ext(cert, ext.get(), -1), "X509_add_ext");
}

void add_name_entry(X509_NAME* name, const char* field, const std::string& value) {
  if (X509_NAME_add_entry_by_txt(name, field, MBSTRING_UTF8, reinterpret_cast<const unsigned char*>(value.c_str()),
                                 -1, -1, 0) != 1)
    fail(std::string("cannot set ") + field + "=" + value);
}

struct Ca {
  X509Ptr cert;
  PkeyPtr key;
};

Ca load_ca(const std::string& dir) {
  const std::string crt = ca_cert_path(dir), key = ca_key_path(dir);
  for (const auto& p : {crt, key})
    if (!fs::exists(p))
      throw std::runtime_error("no CA in '" + dir + "': '" + p + "' does not exist (run `fedctl pki init --dir " +
                               dir + "` first)");
  Ca ca;
  ca.cert = parse_cert(read_pem_file(crt, "CA certificate"), crt);
  ca.key = parse_key(read_pem_file(key, "CA key"), key);
  if (X509_check_private_key(ca.cert.get(), ca.key.get()) != 1) {
    ERR_clear_error();
    throw std::runtime_error("'" + key + "' does not match the CA certificate '" + crt + "'");
  }
  return ca;
}

// A v2 CRL from the CA listing every revoked entry of the index.
std::string build_crl(const Ca& ca, const std::vector<Entry>& entries, std::int64_t number) {
  CrlPtr crl(X509_CRL_new());
  if (!crl) fail("X509_CRL_new");
  check(X509_CRL_set_version(crl.get(), X509_CRL_VERSION_2), "X509_CRL_set_version");
  check(X509_CRL_set_issuer_name(crl.get(), X509_get_subject_name(ca.cert.get())), "X509_CRL_set_issuer_name");
  std::time_t now = std::time(nullptr);
  AsnTimePtr last(ASN1_TIME_set(nullptr, now));
  AsnTimePtr next(X509_time_adj_ex(nullptr, kCrlNextUpdateDays, 0, &now));
  if (!last || !next) fail("ASN1_TIME_set");
  check(X509_CRL_set1_lastUpdate(crl.get(), last.get()), "X509_CRL_set1_lastUpdate");
  check(X509_CRL_set1_nextUpdate(crl.get(), next.get()), "X509_CRL_set1_nextUpdate");
  for (const auto& e : entries) {
    if (!e.revoked) continue;
    BIGNUM* raw = nullptr;
    if (BN_hex2bn(&raw, e.serial.c_str()) == 0) throw std::runtime_error("index holds a bad serial '" + e.serial + "'");
    BnPtr bn(raw);
    AsnIntPtr serial(BN_to_ASN1_INTEGER(bn.get(), nullptr));
    AsnTimePtr when(ASN1_TIME_set(nullptr, static_cast<std::time_t>(e.revoked_epoch)));
    RevokedPtr r(X509_REVOKED_new());
    if (!serial || !when || !r) fail("X509_REVOKED_new");
    check(X509_REVOKED_set_serialNumber(r.get(), serial.get()), "X509_REVOKED_set_serialNumber");
    check(X509_REVOKED_set_revocationDate(r.get(), when.get()), "X509_REVOKED_set_revocationDate");
    check(X509_CRL_add0_revoked(crl.get(), r.get()), "X509_CRL_add0_revoked");
    r.release();  // owned by the CRL now
  }
  AsnIntPtr num(ASN1_INTEGER_new());
  if (!num) fail("ASN1_INTEGER_new");
  check(ASN1_INTEGER_set_int64(num.get(), number), "ASN1_INTEGER_set_int64");
  check(X509_CRL_add1_ext_i2d(crl.get(), NID_crl_number, num.get(), 0, 0), "crlNumber");
  X509V3_CTX ctx;
  X509V3_set_ctx(&ctx, ca.cert.get(), nullptr, nullptr, crl.get(), 0);
  ExtPtr akid(X509V3_EXT_nconf_nid(nullptr, &ctx, NID_authority_key_identifier, "keyid:always"));
  if (!akid) fail("authorityKeyIdentifier");
  check(X509_CRL_add_ext(crl.get(), akid.get(), -1), "X509_CRL_add_ext");
  check(X509_CRL_sort(crl.get()), "X509_CRL_sort");
  if (X509_CRL_sign(crl.get(), ca.key.get(), EVP_sha256()) <= 0) fail("cannot sign the CRL");
  return crl_pem(crl.get());
}

struct ParsedCrl {
  std::unordered_set<std::string> serials;
  std::int64_t number = 0;  // its crlNumber
};

// The revoked serials and the number of a CRL text, after checking that `ca` signed it, that it
// carries a crlNumber and that its nextUpdate has not passed (an expired CRL no longer says
// which certificates are revoked: refused, as a TLS stack refuses one).
ParsedCrl parse_crl(const std::string& pem, const std::string& path, X509* ca) {
  ERR_clear_error();
  auto bio = mem_bio(pem);
  CrlPtr crl(PEM_read_bio_X509_CRL(bio.get(), nullptr, no_passphrase, nullptr));
  if (!crl) throw std::runtime_error("CRL '" + path + "' does not parse (" + openssl_error() + ")");
  if (X509_NAME_cmp(X509_CRL_get_issuer(crl.get()), X509_get_subject_name(ca)) != 0)
    throw std::runtime_error("CRL '" + path + "' was not issued by the CA (issuer name differs)");
  EVP_PKEY* ca_key = X509_get0_pubkey(ca);
  if (!ca_key || X509_CRL_verify(crl.get(), ca_key) != 1) {
    ERR_clear_error();
    throw std::runtime_error("CRL '" + path + "' is not signed by the CA");
  }
  ParsedCrl out;
  const ASN1_TIME* next = X509_CRL_get0_nextUpdate(crl.get());
  if (next && X509_cmp_current_time(next) <= 0) {
    std::string when = "?";
    if (auto b = BioPtr(BIO_new(BIO_s_mem())); b && ASN1_TIME_print(b.get(), next) == 1) {
      char* p = nullptr;
      const long n = BIO_get_mem_data(b.get(), &p);
      when.assign(p, static_cast<size_t>(n));
    }
    throw std::runtime_error("CRL '" + path + "' expired at " + when + " (its nextUpdate): sign a new one");
  }
  int critical = 0;
  AsnIntPtr number(static_cast<ASN1_INTEGER*>(X509_CRL_get_ext_d2i(crl.get(), NID_crl_number, &critical, nullptr)));
  if (!number || ASN1_INTEGER_get_int64(&out.number, number.get()) != 1 || out.number < 0) {
    ERR_clear_error();
    throw std::runtime_error("CRL '" + path + "' has no usable crlNumber");
  }
  STACK_OF(X509_REVOKED)* revoked = X509_CRL_get_REVOKED(crl.get());
  for (int i = 0; i < sk_X509_REVOKED_num(revoked); ++i)
    out.serials.insert(asn1_int_hex(X509_REVOKED_get0_serialNumber(sk_X509_REVOKED_value(revoked, i))));
  return out;
}

void validate_name(const std::string& name) {
  if (name.empty()) throw std::invalid_argument("certificate name is empty");
  if (name.size() > 64)  // the CN's upper bound (RFC 5280 ub-common-name)
    throw std::invalid_argument("certificate name '" + name + "' is longer than 64 characters");
  if (!is_plain_name(name))
    throw std::invalid_argument("invalid certificate name '" + name +
                                "' (letters, digits, '.', '_', '-'; starting with a letter or digit)");
  if (name == "ca" || name == "crl" || name == "index")
    throw std::invalid_argument("certificate name '" + name + "' is reserved for the PKI's own files");
}

// Returns the SAN entry for a --host: "IP:<addr>" or "DNS:<name>".
std::string host_san(const std::string& h) {
  unsigned char buf[sizeof(struct in6_addr)];
  if (::inet_pton(AF_INET, h.c_str(), buf) == 1) return "IP:" + h;
  if (::inet_pton(AF_INET6, h.c_str(), buf) == 1) return "IP:" + h;
  static const std::regex looks_numeric("^[0-9.]+$");
  if (h.find(':') != std::string::npos || std::regex_match(h, looks_numeric))
    throw std::invalid_argument("invalid host '" + h + "': not a valid IP address");
  static const std::regex dns(
      "^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$");
  if (h.empty() || h.size() > 253 || !std::regex_match(h, dns))
    throw std::invalid_argument("invalid host '" + h + "': not an IP address or DNS name");
  return "DNS:" + h;
}

}  // namespace

std::string ca_cert_path(const std::string& dir) { return path_in(dir, "ca.crt"); }
std::string ca_key_path(const std::string& dir) { return path_in(dir, "ca.key"); }
std::string crl_path(const std::string& dir) { return path_in(dir, "crl.pem"); }
std::string index_path(const std::string& dir) { return path_in(dir, "index.json"); }

void init_ca(const std::string& dir, const std::string& ca_common_name) {
  if (dir.empty()) throw std::invalid_argument("PKI directory is empty");
  if (ca_common_name.empty() || ca_common_name.size() > 64)
    throw std::invalid_argument("CA name '" + ca_common_name + "' must have 1..64 characters");
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw std::runtime_error("cannot create directory '" + dir + "': " + ec.message());
  DirLock lock(dir);
  for (const auto& p : {ca_key_path(dir), ca_cert_path(dir), crl_path(dir), index_path(dir)})
    if (fs::exists(p)) throw std::runtime_error("'" + dir + "' already has a CA: '" + p + "' exists");

  Ca ca;
  ca.key = new_p256_key();
  ca.cert.reset(X509_new());
  X509* c = ca.cert.get();
  if (!c) fail("X509_new");
  check(X509_set_version(c, X509_VERSION_3), "X509_set_version");
  auto serial = random_serial();
  check(X509_set_serialNumber(c, serial.get()), "X509_set_serialNumber");
  X509_NAME* name = X509_get_subject_name(c);
  add_name_entry(name, "O", kOrganization);
  add_name_entry(name, "CN", ca_common_name);
  check(X509_set_issuer_name(c, name), "X509_set_issuer_name");
  std::time_t now = std::time(nullptr);  // one reading: the validity is exactly kCaDays
  if (!X509_time_adj_ex(X509_getm_notBefore(c), 0, 0, &now) ||
      !X509_time_adj_ex(X509_getm_notAfter(c), kCaDays, 0, &now))
    fail("cannot set the CA's validity");
  check(X509_set_pubkey(c, ca.key.get()), "X509_set_pubkey");
  X509V3_CTX ctx;
  X509V3_set_ctx(&ctx, c, c, nullptr, nullptr, 0);
  add_ext(c, &ctx, NID_basic_constraints, "critical,CA:TRUE");
  add_ext(c, &ctx, NID_key_usage, "critical,keyCertSign,cRLSign");
  add_ext(c, &ctx, NID_subject_key_identifier, "hash");
  add_ext(c, &ctx, NID_authority_key_identifier, "keyid:always");  // after the SKI it copies
  if (X509_sign(c, ca.key.get(), EVP_sha256()) <= 0) fail("cannot sign the CA certificate");

  // Key first: a crash in between leaves no ca.crt, so a re-run is refused by name, not half-done silently.
  write_atomic(ca_key_path(dir), key_pem(ca.key.get()), 0600);
  write_atomic(ca_cert_path(dir), cert_pem(c), 0644);
  Index idx;
  write_atomic(crl_path(dir), build_crl(ca, idx.entries, idx.crl_number), 0644);
  save_index(dir, idx);
}

CertInfo issue(const std::string& dir, const IssueRequest& req) {
  const bool coordinator = req.role == "coordinator";
  if (req.role != "client" && req.role != "admin" && !coordinator)
    throw std::invalid_argument("invalid role '" + req.role + "' (client, admin or coordinator)");
  validate_name(req.name);
  if (req.days < 1 || req.days > kMaxDays)
    throw std::invalid_argument("invalid validity of " + std::to_string(req.days) + " days (1.." +
                                std::to_string(kMaxDays) + ")");
  std::string san = "URI:fl-role:" + req.role;
  if (coordinator) {
    std::vector<std::string> sans = {"DNS:localhost", "IP:127.0.0.1"};
    for (const auto& h : req.hosts) {
      const std::string s = host_san(h);
      if (std::find(sans.begin(), sans.end(), s) == sans.end()) sans.push_back(s);
    }
    for (const auto& s : sans) san += "," + s;
  } else if (!req.hosts.empty()) {
    throw std::invalid_argument("host '" + req.hosts.front() + "' given for role '" + req.role +
                                "': only a coordinator certificate names hosts");
  }

  if (!fs::is_directory(dir))
    throw std::runtime_error("PKI directory '" + dir + "' does not exist (run `fedctl pki init`)");
  DirLock lock(dir);
  Ca ca = load_ca(dir);
  Index idx = load_index(dir);
  bool had_revoked = false;
  for (const auto& e : idx.entries) {
    if (e.name != req.name) continue;
    if (!e.revoked)
      throw std::runtime_error("'" + req.name + "' already has a certificate (serial " + e.serial +
                               "); revoke it first to re-issue");
    had_revoked = true;
  }
  const std::string crt_file = req.name + ".crt", key_file = req.name + ".key";
  const std::string crt = path_in(dir, crt_file), key = path_in(dir, key_file);
  if (!had_revoked)  // files the index does not know (e.g. from scripts/pki.sh): never overwrite them
    for (const auto& p : {crt, key})
      if (fs::exists(p))
        throw std::runtime_error("'" + p + "' exists but is not in the index '" + index_path(dir) + "'");

  PkeyPtr leaf_key = new_p256_key();
  X509Ptr cert(X509_new());
  X509* c = cert.get();
  if (!c) fail("X509_new");
  check(X509_set_version(c, X509_VERSION_3), "X509_set_version");
  std::string serial_hex;
  for (;;) {  // a collision with an issued serial is 2^-128-unlikely, but the CRL keys on it
    auto serial = random_serial();
    serial_hex = asn1_int_hex(serial.get());
    const bool used = std::any_of(idx.entries.begin(), idx.entries.end(),
                                  [&](const Entry& e) { return e.serial == serial_hex; });
    if (used) continue;
    check(X509_set_serialNumber(c, serial.get()), "X509_set_serialNumber");
    break;
  }
  X509_NAME* name = X509_get_subject_name(c);
  add_name_entry(name, "O", kOrganization);
  add_name_entry(name, "OU", req.role);
  add_name_entry(name, "CN", req.name);
  check(X509_set_issuer_name(c, X509_get_subject_name(ca.cert.get())), "X509_set_issuer_name");
  std::time_t now = std::time(nullptr);  // one reading: the validity is exactly req.days
  if (!X509_time_adj_ex(X509_getm_notBefore(c), 0, 0, &now) ||
      !X509_time_adj_ex(X509_getm_notAfter(c), req.days, 0, &now))
    fail("cannot set the validity");
  if (ASN1_TIME_compare(X509_get0_notAfter(c), X509_get0_notAfter(ca.cert.get())) >= 0)
    throw std::invalid_argument("a validity of " + std::to_string(req.days) +
                                " days would outlive the CA (it must end before " +
                                iso_utc(X509_get0_notAfter(ca.cert.get())) + ")");
  check(X509_set_pubkey(c, leaf_key.get()), "X509_set_pubkey");
  X509V3_CTX ctx;
  X509V3_set_ctx(&ctx, ca.cert.get(), c, nullptr, nullptr, 0);
  add_ext(c, &ctx, NID_basic_constraints, "critical,CA:FALSE");
  add_ext(c, &ctx, NID_key_usage, "critical,digitalSignature");
  add_ext(c, &ctx, NID_ext_key_usage, coordinator ? "serverAuth,clientAuth" : "clientAuth");
  add_ext(c, &ctx, NID_subject_key_identifier, "hash");
  add_ext(c, &ctx, NID_authority_key_identifier, "keyid,issuer");
  add_ext(c, &ctx, NID_subject_alt_name, san);
  if (X509_sign(c, ca.key.get(), EVP_sha256()) <= 0) fail("cannot sign the certificate");

  write_atomic(key, key_pem(leaf_key.get()), 0600);
  write_atomic(crt, cert_pem(c), 0644);
  // The files of a revoked earlier certificate under this name are gone: say so in its entry.
  for (auto& e : idx.entries)
    if (e.name == req.name) e.cert.clear(), e.key.clear();
  Entry e;
  e.name = req.name;
  e.role = req.role;
  e.serial = serial_hex;
  e.not_after = iso_utc(X509_get0_notAfter(c));
  e.issued_at = iso_utc(now);
  e.cert = crt_file;
  e.key = key_file;
  idx.entries.push_back(e);
  save_index(dir, idx);
  return to_info(dir, e);
}

CertInfo revoke(const std::string& dir, const std::string& name) {
  validate_name(name);
  if (!fs::is_directory(dir)) throw std::runtime_error("PKI directory '" + dir + "' does not exist");
  DirLock lock(dir);
  Ca ca = load_ca(dir);
  Index idx = load_index(dir);
  Entry* current = nullptr;
  for (auto& e : idx.entries)
    if (e.name == name) current = &e;  // the latest certificate of that name
  if (!current) throw std::invalid_argument("no certificate named '" + name + "' in '" + index_path(dir) + "'");
  if (current->revoked)
    throw std::invalid_argument("certificate '" + name + "' (serial " + current->serial + ") is already revoked (at " +
                                iso_utc(static_cast<std::time_t>(current->revoked_epoch)) + ")");
  current->revoked = true;
  current->revoked_epoch = static_cast<std::int64_t>(std::time(nullptr));
  idx.crl_number += 1;
  // CRL before index: if the index write fails the serial is already refused, and a retry
  // (index still says "not revoked") rebuilds the same CRL.
  write_atomic(crl_path(dir), build_crl(ca, idx.entries, idx.crl_number), 0644);
  save_index(dir, idx);
  return to_info(dir, *current);
}

std::vector<CertInfo> list(const std::string& dir) {
  if (!fs::exists(ca_cert_path(dir)) && !fs::exists(index_path(dir)))
    throw std::runtime_error("no PKI in '" + dir + "': '" + ca_cert_path(dir) + "' does not exist");
  const Index idx = load_index(dir);
  std::vector<CertInfo> out;
  for (const auto& e : idx.entries) out.push_back(to_info(dir, e));
  std::stable_sort(out.begin(), out.end(), [](const CertInfo& a, const CertInfo& b) { return a.name < b.name; });
  return out;
}

// ---- RevocationList ----------------------------------------------------------------------

RevocationList::RevocationList(std::string crl_path, std::string ca_cert_path, std::chrono::milliseconds recheck)
    : crl_path_(std::move(crl_path)), recheck_(recheck) {
  ca_pem_ = read_pem_file(ca_cert_path, "CA certificate");
  auto ca = parse_cert(ca_pem_, ca_cert_path);
  seen_ = stamp();
  ParsedCrl crl = parse_crl(read_pem_file(crl_path_, "CRL"), crl_path_, ca.get());
  serials_ = std::move(crl.serials);
  number_ = crl.number;
  last_check_ = std::chrono::steady_clock::now();
}

RevocationList::FileStamp RevocationList::stamp() const {
  FileStamp s;
  struct stat st {};
  if (::stat(crl_path_.c_str(), &st) != 0) return s;
  s.exists = true;
  s.ino = static_cast<std::uint64_t>(st.st_ino);
  s.size = static_cast<std::uint64_t>(st.st_size);
  s.mtime_ns = static_cast<std::int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
  return s;
}

void RevocationList::maybe_reload() {
  const auto now = std::chrono::steady_clock::now();
  if (now - last_check_ < recheck_) return;
  last_check_ = now;
  const FileStamp s = stamp();
  if (s == seen_) return;
  seen_ = s;  // a bad file is reported once, not on every check
  try {
    auto ca = parse_cert(ca_pem_, "CA certificate");
    ParsedCrl crl = parse_crl(read_pem_file(crl_path_, "CRL"), crl_path_, ca.get());
    // An older CRL (a backup restored, a replay) could un-revoke a certificate.
    if (crl.number < number_)
      throw std::runtime_error("CRL '" + crl_path_ + "' has crlNumber " + std::to_string(crl.number) +
                               ", older than the " + std::to_string(number_) + " already enforced");
    serials_ = std::move(crl.serials);
    number_ = crl.number;
    spdlog::info("reloaded CRL '{}' (number {}): {} revoked certificate(s)", crl_path_, number_, serials_.size());
  } catch (const std::exception& e) {
    spdlog::error("keeping the previous CRL ({} revoked certificate(s)): {}", serials_.size(), e.what());
  }
}

bool RevocationList::is_revoked(const std::string& serial_hex) {
  std::lock_guard<std::mutex> lock(mu_);
  maybe_reload();
  return serials_.count(serial_hex) > 0;
}

std::size_t RevocationList::size() {
  std::lock_guard<std::mutex> lock(mu_);
  maybe_reload();
  return serials_.size();
}

}  // namespace fl::pki
