#include "common/secagg/secagg.h"

#include "common/net/openssl_util.h"

#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/params.h>
#include <openssl/rand.h>

#include <algorithm>
#include <climits>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>

namespace fl::secagg {
namespace {

using ossl::CipherCtxPtr;
using ossl::fail;
using ossl::KdfCtxPtr;
using ossl::MdCtxPtr;
using ossl::PkeyCtxPtr;
using ossl::PkeyPtr;

CipherCtxPtr new_cipher_ctx() {
  CipherCtxPtr ctx(EVP_CIPHER_CTX_new());
  if (!ctx) fail("EVP_CIPHER_CTX_new");
  return ctx;
}

PkeyPtr x25519_private(const Key32& key) {
  PkeyPtr pkey(EVP_PKEY_new_raw_private_key(EVP_PKEY_X25519, nullptr, key.data(), key.size()));
  if (!pkey) fail("X25519 private key import");
  return pkey;
}

// A private key imported once for many agreements: the import computes the public key, a
// scalar multiplication as costly as the agreement itself.
class X25519Key {
 public:
  explicit X25519Key(const Key32& private_key) : pkey_(x25519_private(private_key)) {}
  Key32 agree(const Key32& peer_public) const {
    PkeyPtr peer(EVP_PKEY_new_raw_public_key(EVP_PKEY_X25519, nullptr, peer_public.data(),
                                             peer_public.size()));
    if (!peer) fail("X25519 public key import");
    PkeyCtxPtr ctx(EVP_PKEY_CTX_new(pkey_.get(), nullptr));
    if (!ctx || EVP_PKEY_derive_init(ctx.get()) != 1) fail("X25519 derive init");
    if (EVP_PKEY_derive_set_peer(ctx.get(), peer.get()) != 1) fail("X25519 peer key rejected");
    Key32 secret{};
    std::size_t len = secret.size();
    // OpenSSL fails the derivation when the result is all zeros (a low-order peer key).
    if (EVP_PKEY_derive(ctx.get(), secret.data(), &len) != 1 || len != secret.size())
      fail("X25519 key agreement");
    return secret;
  }

 private:
  PkeyPtr pkey_;
};

// Streaming SHA-256, for digests of what a client already answered.
class Sha256 {
 public:
  Sha256() : ctx_(EVP_MD_CTX_new()) {
    if (!ctx_ || EVP_DigestInit_ex(ctx_.get(), EVP_sha256(), nullptr) != 1) fail("SHA-256 init");
  }
  void update(const void* data, std::size_t n) {
    if (n && EVP_DigestUpdate(ctx_.get(), data, n) != 1) fail("SHA-256 update");
  }
  void update(const Bytes& b) { update(b.data(), b.size()); }
  Key32 final() {
    Key32 out{};
    unsigned int len = 0;
    if (EVP_DigestFinal_ex(ctx_.get(), out.data(), &len) != 1 || len != out.size())
      fail("SHA-256 final");
    return out;
  }

 private:
  MdCtxPtr ctx_;
};

// ChaCha20 keystream with a zero nonce; whole-buffer EVP calls over a static block of zeros.
class ChaChaStream {
 public:
  explicit ChaChaStream(const Key32& key) : ctx_(new_cipher_ctx()) {
    static const uint8_t kZeroIv[16] = {};
    if (EVP_EncryptInit_ex(ctx_.get(), EVP_chacha20(), nullptr, key.data(), kZeroIv) != 1)
      fail("ChaCha20 init");
  }
  void fill(uint8_t* out, std::size_t n) {
    while (n > 0) {
      const std::size_t step = std::min(n, sizeof kZeros);
      int len = 0;
      if (EVP_EncryptUpdate(ctx_.get(), out, &len, kZeros, static_cast<int>(step)) != 1 ||
          static_cast<std::size_t>(len) != step)
        fail("ChaCha20 keystream");
      out += step;
      n -= step;
    }
  }
  // Little-endian uint32 values.
  void fill_u32(uint32_t* out, std::size_t n) {
    fill(reinterpret_cast<uint8_t*>(out), n * sizeof(uint32_t));
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    for (std::size_t i = 0; i < n; ++i) out[i] = __builtin_bswap32(out[i]);
#endif
  }
  // Uniform in [0, bound), bound >= 1, by rejection (no modulo bias).
  uint32_t below(uint32_t bound) {
    const uint32_t limit = UINT32_MAX - (UINT32_MAX % bound + 1) % bound;  // accept v <= limit
    for (;;) {
      uint32_t v = 0;
      fill_u32(&v, 1);
      if (v <= limit) return v % bound;
    }
  }

 private:
  static const uint8_t kZeros[1 << 16];
  CipherCtxPtr ctx_;
};
const uint8_t ChaChaStream::kZeros[1 << 16] = {};

std::string round_prefix(uint64_t round) {
  return "secure aggregation round " + std::to_string(round) + ": ";
}

// ---------------------------------------------------------------------------------------------
// GF(2^127 - 1) with unsigned __int128.

__extension__ typedef unsigned __int128 u128;
constexpr u128 kP = (u128{1} << 127) - 1;

// Any x < 2^128 into [0, p): 2^127 = 1 mod p.
u128 reduce(u128 x) {
  x = (x & kP) + (x >> 127);
  return x >= kP ? x - kP : x;
}
u128 add_mod(u128 a, u128 b) { return reduce(a + b); }  // a, b < p: no overflow
u128 sub_mod(u128 a, u128 b) { return a >= b ? a - b : a + (kP - b); }
u128 mul_mod(u128 a, u128 b) {
  const uint64_t a0 = static_cast<uint64_t>(a), a1 = static_cast<uint64_t>(a >> 64);
  const uint64_t b0 = static_cast<uint64_t>(b), b1 = static_cast<uint64_t>(b >> 64);
  const u128 low = u128{a0} * b0;                  // weight 1
  const u128 mid = u128{a0} * b1 + u128{a1} * b0;  // weight 2^64; a1, b1 < 2^63: no overflow
  const u128 high = u128{a1} * b1;                 // weight 2^128 = 2 mod p; < 2^126
  const uint64_t mid_lo = static_cast<uint64_t>(mid), mid_hi = static_cast<uint64_t>(mid >> 64);
  // mid * 2^64 = mid_hi * 2^128 + mid_lo * 2^64 = 2 mid_hi + (mid_lo >> 63) + (low 63 bits) * 2^64
  const u128 mid_part = (u128{mid_lo & 0x7FFFFFFFFFFFFFFFull} << 64) + (mid_lo >> 63);
  u128 r = reduce(low);
  r = add_mod(r, reduce(high << 1));
  r = add_mod(r, reduce(u128{mid_hi} << 1));
  r = add_mod(r, reduce(mid_part));
  return r;
}
u128 pow_mod(u128 base, u128 e) {
  u128 result = 1;
  while (e) {
    if (e & 1) result = mul_mod(result, base);
    base = mul_mod(base, base);
    e >>= 1;
  }
  return result;
}
u128 inv_mod(u128 a) { return pow_mod(a, kP - 2); }  // a != 0 (Fermat)

u128 random_field_element() {
  for (;;) {
    uint8_t b[16];
    random_bytes(b, sizeof b);
    u128 v = 0;
    for (int i = 15; i >= 0; --i) v = (v << 8) | b[i];
    v &= kP;                // 127 bits
    if (v != kP) return v;  // reject the one value that is p itself
  }
}

u128 load_le(const uint8_t* p, std::size_t n) {
  u128 v = 0;
  for (std::size_t i = n; i-- > 0;) v = (v << 8) | p[i];
  return v;
}
void store_le(u128 v, uint8_t* p, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i, v >>= 8) p[i] = static_cast<uint8_t>(v);
}

// A 32-byte secret is chunks of 15, 15 and 2 bytes: each below p.
constexpr std::size_t kChunks = 3;
constexpr std::size_t kChunkOffset[kChunks] = {0, 15, 30};
constexpr std::size_t kChunkLength[kChunks] = {15, 15, 2};

// ---------------------------------------------------------------------------------------------
// Wire format: "FLSA", version, type, round (u64), then the fields, little-endian; ids as u32
// that must fit an int; counts as u32, bounded by the bytes left before anything is reserved.

constexpr uint8_t kMagic[4] = {'F', 'L', 'S', 'A'};
constexpr uint8_t kWireVersion = 1;
enum class Type : uint8_t {
  kAdvertiseKeys = 1,
  kKeyDirectory = 2,
  kShareKeys = 3,
  kShareDelivery = 4,
  kMaskedInput = 5,
  kUnmaskRequest = 6,
  kUnmaskShares = 7,
  kClientState = 0x41,
  kServerState = 0x42,
};
const char* type_name(uint8_t t) {
  switch (static_cast<Type>(t)) {
    case Type::kAdvertiseKeys:
      return "AdvertiseKeys";
    case Type::kKeyDirectory:
      return "KeyDirectory";
    case Type::kShareKeys:
      return "ShareKeys";
    case Type::kShareDelivery:
      return "ShareDelivery";
    case Type::kMaskedInput:
      return "MaskedInput";
    case Type::kUnmaskRequest:
      return "UnmaskRequest";
    case Type::kUnmaskShares:
      return "UnmaskShares";
    case Type::kClientState:
      return "client state";
    case Type::kServerState:
      return "server state";
  }
  return "unknown";
}

class Writer {
 public:
  Writer(Type type, uint64_t round) {
    raw(kMagic, sizeof kMagic);
    u8(kWireVersion);
    u8(static_cast<uint8_t>(type));
    u64(round);
  }
  void u8(uint8_t v) { out_.push_back(v); }
  void u32(uint32_t v) {
    for (int i = 0; i < 4; ++i) out_.push_back(static_cast<uint8_t>(v >> (8 * i)));
  }
  void u64(uint64_t v) {
    for (int i = 0; i < 8; ++i) out_.push_back(static_cast<uint8_t>(v >> (8 * i)));
  }
  void id(int v) { u32(static_cast<uint32_t>(v)); }
  void count(std::size_t n) {
    if (n > UINT32_MAX)
      throw std::invalid_argument("secagg: more than 2^32 - 1 entries to serialize");
    u32(static_cast<uint32_t>(n));
  }
  void raw(const void* p, std::size_t n) {
    const auto* b = static_cast<const uint8_t*>(p);
    out_.insert(out_.end(), b, b + n);
  }
  template <std::size_t N>
  void arr(const std::array<uint8_t, N>& a) {
    raw(a.data(), N);
  }
  void blob(const Bytes& b) {
    count(b.size());
    raw(b.data(), b.size());
  }
  void params(const Params& p) {  // round travels in the header
    u32(static_cast<uint32_t>(p.threshold));
    u32(static_cast<uint32_t>(p.neighbours));
    u64(p.graph_seed);
    u64(p.vector_length);
  }
  Bytes take() { return std::move(out_); }

