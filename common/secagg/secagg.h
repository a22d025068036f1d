#pragma once
// Secure aggregation of uint32 vectors mod 2^32: Bonawitz et al., "Practical Secure
// Aggregation for Privacy-Preserving Machine Learning" (CCS 2017), over the sparse SecAgg+
// communication graph of Bell et al., "Secure Single-Server Aggregation with
// (Poly)Logarithmic Overhead" (CCS 2020). The server learns the sum of the surviving clients'
// inputs and nothing about any one input; the sum survives clients dropping out at any stage
// as long as `threshold` shares of every secret it needs arrive.
//
// One Server, and one Client per participant, per round; four stages:
//   0 Client::advertise_keys()           -> Server::receive_advertisement, close_advertisements
//   1 Client::share_keys(KeyDirectory)   -> Server::receive_shares, close_shares
//   2 Client::mask_input(ShareDelivery)  -> Server::receive_masked_input, close_masked_inputs
//   3 Client::unmask(UnmaskRequest)      -> Server::receive_unmask_shares, finish
// Messages are plain structs with serialize() / parse(); parse() treats its bytes as hostile.
//
// Threat model: honest-but-curious server, plus the paper's client-side checks that keep a
// lying server from unmasking one client: a client never reveals both shares held for one
// neighbour, reveals nothing unless `threshold` of its neighbourhood survived, and the
// threshold must be a strict majority of every neighbourhood. There is no signature round
// (the paper's active-adversary variant): the transport must authenticate who sent what, and
// the caller must check that a message's sender field is the authenticated peer.
//
// Threshold convention (Bonawitz; Flower's SecAgg+ does the same): a client Shamir-shares its
// secrets among its neighbours AND itself, so a neighbourhood of k neighbours has k + 1 share
// holders and needs  k + 1 >= threshold  and  2 * threshold > k + 1.  The client's own share
// of its self-mask seed counts when it survives; its own share of its mask key is never used.
//
// No OpenSSL types here: secagg.cpp holds all of it. All functions are thread-safe; Client
// and Server objects are not (one caller at a time per object).

#include <array>
#include <cstddef>
#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

