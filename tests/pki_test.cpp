// The PKI library (common/net/pki.h), the RevocationList the coordinator enforces, and
// `fedctl pki` through the real binary.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <openssl/asn1.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <functional>
#include <set>
#include <sstream>
#include <thread>

#include "common/net/pki.h"
#include "common/net/tls.h"
#include "tests/expect_error.h"
#include "tests/process_util.h"
#include "tests/temp_dir.h"

namespace fl {
namespace {

namespace fs = std::filesystem;
using testing_util::expect_error;
using testing_util::TempDir;
using namespace std::chrono_literals;

std::string slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

void spit(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::trunc);
  out << text;
}

struct X509Del { void operator()(X509* p) const { X509_free(p); } };
struct CrlDel { void operator()(X509_CRL* p) const { X509_CRL_free(p); } };
using X509P = std::unique_ptr<X509, X509Del>;
using CrlP = std::unique_ptr<X509_CRL, CrlDel>;

X509P load_cert(const std::string& path) {
  const std::string pem = slurp(path);
  std::unique_ptr<BIO, decltype(&BIO_free)> bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())), BIO_free);
  X509P c(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
  if (!c) throw std::runtime_error("test: cannot parse " + path);
  return c;
}

CrlP load_crl(const std::string& path) {
  const std::string pem = slurp(path);
  std::unique_ptr<BIO, decltype(&BIO_free)> bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())), BIO_free);
  CrlP c(PEM_read_bio_X509_CRL(bio.get(), nullptr, nullptr, nullptr));
  if (!c) throw std::runtime_error("test: cannot parse CRL " + path);
  return c;
}

std::string serial_hex(const ASN1_INTEGER* i) {
  BIGNUM* bn = ASN1_INTEGER_to_BN(i, nullptr);
  char* hex = BN_bn2hex(bn);
  std::string s(hex);
  OPENSSL_free(hex);
  BN_free(bn);
  return s;
}

int64_t crl_number(X509_CRL* crl) {
  auto* n = static_cast<ASN1_INTEGER*>(X509_CRL_get_ext_d2i(crl, NID_crl_number, nullptr, nullptr));
  int64_t v = -1;
  if (n) ASN1_INTEGER_get_int64(&v, n);
  ASN1_INTEGER_free(n);
  return v;
}

bool ext_critical(X509* c, int nid) {
  const int i = X509_get_ext_by_NID(c, nid, -1);
  return i >= 0 && X509_EXTENSION_get_critical(X509_get_ext(c, i)) == 1;
}

int mode_of(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return -1;
  return static_cast<int>(st.st_mode & 0777);
}

// Whole days from notBefore to notAfter.
int validity_days(X509* c) {
  int days = 0, secs = 0;
  ASN1_TIME_diff(&days, &secs, X509_get0_notBefore(c), X509_get0_notAfter(c));
  return days;
}

// SANs as "DNS:x" / "IP:x" / "URI:x".
std::set<std::string> sans(X509* c) {
  std::set<std::string> out;
  auto* names = static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(c, NID_subject_alt_name, nullptr, nullptr));
  for (int i = 0; names && i < sk_GENERAL_NAME_num(names); ++i) {
    const GENERAL_NAME* n = sk_GENERAL_NAME_value(names, i);
    if (n->type == GEN_DNS || n->type == GEN_URI) {
      const ASN1_IA5STRING* s = n->type == GEN_DNS ? n->d.dNSName : n->d.uniformResourceIdentifier;
      out.insert(std::string(n->type == GEN_DNS ? "DNS:" : "URI:") +
                 std::string(reinterpret_cast<const char*>(ASN1_STRING_get0_data(s)), ASN1_STRING_length(s)));
    } else if (n->type == GEN_IPADD) {
      char buf[64] = {0};
      const int len = ASN1_STRING_length(n->d.iPAddress);
      inet_ntop(len == 4 ? AF_INET : AF_INET6, ASN1_STRING_get0_data(n->d.iPAddress), buf, sizeof buf);
      out.insert(std::string("IP:") + buf);
    }
  }
  GENERAL_NAMES_free(names);
  return out;
}

// f must throw E whose message contains `needle`.
template <typename E>
void expect_throw(const std::function<void()>& f, const std::string& needle) {
  try {
    f();
    ADD_FAILURE() << "no exception; expected one mentioning '" << needle << "'";
  } catch (const E& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what() << " lacks '" << needle << "'";
  } catch (const std::exception& e) {
    ADD_FAILURE() << "wrong exception type: " << e.what();
  }
}

