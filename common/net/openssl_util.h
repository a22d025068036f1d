#pragma once
// What tls.cpp, pki.cpp and secagg.cpp share over the OpenSSL C API: RAII owners for its
// objects, its error queue as text, in-memory BIOs, and serial numbers as hex. Internal to
// fl_net and fl_secagg (their public headers include no OpenSSL).
#include <openssl/asn1.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>
#include <openssl/x509v3.h>

#include <memory>
#include <stdexcept>
#include <string>

namespace fl::ossl {

struct BioFree { void operator()(BIO* p) const { BIO_free(p); } };
struct X509Free { void operator()(X509* p) const { X509_free(p); } };
struct CrlFree { void operator()(X509_CRL* p) const { X509_CRL_free(p); } };
struct PkeyFree { void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); } };
struct PkeyCtxFree { void operator()(EVP_PKEY_CTX* p) const { EVP_PKEY_CTX_free(p); } };
struct CipherCtxFree { void operator()(EVP_CIPHER_CTX* p) const { EVP_CIPHER_CTX_free(p); } };
struct KdfCtxFree { void operator()(EVP_KDF_CTX* p) const { EVP_KDF_CTX_free(p); } };
struct MdCtxFree { void operator()(EVP_MD_CTX* p) const { EVP_MD_CTX_free(p); } };
struct BnFree { void operator()(BIGNUM* p) const { BN_free(p); } };
struct AsnIntFree { void operator()(ASN1_INTEGER* p) const { ASN1_INTEGER_free(p); } };
struct AsnTimeFree { void operator()(ASN1_TIME* p) const { ASN1_TIME_free(p); } };
struct ExtFree { void operator()(X509_EXTENSION* p) const { X509_EXTENSION_free(p); } };
struct RevokedFree { void operator()(X509_REVOKED* p) const { X509_REVOKED_free(p); } };
struct StoreFree { void operator()(X509_STORE* p) const { X509_STORE_free(p); } };
struct StoreCtxFree { void operator()(X509_STORE_CTX* p) const { X509_STORE_CTX_free(p); } };
struct StackFree { void operator()(STACK_OF(X509)* p) const { sk_X509_pop_free(p, X509_free); } };
struct GeneralNamesFree { void operator()(GENERAL_NAMES* p) const { GENERAL_NAMES_free(p); } };
struct OsslStrFree { void operator()(char* p) const { OPENSSL_free(p); } };
using BioPtr = std::unique_ptr<BIO, BioFree>;
using X509Ptr = std::unique_ptr<X509, X509Free>;
using CrlPtr = std::unique_ptr<X509_CRL, CrlFree>;
using PkeyPtr = std::unique_ptr<EVP_PKEY, PkeyFree>;
using PkeyCtxPtr = std::unique_ptr<EVP_PKEY_CTX, PkeyCtxFree>;
using CipherCtxPtr = std::unique_ptr<EVP_CIPHER_CTX, CipherCtxFree>;
using KdfCtxPtr = std::unique_ptr<EVP_KDF_CTX, KdfCtxFree>;
using MdCtxPtr = std::unique_ptr<EVP_MD_CTX, MdCtxFree>;
using BnPtr = std::unique_ptr<BIGNUM, BnFree>;
using AsnIntPtr = std::unique_ptr<ASN1_INTEGER, AsnIntFree>;
using AsnTimePtr = std::unique_ptr<ASN1_TIME, AsnTimeFree>;
using ExtPtr = std::unique_ptr<X509_EXTENSION, ExtFree>;
using RevokedPtr = std::unique_ptr<X509_REVOKED, RevokedFree>;
using StorePtr = std::unique_ptr<X509_STORE, StoreFree>;
using StoreCtxPtr = std::unique_ptr<X509_STORE_CTX, StoreCtxFree>;
using StackPtr = std::unique_ptr<STACK_OF(X509), StackFree>;
using GeneralNamesPtr = std::unique_ptr<GENERAL_NAMES, GeneralNamesFree>;
using OsslStr = std::unique_ptr<char, OsslStrFree>;

// The most recent OpenSSL error as text; clears the queue.
inline std::string openssl_error() {
  unsigned long last = 0;
  while (unsigned long e = ERR_get_error()) last = e;
  if (last == 0) return "unknown OpenSSL error";
  char buf[256];
  ERR_error_string_n(last, buf, sizeof buf);
  return buf;
}

// std::runtime_error "<what> (<OpenSSL's error>)".
[[noreturn]] inline void fail(const std::string& what) {
  throw std::runtime_error(what + " (" + openssl_error() + ")");
}

// A read-only BIO over `s` (which must outlive it).
inline BioPtr mem_bio(const std::string& s) {
  BioPtr bio(BIO_new_mem_buf(s.data(), static_cast<int>(s.size())));
  if (!bio) fail("BIO_new_mem_buf");
  return bio;
}

// Everything written to a memory BIO, as a string.
inline std::string bio_text(BIO* bio) {
  char* data = nullptr;
  const long n = BIO_get_mem_data(bio, &data);
  return std::string(data, static_cast<std::size_t>(n));
}

// Never prompt on a terminal for a pass phrase: encrypted keys are refused.
inline int no_passphrase(char*, int, int, void*) { return -1; }

// Upper-case hex without leading zeros (BN_bn2hex), the form CRL lookups use.
inline std::string bn_hex(const BIGNUM* bn) {
  OsslStr hex(BN_bn2hex(bn));
  if (!hex) fail("BN_bn2hex");
  return hex.get();
}

inline std::string asn1_int_hex(const ASN1_INTEGER* i) {
  BnPtr bn(ASN1_INTEGER_to_BN(i, nullptr));
  if (!bn) fail("ASN1_INTEGER_to_BN");
  return bn_hex(bn.get());
}

}  // namespace fl::ossl