 private:
  Bytes out_;
};

class Reader {
 public:
  Reader(const Bytes& in, Type type) : in_(in), what_(type_name(static_cast<uint8_t>(type))) {
    need(sizeof kMagic + 2 + 8, "header");
    if (std::memcmp(in_.data(), kMagic, sizeof kMagic) != 0)
      bad("not a secure-aggregation message (bad magic)");
    pos_ = sizeof kMagic;
    const uint8_t version = u8("version");
    if (version != kWireVersion) bad("wire version " + std::to_string(version) + ", expected 1");
    const uint8_t t = u8("type");
    if (t != static_cast<uint8_t>(type))
      bad(std::string("holds a ") + type_name(t) + " (type " + std::to_string(t) + ")");
    round_ = u64("round");
  }
  uint64_t round() const { return round_; }

  [[noreturn]] void bad(const std::string& why) const {
    throw std::invalid_argument(std::string("secagg ") + what_ + ": " + why);
  }
  std::size_t left() const { return in_.size() - pos_; }
  void need(std::size_t n, const char* field) const {
    if (left() < n)
      bad(std::string("truncated at field '") + field + "' (needs " + std::to_string(n) +
          " bytes, " + std::to_string(left()) + " left)");
  }
  uint8_t u8(const char* field) {
    need(1, field);
    return in_[pos_++];
  }
  uint32_t u32(const char* field) {
    need(4, field);
    uint32_t v = 0;
    for (int i = 3; i >= 0; --i) v = (v << 8) | in_[pos_ + static_cast<std::size_t>(i)];
    pos_ += 4;
    return v;
  }
  uint64_t u64(const char* field) {
    need(8, field);
    uint64_t v = 0;
    for (int i = 7; i >= 0; --i) v = (v << 8) | in_[pos_ + static_cast<std::size_t>(i)];
    pos_ += 8;
    return v;
  }
  int id(const char* field) {
    const uint32_t v = u32(field);
    if (v > static_cast<uint32_t>(INT_MAX))
      bad(std::string("field '") + field + "' holds a negative client id");
    return static_cast<int>(v);
  }
  // An entry count; `min_entry` bytes per entry must still be there.
  std::size_t count(const char* field, std::size_t min_entry) {
    const uint32_t n = u32(field);
    if (min_entry > 0 && n > left() / min_entry)
      bad(std::string("field '") + field + "' claims " + std::to_string(n) +
          " entries, more than the " + std::to_string(left()) + " bytes left can hold");
    return n;
  }
  template <std::size_t N>
  std::array<uint8_t, N> arr(const char* field) {
    need(N, field);
    std::array<uint8_t, N> a{};
    std::memcpy(a.data(), in_.data() + pos_, N);
    pos_ += N;
    return a;
  }
  Bytes blob(const char* field, std::size_t exact) {
    const std::size_t n = count(field, 1);
    if (exact != 0 && n != exact)
      bad(std::string("field '") + field + "' has " + std::to_string(n) + " bytes, expected " +
          std::to_string(exact));
    need(n, field);
    Bytes b(in_.begin() + static_cast<std::ptrdiff_t>(pos_),
            in_.begin() + static_cast<std::ptrdiff_t>(pos_ + n));
    pos_ += n;
    return b;
  }
  Params params() {
    Params p;
    p.threshold = static_cast<int>(u32("threshold"));
    p.neighbours = static_cast<int>(u32("neighbours"));
    p.graph_seed = u64("graph_seed");
    const uint64_t len = u64("vector_length");
    if (len > kMaxVectorLength) bad("field 'vector_length' is " + std::to_string(len));
    p.vector_length = static_cast<std::size_t>(len);
    p.round = round_;
    try {
      p.validate();
    } catch (const std::invalid_argument& e) {
      bad(e.what());
    }
    return p;
  }
  void end() const {
    if (left() != 0) bad(std::to_string(left()) + " trailing bytes");
  }

 private:
  const Bytes& in_;
  const char* what_;
  std::size_t pos_ = 0;
  uint64_t round_ = 0;
};

void write_keys(Writer& w, const ClientKeys& k) {
  w.id(k.id);
  w.arr(k.enc_public);
  w.arr(k.mask_public);
}
ClientKeys read_keys(Reader& r) {
  ClientKeys k;
  k.id = r.id("id");
  k.enc_public = r.arr<32>("enc_public");
  k.mask_public = r.arr<32>("mask_public");
  return k;
}
constexpr std::size_t kKeysBytes = 4 + 32 + 32;

void write_sealed(Writer& w, const std::vector<EncryptedShares>& v) {
  w.count(v.size());
  for (const auto& e : v) {
    w.id(e.sender);
    w.id(e.receiver);
    w.blob(e.ciphertext);
  }
}
std::vector<EncryptedShares> read_sealed(Reader& r) {
  // Bound by the fixed part only, so that a short ciphertext is reported as such below.
  const std::size_t n = r.count("shares", 4 + 4 + 4);
  std::vector<EncryptedShares> v(n);
  for (auto& e : v) {
    e.sender = r.id("sender");
    e.receiver = r.id("receiver");
    e.ciphertext = r.blob("ciphertext", kSealedSharesBytes);
  }
  return v;
}

void write_ids(Writer& w, const std::vector<int>& ids) {
  w.count(ids.size());
  for (int id : ids) w.id(id);
}
std::vector<int> read_ids(Reader& r, const char* field) {
  std::vector<int> ids(r.count(field, 4));
  for (int& id : ids) id = r.id(field);
  return ids;
}

// ---------------------------------------------------------------------------------------------
// Protocol derivations: every key depends on the round and both ids (smaller first), so no
// seed is used for two streams.

Bytes info(const char* label, uint64_t round, int a, int b) {
  Bytes out(label, label + std::strlen(label));
  out.push_back(0);
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<uint8_t>(round >> (8 * i)));
  for (int v : {a, b})
    for (int i = 0; i < 4; ++i)
      out.push_back(static_cast<uint8_t>(static_cast<uint32_t>(v) >> (8 * i)));
  return out;
}

Key32 to_key(const Bytes& b) {
  Key32 k{};
  std::copy(b.begin(), b.end(), k.begin());
  return k;
}

Key32 derive(const Key32& ikm, const char* label, uint64_t round, int a, int b) {
  return to_key(hkdf_sha256(Bytes(ikm.begin(), ikm.end()), {}, info(label, round, a, b), 32));
}