pki::IssueRequest req(const std::string& role, const std::string& name, std::vector<std::string> hosts = {}) {
  pki::IssueRequest r;
  r.role = role;
  r.name = name;
  r.hosts = std::move(hosts);
  return r;
}

TEST(PkiInit, WritesSelfSignedP256CaAnEmptyCrlAndAPrivateKey) {
  TempDir tmp;
  const std::string dir = tmp.file("pki");  // created by init
  pki::init_ca(dir, "test-ca");
  auto ca = load_cert(dir + "/ca.crt");
  EVP_PKEY* pub = X509_get0_pubkey(ca.get());
  ASSERT_NE(pub, nullptr);
  EXPECT_EQ(X509_verify(ca.get(), pub), 1);  // self-signed
  EXPECT_EQ(X509_NAME_cmp(X509_get_subject_name(ca.get()), X509_get_issuer_name(ca.get())), 0);
  EXPECT_EQ(X509_check_ca(ca.get()), 1);
  EXPECT_TRUE(ext_critical(ca.get(), NID_basic_constraints));
  EXPECT_TRUE(ext_critical(ca.get(), NID_key_usage));
  EXPECT_EQ(X509_get_key_usage(ca.get()), static_cast<uint32_t>(KU_KEY_CERT_SIGN | KU_CRL_SIGN));
  EXPECT_EQ(EVP_PKEY_get_base_id(pub), EVP_PKEY_EC);
  char group[64] = {0};
  size_t glen = 0;
  ASSERT_EQ(EVP_PKEY_get_group_name(pub, group, sizeof group, &glen), 1);
  EXPECT_STREQ(group, "prime256v1");
  // SKI present and the AKI names it.
  const ASN1_OCTET_STRING* ski = X509_get0_subject_key_id(ca.get());
  const ASN1_OCTET_STRING* aki = X509_get0_authority_key_id(ca.get());
  ASSERT_NE(ski, nullptr);
  ASSERT_NE(aki, nullptr);
  EXPECT_EQ(ASN1_OCTET_STRING_cmp(ski, aki), 0);
  EXPECT_EQ(validity_days(ca.get()), 3650);
  EXPECT_EQ(certificate_common_name(slurp(dir + "/ca.crt")), "test-ca");
  EXPECT_EQ(mode_of(dir + "/ca.key"), 0600);
  EXPECT_EQ(mode_of(dir + "/ca.crt"), 0644);

  auto crl = load_crl(dir + "/crl.pem");
  EXPECT_EQ(X509_CRL_verify(crl.get(), pub), 1);
  EXPECT_LE(sk_X509_REVOKED_num(X509_CRL_get_REVOKED(crl.get())), 0);  // no list at all (-1) or an empty one
  EXPECT_EQ(crl_number(crl.get()), 1);
  int days = 0, secs = 0;  // nextUpdate far ahead: the CRL is only re-signed on revocation
  ASSERT_EQ(ASN1_TIME_diff(&days, &secs, X509_CRL_get0_lastUpdate(crl.get()), X509_CRL_get0_nextUpdate(crl.get())), 1);
  EXPECT_EQ(days, 3650);
  EXPECT_TRUE(pki::list(dir).empty());
}

TEST(PkiInit, RefusesADirectoryThatAlreadyHasACa) {
  TempDir tmp;
  pki::init_ca(tmp.path());
  const std::string before = slurp(tmp.file("ca.crt"));
  expect_error([&] { pki::init_ca(tmp.path()); }, {"already has a CA", tmp.file("ca.key")});
  EXPECT_EQ(slurp(tmp.file("ca.crt")), before);  // untouched
  // A CA made by scripts/pki.sh (only ca.crt) is refused too, naming that file.
  TempDir other;
  spit(other.file("ca.crt"), before);
  expect_error([&] { pki::init_ca(other.path()); }, other.file("ca.crt"));
}