namespace fl::secagg {

using Bytes = std::vector<uint8_t>;
using Key32 = std::array<uint8_t, 32>;

// ---------------------------------------------------------------------------------------------
// Primitives (OpenSSL EVP). Failures inside OpenSSL throw std::runtime_error.

// `n` bytes from RAND_bytes.
void random_bytes(uint8_t* out, std::size_t n);
Key32 random_key();

// X25519 key pair, raw 32-byte encodings (RFC 7748).
struct KeyPair {
  Key32 private_key{};
  Key32 public_key{};
};
KeyPair x25519_generate();
// The public key of a raw private key.
Key32 x25519_public_key(const Key32& private_key);
// The shared secret X25519(private_key, peer_public). Symmetric: agree(a, B) == agree(b, A).
// Throws std::runtime_error when OpenSSL refuses the peer key (e.g. a low-order point, which
// would give an all-zero secret).
Key32 x25519_agree(const Key32& private_key, const Key32& peer_public);

// HKDF-SHA256 (RFC 5869). `ikm` must not be empty; `salt` may be (= HashLen zeros); `length`
// in 1..8160. Throws std::invalid_argument for an empty ikm or a bad length.
Bytes hkdf_sha256(const Bytes& ikm, const Bytes& salt, const Bytes& info, std::size_t length);

// PRG: the ChaCha20 keystream of `seed` (zero nonce, counter 0) read as little-endian uint32.
// Deterministic per seed; each seed must be used for one stream only (the protocol derives
// per-round seeds with HKDF). prg_accumulate adds (or subtracts) the stream into `target`
// mod 2^32 without allocating a second vector.
std::vector<uint32_t> prg_expand(const Key32& seed, std::size_t length);
void prg_accumulate(const Key32& seed, std::vector<uint32_t>& target, bool subtract);

// AES-256-GCM with a random 12-byte nonce. seal returns nonce || ciphertext || 16-byte tag;
// open checks the tag over ciphertext and `aad` and throws std::runtime_error when it does not
// match (tampered, wrong key or wrong aad) or `sealed` is shorter than nonce + tag.
constexpr std::size_t kGcmNonceBytes = 12;
constexpr std::size_t kGcmTagBytes = 16;
Bytes aes_gcm_seal(const Key32& key, const Bytes& plaintext, const Bytes& aad);
Bytes aes_gcm_open(const Key32& key, const Bytes& sealed, const Bytes& aad);

// ---------------------------------------------------------------------------------------------
// Shamir t-of-n sharing of 32-byte secrets over GF(2^127 - 1): the secret is cut into three
// chunks of 15, 15 and 2 bytes (each below the prime), shared with one polynomial each, so a
// share is three field elements, 16 bytes little-endian each.

constexpr std::size_t kShareBytes = 48;
using ShareValue = std::array<uint8_t, kShareBytes>;
struct ShamirShare {
  uint32_t x = 0;  // evaluation point, never 0 (the protocol uses client id + 1)
  ShareValue y{};
};

// One share per entry of `xs`, in that order. Throws std::invalid_argument unless
// 1 <= threshold <= xs.size() and the xs are non-zero and distinct.
std::vector<ShamirShare> shamir_split(const Key32& secret, int threshold,
                                      const std::vector<uint32_t>& xs);
// The secret, from the `threshold` shares with the smallest x (extra shares are ignored).
// Throws std::invalid_argument for fewer than `threshold` shares, threshold < 1, an x of 0, a
// repeated x, or a share value that is not a field element; std::runtime_error when the
// interpolated chunks are out of range (shares that do not belong together).
Key32 shamir_combine(const std::vector<ShamirShare>& shares, int threshold);

// ---------------------------------------------------------------------------------------------
// SecAgg+ communication graph (Bell et al.): a Harary graph H(k, n) over a permutation of the
// sorted ids drawn from ChaCha20 keyed by HKDF(graph_seed, round): each client is joined to
// the ceil(k/2) clients on each side of it on that ring, so the graph is symmetric and every
// degree is k rounded up to even. The complete graph when neighbours == 0 or the ring would
// reach everyone (2 * ceil(k/2) >= n - 1). Every party computes the same graph.
// Returns id -> sorted neighbour ids (the id itself excluded). Throws std::invalid_argument
// for a negative or repeated id or negative `neighbours`.
std::map<int, std::vector<int>> communication_graph(const std::vector<int>& ids, int neighbours,
                                                    uint64_t graph_seed, uint64_t round);
// The degree every client has in communication_graph over n clients.
std::size_t graph_degree(std::size_t n, int neighbours);

// ---------------------------------------------------------------------------------------------
// Protocol.

constexpr std::size_t kMaxVectorLength = std::size_t{1} << 30;

struct Params {
  int threshold = 0;              // shares needed per secret; >= 2, a strict majority (see top)
  int neighbours = 0;             // k of SecAgg+; 0 = complete graph (plain SecAgg)
  uint64_t round = 0;             // federation round: every derived key depends on it
  uint64_t graph_seed = 0;        // agreed out of band (config), not chosen by the server per round
  std::size_t vector_length = 0;  // uint32 values per input, 1..kMaxVectorLength