// AES key of the share messages between u and v (either direction).
Key32 share_key(const X25519Key& my_enc, const Key32& peer_enc_public, uint64_t round, int u,
                int v) {
  Key32 secret{};
  try {
    secret = my_enc.agree(peer_enc_public);
  } catch (const std::runtime_error& e) {
    throw std::runtime_error(round_prefix(round) + "key agreement with client " +
                             std::to_string(v) + "'s encryption key failed: " + e.what());
  }
  return derive(secret, "fl-secagg/v1 share encryption", round, std::min(u, v), std::max(u, v));
}

// s_uv: the seed of the pairwise mask between u and v.
Key32 pairwise_seed(const X25519Key& my_mask, const Key32& peer_mask_public, uint64_t round, int u,
                    int v) {
  Key32 secret{};
  try {
    secret = my_mask.agree(peer_mask_public);
  } catch (const std::runtime_error& e) {
    throw std::runtime_error(round_prefix(round) + "key agreement with client " +
                             std::to_string(v) + "'s mask key failed: " + e.what());
  }
  return derive(secret, "fl-secagg/v1 pairwise mask", round, std::min(u, v), std::max(u, v));
}

// The PRG seed of u's self mask, from b_u.
Key32 self_mask_seed(const Key32& b, uint64_t round, int u) {
  return derive(b, "fl-secagg/v1 self mask", round, u, u);
}

Bytes share_aad(uint64_t round, int sender, int receiver) {
  return info("fl-secagg/v1 shares", round, sender, receiver);
}

uint32_t share_x(int id) { return static_cast<uint32_t>(id) + 1; }

// t must be reachable (t <= k + 1 share holders) and a strict majority of them.
void check_threshold_majority(int threshold, std::size_t degree, const std::string& prefix) {
  const std::size_t holders = degree + 1;
  if (static_cast<std::size_t>(threshold) > holders)
    throw std::invalid_argument(prefix + "threshold " + std::to_string(threshold) +
                                " exceeds the " + std::to_string(holders) +
                                " share holders of a neighbourhood (" + std::to_string(degree) +
                                " neighbours and the client itself)");
  if (2 * static_cast<std::size_t>(threshold) <= holders)
    throw std::invalid_argument(prefix + "threshold " + std::to_string(threshold) +
                                " is not a strict majority of the " + std::to_string(holders) +
                                " share holders of a neighbourhood (" + std::to_string(degree) +
                                " neighbours and the client itself); it must be at least " +
                                std::to_string(holders / 2 + 1));
}

// Neighbourhoods of a built graph: feasibility is a runtime condition (who advertised).
void check_graph_threshold(const std::map<int, std::vector<int>>& graph, int threshold,
                           uint64_t round) {
  if (graph.size() < static_cast<std::size_t>(threshold))
    throw std::runtime_error(round_prefix(round) + "only " + std::to_string(graph.size()) +
                             " clients advertised keys; the threshold is " +
                             std::to_string(threshold));
  for (const auto& [id, nb] : graph) {
    try {
      check_threshold_majority(threshold, nb.size(), "");
    } catch (const std::invalid_argument& e) {
      throw std::runtime_error(round_prefix(round) + "client " + std::to_string(id) + ": " +
                               e.what());
    }
  }
}

bool contains(const std::vector<int>& sorted, int id) {
  return std::binary_search(sorted.begin(), sorted.end(), id);
}

// False for the points X25519 maps to zero whatever the private key (small order).
bool usable_public_key(const Key32& key) {
  static const Key32 probe = [] {
    Key32 k{};
    k.fill(0x5a);
    return k;
  }();
  try {
    x25519_agree(probe, key);
    return true;
  } catch (const std::runtime_error&) {
    return false;
  }
}

std::string join_ids(const std::vector<int>& ids) {
  std::string s;
  for (std::size_t i = 0; i < ids.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(ids[i]);
  }
  return s.empty() ? "none" : s;
}

}  // namespace

// =============================================================================================
// Primitives

void random_bytes(uint8_t* out, std::size_t n) {
  while (n > 0) {
    const int step = static_cast<int>(std::min<std::size_t>(n, 1 << 20));
    if (RAND_bytes(out, step) != 1) fail("RAND_bytes");
    out += step;
    n -= static_cast<std::size_t>(step);
  }
}

Key32 random_key() {
  Key32 k{};
  random_bytes(k.data(), k.size());
  return k;
}

KeyPair x25519_generate() {
  KeyPair kp;
  kp.private_key = random_key();  // X25519 clamps on use: any 32 bytes are a private key
  kp.public_key = x25519_public_key(kp.private_key);
  return kp;
}

Key32 x25519_public_key(const Key32& private_key) {
  PkeyPtr pkey = x25519_private(private_key);
  Key32 pub{};
  std::size_t len = pub.size();
  if (EVP_PKEY_get_raw_public_key(pkey.get(), pub.data(), &len) != 1 || len != pub.size())
    fail("X25519 public key export");
  return pub;
}

Key32 x25519_agree(const Key32& private_key, const Key32& peer_public) {
  return X25519Key(private_key).agree(peer_public);
}

Bytes hkdf_sha256(const Bytes& ikm, const Bytes& salt, const Bytes& info_bytes,
                  std::size_t length) {
  if (ikm.empty()) throw std::invalid_argument("hkdf_sha256: empty input key material");
  if (length == 0 || length > 255 * 32)
    throw std::invalid_argument("hkdf_sha256: output length " + std::to_string(length) +
                                " outside 1..8160");
  // Fetched once: a fetch per call costs more than the derivation.
  static EVP_KDF* const kdf = EVP_KDF_fetch(nullptr, "HKDF", nullptr);
  if (!kdf) fail("EVP_KDF_fetch HKDF");
  KdfCtxPtr ctx(EVP_KDF_CTX_new(kdf));
  if (!ctx) fail("EVP_KDF_CTX_new");
  char digest[] = "SHA256";
  OSSL_PARAM params[5];
  std::size_t n = 0;
  params[n++] = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, digest, 0);
  params[n++] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY,
                                                  const_cast<uint8_t*>(ikm.data()), ikm.size());
  if (!salt.empty())
    params[n++] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT,
                                                    const_cast<uint8_t*>(salt.data()), salt.size());
  if (!info_bytes.empty())
    params[n++] = OSSL_PARAM_construct_octet_string(
        OSSL_KDF_PARAM_INFO, const_cast<uint8_t*>(info_bytes.data()), info_bytes.size());
  params[n] = OSSL_PARAM_construct_end();
  Bytes out(length);
  if (EVP_KDF_derive(ctx.get(), out.data(), out.size(), params) != 1) fail("HKDF-SHA256");
  return out;
}

std::vector<uint32_t> prg_expand(const Key32& seed, std::size_t length) {
  std::vector<uint32_t> out(length);
  ChaChaStream(seed).fill_u32(out.data(), out.size());
  return out;
}

void prg_accumulate(const Key32& seed, std::vector<uint32_t>& target, bool subtract) {
  ChaChaStream stream(seed);
  uint32_t block[4096];
  for (std::size_t at = 0; at < target.size(); at += 4096) {
    const std::size_t n = std::min<std::size_t>(4096, target.size() - at);
    stream.fill_u32(block, n);
    uint32_t* t = target.data() + at;
    if (subtract) {
      for (std::size_t i = 0; i < n; ++i) t[i] -= block[i];
    } else {
      for (std::size_t i = 0; i < n; ++i) t[i] += block[i];
    }
  }
}

Bytes aes_gcm_seal(const Key32& key, const Bytes& plaintext, const Bytes& aad) {
  Bytes out(kGcmNonceBytes + plaintext.size() + kGcmTagBytes);
  random_bytes(out.data(), kGcmNonceBytes);
  CipherCtxPtr ctx = new_cipher_ctx();
  int len = 0;
  if (EVP_EncryptInit_ex(ctx.get(), EVP_aes_256_gcm(), nullptr, key.data(), out.data()) != 1)
    fail("AES-256-GCM init");
  if (!aad.empty() &&
      EVP_EncryptUpdate(ctx.get(), nullptr, &len, aad.data(), static_cast<int>(aad.size())) != 1)
    fail("AES-256-GCM aad");
  uint8_t* ct = out.data() + kGcmNonceBytes;
  if (!plaintext.empty() && EVP_EncryptUpdate(ctx.get(), ct, &len, plaintext.data(),
                                              static_cast<int>(plaintext.size())) != 1)
    fail("AES-256-GCM encrypt");
  if (EVP_EncryptFinal_ex(ctx.get(), ct + plaintext.size(), &len) != 1) fail("AES-256-GCM final");
  if (EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_GET_TAG, static_cast<int>(kGcmTagBytes),
                          ct + plaintext.size()) != 1)
    fail("AES-256-GCM tag");
  return out;
}