TEST(PkiIssue, ClientCertificateValidatesAndCarriesNameRoleAndSerial) {
  TempDir tmp;
  pki::init_ca(tmp.path());
  const auto info = pki::issue(tmp.path(), req("client", "hospital-1"));
  EXPECT_EQ(info.name, "hospital-1");
  EXPECT_EQ(info.role, "client");
  EXPECT_FALSE(info.revoked);
  EXPECT_EQ(info.cert_path, tmp.file("hospital-1.crt"));
  EXPECT_EQ(info.key_path, tmp.file("hospital-1.key"));
  EXPECT_NO_THROW(validate_tls_files({tmp.file("ca.crt"), info.cert_path, info.key_path}));
  const std::string pem = slurp(info.cert_path);
  EXPECT_EQ(certificate_common_name(pem), "hospital-1");
  EXPECT_EQ(certificate_role(pem), "client");
  EXPECT_EQ(certificate_serial(pem), info.serial);
  EXPECT_EQ(mode_of(info.key_path), 0600);

  auto c = load_cert(info.cert_path);
  EXPECT_EQ(X509_check_ca(c.get()), 0);
  EXPECT_TRUE(ext_critical(c.get(), NID_basic_constraints));
  EXPECT_EQ(X509_get_key_usage(c.get()), static_cast<uint32_t>(KU_DIGITAL_SIGNATURE));
  EXPECT_EQ(X509_get_extended_key_usage(c.get()), static_cast<uint32_t>(XKU_SSL_CLIENT));
  EXPECT_EQ(sans(c.get()), (std::set<std::string>{"URI:fl-role:client"}));
  EXPECT_EQ(validity_days(c.get()), 825);
  // O and OU as scripts/pki.sh writes them.
  char buf[256];
  X509_NAME_get_text_by_NID(X509_get_subject_name(c.get()), NID_organizationName, buf, sizeof buf);
  EXPECT_STREQ(buf, "federated-dev");
  X509_NAME_get_text_by_NID(X509_get_subject_name(c.get()), NID_organizationalUnitName, buf, sizeof buf);
  EXPECT_STREQ(buf, "client");
  // A positive serial of at most 128 bits; the ISO expiry is the certificate's.
  BIGNUM* bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(c.get()), nullptr);
  EXPECT_FALSE(BN_is_negative(bn));
  EXPECT_FALSE(BN_is_zero(bn));
  EXPECT_LE(BN_num_bits(bn), 128);
  BN_free(bn);
  std::tm tm{};
  ASSERT_EQ(ASN1_TIME_to_tm(X509_get0_notAfter(c.get()), &tm), 1);
  char iso[32];
  std::strftime(iso, sizeof iso, "%Y-%m-%dT%H:%M:%SZ", &tm);
  EXPECT_EQ(info.not_after, iso);

  const auto admin = pki::issue(tmp.path(), req("admin", "ops"));
  EXPECT_EQ(certificate_role(slurp(admin.cert_path)), "admin");
  EXPECT_NE(admin.serial, info.serial);
  const auto l = pki::list(tmp.path());
  ASSERT_EQ(l.size(), 2u);
  EXPECT_EQ(l[0].name, "hospital-1");  // by name, not issue order
  EXPECT_EQ(l[1].name, "ops");
  EXPECT_EQ(l[1].serial, admin.serial);
}

TEST(PkiIssue, CoordinatorCertificateNamesLocalhostAndEveryHost) {
  TempDir tmp;
  pki::init_ca(tmp.path());
  const auto info = pki::issue(tmp.path(), req("coordinator", "coordinator", {"fl.example.org", "10.1.2.3", "::1",
                                                                               "localhost"}));
  EXPECT_NO_THROW(validate_tls_files({tmp.file("ca.crt"), info.cert_path, info.key_path}));
  auto c = load_cert(info.cert_path);
  EXPECT_EQ(sans(c.get()), (std::set<std::string>{"URI:fl-role:coordinator", "DNS:localhost", "IP:127.0.0.1",
                                                  "DNS:fl.example.org", "IP:10.1.2.3", "IP:::1"}));
  EXPECT_EQ(X509_get_extended_key_usage(c.get()), static_cast<uint32_t>(XKU_SSL_SERVER | XKU_SSL_CLIENT));
  EXPECT_EQ(certificate_role(slurp(info.cert_path)), "coordinator");
  EXPECT_EQ(X509_check_host(c.get(), "fl.example.org", 0, 0, nullptr), 1);
  EXPECT_EQ(X509_check_ip_asc(c.get(), "10.1.2.3", 0), 1);
  EXPECT_EQ(X509_check_host(c.get(), "other.example.org", 0, 0, nullptr), 0);
}

