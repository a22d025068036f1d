#pragma once
// The federation's development PKI through the OpenSSL 3 C API (what `fedctl pki` runs): one
// EC P-256 CA, one certificate per identity in the same form as scripts/pki.sh (CN=<name>,
// O=federated-dev, OU=<role>, SAN URI fl-role:<role>), an index of what was issued, and a CRL
// that the coordinator reads through RevocationList.
//
// Layout of a PKI directory DIR:
//   ca.key (0600) ca.crt   the CA
//   crl.pem                CRL signed by the CA, rebuilt from the index on every revocation
//   index.json             every certificate issued (revoked ones stay, a re-issued name gets a new entry)
//   <name>.key (0600) <name>.crt
//
// No OpenSSL types in this header.

#include <chrono>
#include <cstdint>
#include <mutex>
#include <string>
#include <unordered_set>
#include <vector>

namespace fl::pki {

struct CertInfo {
  std::string name, role;
  std::string serial;     // upper-case hex, fl::certificate_serial() form (BN_bn2hex)
  std::string not_after;  // ISO 8601 UTC, e.g. 2029-02-26T22:40:00Z
  bool revoked = false;
  std::string revoked_at;  // ISO 8601 UTC; "" unless revoked
  std::string cert_path, key_path;
};

// Paths of the fixed files in a PKI directory.
std::string ca_cert_path(const std::string& dir);
std::string ca_key_path(const std::string& dir);
std::string crl_path(const std::string& dir);
std::string index_path(const std::string& dir);

// Creates DIR (if needed) with ca.key (EC P-256, 0600), ca.crt (self-signed, basicConstraints
// critical CA:TRUE, keyUsage critical keyCertSign+cRLSign, SKI/AKI, 10 years), an empty CRL
// (CRL number 1) and an empty index. Throws std::runtime_error naming the file when DIR already
// holds any of them, std::invalid_argument for an empty or over-long CA name.
void init_ca(const std::string& dir, const std::string& ca_common_name = "federated-dev-ca");

struct IssueRequest {
  std::string role;                // client | admin | coordinator
  std::string name;                // ^[A-Za-z0-9][A-Za-z0-9._-]*$, at most 64 characters, not ca/crl/index
  std::vector<std::string> hosts;  // coordinator only: extra SANs (IP if it parses as one, else DNS)
  int days = 825;                  // 1..3650, ending before the CA does
};

// DIR/<name>.key + DIR/<name>.crt signed by the CA. Clients and admins get EKU clientAuth; the
// coordinator serverAuth + clientAuth and SANs DNS:localhost, IP:127.0.0.1 plus each host.
// Random positive 128-bit serial. Throws std::invalid_argument for a bad role, name, host or
// days; std::runtime_error when there is no CA, the name holds a certificate that is not
// revoked, or a file cannot be written.
CertInfo issue(const std::string& dir, const IssueRequest& req);

// Revokes the current certificate of `name`: marks it in the index and rewrites DIR/crl.pem
// (signed by the CA, CRL number incremented, every revoked serial with its revocation date)
// atomically. Unknown name or already revoked -> std::invalid_argument.
CertInfo revoke(const std::string& dir, const std::string& name);

// Every certificate in the index (revoked ones too), ordered by name, then by issue order.
std::vector<CertInfo> list(const std::string& dir);

// The coordinator's view of a CRL file. Loaded at construction (missing, unparsable or not
// signed by the CA -> std::runtime_error naming the file); afterwards re-read whenever the
// file's inode, mtime or size changes, checked at most once per `recheck`, so that
// `fedctl pki revoke` takes effect without a restart. A later bad file keeps the last good
// list and logs one error per change of the file. Thread-safe. Refused (at construction: the
// error; later: the last good list stays): a CRL without a crlNumber, one whose nextUpdate has
// passed, and, on a reload, one with a lower crlNumber than the list enforced.
class RevocationList {
 public:
  RevocationList(std::string crl_path, std::string ca_cert_path,
                 std::chrono::milliseconds recheck = std::chrono::milliseconds(500));
  // `serial_hex` in fl::certificate_serial() form.
  bool is_revoked(const std::string& serial_hex);
  std::size_t size();

 private:
  struct FileStamp {
    std::uint64_t ino = 0, size = 0;
    std::int64_t mtime_ns = 0;
    bool exists = false;
    bool operator==(const FileStamp& o) const {
      return ino == o.ino && size == o.size && mtime_ns == o.mtime_ns && exists == o.exists;
    }
  };
  FileStamp stamp() const;
  void maybe_reload();  // mu_ held

  std::string crl_path_, ca_pem_;
  std::chrono::milliseconds recheck_;
  std::mutex mu_;
  std::unordered_set<std::string> serials_;
  std::int64_t number_ = 0;  // crlNumber of the CRL serials_ came from
  FileStamp seen_;
  std::chrono::steady_clock::time_point last_check_;
};

}  // namespace fl::pki