Bytes aes_gcm_open(const Key32& key, const Bytes& sealed, const Bytes& aad) {
  if (sealed.size() < kGcmNonceBytes + kGcmTagBytes)
    throw std::runtime_error("AES-256-GCM: sealed message of " + std::to_string(sealed.size()) +
                             " bytes is shorter than nonce and tag");
  const std::size_t ct_len = sealed.size() - kGcmNonceBytes - kGcmTagBytes;
  const uint8_t* ct = sealed.data() + kGcmNonceBytes;
  Bytes out(ct_len);
  CipherCtxPtr ctx = new_cipher_ctx();
  int len = 0;
  if (EVP_DecryptInit_ex(ctx.get(), EVP_aes_256_gcm(), nullptr, key.data(), sealed.data()) != 1)
    fail("AES-256-GCM init");
  if (!aad.empty() &&
      EVP_DecryptUpdate(ctx.get(), nullptr, &len, aad.data(), static_cast<int>(aad.size())) != 1)
    fail("AES-256-GCM aad");
  if (ct_len > 0 &&
      EVP_DecryptUpdate(ctx.get(), out.data(), &len, ct, static_cast<int>(ct_len)) != 1)
    fail("AES-256-GCM decrypt");
  if (EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_TAG, static_cast<int>(kGcmTagBytes),
                          const_cast<uint8_t*>(ct + ct_len)) != 1)
    fail("AES-256-GCM tag");
  if (EVP_DecryptFinal_ex(ctx.get(), out.data() + ct_len, &len) != 1) {
    ERR_clear_error();
    throw std::runtime_error(
        "AES-256-GCM authentication failed (tampered, wrong key or wrong aad)");
  }
  return out;
}

// =============================================================================================
// Shamir

std::vector<ShamirShare> shamir_split(const Key32& secret, int threshold,
                                      const std::vector<uint32_t>& xs) {
  if (threshold < 1 || static_cast<std::size_t>(threshold) > xs.size())
    throw std::invalid_argument("shamir_split: threshold " + std::to_string(threshold) +
                                " outside 1.." + std::to_string(xs.size()) + " (the share count)");
  std::vector<uint32_t> sorted = xs;
  std::sort(sorted.begin(), sorted.end());
  if (!sorted.empty() && sorted.front() == 0)
    throw std::invalid_argument("shamir_split: x = 0 would be the secret itself");
  for (std::size_t i = 1; i < sorted.size(); ++i)
    if (sorted[i] == sorted[i - 1])
      throw std::invalid_argument("shamir_split: repeated x " + std::to_string(sorted[i]));

  // coeffs[c][0] is chunk c of the secret; the others are uniform in the field.
  std::vector<std::vector<u128>> coeffs(kChunks,
                                        std::vector<u128>(static_cast<std::size_t>(threshold)));
  for (std::size_t c = 0; c < kChunks; ++c) {
    coeffs[c][0] = load_le(secret.data() + kChunkOffset[c], kChunkLength[c]);
    for (std::size_t j = 1; j < coeffs[c].size(); ++j) coeffs[c][j] = random_field_element();
  }
  std::vector<ShamirShare> shares(xs.size());
  for (std::size_t i = 0; i < xs.size(); ++i) {
    shares[i].x = xs[i];
    for (std::size_t c = 0; c < kChunks; ++c) {
      u128 y = 0;  // Horner
      for (std::size_t j = coeffs[c].size(); j-- > 0;) y = add_mod(mul_mod(y, xs[i]), coeffs[c][j]);
      store_le(y, shares[i].y.data() + 16 * c, 16);
    }
  }
  return shares;
}

Key32 shamir_combine(const std::vector<ShamirShare>& shares, int threshold) {
  if (threshold < 1)
    throw std::invalid_argument("shamir_combine: threshold " + std::to_string(threshold) + " < 1");
  if (shares.size() < static_cast<std::size_t>(threshold))
    throw std::invalid_argument("shamir_combine: " + std::to_string(shares.size()) +
                                " shares, the threshold is " + std::to_string(threshold));
  std::vector<const ShamirShare*> sorted;
  for (const auto& s : shares) sorted.push_back(&s);
  std::sort(sorted.begin(), sorted.end(), [](auto* a, auto* b) { return a->x < b->x; });
  if (sorted.front()->x == 0) throw std::invalid_argument("shamir_combine: share with x = 0");
  for (std::size_t i = 1; i < sorted.size(); ++i)
    if (sorted[i]->x == sorted[i - 1]->x)
      throw std::invalid_argument("shamir_combine: repeated x " + std::to_string(sorted[i]->x));
  sorted.resize(static_cast<std::size_t>(threshold));

  const std::size_t t = sorted.size();
  std::vector<std::array<u128, kChunks>> ys(t);
  for (std::size_t i = 0; i < t; ++i)
    for (std::size_t c = 0; c < kChunks; ++c) {
      ys[i][c] = load_le(sorted[i]->y.data() + 16 * c, 16);
      if (ys[i][c] >= kP)
        throw std::invalid_argument("shamir_combine: share at x " + std::to_string(sorted[i]->x) +
                                    " holds a value outside the field");
    }
  // Lagrange at 0: lambda_i = prod_{j != i} x_j / (x_j - x_i).
  std::array<u128, kChunks> acc{};
  for (std::size_t i = 0; i < t; ++i) {
    u128 num = 1, den = 1;
    for (std::size_t j = 0; j < t; ++j) {
      if (j == i) continue;
      num = mul_mod(num, sorted[j]->x);
      den = mul_mod(den, sub_mod(sorted[j]->x, sorted[i]->x));
    }
    const u128 lambda = mul_mod(num, inv_mod(den));
    for (std::size_t c = 0; c < kChunks; ++c) acc[c] = add_mod(acc[c], mul_mod(lambda, ys[i][c]));
  }
  Key32 secret{};
  for (std::size_t c = 0; c < kChunks; ++c) {
    if (acc[c] >> (8 * kChunkLength[c]))
      throw std::runtime_error(
          "shamir_combine: the shares do not belong to one secret "
          "(interpolated chunk out of range)");
    store_le(acc[c], secret.data() + kChunkOffset[c], kChunkLength[c]);
  }
  return secret;
}

// =============================================================================================
// Graph

std::size_t graph_degree(std::size_t n, int neighbours) {
  if (n == 0) return 0;
  const std::size_t half = (static_cast<std::size_t>(std::max(neighbours, 0)) + 1) / 2;
  if (neighbours <= 0 || 2 * half >= n - 1) return n - 1;
  return 2 * half;
}

std::map<int, std::vector<int>> communication_graph(const std::vector<int>& ids, int neighbours,
                                                    uint64_t graph_seed, uint64_t round) {
  if (neighbours < 0)
    throw std::invalid_argument("communication_graph: neighbours " + std::to_string(neighbours) +
                                " < 0");
  std::vector<int> order = ids;
  std::sort(order.begin(), order.end());
  for (std::size_t i = 0; i < order.size(); ++i) {
    if (order[i] < 0)
      throw std::invalid_argument("communication_graph: negative client id " +
                                  std::to_string(order[i]));
    if (i && order[i] == order[i - 1])
      throw std::invalid_argument("communication_graph: repeated client id " +
                                  std::to_string(order[i]));
  }
  const std::size_t n = order.size();
  std::map<int, std::vector<int>> graph;
  if (n == 0) return graph;
  const std::size_t degree = graph_degree(n, neighbours);
  if (degree == n - 1) {
    for (int u : order) {
      auto& nb = graph[u];
      for (int v : order)
        if (v != u) nb.push_back(v);
    }
    return graph;
  }
  // Fisher-Yates with a stream every party derives alike.
  Key32 ikm{};
  for (int i = 0; i < 8; ++i)
    ikm[static_cast<std::size_t>(i)] = static_cast<uint8_t>(graph_seed >> (8 * i));
  ChaChaStream stream(derive(ikm, "fl-secagg/v1 communication graph", round, 0, 0));
  for (std::size_t i = n - 1; i > 0; --i)
    std::swap(order[i], order[stream.below(static_cast<uint32_t>(i + 1))]);
  const std::size_t half = degree / 2;
  for (std::size_t i = 0; i < n; ++i) {
    auto& nb = graph[order[i]];
    for (std::size_t d = 1; d <= half; ++d) {
      nb.push_back(order[(i + d) % n]);
      nb.push_back(order[(i + n - d) % n]);
    }
    std::sort(nb.begin(), nb.end());
  }
  return graph;
}

// =============================================================================================
// Params and messages

void Params::validate() const {
  if (threshold < 2)
    throw std::invalid_argument("secagg params: threshold " + std::to_string(threshold) +
                                " < 2 (one client's sum is its input)");
  if (neighbours < 0)
    throw std::invalid_argument("secagg params: neighbours " + std::to_string(neighbours) + " < 0");
  if (vector_length == 0 || vector_length > kMaxVectorLength)
    throw std::invalid_argument("secagg params: vector_length " + std::to_string(vector_length) +
                                " outside 1.." + std::to_string(kMaxVectorLength));
}