TEST(PkiIssue, RejectsBadRoleNameHostDaysAndDuplicates) {
  TempDir tmp;
  pki::init_ca(tmp.path());
  expect_throw<std::invalid_argument>([&] { pki::issue(tmp.path(), req("superuser", "x")); }, "'superuser'");
  expect_throw<std::invalid_argument>([&] { pki::issue(tmp.path(), req("client", "../evil")); }, "'../evil'");
  expect_throw<std::invalid_argument>([&] { pki::issue(tmp.path(), req("client", "-x")); }, "'-x'");
  expect_throw<std::invalid_argument>([&] { pki::issue(tmp.path(), req("client", "")); }, "empty");
  expect_throw<std::invalid_argument>([&] { pki::issue(tmp.path(), req("client", "ca")); }, "reserved");
  expect_throw<std::invalid_argument>([&] { pki::issue(tmp.path(), req("client", "crl")); }, "'crl'");
  expect_throw<std::invalid_argument>([&] { pki::issue(tmp.path(), req("client", std::string(65, 'a'))); }, "64");
  expect_throw<std::invalid_argument>(
      [&] { pki::issue(tmp.path(), req("coordinator", "coordinator", {"bad host,DNS:evil"})); }, "'bad host,DNS:evil'");
  expect_throw<std::invalid_argument>(
      [&] { pki::issue(tmp.path(), req("coordinator", "coordinator", {"10.1.2.300"})); }, "'10.1.2.300'");
  expect_throw<std::invalid_argument>([&] { pki::issue(tmp.path(), req("client", "h1", {"example.org"})); },
                                      "only a coordinator");
  auto r = req("client", "h1");
  r.days = 0;
  expect_throw<std::invalid_argument>([&] { pki::issue(tmp.path(), r); }, "0 days");
  r.days = 3650;  // the CA was made just before: 3650 days would end after it
  expect_throw<std::invalid_argument>([&] { pki::issue(tmp.path(), r); }, "outlive the CA");
  EXPECT_TRUE(pki::list(tmp.path()).empty());  // nothing half-issued
  EXPECT_FALSE(fs::exists(tmp.file("h1.key")));

  const auto first = pki::issue(tmp.path(), req("client", "h1"));
  expect_error([&] { pki::issue(tmp.path(), req("admin", "h1")); }, {"'h1'", first.serial, "revoke it first"});
  EXPECT_EQ(pki::list(tmp.path()).size(), 1u);

  // Files the index does not know (scripts/pki.sh made them) are never overwritten.
  spit(tmp.file("stray.crt"), "x");
  expect_error([&] { pki::issue(tmp.path(), req("client", "stray")); }, tmp.file("stray.crt"));
  EXPECT_EQ(slurp(tmp.file("stray.crt")), "x");
}

TEST(PkiIssue, NeedsACa) {
  TempDir tmp;
  expect_error([&] { pki::issue(tmp.path(), req("client", "h1")); }, {"no CA", tmp.file("ca.crt")});
  expect_error([&] { pki::issue(tmp.file("missing"), req("client", "h1")); }, tmp.file("missing"));
  expect_error([&] { pki::list(tmp.path()); }, tmp.file("ca.crt"));
}