  // Throws std::invalid_argument naming the field that is out of range.
  void validate() const;
};

struct ClientKeys {
  int id = 0;
  Key32 enc_public{};   // c_u^PK: agrees the AES key of the share messages
  Key32 mask_public{};  // s_u^PK: agrees the pairwise mask seeds
};

// Stage 0, client -> server.
struct AdvertiseKeys {
  uint64_t round = 0;
  ClientKeys keys;
  Bytes serialize() const;
  static AdvertiseKeys parse(const Bytes& bytes);
};

// Stage 1, server -> every client that advertised: the parameters (so that a configuration
// mismatch is caught by name) and the keys of all advertisers, sorted by id.
struct KeyDirectory {
  Params params;
  std::vector<ClientKeys> clients;
  Bytes serialize() const;
  static KeyDirectory parse(const Bytes& bytes);
};

// One client's two shares for one neighbour, sealed with their pairwise AES key; aad binds
// (round, sender, receiver). The server forwards it unchanged.
constexpr std::size_t kSealedSharesBytes = kGcmNonceBytes + 2 * kShareBytes + kGcmTagBytes;
struct EncryptedShares {
  int sender = 0;
  int receiver = 0;
  Bytes ciphertext;  // exactly kSealedSharesBytes
};

// Stage 1, client -> server: one EncryptedShares per neighbour.
struct ShareKeys {
  uint64_t round = 0;
  int sender = 0;
  std::vector<EncryptedShares> shares;
  Bytes serialize() const;
  static ShareKeys parse(const Bytes& bytes);
};

// Stage 2, server -> each client that completed stage 1: what its neighbours that completed
// stage 1 sealed for it. These senders are exactly the neighbours it masks against.
struct ShareDelivery {
  uint64_t round = 0;
  int receiver = 0;
  std::vector<EncryptedShares> shares;
  Bytes serialize() const;
  static ShareDelivery parse(const Bytes& bytes);
};

// Stage 2, client -> server.
struct MaskedInput {
  uint64_t round = 0;
  int sender = 0;
  std::vector<uint32_t> masked;
  Bytes serialize() const;
  static MaskedInput parse(const Bytes& bytes);
};

// Stage 3, server -> survivors: the clients whose masked input is in the sum (sorted).
// A neighbour that completed stage 1 and is not listed dropped out.
struct UnmaskRequest {
  uint64_t round = 0;
  std::vector<int> survivors;
  Bytes serialize() const;
  static UnmaskRequest parse(const Bytes& bytes);
};

enum class ShareKind : uint8_t {
  kSelfMaskSeed = 1,  // share of b_v: v survived, its self mask must come off
  kMaskKey = 2,       // share of s_v^SK: v dropped, its pairwise masks must come off
};
struct RevealedShare {
  int owner = 0;  // whose secret; the share's x is the sender's id + 1
  ShareKind kind = ShareKind::kSelfMaskSeed;
  ShareValue y{};
};

// Stage 3, client -> server.
struct UnmaskShares {
  uint64_t round = 0;
  int sender = 0;
  std::vector<RevealedShare> shares;
  Bytes serialize() const;
  static UnmaskShares parse(const Bytes& bytes);
};

// Every message method of Client and Server throws std::invalid_argument for a malformed or
// inconsistent message (wrong round, unknown or repeated client, wrong lengths, ciphertexts
// addressed to someone else), naming the client; std::runtime_error for a call in the wrong
// stage, a refused request, a failed decryption or too few clients/shares to go on.

// One client's side of one round (a new Client per round: its keys are fresh per round).
class Client {
 public:
  // Throws std::invalid_argument for bad params or a negative id.
  Client(const Params& params, int id);

  int id() const { return id_; }

  // Stage 0: draws the encryption and mask key pairs (fresh per round). Repeat calls return
  // the same keys.
  AdvertiseKeys advertise_keys();

  // Stage 1: checks the directory (this round and configuration, own keys unchanged, ids
  // distinct, all public keys distinct, thresholds feasible), draws the self-mask seed b_u,
  // shares b_u and s_u^SK among its neighbours and itself and seals each neighbour's pair.
  // A repeat call with the same directory returns the same message; another directory is
  // refused (std::runtime_error), as shares must not be dealt twice.
  ShareKeys share_keys(const KeyDirectory& directory);

  // Stage 2: opens the neighbours' shares (std::runtime_error naming the sender when one
  // fails authentication) and returns y_u = x_u + PRG(b_u) + sum_{v>u} PRG(s_uv)
  // - sum_{v<u} PRG(s_uv) mod 2^32, v over the senders in `delivery`. A repeat call with the
  // same delivery and input returns the same vector; a different one is refused (two masked
  // vectors under the same masks would reveal the difference of the inputs).
  MaskedInput mask_input(const ShareDelivery& delivery, const std::vector<uint32_t>& input);

  // Stage 3: for each neighbour v it holds shares of, the share of b_v if v is listed as a
  // survivor, else the share of s_v^SK; plus its own share of b_u. Refuses
  // (std::runtime_error) when it is not listed itself, when fewer than `threshold` of its
  // share holders survived, or when the answer would reveal, for some neighbour, the other
  // share than an earlier answer did (the protocol's safety check; remembered across
  // save/load). Consistent repeat requests are answered again.
  UnmaskShares unmask(const UnmaskRequest& request);

  // The whole state, private keys and shares included: store it as a secret.
  Bytes save() const;
  // Throws std::invalid_argument for bytes that are not a saved client state.
  static Client load(const Bytes& state);

 private:
  enum class Stage : uint8_t { kNew, kAdvertised, kShared, kMasked };
  Client() = default;
  std::string where() const;