Bytes AdvertiseKeys::serialize() const {
  Writer w(Type::kAdvertiseKeys, round);
  write_keys(w, keys);
  return w.take();
}
AdvertiseKeys AdvertiseKeys::parse(const Bytes& bytes) {
  Reader r(bytes, Type::kAdvertiseKeys);
  AdvertiseKeys m;
  m.round = r.round();
  m.keys = read_keys(r);
  r.end();
  return m;
}

Bytes KeyDirectory::serialize() const {
  Writer w(Type::kKeyDirectory, params.round);
  w.params(params);
  w.count(clients.size());
  for (const auto& k : clients) write_keys(w, k);
  return w.take();
}
KeyDirectory KeyDirectory::parse(const Bytes& bytes) {
  Reader r(bytes, Type::kKeyDirectory);
  KeyDirectory m;
  m.params = r.params();
  m.clients.resize(r.count("clients", kKeysBytes));
  for (auto& k : m.clients) k = read_keys(r);
  r.end();
  return m;
}

Bytes ShareKeys::serialize() const {
  Writer w(Type::kShareKeys, round);
  w.id(sender);
  write_sealed(w, shares);
  return w.take();
}
ShareKeys ShareKeys::parse(const Bytes& bytes) {
  Reader r(bytes, Type::kShareKeys);
  ShareKeys m;
  m.round = r.round();
  m.sender = r.id("sender");
  m.shares = read_sealed(r);
  r.end();
  return m;
}

Bytes ShareDelivery::serialize() const {
  Writer w(Type::kShareDelivery, round);
  w.id(receiver);
  write_sealed(w, shares);
  return w.take();
}
ShareDelivery ShareDelivery::parse(const Bytes& bytes) {
  Reader r(bytes, Type::kShareDelivery);
  ShareDelivery m;
  m.round = r.round();
  m.receiver = r.id("receiver");
  m.shares = read_sealed(r);
  r.end();
  return m;
}

Bytes MaskedInput::serialize() const {
  Writer w(Type::kMaskedInput, round);
  w.id(sender);
  w.count(masked.size());
  for (uint32_t v : masked) w.u32(v);
  return w.take();
}
MaskedInput MaskedInput::parse(const Bytes& bytes) {
  Reader r(bytes, Type::kMaskedInput);
  MaskedInput m;
  m.round = r.round();
  m.sender = r.id("sender");
  m.masked.resize(r.count("masked", 4));
  for (uint32_t& v : m.masked) v = r.u32("masked");
  r.end();
  return m;
}

Bytes UnmaskRequest::serialize() const {
  Writer w(Type::kUnmaskRequest, round);
  write_ids(w, survivors);
  return w.take();
}
UnmaskRequest UnmaskRequest::parse(const Bytes& bytes) {
  Reader r(bytes, Type::kUnmaskRequest);
  UnmaskRequest m;
  m.round = r.round();
  m.survivors = read_ids(r, "survivors");
  r.end();
  return m;
}

Bytes UnmaskShares::serialize() const {
  Writer w(Type::kUnmaskShares, round);
  w.id(sender);
  w.count(shares.size());
  for (const auto& s : shares) {
    w.id(s.owner);
    w.u8(static_cast<uint8_t>(s.kind));
    w.arr(s.y);
  }
  return w.take();
}
UnmaskShares UnmaskShares::parse(const Bytes& bytes) {
  Reader r(bytes, Type::kUnmaskShares);
  UnmaskShares m;
  m.round = r.round();
  m.sender = r.id("sender");
  m.shares.resize(r.count("shares", 4 + 1 + kShareBytes));
  for (auto& s : m.shares) {
    s.owner = r.id("owner");
    const uint8_t kind = r.u8("kind");
    if (kind != static_cast<uint8_t>(ShareKind::kSelfMaskSeed) &&
        kind != static_cast<uint8_t>(ShareKind::kMaskKey))
      r.bad("field 'kind' is " + std::to_string(kind) + ", expected 1 or 2");
    s.kind = static_cast<ShareKind>(kind);
    s.y = r.arr<kShareBytes>("y");
  }
  r.end();
  return m;
}

namespace {

void check_round(uint64_t got, uint64_t want, const std::string& what) {
  if (got != want)
    throw std::invalid_argument(round_prefix(want) + what + " is for round " + std::to_string(got));
}

// Sorted, distinct, non-negative.
void check_id_list(const std::vector<int>& ids, const std::string& what) {
  for (std::size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0)
      throw std::invalid_argument(what + ": negative client id " + std::to_string(ids[i]));
    if (i && ids[i] <= ids[i - 1])
      throw std::invalid_argument(what + ": client ids must be sorted and distinct (" +
                                  std::to_string(ids[i]) + " after " + std::to_string(ids[i - 1]) +
                                  ")");
  }
}

}  // namespace

// =============================================================================================
// Client

Client::Client(const Params& params, int id) : params_(params), id_(id) {
  params_.validate();
  if (id < 0) throw std::invalid_argument("secagg client: negative id " + std::to_string(id));
}

std::string Client::where() const {
  return round_prefix(params_.round) + "client " + std::to_string(id_) + ": ";
}

AdvertiseKeys Client::advertise_keys() {
  if (stage_ == Stage::kNew) {
    enc_ = x25519_generate();
    mask_ = x25519_generate();
    stage_ = Stage::kAdvertised;
  }
  return AdvertiseKeys{params_.round, ClientKeys{id_, enc_.public_key, mask_.public_key}};
}

ShareKeys Client::share_keys(const KeyDirectory& directory) {
  if (stage_ == Stage::kNew) throw std::runtime_error(where() + "share_keys before advertise_keys");
  const Bytes dir_bytes = directory.serialize();
  Sha256 h;
  h.update(dir_bytes);
  const Key32 digest = h.final();
  if (stage_ != Stage::kAdvertised) {
    // A repeat (the coordinator restarted): same answer, or none.
    if (digest != directory_digest_)
      throw std::runtime_error(where() +
                               "refusing a second, different key directory: shares "
                               "are dealt once per round");
    return ShareKeys::parse(sent_shares_);
  }

  const Params& p = directory.params;
  const std::string from = where() + "key directory: ";
  if (p.round != params_.round)
    throw std::invalid_argument(from + "it is for round " + std::to_string(p.round));
  if (p.threshold != params_.threshold)
    throw std::invalid_argument(from + "threshold " + std::to_string(p.threshold) +
                                ", this client has " + std::to_string(params_.threshold));
  if (p.neighbours != params_.neighbours)
    throw std::invalid_argument(from + "neighbours " + std::to_string(p.neighbours) +
                                ", this client has " + std::to_string(params_.neighbours));
  if (p.graph_seed != params_.graph_seed)
    throw std::invalid_argument(from + "graph_seed differs from this client's");
  if (p.vector_length != params_.vector_length)
    throw std::invalid_argument(from + "vector_length " + std::to_string(p.vector_length) +
                                ", this client has " + std::to_string(params_.vector_length));
  std::vector<int> ids;
  for (const auto& k : directory.clients) ids.push_back(k.id);
  check_id_list(ids, where() + "key directory");
  auto self = std::find_if(directory.clients.begin(), directory.clients.end(),
                           [&](const ClientKeys& k) { return k.id == id_; });
  if (self == directory.clients.end())
    throw std::invalid_argument(from + "this client is not listed");
  if (self->enc_public != enc_.public_key || self->mask_public != mask_.public_key)
    throw std::invalid_argument(from + "this client's keys are not the ones it advertised");
  // Distinct keys: a server reflecting a key back could make masks cancel.
  std::vector<Key32> all;
  for (const auto& k : directory.clients) {
    all.push_back(k.enc_public);
    all.push_back(k.mask_public);
  }
  std::sort(all.begin(), all.end());
  if (std::adjacent_find(all.begin(), all.end()) != all.end())
    throw std::invalid_argument(from + "two public keys are equal");
  const auto graph =
      communication_graph(ids, params_.neighbours, params_.graph_seed, params_.round);
  check_graph_threshold(graph, params_.threshold, params_.round);

  const std::vector<int>& nb = graph.at(id_);
  std::map<int, ClientKeys> neighbours;
  for (const auto& k : directory.clients)
    if (contains(nb, k.id)) neighbours[k.id] = k;

  // Shares for the neighbours and, last, for this client itself.
  std::vector<uint32_t> xs;
  for (const auto& [v, k] : neighbours) xs.push_back(share_x(v));
  xs.push_back(share_x(id_));
  const Key32 seed = random_key();
  const auto key_shares = shamir_split(mask_.private_key, params_.threshold, xs);
  const auto seed_shares = shamir_split(seed, params_.threshold, xs);

  ShareKeys out{params_.round, id_, {}};
  const X25519Key enc(enc_.private_key);
  std::size_t i = 0;
  for (const auto& [v, k] : neighbours) {
    Bytes plain(key_shares[i].y.begin(), key_shares[i].y.end());
    plain.insert(plain.end(), seed_shares[i].y.begin(), seed_shares[i].y.end());
    const Key32 key = share_key(enc, k.enc_public, params_.round, id_, v);
    out.shares.push_back({id_, v, aes_gcm_seal(key, plain, share_aad(params_.round, id_, v))});
    ++i;
  }
  self_seed_ = seed;
  own_self_share_ = seed_shares.back().y;
  neighbours_ = std::move(neighbours);
  directory_digest_ = digest;
  sent_shares_ = out.serialize();
  stage_ = Stage::kShared;
  return out;
}