TEST(PkiRevoke, CrlIsSignedByTheCaAndListsExactlyTheRevokedSerials) {
  TempDir tmp;
  pki::init_ca(tmp.path());
  const auto a = pki::issue(tmp.path(), req("client", "a"));
  const auto b = pki::issue(tmp.path(), req("client", "b"));
  const std::time_t before = std::time(nullptr);
  const auto ra = pki::revoke(tmp.path(), "a");
  const std::time_t after = std::time(nullptr);
  EXPECT_TRUE(ra.revoked);
  EXPECT_EQ(ra.serial, a.serial);
  EXPECT_FALSE(ra.revoked_at.empty());

  auto ca = load_cert(tmp.file("ca.crt"));
  auto crl = load_crl(tmp.file("crl.pem"));
  EXPECT_EQ(X509_CRL_verify(crl.get(), X509_get0_pubkey(ca.get())), 1);
  EXPECT_EQ(crl_number(crl.get()), 2);
  auto* revoked = X509_CRL_get_REVOKED(crl.get());
  ASSERT_EQ(sk_X509_REVOKED_num(revoked), 1);
  EXPECT_EQ(serial_hex(X509_REVOKED_get0_serialNumber(sk_X509_REVOKED_value(revoked, 0))), a.serial);
  // The revocation date is the time of the call (whole seconds).
  std::unique_ptr<ASN1_TIME, decltype(&ASN1_TIME_free)> t0(ASN1_TIME_set(nullptr, before), ASN1_TIME_free);
  int days = -1, secs = -1;
  ASSERT_EQ(ASN1_TIME_diff(&days, &secs, t0.get(), X509_REVOKED_get0_revocationDate(sk_X509_REVOKED_value(revoked, 0))),
            1);
  EXPECT_EQ(days, 0);
  EXPECT_GE(secs, 0);
  EXPECT_LE(secs, static_cast<int>(after - before));

  expect_throw<std::invalid_argument>([&] { pki::revoke(tmp.path(), "a"); }, "already revoked");
  expect_throw<std::invalid_argument>([&] { pki::revoke(tmp.path(), "nobody"); }, "'nobody'");
  EXPECT_EQ(crl_number(load_crl(tmp.file("crl.pem")).get()), 2);  // failed revokes leave the CRL alone

  // A revoked name can be issued again: new serial, the old one stays revoked.
  const auto a2 = pki::issue(tmp.path(), req("client", "a"));
  EXPECT_NE(a2.serial, a.serial);
  pki::revoke(tmp.path(), "b");
  crl = load_crl(tmp.file("crl.pem"));
  EXPECT_EQ(crl_number(crl.get()), 3);
  std::set<std::string> listed;
  revoked = X509_CRL_get_REVOKED(crl.get());
  for (int i = 0; i < sk_X509_REVOKED_num(revoked); ++i)
    listed.insert(serial_hex(X509_REVOKED_get0_serialNumber(sk_X509_REVOKED_value(revoked, i))));
  EXPECT_EQ(listed, (std::set<std::string>{a.serial, b.serial}));

  const auto l = pki::list(tmp.path());
  ASSERT_EQ(l.size(), 3u);
  EXPECT_EQ(l[0].name, "a");
  EXPECT_EQ(l[0].serial, a.serial);
  EXPECT_TRUE(l[0].revoked);
  EXPECT_EQ(l[0].cert_path, "");  // its files now hold the re-issued certificate
  EXPECT_EQ(l[1].serial, a2.serial);
  EXPECT_FALSE(l[1].revoked);
  EXPECT_EQ(l[2].name, "b");
  EXPECT_TRUE(l[2].revoked);
  EXPECT_EQ(certificate_serial(slurp(tmp.file("a.crt"))), a2.serial);
}

TEST(PkiRevocationList, PicksUpARevocationWithoutRestartAndKeepsTheLastGoodList) {
  TempDir tmp;
  pki::init_ca(tmp.path());
  const auto a = pki::issue(tmp.path(), req("client", "a"));
  const auto b = pki::issue(tmp.path(), req("client", "b"));
  pki::RevocationList rl(tmp.file("crl.pem"), tmp.file("ca.crt"), 20ms);
  EXPECT_FALSE(rl.is_revoked(a.serial));
  EXPECT_EQ(rl.size(), 0u);

  pki::revoke(tmp.path(), "a");
  std::this_thread::sleep_for(40ms);
  EXPECT_TRUE(rl.is_revoked(a.serial));
  EXPECT_FALSE(rl.is_revoked(b.serial));
  EXPECT_EQ(rl.size(), 1u);

  // A damaged file (not PEM, then a CRL signed by another CA) keeps the previous answers.
  spit(tmp.file("crl.pem"), "-----BEGIN X509 CRL-----\ngarbage\n-----END X509 CRL-----\n");
  std::this_thread::sleep_for(40ms);
  EXPECT_TRUE(rl.is_revoked(a.serial));
  EXPECT_EQ(rl.size(), 1u);
  TempDir other;
  pki::init_ca(other.path(), "federated-dev-ca");  // same name, different key
  fs::copy_file(other.file("crl.pem"), tmp.file("crl.pem"), fs::copy_options::overwrite_existing);
  std::this_thread::sleep_for(40ms);
  EXPECT_TRUE(rl.is_revoked(a.serial));
  EXPECT_EQ(rl.size(), 1u);

  // The next good CRL is taken again.
  pki::revoke(tmp.path(), "b");
  std::this_thread::sleep_for(40ms);
  EXPECT_TRUE(rl.is_revoked(b.serial));
  EXPECT_TRUE(rl.is_revoked(a.serial));
  EXPECT_EQ(rl.size(), 2u);
}