  Params params_;
  int id_ = 0;
  Stage stage_ = Stage::kNew;
  KeyPair enc_, mask_;
  Key32 self_seed_{};                     // b_u
  ShareValue own_self_share_{};           // this client's share of b_u
  std::map<int, ClientKeys> neighbours_;  // N(u) in the stage-1 graph
  Key32 directory_digest_{};
  Bytes sent_shares_;      // the serialized ShareKeys, for repeat calls
  Key32 masked_digest_{};  // SHA-256 of the delivery and the input that was masked
  struct Held {
    ShareValue mask_key{};   // share of s_v^SK
    ShareValue self_seed{};  // share of b_v
  };
  std::map<int, Held> held_;           // senders of the delivery -> their shares for us
  std::map<int, ShareKind> revealed_;  // what stage 3 already revealed, per owner
};

// The coordinator's side of one round. It only ever holds masked inputs, and only as their
// running sum.
class Server {
 public:
  enum class Stage : uint8_t { kAdvertise, kShareKeys, kMaskedInput, kUnmask };

  // `participants`: the clients selected for the round. Throws std::invalid_argument for bad
  // params, an empty, negative or repeated participant, or a threshold that cannot be a
  // feasible strict majority of the neighbourhoods of a graph over them.
  Server(const Params& params, const std::vector<int>& participants);

  Stage stage() const { return stage_; }

  // Stage 0. The sender must be a participant that has not advertised yet, with two distinct
  // public keys that are not low-order points and that no earlier advertiser used (one bad or
  // copied key would otherwise make its neighbours' stage 1 fail).
  void receive_advertisement(const AdvertiseKeys& message);
  // Freezes U1 = the advertisers and builds the graph over them. Throws std::runtime_error
  // when fewer than `threshold` advertised or a neighbourhood is smaller than the threshold.
  KeyDirectory close_advertisements();

  // Stage 1. The sender must be in U1, once, with exactly one EncryptedShares per neighbour.
  void receive_shares(const ShareKeys& message);
  // Freezes U2 = the senders of stage 1 (std::runtime_error when fewer than `threshold`) and
  // returns the delivery for each of them.
  std::map<int, ShareDelivery> close_shares();

  // Stage 2. The sender must be in U2, once, with vector_length values. The input goes
  // straight into the running sum: no individual vector is kept.
  void receive_masked_input(const MaskedInput& message);
  // Freezes U3 = the senders of stage 2 (std::runtime_error when fewer than `threshold`).
  UnmaskRequest close_masked_inputs();

  // Stage 3. The sender must be in U3, once, with exactly one share per owner it holds one
  // of (its neighbours in U2, and itself), of the kind U3 calls for.
  void receive_unmask_shares(const UnmaskShares& message);
  // The sum mod 2^32 of the inputs of U3. Throws std::runtime_error ("secure aggregation
  // round R: only K of the required T shares of client C's self-mask seed arrived ...") when
  // a needed secret lacks shares, or when a reconstructed mask key does not match its public
  // key. Changes nothing: callable again after more shares arrived.
  std::vector<uint32_t> finish() const;

  // The stage outputs again (after a restart), valid once that stage is closed.
  KeyDirectory key_directory() const;
  ShareDelivery share_delivery(int client) const;
  UnmaskRequest unmask_request() const;

  std::vector<int> advertised() const;  // U1
  std::vector<int> shared() const;      // U2
  std::vector<int> survivors() const;   // U3 (so far, during stage 2)
  std::vector<int> responders() const;  // stage-3 senders so far

  Bytes save() const;
  // Throws std::invalid_argument for bytes that are not a saved server state.
  static Server load(const Bytes& state);

 private:
  Server() = default;
  std::string where() const;
  void require_stage(Stage s, const char* what) const;
  int check_sender(int sender, const char* what) const;

  Params params_;
  std::vector<int> participants_;  // sorted
  Stage stage_ = Stage::kAdvertise;
  std::map<int, ClientKeys> keys_;                      // U1
  std::map<int, std::vector<int>> graph_;               // over U1; rebuilt by load()
  std::map<int, std::vector<EncryptedShares>> sealed_;  // U2 -> what it sealed
  std::set<int> masked_;                                // U3
  std::vector<uint32_t> masked_sum_;
  std::set<int> responders_;
  // owner -> holder -> share value
  std::map<int, std::map<int, ShareValue>> self_seed_shares_;
  std::map<int, std::map<int, ShareValue>> mask_key_shares_;
};

}  // namespace fl::secagg