MaskedInput Client::mask_input(const ShareDelivery& delivery, const std::vector<uint32_t>& input) {
  if (stage_ == Stage::kNew || stage_ == Stage::kAdvertised)
    throw std::runtime_error(where() + "mask_input before share_keys");
  check_round(delivery.round, params_.round, "the share delivery to client " + std::to_string(id_));
  if (delivery.receiver != id_)
    throw std::invalid_argument(where() + "got the share delivery for client " +
                                std::to_string(delivery.receiver));
  if (input.size() != params_.vector_length)
    throw std::invalid_argument(where() + "input has " + std::to_string(input.size()) +
                                " values, expected " + std::to_string(params_.vector_length));
  Sha256 h;
  h.update(delivery.serialize());
  h.update(input.data(), input.size() * sizeof(uint32_t));
  const Key32 digest = h.final();
  if (stage_ == Stage::kMasked && digest != masked_digest_)
    throw std::runtime_error(where() +
                             "refusing to mask a second, different input or delivery: "
                             "two masked vectors under one mask reveal their difference");

  const X25519Key enc(enc_.private_key), mask(mask_.private_key);
  std::map<int, Held> held;
  for (const auto& e : delivery.shares) {
    const std::string from = "client " + std::to_string(e.sender);
    if (e.receiver != id_)
      throw std::invalid_argument(where() + "delivery holds shares from " + from +
                                  " addressed to client " + std::to_string(e.receiver));
    auto nb = neighbours_.find(e.sender);
    if (nb == neighbours_.end())
      throw std::invalid_argument(where() + "delivery holds shares from " + from +
                                  ", who is not a neighbour");
    if (held.count(e.sender))
      throw std::invalid_argument(where() + "delivery holds two share messages from " + from);
    if (e.ciphertext.size() != kSealedSharesBytes)
      throw std::invalid_argument(where() + "share message from " + from + " has " +
                                  std::to_string(e.ciphertext.size()) + " bytes, expected " +
                                  std::to_string(kSealedSharesBytes));
    const Key32 key = share_key(enc, nb->second.enc_public, params_.round, id_, e.sender);
    Bytes plain;
    try {
      plain = aes_gcm_open(key, e.ciphertext, share_aad(params_.round, e.sender, id_));
    } catch (const std::runtime_error&) {
      throw std::runtime_error(where() + "the shares from " + from +
                               " failed authentication (tampered, or not sealed for this client "
                               "in this round)");
    }
    Held& s = held[e.sender];
    std::copy(plain.begin(), plain.begin() + kShareBytes, s.mask_key.begin());
    std::copy(plain.begin() + kShareBytes, plain.end(), s.self_seed.begin());
  }
  if (held.size() + 1 < static_cast<std::size_t>(params_.threshold))
    throw std::runtime_error(where() + "only " + std::to_string(held.size()) +
                             " neighbours completed stage 1; with this client that is fewer "
                             "than the threshold " +
                             std::to_string(params_.threshold));

  MaskedInput out{params_.round, id_, input};
  prg_accumulate(self_mask_seed(self_seed_, params_.round, id_), out.masked, false);
  for (const auto& [v, s] : held) {
    const Key32 seed = pairwise_seed(mask, neighbours_.at(v).mask_public, params_.round, id_, v);
    prg_accumulate(seed, out.masked, v < id_);  // + for v > u, - for v < u
  }
  held_ = std::move(held);
  masked_digest_ = digest;
  stage_ = Stage::kMasked;
  return out;
}

UnmaskShares Client::unmask(const UnmaskRequest& request) {
  if (stage_ != Stage::kMasked)
    throw std::runtime_error(where() + "unmask request before this client sent its masked input");
  check_round(request.round, params_.round, "the unmask request to client " + std::to_string(id_));
  check_id_list(request.survivors, where() + "unmask request");
  const auto& s = request.survivors;
  if (!contains(s, id_))
    throw std::runtime_error(where() +
                             "refusing an unmask request that does not list this "
                             "client as a survivor");
  std::size_t alive = 1;
  for (const auto& [v, h] : held_) alive += contains(s, v) ? 1 : 0;
  if (alive < static_cast<std::size_t>(params_.threshold))
    throw std::runtime_error(where() + "refusing to unmask: only " + std::to_string(alive) +
                             " of its share holders survived, fewer than the threshold " +
                             std::to_string(params_.threshold));

  UnmaskShares out{params_.round, id_, {}};
  out.shares.push_back({id_, ShareKind::kSelfMaskSeed, own_self_share_});
  for (const auto& [v, h] : held_) {
    const ShareKind kind = contains(s, v) ? ShareKind::kSelfMaskSeed : ShareKind::kMaskKey;
    auto before = revealed_.find(v);
    if (before != revealed_.end() && before->second != kind)
      throw std::runtime_error(
          where() +
          "refusing to reveal both the self-mask seed share and the mask-key share of "
          "client " +
          std::to_string(v) + ": an earlier request called it " +
          (before->second == ShareKind::kSelfMaskSeed ? "a survivor" : "dropped") + ", this one " +
          (kind == ShareKind::kSelfMaskSeed ? "a survivor" : "dropped"));
    out.shares.push_back({v, kind, kind == ShareKind::kSelfMaskSeed ? h.self_seed : h.mask_key});
  }
  for (const auto& r : out.shares)
    if (r.owner != id_) revealed_[r.owner] = r.kind;
  return out;
}

Bytes Client::save() const {
  Writer w(Type::kClientState, params_.round);
  w.params(params_);
  w.id(id_);
  w.u8(static_cast<uint8_t>(stage_));
  w.arr(enc_.private_key);
  w.arr(enc_.public_key);
  w.arr(mask_.private_key);
  w.arr(mask_.public_key);
  w.arr(self_seed_);
  w.arr(own_self_share_);
  w.count(neighbours_.size());
  for (const auto& [v, k] : neighbours_) write_keys(w, k);
  w.arr(directory_digest_);
  w.blob(sent_shares_);
  w.arr(masked_digest_);
  w.count(held_.size());
  for (const auto& [v, h] : held_) {
    w.id(v);
    w.arr(h.mask_key);
    w.arr(h.self_seed);
  }
  w.count(revealed_.size());
  for (const auto& [v, kind] : revealed_) {
    w.id(v);
    w.u8(static_cast<uint8_t>(kind));
  }
  return w.take();
}

Client Client::load(const Bytes& state) {
  Reader r(state, Type::kClientState);
  Client c;
  c.params_ = r.params();
  c.id_ = r.id("id");
  const uint8_t stage = r.u8("stage");
  if (stage > static_cast<uint8_t>(Stage::kMasked))
    r.bad("field 'stage' is " + std::to_string(stage));
  c.stage_ = static_cast<Stage>(stage);
  c.enc_.private_key = r.arr<32>("enc_private");
  c.enc_.public_key = r.arr<32>("enc_public");
  c.mask_.private_key = r.arr<32>("mask_private");
  c.mask_.public_key = r.arr<32>("mask_public");
  c.self_seed_ = r.arr<32>("self_seed");
  c.own_self_share_ = r.arr<kShareBytes>("own_self_share");
  const std::size_t nn = r.count("neighbours", kKeysBytes);
  for (std::size_t i = 0; i < nn; ++i) {
    const ClientKeys k = read_keys(r);
    if (!c.neighbours_.emplace(k.id, k).second) r.bad("repeated neighbour " + std::to_string(k.id));
  }
  c.directory_digest_ = r.arr<32>("directory_digest");
  c.sent_shares_ = r.blob("sent_shares", 0);
  c.masked_digest_ = r.arr<32>("masked_digest");
  const std::size_t nh = r.count("held", 4 + 2 * kShareBytes);
  for (std::size_t i = 0; i < nh; ++i) {
    const int v = r.id("held.sender");
    Held h;
    h.mask_key = r.arr<kShareBytes>("held.mask_key");
    h.self_seed = r.arr<kShareBytes>("held.self_seed");
    if (!c.neighbours_.count(v)) r.bad("shares held from non-neighbour " + std::to_string(v));
    if (!c.held_.emplace(v, h).second) r.bad("repeated held sender " + std::to_string(v));
  }
  const std::size_t nr = r.count("revealed", 5);
  for (std::size_t i = 0; i < nr; ++i) {
    const int v = r.id("revealed.owner");
    const uint8_t kind = r.u8("revealed.kind");
    if (kind != 1 && kind != 2) r.bad("field 'revealed.kind' is " + std::to_string(kind));
    if (!c.revealed_.emplace(v, static_cast<ShareKind>(kind)).second)
      r.bad("repeated revealed owner " + std::to_string(v));
  }
  r.end();
  return c;
}