TEST(PkiRevocationList, ConcurrentReadersSeeTheRevocation) {
  TempDir tmp;
  pki::init_ca(tmp.path());
  const auto a = pki::issue(tmp.path(), req("client", "a"));
  pki::RevocationList rl(tmp.file("crl.pem"), tmp.file("ca.crt"), 1ms);
  std::atomic<bool> stop{false};
  std::atomic<int> seen_revoked{0};
  std::vector<std::thread> readers;
  for (int t = 0; t < 4; ++t)
    readers.emplace_back([&] {
      bool last = false;
      while (!stop) {
        const bool now = rl.is_revoked(a.serial);
        EXPECT_FALSE(last && !now) << "a revocation was forgotten";  // never back to "not revoked"
        last = now;
      }
      if (last) ++seen_revoked;
    });
  std::this_thread::sleep_for(30ms);
  pki::revoke(tmp.path(), "a");
  std::this_thread::sleep_for(100ms);
  stop = true;
  for (auto& r : readers) r.join();
  EXPECT_EQ(seen_revoked.load(), 4);
}

TEST(PkiRevocationList, RereadsAtMostOncePerRecheckInterval) {
  TempDir tmp;
  pki::init_ca(tmp.path());
  const auto a = pki::issue(tmp.path(), req("client", "a"));
  pki::RevocationList rl(tmp.file("crl.pem"), tmp.file("ca.crt"), std::chrono::hours(1));
  pki::revoke(tmp.path(), "a");
  EXPECT_FALSE(rl.is_revoked(a.serial));  // not re-checked yet: the interval has not passed
  pki::RevocationList fresh(tmp.file("crl.pem"), tmp.file("ca.crt"), std::chrono::hours(1));
  EXPECT_TRUE(fresh.is_revoked(a.serial));
}

TEST(PkiRevocationList, ConstructionRefusesMissingUnparsableOrForeignCrl) {
  TempDir tmp;
  pki::init_ca(tmp.path());
  fs::rename(tmp.file("crl.pem"), tmp.file("saved.pem"));
  expect_error([&] { pki::RevocationList(tmp.file("crl.pem"), tmp.file("ca.crt")); }, tmp.file("crl.pem"));
  expect_error([&] { pki::RevocationList(tmp.file("saved.pem"), tmp.file("nope.crt")); }, tmp.file("nope.crt"));
  spit(tmp.file("bad.pem"), "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n");
  expect_error([&] { pki::RevocationList(tmp.file("bad.pem"), tmp.file("ca.crt")); }, {tmp.file("bad.pem"), "parse"});
  TempDir other;
  pki::init_ca(other.path());
  expect_error([&] { pki::RevocationList(other.file("crl.pem"), tmp.file("ca.crt")); },
               {other.file("crl.pem"), "not signed by the CA"});
  pki::RevocationList ok(tmp.file("saved.pem"), tmp.file("ca.crt"));
  EXPECT_EQ(ok.size(), 0u);
}

// A CRL from an earlier day (a restored backup, a replay) would un-revoke a certificate: a
// reload with a lower crlNumber keeps the list enforced.
TEST(PkiRevocationList, AnOlderCrlNumberIsRefusedOnReload) {
  TempDir tmp;
  pki::init_ca(tmp.path());
  const auto a = pki::issue(tmp.path(), req("client", "a"));
  const auto b = pki::issue(tmp.path(), req("client", "b"));
  pki::revoke(tmp.path(), "a");
  fs::copy_file(tmp.file("crl.pem"), tmp.file("crl-2.pem"));
  pki::revoke(tmp.path(), "b");
  pki::RevocationList rl(tmp.file("crl.pem"), tmp.file("ca.crt"), 20ms);
  EXPECT_TRUE(rl.is_revoked(b.serial));
  fs::copy_file(tmp.file("crl-2.pem"), tmp.file("crl.pem"), fs::copy_options::overwrite_existing);
  std::this_thread::sleep_for(40ms);
  EXPECT_TRUE(rl.is_revoked(b.serial)) << "the replayed CRL un-revoked b";
  EXPECT_TRUE(rl.is_revoked(a.serial));
  // On its own, the older CRL is a valid one.
  pki::RevocationList fresh(tmp.file("crl.pem"), tmp.file("ca.crt"));
  EXPECT_FALSE(fresh.is_revoked(b.serial));
}

// An expired CRL (nextUpdate passed) no longer says what is revoked: refused.
TEST(PkiRevocationList, AnExpiredCrlIsRefused) {
  TempDir tmp;
  pki::init_ca(tmp.path());
  CrlP crl = load_crl(tmp.file("crl.pem"));
  const std::string key_pem = slurp(tmp.file("ca.key"));
  std::unique_ptr<BIO, decltype(&BIO_free)> bio(BIO_new_mem_buf(key_pem.data(), static_cast<int>(key_pem.size())),
                                                BIO_free);
  std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)> key(PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr),
                                                          EVP_PKEY_free);
  ASSERT_TRUE(key);
  const std::time_t now = std::time(nullptr);
  std::unique_ptr<ASN1_TIME, decltype(&ASN1_TIME_free)> last(ASN1_TIME_set(nullptr, now - 7200), ASN1_TIME_free);
  std::unique_ptr<ASN1_TIME, decltype(&ASN1_TIME_free)> next(ASN1_TIME_set(nullptr, now - 3600), ASN1_TIME_free);
  ASSERT_EQ(X509_CRL_set1_lastUpdate(crl.get(), last.get()), 1);
  ASSERT_EQ(X509_CRL_set1_nextUpdate(crl.get(), next.get()), 1);
  ASSERT_GT(X509_CRL_sign(crl.get(), key.get(), EVP_sha256()), 0);
  std::unique_ptr<BIO, decltype(&BIO_free)> out(BIO_new(BIO_s_mem()), BIO_free);
  ASSERT_EQ(PEM_write_bio_X509_CRL(out.get(), crl.get()), 1);
  char* data = nullptr;
  const long n = BIO_get_mem_data(out.get(), &data);
  spit(tmp.file("expired.pem"), std::string(data, static_cast<size_t>(n)));
  expect_error([&] { pki::RevocationList(tmp.file("expired.pem"), tmp.file("ca.crt")); },
               {tmp.file("expired.pem"), "expired at", "nextUpdate"});
}

// scripts/pki.sh --export-to: each identity's directory gets the CA certificate, its own
// certificate and key (0600), the coordinator also the CRL; never the CA key or another key.
TEST(PkiScript, ExportGivesEachIdentityOnlyItsOwnKeyAndTheCaCertificate) {
  TempDir tmp;
  for (const char* n : {"coordinator", "hospital-1", "hospital-2"}) fs::create_directories(tmp.file("out/") + n);
  const std::string cmd = "FEDCTL=" + std::string(FL_BINARY_DIR) + "/bin/fedctl " + std::string(FL_SOURCE_DIR) +
                          "/scripts/pki.sh " + tmp.file("pki") + " --export-to " + tmp.file("out") + " --owner " +
                          std::to_string(::getuid()) + " > " + tmp.file("log") + " 2>&1";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << slurp(tmp.file("log"));
  auto names_in = [&](const std::string& dir) {
    std::set<std::string> out;
    for (const auto& e : fs::directory_iterator(dir)) out.insert(e.path().filename().string());
    return out;
  };
  EXPECT_EQ(names_in(tmp.file("out/coordinator")),
            (std::set<std::string>{"ca.crt", "coordinator.crt", "coordinator.key", "crl.pem"}));
  for (const char* h : {"hospital-1", "hospital-2"}) {
    const std::string dir = tmp.file("out/") + h;
    EXPECT_EQ(names_in(dir), (std::set<std::string>{"ca.crt", std::string(h) + ".crt", std::string(h) + ".key"}));
    EXPECT_EQ(mode_of(dir + "/" + h + ".key"), 0600);
    EXPECT_EQ(slurp(dir + "/" + h + ".key"), slurp(tmp.file("pki/") + h + ".key"));
    EXPECT_EQ(slurp(dir + "/ca.crt"), slurp(tmp.file("pki/ca.crt")));
  }
  // hospital-3 has no directory: nothing exported for it, and it still got its certificate.
  EXPECT_FALSE(fs::exists(tmp.file("out/hospital-3")));
  EXPECT_TRUE(fs::exists(tmp.file("pki/hospital-3.key")));
}

// ---- fedctl pki through the real binary --------------------------------------------------

using Run = testing_util::ProgramRun;

Run fedctl(const TempDir& tmp, const std::string& args) {
  return testing_util::run_program(std::string(FL_BINARY_DIR) + "/bin/fedctl " + args, tmp.file("stderr.txt"));
}