// =============================================================================================
// Server

namespace {
const char* stage_name(Server::Stage s) {
  switch (s) {
    case Server::Stage::kAdvertise:
      return "advertise keys";
    case Server::Stage::kShareKeys:
      return "share keys";
    case Server::Stage::kMaskedInput:
      return "masked input";
    case Server::Stage::kUnmask:
      return "unmask";
  }
  return "?";
}
}  // namespace

Server::Server(const Params& params, const std::vector<int>& participants)
    : params_(params), participants_(participants) {
  params_.validate();
  if (participants_.empty()) throw std::invalid_argument("secagg server: no participants");
  std::sort(participants_.begin(), participants_.end());
  check_id_list(participants_, "secagg server participants");
  // Majority against the largest neighbourhood possible; feasibility is checked on U1.
  check_threshold_majority(
      params_.threshold, graph_degree(participants_.size(), params_.neighbours), "secagg server: ");
}

std::string Server::where() const { return round_prefix(params_.round); }

void Server::require_stage(Stage s, const char* what) const {
  if (stage_ != s)
    throw std::runtime_error(where() + what + " arrived in stage '" + stage_name(stage_) +
                             "', expected '" + stage_name(s) + "'");
}

int Server::check_sender(int sender, const char* what) const {
  if (!contains(participants_, sender))
    throw std::invalid_argument(where() + what + " from client " + std::to_string(sender) +
                                ", who is not a participant");
  return sender;
}

void Server::receive_advertisement(const AdvertiseKeys& m) {
  require_stage(Stage::kAdvertise, "an advertisement");
  const int u = check_sender(m.keys.id, "advertisement");
  check_round(m.round, params_.round, "advertisement from client " + std::to_string(u));
  const std::string from = where() + "client " + std::to_string(u);
  if (keys_.count(u)) throw std::invalid_argument(from + " advertised keys twice");
  // Refused here, one client's bad key would otherwise make every neighbour fail stage 1.
  for (const auto& [what, key] :
       {std::pair<const char*, const Key32*>{"encryption", &m.keys.enc_public},
        {"mask", &m.keys.mask_public}}) {
    if (!usable_public_key(*key))
      throw std::invalid_argument(from + " advertised an unusable X25519 " + what +
                                  " public key (a low-order point)");
    for (const auto& [v, k] : keys_)
      if (*key == k.enc_public || *key == k.mask_public)
        throw std::invalid_argument(from + " advertised a " + what + " public key that client " +
                                    std::to_string(v) + " already advertised");
  }
  if (m.keys.enc_public == m.keys.mask_public)
    throw std::invalid_argument(from + " advertised the same key for encryption and masking");
  keys_[u] = m.keys;
}

KeyDirectory Server::close_advertisements() {
  require_stage(Stage::kAdvertise, "close_advertisements");
  std::vector<int> ids;
  for (const auto& [u, k] : keys_) ids.push_back(u);
  auto graph = communication_graph(ids, params_.neighbours, params_.graph_seed, params_.round);
  check_graph_threshold(graph, params_.threshold, params_.round);
  graph_ = std::move(graph);
  stage_ = Stage::kShareKeys;
  return key_directory();
}

void Server::receive_shares(const ShareKeys& m) {
  require_stage(Stage::kShareKeys, "a share-keys message");
  const int u = check_sender(m.sender, "share-keys message");
  check_round(m.round, params_.round, "share-keys message from client " + std::to_string(u));
  const std::string from = where() + "client " + std::to_string(u);
  auto nb = graph_.find(u);
  if (nb == graph_.end())
    throw std::invalid_argument(from + " sent shares without advertising keys");
  if (sealed_.count(u)) throw std::invalid_argument(from + " sent shares twice");
  std::set<int> seen;
  for (const auto& e : m.shares) {
    if (e.sender != u)
      throw std::invalid_argument(from + " sent a share message claiming sender " +
                                  std::to_string(e.sender));
    if (!contains(nb->second, e.receiver))
      throw std::invalid_argument(from + " sent shares to client " + std::to_string(e.receiver) +
                                  ", who is not its neighbour");
    if (!seen.insert(e.receiver).second)
      throw std::invalid_argument(from + " sent two share messages to client " +
                                  std::to_string(e.receiver));
    if (e.ciphertext.size() != kSealedSharesBytes)
      throw std::invalid_argument(from + " sent a share message of " +
                                  std::to_string(e.ciphertext.size()) + " bytes to client " +
                                  std::to_string(e.receiver));
  }
  if (seen.size() != nb->second.size())
    throw std::invalid_argument(from + " sent shares to " + std::to_string(seen.size()) +
                                " of its " + std::to_string(nb->second.size()) + " neighbours");
  sealed_[u] = m.shares;
}

std::map<int, ShareDelivery> Server::close_shares() {
  require_stage(Stage::kShareKeys, "close_shares");
  if (sealed_.size() < static_cast<std::size_t>(params_.threshold))
    throw std::runtime_error(where() + "only " + std::to_string(sealed_.size()) +
                             " clients shared their keys; the threshold is " +
                             std::to_string(params_.threshold));
  stage_ = Stage::kMaskedInput;
  masked_sum_.assign(params_.vector_length, 0);
  std::map<int, ShareDelivery> out;
  for (const auto& [u, s] : sealed_) out[u] = share_delivery(u);
  return out;
}

void Server::receive_masked_input(const MaskedInput& m) {
  require_stage(Stage::kMaskedInput, "a masked input");
  const int u = check_sender(m.sender, "masked input");
  check_round(m.round, params_.round, "masked input from client " + std::to_string(u));
  const std::string from = where() + "client " + std::to_string(u);
  if (!sealed_.count(u))
    throw std::invalid_argument(from +
                                " sent a masked input without completing stage 1 (its "
                                "masks could not be removed)");
  if (masked_.count(u)) throw std::invalid_argument(from + " sent its masked input twice");
  if (m.masked.size() != params_.vector_length)
    throw std::invalid_argument(from + " sent " + std::to_string(m.masked.size()) +
                                " values, expected " + std::to_string(params_.vector_length));
  for (std::size_t i = 0; i < masked_sum_.size(); ++i) masked_sum_[i] += m.masked[i];
  masked_.insert(u);
}

UnmaskRequest Server::close_masked_inputs() {
  require_stage(Stage::kMaskedInput, "close_masked_inputs");
  if (masked_.size() < static_cast<std::size_t>(params_.threshold))
    throw std::runtime_error(where() + "only " + std::to_string(masked_.size()) +
                             " masked inputs arrived; the threshold is " +
                             std::to_string(params_.threshold));
  stage_ = Stage::kUnmask;
  return unmask_request();
}

void Server::receive_unmask_shares(const UnmaskShares& m) {
  require_stage(Stage::kUnmask, "an unmask response");
  const int u = check_sender(m.sender, "unmask response");
  check_round(m.round, params_.round, "unmask response from client " + std::to_string(u));
  const std::string from = where() + "client " + std::to_string(u);
  if (!masked_.count(u))
    throw std::invalid_argument(from + " sent unmask shares but is not a survivor");
  if (responders_.count(u)) throw std::invalid_argument(from + " sent unmask shares twice");
  // Owners it holds shares of: its neighbours that completed stage 1, and itself.
  std::set<int> expected{u};
  for (int v : graph_.at(u))
    if (sealed_.count(v)) expected.insert(v);
  std::set<int> seen;
  for (const auto& s : m.shares) {
    const std::string owner = "client " + std::to_string(s.owner);
    if (!expected.count(s.owner))
      throw std::invalid_argument(from + " sent a share of " + owner + ", which it does not hold");
    if (!seen.insert(s.owner).second)
      throw std::invalid_argument(from + " sent two shares of " + owner);
    const ShareKind want = masked_.count(s.owner) ? ShareKind::kSelfMaskSeed : ShareKind::kMaskKey;
    if (s.kind != want)
      throw std::invalid_argument(
          from + " sent a " + (s.kind == ShareKind::kMaskKey ? "mask-key" : "self-mask seed") +
          " share of " + owner + ", who " + (want == ShareKind::kMaskKey ? "dropped" : "survived"));
  }
  if (seen.size() != expected.size())
    throw std::invalid_argument(from + " sent shares of " + std::to_string(seen.size()) +
                                " of the " + std::to_string(expected.size()) +
                                " clients it holds shares of");
  for (const auto& s : m.shares)
    (s.kind == ShareKind::kSelfMaskSeed ? self_seed_shares_ : mask_key_shares_)[s.owner][u] = s.y;
  responders_.insert(u);
}