TEST(PkiCli, InitIssueRevokeListThroughFedctl) {
  TempDir tmp;
  const std::string dir = tmp.file("pki");
  auto r = fedctl(tmp, "pki init --dir " + dir + " --ca-name cli-ca");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find(dir + "/ca.crt"), std::string::npos) << r.out;
  EXPECT_EQ(certificate_common_name(slurp(dir + "/ca.crt")), "cli-ca");

  r = fedctl(tmp, "--json pki issue --dir " + dir + " --role coordinator --name coord --host fl.example.org");
  ASSERT_EQ(r.code, 0) << r.err;
  const auto issued = nlohmann::json::parse(r.out);
  EXPECT_EQ(issued.at("role"), "coordinator");
  EXPECT_EQ(issued.at("cert"), dir + "/coord.crt");
  EXPECT_EQ(issued.at("serial"), certificate_serial(slurp(dir + "/coord.crt")));
  EXPECT_TRUE(sans(load_cert(dir + "/coord.crt").get()).count("DNS:fl.example.org"));

  r = fedctl(tmp, "pki issue --dir " + dir + " --role client --name hospital-1");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find(dir + "/hospital-1.key"), std::string::npos) << r.out;

  r = fedctl(tmp, "pki revoke --dir " + dir + " hospital-1 --json");  // --json after the subcommand too
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(nlohmann::json::parse(r.out).at("revoked"), true);

  r = fedctl(tmp, "pki list --dir " + dir + " --json");
  ASSERT_EQ(r.code, 0) << r.err;
  const auto l = nlohmann::json::parse(r.out);
  ASSERT_EQ(l.size(), 2u);
  EXPECT_EQ(l[0].at("name"), "coord");
  EXPECT_EQ(l[0].at("role"), "coordinator");
  EXPECT_EQ(l[0].at("revoked"), false);
  EXPECT_EQ(l[1].at("name"), "hospital-1");
  EXPECT_EQ(l[1].at("role"), "client");
  EXPECT_EQ(l[1].at("revoked"), true);

  r = fedctl(tmp, "pki list --dir " + dir);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out.rfind("NAME", 0), 0u) << r.out;
  EXPECT_NE(r.out.find("REVOKED"), std::string::npos);
  EXPECT_NE(r.out.find(issued.at("serial").get<std::string>()), std::string::npos);
}

TEST(PkiCli, ExitCodesFollowTheContract) {
  TempDir tmp;
  const std::string dir = tmp.file("pki");
  // Usage errors: 2.
  auto r = fedctl(tmp, "pki issue --dir " + dir + " --name h1");
  EXPECT_EQ(r.code, 2) << r.err;
  EXPECT_NE(r.err.find("--role"), std::string::npos) << r.err;
  r = fedctl(tmp, "pki issue --dir " + dir + " --role root --name h1");
  EXPECT_EQ(r.code, 2) << r.err;
  r = fedctl(tmp, "pki revoke --dir " + dir);
  EXPECT_EQ(r.code, 2) << r.err;
  r = fedctl(tmp, "pki");
  EXPECT_EQ(r.code, 2) << r.err;
  // No CA yet: 1, naming the missing file.
  r = fedctl(tmp, "pki issue --dir " + dir + " --role client --name h1");
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_NE(r.err.find("does not exist"), std::string::npos) << r.err;
  ASSERT_EQ(fedctl(tmp, "pki init --dir " + dir).code, 0);
  r = fedctl(tmp, "pki issue --dir " + dir + " --role client --name h1");
  EXPECT_EQ(r.code, 0) << r.err;
  // Bad values only the library judges are usage errors too.
  r = fedctl(tmp, "pki issue --dir " + dir + " --role client --name ../h2");
  EXPECT_EQ(r.code, 2) << r.err;
  EXPECT_NE(r.err.find("'../h2'"), std::string::npos) << r.err;
  r = fedctl(tmp, "pki issue --dir " + dir + " --role client --name h2 --host example.org");
  EXPECT_EQ(r.code, 2) << r.err;
  r = fedctl(tmp, "pki revoke --dir " + dir + " nobody");
  EXPECT_EQ(r.code, 2) << r.err;
  EXPECT_NE(r.err.find("'nobody'"), std::string::npos) << r.err;
  // State conflicts are errors: 1.
  r = fedctl(tmp, "pki issue --dir " + dir + " --role client --name h1");
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_NE(r.err.find("already has a certificate"), std::string::npos) << r.err;
  r = fedctl(tmp, "pki init --dir " + dir);
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_NE(r.err.find("already has a CA"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace fl