std::vector<uint32_t> Server::finish() const {
  require_stage(Stage::kUnmask, "finish");
  const int t = params_.threshold;
  auto gather = [&](const std::map<int, std::map<int, ShareValue>>& all, int owner,
                    const char* what, const char* why) {
    std::vector<ShamirShare> shares;
    std::vector<int> holders;
    auto it = all.find(owner);
    if (it != all.end())
      for (const auto& [holder, y] : it->second) {
        shares.push_back({share_x(holder), y});
        holders.push_back(holder);
      }
    if (shares.size() < static_cast<std::size_t>(t))
      throw std::runtime_error(where() + "only " + std::to_string(shares.size()) +
                               " of the required " + std::to_string(t) + " shares of client " +
                               std::to_string(owner) + "'s " + what + " arrived (from clients " +
                               join_ids(holders) + "; " + why + ")");
    try {
      return shamir_combine(shares, t);
    } catch (const std::exception& e) {
      throw std::runtime_error(where() + "the shares of client " + std::to_string(owner) + "'s " +
                               what + " do not combine: " + e.what());
    }
  };

  std::vector<uint32_t> sum = masked_sum_;
  for (int u : masked_) {
    const Key32 b = gather(self_seed_shares_, u, "self-mask seed", "it survived");
    prg_accumulate(self_mask_seed(b, params_.round, u), sum, true);
  }
  for (const auto& [v, sealed] : sealed_) {
    if (masked_.count(v)) continue;
    // v dropped after stage 1: its surviving neighbours masked against it.
    std::vector<int> survivors;
    for (int u : graph_.at(v))
      if (masked_.count(u)) survivors.push_back(u);
    if (survivors.empty()) continue;
    const Key32 sk = gather(mask_key_shares_, v, "mask key", "it dropped after sharing its keys");
    if (x25519_public_key(sk) != keys_.at(v).mask_public)
      throw std::runtime_error(where() + "the mask key of client " + std::to_string(v) +
                               " rebuilt from its shares does not match its public key (a share "
                               "holder sent a wrong share)");
    const X25519Key sk_key(sk);
    for (int u : survivors) {
      // u added +PRG(s_uv) when v > u and -PRG(s_uv) when v < u: take it back out.
      const Key32 seed = pairwise_seed(sk_key, keys_.at(u).mask_public, params_.round, v, u);
      prg_accumulate(seed, sum, v > u);
    }
  }
  return sum;
}

KeyDirectory Server::key_directory() const {
  if (stage_ == Stage::kAdvertise)
    throw std::runtime_error(where() + "key directory before close_advertisements");
  KeyDirectory d{params_, {}};
  for (const auto& [u, k] : keys_) d.clients.push_back(k);
  return d;
}

ShareDelivery Server::share_delivery(int client) const {
  if (stage_ == Stage::kAdvertise || stage_ == Stage::kShareKeys)
    throw std::runtime_error(where() + "share delivery before close_shares");
  if (!sealed_.count(client))
    throw std::invalid_argument(where() + "no share delivery for client " + std::to_string(client) +
                                ", who did not complete stage 1");
  ShareDelivery d{params_.round, client, {}};
  for (int v : graph_.at(client)) {
    auto it = sealed_.find(v);
    if (it == sealed_.end()) continue;
    for (const auto& e : it->second)
      if (e.receiver == client) d.shares.push_back(e);
  }
  return d;
}

UnmaskRequest Server::unmask_request() const {
  if (stage_ != Stage::kUnmask)
    throw std::runtime_error(where() + "unmask request before close_masked_inputs");
  return UnmaskRequest{params_.round, survivors()};
}

std::vector<int> Server::advertised() const {
  std::vector<int> out;
  for (const auto& [u, k] : keys_) out.push_back(u);
  return out;
}
std::vector<int> Server::shared() const {
  std::vector<int> out;
  for (const auto& [u, s] : sealed_) out.push_back(u);
  return out;
}
std::vector<int> Server::survivors() const { return {masked_.begin(), masked_.end()}; }
std::vector<int> Server::responders() const { return {responders_.begin(), responders_.end()}; }

Bytes Server::save() const {
  Writer w(Type::kServerState, params_.round);
  w.params(params_);
  w.u8(static_cast<uint8_t>(stage_));
  write_ids(w, participants_);
  w.count(keys_.size());
  for (const auto& [u, k] : keys_) write_keys(w, k);
  w.count(sealed_.size());
  for (const auto& [u, s] : sealed_) {
    w.id(u);
    write_sealed(w, s);
  }
  write_ids(w, survivors());
  w.count(masked_sum_.size());
  for (uint32_t v : masked_sum_) w.u32(v);
  write_ids(w, responders());
  for (const auto* all : {&self_seed_shares_, &mask_key_shares_}) {
    std::size_t n = 0;
    for (const auto& [owner, m] : *all) n += m.size();
    w.count(n);
    for (const auto& [owner, m] : *all)
      for (const auto& [holder, y] : m) {
        w.id(owner);
        w.id(holder);
        w.arr(y);
      }
  }
  return w.take();
}

Server Server::load(const Bytes& state) {
  Reader r(state, Type::kServerState);
  Server s;
  s.params_ = r.params();
  const uint8_t stage = r.u8("stage");
  if (stage > static_cast<uint8_t>(Stage::kUnmask))
    r.bad("field 'stage' is " + std::to_string(stage));
  s.stage_ = static_cast<Stage>(stage);
  s.participants_ = read_ids(r, "participants");
  try {
    check_id_list(s.participants_, "participants");
  } catch (const std::invalid_argument& e) {
    r.bad(e.what());
  }
  const std::size_t nk = r.count("keys", kKeysBytes);
  for (std::size_t i = 0; i < nk; ++i) {
    const ClientKeys k = read_keys(r);
    if (!contains(s.participants_, k.id)) r.bad("keys of non-participant " + std::to_string(k.id));
    if (!s.keys_.emplace(k.id, k).second) r.bad("repeated advertiser " + std::to_string(k.id));
  }
  const std::size_t ns = r.count("sealed", 8);
  for (std::size_t i = 0; i < ns; ++i) {
    const int u = r.id("sealed.sender");
    if (!s.keys_.count(u)) r.bad("shares from non-advertiser " + std::to_string(u));
    if (!s.sealed_.emplace(u, read_sealed(r)).second) r.bad("repeated sender " + std::to_string(u));
  }
  for (int u : read_ids(r, "survivors"))
    if (!s.sealed_.count(u) || !s.masked_.insert(u).second)
      r.bad("bad survivor " + std::to_string(u));
  s.masked_sum_.resize(r.count("masked_sum", 4));
  for (uint32_t& v : s.masked_sum_) v = r.u32("masked_sum");
  const bool has_sum = s.stage_ == Stage::kMaskedInput || s.stage_ == Stage::kUnmask;
  if (s.masked_sum_.size() != (has_sum ? s.params_.vector_length : 0))
    r.bad("field 'masked_sum' has " + std::to_string(s.masked_sum_.size()) + " values");
  for (int u : read_ids(r, "responders"))
    if (!s.masked_.count(u) || !s.responders_.insert(u).second)
      r.bad("bad responder " + std::to_string(u));
  for (auto* all : {&s.self_seed_shares_, &s.mask_key_shares_}) {
    const std::size_t n = r.count("shares", 8 + kShareBytes);
    for (std::size_t i = 0; i < n; ++i) {
      const int owner = r.id("shares.owner");
      const int holder = r.id("shares.holder");
      (*all)[owner][holder] = r.arr<kShareBytes>("shares.y");
    }
  }
  r.end();
  if (s.stage_ != Stage::kAdvertise) {
    std::vector<int> ids;
    for (const auto& [u, k] : s.keys_) ids.push_back(u);
    s.graph_ =
        communication_graph(ids, s.params_.neighbours, s.params_.graph_seed, s.params_.round);
  }
  return s;
}

}  // namespace fl::secagg
