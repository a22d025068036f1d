// Tests of secagg.h: the primitives against published vectors, Shamir over every subset, the
// communication graph, and whole rounds (every message through serialize/parse) with
// dropouts at each stage, against an independent model of what the server can recover.
#include "common/secagg/secagg.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

namespace fl::secagg {
namespace {

// The message of the exception of type E that `f` throws; a marker otherwise.
template <class E>
std::string thrown(const std::function<void()>& f) {
  try {
    f();
  } catch (const E& e) {
    return e.what();
  } catch (const std::exception& e) {
    return std::string("<wrong exception type: ") + e.what() + ">";
  }
  return "<no exception>";
}
#define EXPECT_THROW_MSG(stmt, E, substr)                                     \
  do {                                                                        \
    const std::string what_ = thrown<E>([&] { stmt; });                       \
    EXPECT_NE(what_.find(substr), std::string::npos) << "message: " << what_; \
  } while (0)

Bytes hex(const std::string& h) {
  Bytes out;
  for (std::size_t i = 0; i + 1 < h.size(); i += 2)
    out.push_back(static_cast<uint8_t>(std::stoi(h.substr(i, 2), nullptr, 16)));
  return out;
}

template <class M>
M wire(const M& m) {
  return M::parse(m.serialize());
}

// ---------------------------------------------------------------------------------------------
// A simulated round. Every message crosses serialize/parse. The sets name who stays silent.

struct Sim {
  Params p;
  std::vector<int> ids;
  Server server;
  std::map<int, Client> clients;
  std::map<int, std::vector<uint32_t>> inputs;
  bool tolerate_refusals = false;  // a client whose call throws runtime_error just goes quiet
  std::set<int> refused;

  Sim(const Params& params, const std::vector<int>& participants, uint64_t input_seed = 1)
      : p(params), ids(participants), server(params, participants) {
    std::mt19937_64 rng(input_seed);
    for (int id : ids) {
      clients.emplace(id, Client(p, id));
      std::vector<uint32_t> x(p.vector_length);
      for (auto& v : x) v = static_cast<uint32_t>(rng());
      inputs[id] = x;
    }
  }

  template <class F>
  bool attempt(int id, F&& f) {
    if (!tolerate_refusals) {
      f();
      return true;
    }
    try {
      f();
      return true;
    } catch (const std::runtime_error&) {
      refused.insert(id);
      return false;
    }
  }

  KeyDirectory advertise(const std::set<int>& silent = {}) {
    for (auto& [id, c] : clients)
      if (!silent.count(id)) server.receive_advertisement(wire(c.advertise_keys()));
    return wire(server.close_advertisements());
  }
  std::map<int, ShareDelivery> share(const KeyDirectory& dir, const std::set<int>& silent = {}) {
    for (int id : server.advertised())
      if (!silent.count(id))
        attempt(id, [&] { server.receive_shares(wire(clients.at(id).share_keys(dir))); });
    return server.close_shares();
  }
  UnmaskRequest mask(const std::map<int, ShareDelivery>& deliveries,
                     const std::set<int>& silent = {}) {
    for (const auto& [id, d] : deliveries)
      if (!silent.count(id))
        attempt(id, [&] {
          server.receive_masked_input(wire(clients.at(id).mask_input(wire(d), inputs.at(id))));
        });
    return wire(server.close_masked_inputs());
  }
  void unmask(const UnmaskRequest& req, const std::set<int>& silent = {}) {
    for (int id : req.survivors)
      if (!silent.count(id))
        attempt(id, [&] { server.receive_unmask_shares(wire(clients.at(id).unmask(wire(req)))); });
  }
  // The sum of the inputs the server holds masked.
  std::vector<uint32_t> expected() const {
    std::vector<uint32_t> sum(p.vector_length, 0);
    for (int id : server.survivors())
      for (std::size_t i = 0; i < sum.size(); ++i) sum[i] += inputs.at(id)[i];
    return sum;
  }
  // Whole round with drops after stage 0 (advertised, no shares), 1 (shares, no input) and
  // 2 (input, no unmask response).
  std::vector<uint32_t> run(const std::set<int>& drop0 = {}, const std::set<int>& drop1 = {},
                            const std::set<int>& drop2 = {}) {
    auto dir = advertise();
    auto deliveries = share(dir, drop0);
    auto req = mask(deliveries, drop1);
    unmask(req, drop2);
    return server.finish();
  }
};

Params params(int threshold, int neighbours, std::size_t length, uint64_t round = 7) {
  Params p;
  p.threshold = threshold;
  p.neighbours = neighbours;
  p.round = round;
  p.graph_seed = 0x5eed;
  p.vector_length = length;
  return p;
}

std::vector<int> range_ids(int n, int stride = 1, int first = 0) {
  std::vector<int> ids;
  for (int i = 0; i < n; ++i) ids.push_back(first + i * stride);
  return ids;
}

// ===========================================================================================
// Primitives

TEST(SecAggCrypto, X25519AgreementIsSymmetric) {
  const KeyPair a = x25519_generate(), b = x25519_generate(), c = x25519_generate();
  EXPECT_EQ(x25519_public_key(a.private_key), a.public_key);
  EXPECT_NE(a.public_key, b.public_key);
  const Key32 ab = x25519_agree(a.private_key, b.public_key);
  EXPECT_EQ(ab, x25519_agree(b.private_key, a.public_key));
  EXPECT_NE(ab, x25519_agree(a.private_key, c.public_key));
  EXPECT_NE(ab, Key32{});
}

TEST(SecAggCrypto, X25519Rfc7748Vector) {
  // RFC 7748 section 6.1: Alice's key pair and the shared secret with Bob.
  Key32 alice_sk{}, bob_pk{};
  const Bytes a = hex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a");
  const Bytes b = hex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f");
  std::copy(a.begin(), a.end(), alice_sk.begin());
  std::copy(b.begin(), b.end(), bob_pk.begin());
  const Key32 pub = x25519_public_key(alice_sk);
  EXPECT_EQ(Bytes(pub.begin(), pub.end()),
            hex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"));
  const Key32 shared = x25519_agree(alice_sk, bob_pk);
  EXPECT_EQ(Bytes(shared.begin(), shared.end()),
            hex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"));
}

TEST(SecAggCrypto, X25519RejectsLowOrderPeer) {
  const KeyPair a = x25519_generate();
  EXPECT_THROW(x25519_agree(a.private_key, Key32{}), std::runtime_error);  // all-zero secret
}

TEST(SecAggCrypto, HkdfRfc5869TestCase1) {
  const Bytes okm = hkdf_sha256(Bytes(22, 0x0b), hex("000102030405060708090a0b0c"),
                                hex("f0f1f2f3f4f5f6f7f8f9"), 42);
  EXPECT_EQ(
      okm,
      hex("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"));
}

TEST(SecAggCrypto, HkdfRfc5869TestCase3EmptySaltAndInfo) {
  EXPECT_EQ(
      hkdf_sha256(Bytes(22, 0x0b), {}, {}, 42),
      hex("8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8"));
  EXPECT_THROW(hkdf_sha256({}, {}, {}, 32), std::invalid_argument);
  EXPECT_THROW(hkdf_sha256(Bytes(1, 1), {}, {}, 0), std::invalid_argument);
  EXPECT_THROW(hkdf_sha256(Bytes(1, 1), {}, {}, 255 * 32 + 1), std::invalid_argument);
}

TEST(SecAggCrypto, PrgIsChaCha20DeterministicPerSeed) {
  // RFC 8439 A.1 test vector 1: all-zero key and nonce, block 0 starts 76 b8 e0 ad a0 f1 3d 90.
  const auto zero = prg_expand(Key32{}, 2);
  EXPECT_EQ(zero[0], 0xade0b876u);
  EXPECT_EQ(zero[1], 0x903df1a0u);

  Key32 s1 = random_key(), s2 = s1;
  s2[31] ^= 1;
  const auto a = prg_expand(s1, 10000), b = prg_expand(s1, 10000), c = prg_expand(s2, 10000);
  EXPECT_EQ(a, b);
  std::size_t same = 0;
  for (std::size_t i = 0; i < a.size(); ++i) same += a[i] == c[i];
  EXPECT_LT(same, 5u);  // ~10000 / 2^32 expected
  // A shorter stream is a prefix, across the internal chunk boundary too.
  const auto longer = prg_expand(s1, 70000);
  EXPECT_TRUE(std::equal(a.begin(), a.end(), longer.begin()));
  // accumulate adds and subtracts the same stream.
  std::vector<uint32_t> t(70000, 5);
  prg_accumulate(s1, t, false);
  for (std::size_t i = 0; i < t.size(); i += 997) EXPECT_EQ(t[i], longer[i] + 5);
  prg_accumulate(s1, t, true);
  EXPECT_EQ(t, std::vector<uint32_t>(70000, 5));
  EXPECT_TRUE(prg_expand(s1, 0).empty());
}

TEST(SecAggCrypto, PrgExpandsOneMillionValuesFast) {
  const Key32 seed = random_key();
  double best_ms = 1e9;
  for (int i = 0; i < 3; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    const auto v = prg_expand(seed, 1000000);
    best_ms = std::min(
        best_ms,
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    ASSERT_EQ(v.size(), 1000000u);
  }
  std::printf("[ timing   ] prg_expand 1M uint32: %.2f ms\n", best_ms);
  EXPECT_LT(best_ms, 50.0);
}

TEST(SecAggCrypto, AesGcmRoundTripAndTamperDetection) {
  const Key32 key = random_key();
  const Bytes plain = {1, 2, 3, 4, 5, 6, 7, 8, 9}, aad = {42, 43};
  const Bytes sealed = aes_gcm_seal(key, plain, aad);
  ASSERT_EQ(sealed.size(), kGcmNonceBytes + plain.size() + kGcmTagBytes);
  EXPECT_EQ(aes_gcm_open(key, sealed, aad), plain);
  EXPECT_NE(aes_gcm_seal(key, plain, aad), sealed);  // fresh nonce
  EXPECT_EQ(aes_gcm_open(key, aes_gcm_seal(key, {}, {}), {}), Bytes{});
  for (std::size_t i = 0; i < sealed.size(); ++i) {  // nonce, ciphertext and tag bytes
    Bytes bad = sealed;
    bad[i] ^= 0x01;
    EXPECT_THROW(aes_gcm_open(key, bad, aad), std::runtime_error) << "byte " << i;
  }
  EXPECT_THROW_MSG(aes_gcm_open(key, sealed, {42, 44}), std::runtime_error,
                   "authentication failed");
  Key32 other = key;
  other[0] ^= 1;
  EXPECT_THROW(aes_gcm_open(other, sealed, aad), std::runtime_error);
  EXPECT_THROW(aes_gcm_open(key, Bytes(sealed.begin(), sealed.end() - 1), aad), std::runtime_error);
  EXPECT_THROW(aes_gcm_open(key, Bytes(27), aad), std::runtime_error);
}

// ===========================================================================================
// Shamir

std::vector<uint32_t> xs_of(int n) {
  std::vector<uint32_t> xs;
  for (int i = 0; i < n; ++i) xs.push_back(static_cast<uint32_t>(3 * i + 1));  // non-contiguous
  return xs;
}

TEST(Shamir, EveryTSubsetReconstructs) {
  const Key32 secret = random_key();
  const int n = 10, t = 4;
  const auto shares = shamir_split(secret, t, xs_of(n));
  ASSERT_EQ(shares.size(), 10u);
  int subsets = 0;
  for (int mask = 0; mask < (1 << n); ++mask) {
    if (__builtin_popcount(static_cast<unsigned>(mask)) < t) continue;
    std::vector<ShamirShare> sub;
    for (int i = 0; i < n; ++i)
      if (mask & (1 << i)) sub.push_back(shares[static_cast<std::size_t>(i)]);
    ASSERT_EQ(shamir_combine(sub, t), secret) << "subset mask " << mask;
    ++subsets;
  }
  EXPECT_EQ(subsets, 848);  // sum_{k=4..10} C(10, k)
}

TEST(Shamir, FewerThanTSharesFail) {
  const Key32 secret = random_key();
  const auto shares = shamir_split(secret, 5, xs_of(8));
  const std::vector<ShamirShare> four(shares.begin(), shares.begin() + 4);
  EXPECT_THROW_MSG(shamir_combine(four, 5), std::invalid_argument, "4 shares, the threshold is 5");
  // Lying about the threshold interpolates a random field element; the 2-byte last chunk
  // lands in range with probability 2^-111, so this is reported, not a wrong secret.
  EXPECT_THROW_MSG(shamir_combine(four, 4), std::runtime_error, "do not belong to one secret");
}

TEST(Shamir, RandomSecretsAndSubsets) {
  std::mt19937 rng(99);
  for (int trial = 0; trial < 200; ++trial) {
    const int n = 1 + static_cast<int>(rng() % 20);
    const int t = 1 + static_cast<int>(rng() % static_cast<unsigned>(n));
    Key32 secret = random_key();
    if (trial == 0) secret.fill(0xff);  // largest chunk values
    if (trial == 1) secret.fill(0);
    std::vector<uint32_t> xs;
    std::set<uint32_t> used;
    while (static_cast<int>(xs.size()) < n) {
      const uint32_t x = 1 + rng() % 0x7fffffffu;
      if (used.insert(x).second) xs.push_back(x);
    }
    auto shares = shamir_split(secret, t, xs);
    std::shuffle(shares.begin(), shares.end(), rng);
    shares.resize(static_cast<std::size_t>(t) + rng() % static_cast<unsigned>(n - t + 1));
    ASSERT_EQ(shamir_combine(shares, t), secret) << "n=" << n << " t=" << t;
  }
}

TEST(Shamir, SharesAreFreshPerSplit) {
  const Key32 secret = random_key();
  const auto a = shamir_split(secret, 3, xs_of(5)), b = shamir_split(secret, 3, xs_of(5));
  for (std::size_t i = 0; i < a.size(); ++i) EXPECT_NE(a[i].y, b[i].y);
  // A threshold of 1 is the secret itself in every share (constant polynomial).
  const auto c = shamir_split(secret, 1, xs_of(3));
  EXPECT_EQ(c[0].y, c[2].y);
}

TEST(Shamir, RejectsBadInput) {
  const Key32 secret = random_key();
  EXPECT_THROW(shamir_split(secret, 0, xs_of(3)), std::invalid_argument);
  EXPECT_THROW(shamir_split(secret, 4, xs_of(3)), std::invalid_argument);
  EXPECT_THROW_MSG(shamir_split(secret, 2, {1, 2, 2}), std::invalid_argument, "repeated x 2");
  EXPECT_THROW(shamir_split(secret, 2, {0, 1, 2}), std::invalid_argument);
  auto shares = shamir_split(secret, 3, xs_of(4));
  auto dup = shares;
  dup[1].x = dup[0].x;
  EXPECT_THROW_MSG(shamir_combine(dup, 3), std::invalid_argument, "repeated x");
  auto zero = shares;
  zero[2].x = 0;
  EXPECT_THROW(shamir_combine(zero, 3), std::invalid_argument);
  EXPECT_THROW(shamir_combine(shares, 0), std::invalid_argument);
  auto big = shares;
  big[0].y.fill(0xff);  // >= 2^127 - 1
  EXPECT_THROW_MSG(shamir_combine(big, 3), std::invalid_argument, "outside the field");
}

TEST(Shamir, MixedSharesAreReported) {
  const Key32 s1 = random_key(), s2 = random_key();
  const auto a = shamir_split(s1, 3, xs_of(5)), b = shamir_split(s2, 3, xs_of(5));
  EXPECT_THROW_MSG(shamir_combine({a[0], a[1], b[2]}, 3), std::runtime_error,
                   "do not belong to one secret");
  EXPECT_THROW(shamir_combine({b[0], a[3], b[4]}, 3), std::runtime_error);
  EXPECT_EQ(shamir_combine({b[0], b[3], b[4]}, 3), s2);
}

// ===========================================================================================
// Graph

TEST(SecAgg, GraphIsSymmetricRegularAndSeeded) {
  for (int n : {6, 10, 33, 100}) {
    const auto ids = range_ids(n, 7, 3);
    for (int k : {2, 4, 5, 14}) {
      const auto g = communication_graph(ids, k, 11, 3);
      ASSERT_EQ(g.size(), ids.size());
      const std::size_t deg = graph_degree(ids.size(), k);
      for (const auto& [u, nb] : g) {
        EXPECT_EQ(nb.size(), deg) << "n=" << n << " k=" << k;
        EXPECT_TRUE(std::is_sorted(nb.begin(), nb.end()));
        EXPECT_EQ(std::count(nb.begin(), nb.end(), u), 0);
        for (int v : nb)
          EXPECT_TRUE(std::binary_search(g.at(v).begin(), g.at(v).end(), u)) << u << "-" << v;
      }
      EXPECT_EQ(g, communication_graph(ids, k, 11, 3));  // every party derives the same
    }
  }
  const auto ids = range_ids(50);
  EXPECT_EQ(graph_degree(50, 4), 4u);
  EXPECT_EQ(graph_degree(50, 5), 6u);  // odd k rounds up
  EXPECT_NE(communication_graph(ids, 4, 11, 3), communication_graph(ids, 4, 12, 3));
  EXPECT_NE(communication_graph(ids, 4, 11, 3), communication_graph(ids, 4, 11, 4));
  // Input order does not matter.
  auto shuffled = ids;
  std::reverse(shuffled.begin(), shuffled.end());
  EXPECT_EQ(communication_graph(ids, 4, 11, 3), communication_graph(shuffled, 4, 11, 3));
}

TEST(SecAgg, GraphIsCompleteWhenRingReachesEveryone) {
  const auto ids = range_ids(10);
  for (int k : {0, 9, 10, 50}) {
    const auto g = communication_graph(ids, k, 1, 1);
    for (const auto& [u, nb] : g) EXPECT_EQ(nb.size(), 9u) << "k=" << k;
  }
  EXPECT_EQ(graph_degree(10, 7), 8u);  // 4 on each side reach 8 of the 9 others: still sparse
  EXPECT_THROW(communication_graph({1, 2, 2}, 2, 1, 1), std::invalid_argument);
  EXPECT_THROW(communication_graph({1, -2}, 2, 1, 1), std::invalid_argument);
  EXPECT_THROW(communication_graph({1, 2}, -1, 1, 1), std::invalid_argument);
  EXPECT_TRUE(communication_graph({}, 2, 1, 1).empty());
}

// ===========================================================================================
// Protocol

TEST(SecAgg, ParamsAndThresholdValidation) {
  EXPECT_THROW_MSG(Client(params(1, 0, 10), 0), std::invalid_argument, "threshold 1");
  EXPECT_THROW_MSG(Client(params(3, -1, 10), 0), std::invalid_argument, "neighbours -1");
  EXPECT_THROW_MSG(Client(params(3, 0, 0), 0), std::invalid_argument, "vector_length 0");
  EXPECT_THROW(Client(params(3, 0, 10), -1), std::invalid_argument);
  // Complete graph over 10: 10 share holders, majority is 6.
  EXPECT_THROW_MSG(Server(params(5, 0, 10), range_ids(10)), std::invalid_argument,
                   "must be at least 6");
  EXPECT_NO_THROW(Server(params(6, 0, 10), range_ids(10)));
  EXPECT_THROW_MSG(Server(params(11, 0, 10), range_ids(10)), std::invalid_argument, "exceeds");
  // k = 4: 5 holders, majority 3.
  EXPECT_THROW(Server(params(2, 4, 10), range_ids(10)), std::invalid_argument);
  EXPECT_NO_THROW(Server(params(3, 4, 10), range_ids(10)));
  EXPECT_THROW_MSG(Server(params(3, 4, 10), {1, 2, 2, 3, 4}), std::invalid_argument, "distinct");
  EXPECT_THROW(Server(params(3, 4, 10), {}), std::invalid_argument);
}

TEST(SecAgg, CompleteGraphSumIsExact) {
  Sim sim(params(6, 0, 1000), range_ids(10));
  const auto sum = sim.run();  // before expected(): that reads who survived
  EXPECT_EQ(sum, sim.expected());
  EXPECT_EQ(sim.server.survivors().size(), 10u);
  EXPECT_EQ(sim.server.finish(), sim.server.finish());  // finish changes nothing
}

TEST(SecAgg, SecAggPlusSumIsExactWithNonContiguousIds) {
  Sim sim(params(3, 4, 1000), range_ids(10, 13, 5), 2);
  const auto sum = sim.run();
  EXPECT_EQ(sum, sim.expected());
  // Each client dealt 4 share messages (sparse), not 9.
  EXPECT_EQ(sim.server.share_delivery(5).shares.size(), 4u);
}

TEST(SecAgg, DropoutsAfterEachStageComplete) {
  Sim sim(params(6, 0, 1000), range_ids(10), 3);
  // 1 never advertises; 2 drops after stage 0 (not masked against); 3 after stage 1 (masks
  // recovered from s^SK shares); 4 after stage 2 (input counted, no unmask response).
  auto dir = sim.advertise({1});
  EXPECT_EQ(dir.clients.size(), 9u);
  auto deliveries = sim.share(dir, {2});
  EXPECT_EQ(deliveries.size(), 8u);
  EXPECT_EQ(deliveries.at(0).shares.size(), 7u);  // 8 sharers minus itself
  auto req = sim.mask(deliveries, {3});
  EXPECT_EQ(req.survivors, (std::vector<int>{0, 4, 5, 6, 7, 8, 9}));
  sim.unmask(req, {4});
  EXPECT_EQ(sim.server.finish(), sim.expected());
}

TEST(SecAgg, DropoutsDownToThresholdComplete) {
  // 10 clients, threshold 6: 2 drop after stage 0 and 2 after stage 1, leaving exactly 6.
  Sim sim(params(6, 0, 1000), range_ids(10), 4);
  const auto sum = sim.run({0, 9}, {3, 6});
  EXPECT_EQ(sim.server.survivors().size(), 6u);
  EXPECT_EQ(sum, sim.expected());
}

TEST(SecAgg, DropoutsSecAggPlus) {
  // k = 4, t = 3: any two dropouts leave every neighbourhood at least 3 holders.
  const auto ids = range_ids(10);
  Sim sim(params(3, 4, 1000), ids, 5);
  const auto g = communication_graph(ids, 4, sim.p.graph_seed, sim.p.round);
  const int d1 = 4, d2 = g.at(d1)[0];  // neighbours: one drops after stage 0, one after stage 1
  const auto sum = sim.run({d2}, {d1});
  EXPECT_EQ(sum, sim.expected());
  EXPECT_EQ(sim.server.survivors().size(), 8u);

  // A client that dropped after stage 1 whose neighbours all dropped after stage 0: nobody
  // masked against it, so its mask key is not needed (and could not be rebuilt).
  const auto ids20 = range_ids(20);
  Sim sim20(params(3, 4, 1000), ids20, 6);
  const auto g20 = communication_graph(ids20, 4, sim20.p.graph_seed, sim20.p.round);
  const std::set<int> lonely(g20.at(0).begin(), g20.at(0).end());
  const auto sum20 = sim20.run(lonely, {0});
  EXPECT_EQ(sum20, sim20.expected());
  EXPECT_EQ(sim20.server.survivors().size(), 15u);
}

TEST(SecAgg, ClientChecksThresholdAgainstTheDirectory) {
  // A server that pads the directory with made-up clients would make t a minority of the
  // share holders; one that lists too few would make the shares useless. Both are refused.
  Sim sim(params(6, 0, 10), range_ids(10), 21);
  const KeyDirectory dir = sim.advertise();
  KeyDirectory padded = dir;
  for (int fake : {100, 101})
    padded.clients.push_back({fake, x25519_generate().public_key, x25519_generate().public_key});
  EXPECT_THROW_MSG(Client::load(sim.clients.at(0).save()).share_keys(padded), std::runtime_error,
                   "threshold 6 is not a strict majority of the 12 share holders");
  KeyDirectory few = dir;
  few.clients.resize(5);
  EXPECT_THROW_MSG(Client::load(sim.clients.at(0).save()).share_keys(few), std::runtime_error,
                   "only 5 clients advertised keys; the threshold is 6");
  EXPECT_NO_THROW(Client::load(sim.clients.at(0).save()).share_keys(dir));
}

TEST(SecAgg, BelowThresholdFailsClearly) {
  {  // Too few masked inputs.
    Sim sim(params(6, 0, 100), range_ids(10), 6);
    auto deliveries = sim.share(sim.advertise(), {0, 1});
    EXPECT_THROW_MSG(
        sim.mask(deliveries, {2, 3, 4}), std::runtime_error,
        "secure aggregation round 7: only 5 masked inputs arrived; the threshold is 6");
  }
  {  // Enough inputs, but one survivor's seed lacks shares when a survivor stays silent.
    Sim sim(params(6, 0, 100), range_ids(10), 7);
    auto req = sim.mask(sim.share(sim.advertise(), {0, 1}), {2, 3});
    sim.unmask(req, {9});
    EXPECT_THROW_MSG(sim.server.finish(), std::runtime_error,
                     "secure aggregation round 7: only 5 of the required 6 shares of client 4's "
                     "self-mask seed arrived");
    // The late response arrives: the same server now finishes exactly.
    sim.server.receive_unmask_shares(wire(sim.clients.at(9).unmask(req)));
    EXPECT_EQ(sim.server.finish(), sim.expected());
  }
  {  // Too few advertisers, too few sharers.
    Sim sim(params(6, 0, 100), range_ids(10), 8);
    for (int id = 0; id < 5; ++id)
      sim.server.receive_advertisement(sim.clients.at(id).advertise_keys());
    EXPECT_THROW_MSG(sim.server.close_advertisements(), std::runtime_error,
                     "only 5 clients advertised");
    Sim sim2(params(6, 0, 100), range_ids(10), 8);
    EXPECT_THROW_MSG(sim2.share(sim2.advertise(), {0, 1, 2, 3, 4}), std::runtime_error,
                     "only 5 clients shared their keys");
  }
  {  // A dropped client's mask key lacks shares: SecAgg+ where its neighbours also go quiet.
    const auto ids = range_ids(10);
    Sim sim(params(3, 4, 100), ids, 9);
    const auto g = communication_graph(ids, 4, sim.p.graph_seed, sim.p.round);
    const int v = 0;
    const std::vector<int>& nb = g.at(v);
    // Two of v's 4 neighbours go quiet: v's mask key is left with 2 of 3 shares. Pick two
    // whose silence leaves every survivor's self-mask seed 3 holders, so the error is v's.
    std::set<int> quiet;
    for (std::size_t i = 0; i < nb.size() && quiet.empty(); ++i)
      for (std::size_t j = i + 1; j < nb.size() && quiet.empty(); ++j) {
        bool seeds_ok = true;
        for (int u : ids) {
          if (u == v) continue;
          int holders = (u == nb[i] || u == nb[j]) ? 0 : 1;
          for (int w : g.at(u)) holders += (w != v && w != nb[i] && w != nb[j]) ? 1 : 0;
          seeds_ok = seeds_ok && holders >= 3;
        }
        if (seeds_ok) quiet = {nb[i], nb[j]};
      }
    ASSERT_EQ(quiet.size(), 2u);
    auto req = sim.mask(sim.share(sim.advertise()), {v});
    sim.unmask(req, quiet);
    EXPECT_THROW_MSG(sim.server.finish(), std::runtime_error,
                     "only 2 of the required 3 shares of client 0's mask key arrived");
  }
}

// An independent model of what the server can recover, over random dropout patterns.
TEST(SecAgg, RandomDropoutsMatchRecoverabilityModel) {
  std::mt19937 rng(2024);
  int exact = 0, failed = 0;
  for (int trial = 0; trial < 40; ++trial) {
    const int n = 8 + static_cast<int>(rng() % 8);
    const int k = trial % 3 == 0 ? 0 : 4;
    const int t = k == 0 ? n / 2 + 1 : 3;
    const auto ids = range_ids(n, 2, 1);
    Sim sim(params(t, k, 64, 100 + static_cast<uint64_t>(trial)), ids,
            static_cast<uint64_t>(trial));
    sim.tolerate_refusals = true;
    std::set<int> drops[4];
    for (int id : ids) {
      const unsigned r = rng() % 100;
      if (r < 24) drops[r / 6].insert(id);  // 6% each: before stage 0, after 0, after 1, after 2
    }
    std::vector<uint32_t> sum;
    std::string error;
    try {
      for (int id : ids)
        if (!drops[0].count(id))
          sim.server.receive_advertisement(wire(sim.clients.at(id).advertise_keys()));
      const auto dir = wire(sim.server.close_advertisements());
      const auto req = sim.mask(sim.share(dir, drops[1]), drops[2]);
      sim.unmask(req, drops[3]);
      sum = sim.server.finish();
    } catch (const std::runtime_error& e) {
      error = e.what();
    }
    // Model. U1..U3 and the responders as the server saw them.
    const auto u1 = sim.server.advertised();
    bool ok = static_cast<int>(u1.size()) >= t;
    if (ok) {
      const auto g = communication_graph(u1, k, sim.p.graph_seed, sim.p.round);
      const auto u2v = sim.server.shared(), u3v = sim.server.survivors(),
                 rv = sim.server.responders();
      const std::set<int> u2(u2v.begin(), u2v.end()), u3(u3v.begin(), u3v.end()),
          resp(rv.begin(), rv.end());
      ok = static_cast<int>(u2.size()) >= t && static_cast<int>(u3.size()) >= t;
      for (int u : u3) {
        int holders = resp.count(u) ? 1 : 0;
        for (int v : g.at(u)) holders += resp.count(v) ? 1 : 0;
        ok = ok && holders >= t;
      }
      for (int v : u2) {
        if (u3.count(v)) continue;
        int alive = 0, holders = 0;
        for (int u : g.at(v)) {
          alive += u3.count(u) ? 1 : 0;
          holders += resp.count(u) ? 1 : 0;
        }
        ok = ok && (alive == 0 || holders >= t);
      }
    }
    if (ok) {
      EXPECT_EQ(error, "") << "trial " << trial;
      EXPECT_EQ(sum, sim.expected()) << "trial " << trial;
      ++exact;
    } else {
      EXPECT_NE(error, "") << "trial " << trial << ": the model says unrecoverable";
      EXPECT_NE(error.find("secure aggregation round"), std::string::npos) << error;
      ++failed;
    }
  }
  std::printf("[ model    ] random dropouts: %d exact sums, %d clean failures\n", exact, failed);
  EXPECT_GT(exact, 20);
  EXPECT_GT(failed, 0);  // both branches of the model are exercised
}

// Mean, per-bit balance and byte chi-square of one client's masked vector when its input is 0.
void expect_uniform(const std::vector<uint32_t>& y) {
  const double n = static_cast<double>(y.size());
  double mean = 0;
  for (uint32_t v : y) mean += v;
  mean /= n;
  const double sigma_mean = 4294967296.0 / std::sqrt(12.0 * n);
  EXPECT_LT(std::fabs(mean - 2147483648.0), 6 * sigma_mean) << "mean " << mean;
  for (int bit = 0; bit < 32; ++bit) {
    double ones = 0;
    for (uint32_t v : y) ones += (v >> bit) & 1;
    EXPECT_LT(std::fabs(ones - n / 2), 6 * std::sqrt(n) / 2) << "bit " << bit;
  }
  std::vector<double> counts(256, 0);
  for (uint32_t v : y)
    for (int b = 0; b < 4; ++b) counts[(v >> (8 * b)) & 0xff] += 1;
  const double expect = 4 * n / 256;
  double chi2 = 0;
  for (double c : counts) chi2 += (c - expect) * (c - expect) / expect;
  EXPECT_LT(chi2, 400.0) << "chi-square over 255 degrees of freedom";  // p ~ 1e-8
  EXPECT_GT(chi2, 150.0) << "suspiciously uniform";
}

TEST(SecAgg, MaskedInputLooksUniform) {
  for (int k : {0, 4}) {
    Sim sim(params(k == 0 ? 6 : 3, k, 20000), range_ids(10), 10);
    sim.inputs[3].assign(20000, 0);
    auto deliveries = sim.share(sim.advertise());
    const MaskedInput m = sim.clients.at(3).mask_input(deliveries.at(3), sim.inputs.at(3));
    std::size_t zeros = 0;
    for (uint32_t v : m.masked) zeros += v == 0;
    EXPECT_LT(zeros, 3u);
    expect_uniform(m.masked);
    // Another client's masked vector is unrelated to this one.
    const MaskedInput m4 = sim.clients.at(4).mask_input(deliveries.at(4), sim.inputs.at(4));
    std::size_t equal = 0;
    for (std::size_t i = 0; i < m.masked.size(); ++i) equal += m.masked[i] == m4.masked[i];
    EXPECT_LT(equal, 3u);
  }
}

TEST(SecAgg, ClientRefusesToRevealBothSharesOfANeighbour) {
  Sim sim(params(6, 0, 50), range_ids(10), 11);
  auto req = sim.mask(sim.share(sim.advertise()), {7});
  ASSERT_EQ(req.survivors.size(), 9u);
  Client& c = sim.clients.at(0);
  const UnmaskShares first = c.unmask(req);
  ASSERT_EQ(first.shares.size(), 10u);  // itself + 9 neighbours
  for (const auto& s : first.shares)
    EXPECT_EQ(s.kind, s.owner == 7 ? ShareKind::kMaskKey : ShareKind::kSelfMaskSeed);
  // The same request again is answered the same way (a retry after a restart).
  EXPECT_EQ(c.unmask(req).serialize().size(), first.serialize().size());
  // Now the server claims 5 dropped: it already has 5's self-mask seed share.
  UnmaskRequest lie = req;
  lie.survivors.erase(std::find(lie.survivors.begin(), lie.survivors.end(), 5));
  EXPECT_THROW_MSG(
      c.unmask(lie), std::runtime_error,
      "refusing to reveal both the self-mask seed share and the mask-key share of client 5");
  // Or that 7 survived after all.
  UnmaskRequest lie2 = req;
  lie2.survivors.insert(std::upper_bound(lie2.survivors.begin(), lie2.survivors.end(), 7), 7);
  EXPECT_THROW_MSG(c.unmask(lie2), std::runtime_error, "of client 7");
  // The memory survives save/load.
  Client reloaded = Client::load(c.save());
  EXPECT_THROW(reloaded.unmask(lie), std::runtime_error);
  EXPECT_NO_THROW(reloaded.unmask(req));
}

TEST(SecAgg, ClientRefusesUnmaskWhenNotSurvivorOrTooFew) {
  Sim sim(params(6, 0, 50), range_ids(10), 12);
  auto deliveries = sim.share(sim.advertise());
  Client& c = sim.clients.at(0);
  EXPECT_THROW_MSG(c.unmask(UnmaskRequest{7, {0, 1, 2, 3, 4, 5}}), std::runtime_error,
                   "before this client sent its masked input");
  c.mask_input(deliveries.at(0), sim.inputs.at(0));
  EXPECT_THROW_MSG(c.unmask(UnmaskRequest{7, {1, 2, 3, 4, 5, 6}}), std::runtime_error,
                   "does not list this client as a survivor");
  EXPECT_THROW_MSG(c.unmask(UnmaskRequest{7, {0, 1, 2, 3, 4}}), std::runtime_error,
                   "only 5 of its share holders survived");
  EXPECT_THROW_MSG(c.unmask(UnmaskRequest{7, {0, 2, 1, 3, 4, 5}}), std::invalid_argument, "sorted");
  EXPECT_THROW_MSG(c.unmask(UnmaskRequest{8, {0, 1, 2, 3, 4, 5}}), std::invalid_argument,
                   "round 8");
  // Refusals revealed nothing: a consistent request still works.
  EXPECT_NO_THROW(c.unmask(UnmaskRequest{7, {0, 1, 2, 3, 4, 5}}));
}

TEST(SecAgg, ClientValidatesDirectoryAndDelivery) {
  const auto ids = range_ids(10);
  Sim sim(params(3, 4, 50), ids, 13);
  const KeyDirectory dir = sim.advertise();
  const auto g = communication_graph(ids, 4, sim.p.graph_seed, sim.p.round);
  {
    Client c = Client::load(sim.clients.at(0).save());
    KeyDirectory d = dir;
    d.params.threshold = 4;
    EXPECT_THROW_MSG(c.share_keys(d), std::invalid_argument, "threshold 4, this client has 3");
    d = dir;
    d.clients[0].mask_public[0] ^= 1;
    EXPECT_THROW_MSG(c.share_keys(d), std::invalid_argument, "not the ones it advertised");
    d = dir;
    d.clients[1].mask_public = d.clients[2].mask_public;
    EXPECT_THROW_MSG(c.share_keys(d), std::invalid_argument, "two public keys are equal");
    d = dir;
    std::swap(d.clients[1], d.clients[2]);
    EXPECT_THROW_MSG(c.share_keys(d), std::invalid_argument, "sorted and distinct");
    d = dir;
    d.clients.erase(d.clients.begin());
    EXPECT_THROW_MSG(c.share_keys(d), std::invalid_argument, "not listed");
    Client fresh(sim.p, 0);
    EXPECT_THROW_MSG(fresh.share_keys(dir), std::runtime_error, "before advertise_keys");
  }
  auto deliveries = sim.share(dir);
  const int u = 0, v = g.at(u)[0];
  int stranger = -1;
  for (int w : ids)
    if (w != u && !std::binary_search(g.at(u).begin(), g.at(u).end(), w)) stranger = w;
  ASSERT_GE(stranger, 0);
  auto fresh_client = [&] { return Client::load(sim.clients.at(u).save()); };
  const ShareDelivery good = deliveries.at(u);
  {
    ShareDelivery d = good;
    d.shares[0].ciphertext[20] ^= 1;
    EXPECT_THROW_MSG(
        fresh_client().mask_input(d, sim.inputs.at(u)), std::runtime_error,
        "the shares from client " + std::to_string(d.shares[0].sender) + " failed authentication");
  }
  {
    ShareDelivery d = good;
    d.shares[0].receiver = 5;
    EXPECT_THROW_MSG(fresh_client().mask_input(d, sim.inputs.at(u)), std::invalid_argument,
                     "addressed to client 5");
  }
  {  // A ciphertext v sealed for another client, relabelled for u: the aad does not match.
    ShareDelivery d = good;
    const int w = g.at(v)[0] == u ? g.at(v)[1] : g.at(v)[0];
    for (const auto& e : deliveries.at(w).shares)
      if (e.sender == v) {
        for (auto& mine : d.shares)
          if (mine.sender == v) mine.ciphertext = e.ciphertext;
      }
    EXPECT_THROW_MSG(fresh_client().mask_input(d, sim.inputs.at(u)), std::runtime_error,
                     "client " + std::to_string(v) + " failed authentication");
  }
  {
    ShareDelivery d = good;
    d.shares[0].sender = stranger;
    EXPECT_THROW_MSG(fresh_client().mask_input(d, sim.inputs.at(u)), std::invalid_argument,
                     "from client " + std::to_string(stranger) + ", who is not a neighbour");
  }
  {
    ShareDelivery d = good;
    d.shares.push_back(d.shares[0]);
    EXPECT_THROW_MSG(fresh_client().mask_input(d, sim.inputs.at(u)), std::invalid_argument,
                     "two share messages");
  }
  EXPECT_THROW_MSG(fresh_client().mask_input(deliveries.at(1), sim.inputs.at(u)),
                   std::invalid_argument, "got the share delivery for client 1");
  EXPECT_THROW_MSG(fresh_client().mask_input(good, std::vector<uint32_t>(49)),
                   std::invalid_argument, "input has 49 values, expected 50");
  {  // Too few neighbours shared: fewer than t holders.
    ShareDelivery d = good;
    d.shares.resize(1);
    EXPECT_THROW_MSG(fresh_client().mask_input(d, sim.inputs.at(u)), std::runtime_error,
                     "only 1 neighbours completed stage 1");
  }
}

TEST(SecAgg, ClientRepeatsAreIdempotentButNeverDealTwice) {
  Sim sim(params(3, 4, 50), range_ids(10), 14);
  Client& c = sim.clients.at(2);
  const Bytes adv = c.advertise_keys().serialize();
  EXPECT_EQ(c.advertise_keys().serialize(), adv);
  const KeyDirectory dir = sim.advertise();
  const Bytes shares = c.share_keys(dir).serialize();
  EXPECT_EQ(c.share_keys(dir).serialize(), shares);  // same shares, same nonces
  KeyDirectory other = dir;
  other.clients.pop_back();
  EXPECT_THROW_MSG(c.share_keys(other), std::runtime_error, "second, different key directory");
  for (int id = 0; id < 10; ++id)
    if (id != 2) sim.server.receive_shares(sim.clients.at(id).share_keys(dir));
  sim.server.receive_shares(ShareKeys::parse(shares));
  auto deliveries = sim.server.close_shares();
  const auto y = c.mask_input(deliveries.at(2), sim.inputs.at(2)).masked;
  EXPECT_EQ(c.mask_input(deliveries.at(2), sim.inputs.at(2)).masked, y);
  auto changed = sim.inputs.at(2);
  changed[0] ^= 1;
  EXPECT_THROW_MSG(c.mask_input(deliveries.at(2), changed), std::runtime_error,
                   "second, different input");
}

TEST(SecAgg, ServerValidatesEveryMessage) {
  const auto ids = range_ids(10);
  Sim sim(params(3, 4, 50), ids, 15);
  Server& s = sim.server;
  AdvertiseKeys a = sim.clients.at(0).advertise_keys();
  a.keys.id = 77;
  EXPECT_THROW_MSG(s.receive_advertisement(a), std::invalid_argument,
                   "client 77, who is not a participant");
  a = sim.clients.at(0).advertise_keys();
  a.round = 8;
  EXPECT_THROW_MSG(s.receive_advertisement(a), std::invalid_argument, "is for round 8");
  a = sim.clients.at(0).advertise_keys();
  a.keys.mask_public = Key32{};
  EXPECT_THROW_MSG(s.receive_advertisement(a), std::invalid_argument,
                   "client 0 advertised an unusable X25519 mask public key");
  a = sim.clients.at(0).advertise_keys();
  a.keys.enc_public[31] = 0;  // still a valid point, but another key
  a.keys.mask_public = a.keys.enc_public;
  EXPECT_THROW_MSG(s.receive_advertisement(a), std::invalid_argument,
                   "the same key for encryption and masking");
  for (int id = 0; id < 9; ++id) s.receive_advertisement(sim.clients.at(id).advertise_keys());
  a = sim.clients.at(9).advertise_keys();
  a.keys.mask_public = sim.clients.at(4).advertise_keys().keys.enc_public;
  EXPECT_THROW_MSG(s.receive_advertisement(a), std::invalid_argument,
                   "client 9 advertised a mask public key that client 4 already advertised");
  EXPECT_THROW_MSG(s.receive_advertisement(sim.clients.at(3).advertise_keys()),
                   std::invalid_argument, "client 3 advertised keys twice");
  EXPECT_THROW_MSG(s.close_shares(), std::runtime_error, "expected 'share keys'");
  const KeyDirectory dir = s.close_advertisements();
  EXPECT_THROW_MSG(s.receive_advertisement(sim.clients.at(9).advertise_keys()), std::runtime_error,
                   "arrived in stage 'share keys'");
  ASSERT_EQ(dir.clients.size(), 9u);
  const auto g9 = communication_graph(range_ids(9), 4, sim.p.graph_seed, sim.p.round);
  const ShareKeys sk0 = sim.clients.at(0).share_keys(dir);
  {
    ShareKeys m = sk0;
    m.shares.pop_back();
    EXPECT_THROW_MSG(s.receive_shares(m), std::invalid_argument,
                     "client 0 sent shares to 3 of its 4 neighbours");
    m = sk0;
    int stranger = -1;
    for (int w = 1; w < 9; ++w)
      if (!std::binary_search(g9.at(0).begin(), g9.at(0).end(), w)) stranger = w;
    m.shares[0].receiver = stranger;
    EXPECT_THROW_MSG(s.receive_shares(m), std::invalid_argument,
                     "client 0 sent shares to client " + std::to_string(stranger) +
                         ", who is not its neighbour");
    m = sk0;
    m.shares[1].receiver = m.shares[0].receiver;
    EXPECT_THROW_MSG(s.receive_shares(m), std::invalid_argument, "two share messages to client");
    m = sk0;
    m.shares[0].sender = 4;
    EXPECT_THROW_MSG(s.receive_shares(m), std::invalid_argument, "claiming sender 4");
    m = sk0;
    m.shares[0].ciphertext.pop_back();
    EXPECT_THROW_MSG(s.receive_shares(m), std::invalid_argument, "share message of 123 bytes");
    m = sk0;
    m.sender = 9;
    EXPECT_THROW_MSG(s.receive_shares(m), std::invalid_argument,
                     "client 9 sent shares without advertising");
  }
  for (int id = 0; id < 8; ++id) s.receive_shares(sim.clients.at(id).share_keys(dir));
  EXPECT_THROW_MSG(s.receive_shares(sk0), std::invalid_argument, "client 0 sent shares twice");
  auto deliveries = s.close_shares();
  EXPECT_THROW_MSG(s.share_delivery(8), std::invalid_argument,
                   "client 8, who did not complete stage 1");
  MaskedInput mi = sim.clients.at(0).mask_input(deliveries.at(0), sim.inputs.at(0));
  MaskedInput shorter = mi;
  shorter.masked.pop_back();
  EXPECT_THROW_MSG(s.receive_masked_input(shorter), std::invalid_argument,
                   "client 0 sent 49 values, expected 50");
  MaskedInput from8 = mi;
  from8.sender = 8;
  EXPECT_THROW_MSG(s.receive_masked_input(from8), std::invalid_argument,
                   "client 8 sent a masked input without");
  s.receive_masked_input(mi);
  EXPECT_THROW_MSG(s.receive_masked_input(mi), std::invalid_argument,
                   "client 0 sent its masked input twice");
  for (int id = 1; id < 7; ++id)
    s.receive_masked_input(sim.clients.at(id).mask_input(deliveries.at(id), sim.inputs.at(id)));
  const UnmaskRequest req = s.close_masked_inputs();  // 7 dropped after stage 1
  UnmaskShares us = sim.clients.at(0).unmask(req);
  {
    UnmaskShares m = us;
    m.sender = 7;
    EXPECT_THROW_MSG(s.receive_unmask_shares(m), std::invalid_argument,
                     "client 7 sent unmask shares but is not a survivor");
    m = us;
    m.shares.pop_back();
    EXPECT_THROW_MSG(s.receive_unmask_shares(m), std::invalid_argument, "client 0 sent shares of");
    m = us;
    m.shares.push_back(m.shares[0]);
    EXPECT_THROW_MSG(s.receive_unmask_shares(m), std::invalid_argument,
                     "client 0 sent two shares of client 0");
    m = us;
    m.shares[0].kind = ShareKind::kMaskKey;  // its own mask key: it survived
    EXPECT_THROW_MSG(s.receive_unmask_shares(m), std::invalid_argument,
                     "mask-key share of client 0, who survived");
    m = us;
    m.shares[0].owner = 8;  // 8 never shared
    EXPECT_THROW_MSG(s.receive_unmask_shares(m), std::invalid_argument,
                     "share of client 8, which it does not hold");
  }
  s.receive_unmask_shares(us);
  EXPECT_THROW_MSG(s.receive_unmask_shares(us), std::invalid_argument,
                   "client 0 sent unmask shares twice");
  for (int id : req.survivors)
    if (id != 0) s.receive_unmask_shares(sim.clients.at(id).unmask(req));
  EXPECT_EQ(s.finish(), sim.expected());
}

TEST(SecAgg, WrongSharesAreCaughtWhenTheSecretIsRebuilt) {
  const auto ids = range_ids(10);
  const int v = 5;
  // Every holder adds 256 to its share of v's mask key: the shares stay consistent (they
  // interpolate to s_v^SK + 256 in the first chunk), so only the public key check sees it.
  // (Not + 1: X25519 clears the low 3 bits, so that would still be the same key.)
  auto add_256 = [](ShareValue& y) {
    for (std::size_t i = 1; i < 16 && ++y[i] == 0; ++i) {
    }
  };
  {
    Sim sim(params(3, 4, 50), ids, 16);
    auto req = sim.mask(sim.share(sim.advertise()), {v});
    for (int id : req.survivors) {
      UnmaskShares m = sim.clients.at(id).unmask(req);
      for (auto& s : m.shares)
        if (s.owner == v) add_256(s.y);
      sim.server.receive_unmask_shares(m);
    }
    EXPECT_THROW_MSG(
        sim.server.finish(), std::runtime_error,
        "the mask key of client 5 rebuilt from its shares does not match its public key");
  }
  {  // One holder alone flips a bit: the shares no longer lie on one polynomial.
    Sim sim(params(3, 4, 50), ids, 17);
    auto req = sim.mask(sim.share(sim.advertise()));
    bool flipped = false;
    for (int id : req.survivors) {
      UnmaskShares m = sim.clients.at(id).unmask(req);
      if (!flipped)
        for (auto& s : m.shares)
          if (s.owner == id) {
            s.y[40] ^= 1;  // its own self-mask seed share, third chunk
            flipped = true;
          }
      sim.server.receive_unmask_shares(m);
    }
    EXPECT_THROW_MSG(sim.server.finish(), std::runtime_error, "self-mask seed do not combine");
  }
}

// ----- Wire format -----

struct Messages {
  AdvertiseKeys adv;
  KeyDirectory dir;
  ShareKeys shares;
  ShareDelivery delivery;
  MaskedInput masked;
  UnmaskRequest request;
  UnmaskShares unmask;
};

Messages sample_messages() {
  Sim sim(params(3, 4, 5), range_ids(8, 3, 2), 17);
  Messages m;
  m.adv = sim.clients.at(2).advertise_keys();
  m.dir = sim.advertise();
  for (int id : sim.ids) sim.server.receive_shares(sim.clients.at(id).share_keys(m.dir));
  m.shares = sim.clients.at(2).share_keys(m.dir);
  auto deliveries = sim.server.close_shares();
  m.delivery = deliveries.at(2);
  for (int id : sim.ids) {
    auto mi = sim.clients.at(id).mask_input(deliveries.at(id), sim.inputs.at(id));
    if (id == 2) m.masked = mi;
    sim.server.receive_masked_input(mi);
  }
  m.request = sim.server.close_masked_inputs();
  m.unmask = sim.clients.at(2).unmask(m.request);
  return m;
}

template <class M>
void check_wire(const M& m, const char* name) {
  const Bytes b = m.serialize();
  EXPECT_EQ(M::parse(b).serialize(), b) << name;
  for (std::size_t n = 0; n < b.size(); ++n)
    EXPECT_THROW(M::parse(Bytes(b.begin(), b.begin() + static_cast<std::ptrdiff_t>(n))),
                 std::invalid_argument)
        << name << " truncated to " << n;
  Bytes longer = b;
  longer.push_back(0);
  EXPECT_THROW_MSG(M::parse(longer), std::invalid_argument, "1 trailing bytes");
  Bytes magic = b;
  magic[0] = 'X';
  EXPECT_THROW_MSG(M::parse(magic), std::invalid_argument, "bad magic");
  Bytes version = b;
  version[4] = 2;
  EXPECT_THROW_MSG(M::parse(version), std::invalid_argument, "wire version 2");
}

TEST(SecAgg, MessagesRoundTripAndRejectMalformedBytes) {
  const Messages m = sample_messages();
  check_wire(m.adv, "AdvertiseKeys");
  check_wire(m.dir, "KeyDirectory");
  check_wire(m.shares, "ShareKeys");
  check_wire(m.delivery, "ShareDelivery");
  check_wire(m.masked, "MaskedInput");
  check_wire(m.request, "UnmaskRequest");
  check_wire(m.unmask, "UnmaskShares");

  const AdvertiseKeys adv = AdvertiseKeys::parse(m.adv.serialize());
  EXPECT_EQ(adv.keys.id, 2);
  EXPECT_EQ(adv.keys.mask_public, m.adv.keys.mask_public);
  EXPECT_EQ(adv.round, 7u);
  EXPECT_EQ(KeyDirectory::parse(m.dir.serialize()).clients.size(), 8u);
  EXPECT_EQ(MaskedInput::parse(m.masked.serialize()).masked, m.masked.masked);
  EXPECT_EQ(UnmaskRequest::parse(m.request.serialize()).survivors, m.request.survivors);

  // A public key one byte short.
  Bytes short_key = m.adv.serialize();
  short_key.pop_back();
  EXPECT_THROW_MSG(
      AdvertiseKeys::parse(short_key), std::invalid_argument,
      "secagg AdvertiseKeys: truncated at field 'mask_public' (needs 32 bytes, 31 left)");
  // A message of another type.
  EXPECT_THROW_MSG(ShareKeys::parse(m.delivery.serialize()), std::invalid_argument,
                   "secagg ShareKeys: holds a ShareDelivery");
  // A negative id (sender field right after the 14-byte header).
  Bytes neg = m.masked.serialize();
  neg[17] = 0x80;
  EXPECT_THROW_MSG(MaskedInput::parse(neg), std::invalid_argument,
                   "field 'sender' holds a negative client id");
  // A ciphertext of the wrong length, with the bytes to match.
  ShareKeys bad = m.shares;
  bad.shares[0].ciphertext.pop_back();
  EXPECT_THROW_MSG(ShareKeys::parse(bad.serialize()), std::invalid_argument,
                   "field 'ciphertext' has 123 bytes, expected 124");
  // A count that claims more entries than the bytes can hold is refused before allocating.
  Bytes huge = m.request.serialize();
  huge[14] = huge[15] = huge[16] = huge[17] = 0xff;
  EXPECT_THROW_MSG(UnmaskRequest::parse(huge), std::invalid_argument, "claims 4294967295 entries");
  // An unknown share kind.
  Bytes kind = m.unmask.serialize();
  kind[14 + 4 + 4 + 4] = 9;
  EXPECT_THROW_MSG(UnmaskShares::parse(kind), std::invalid_argument, "field 'kind' is 9");
  // Parameters that do not validate.
  KeyDirectory d = m.dir;
  d.params.threshold = 1;
  EXPECT_THROW_MSG(KeyDirectory::parse(d.serialize()), std::invalid_argument, "threshold 1");
  EXPECT_THROW(KeyDirectory::parse({}), std::invalid_argument);
}

// ----- Persistence -----

TEST(SecAgg, SaveAndLoadMidProtocolResumeToTheSameSum) {
  for (int k : {0, 4}) {
    const auto ids = range_ids(10, 5, 1);
    Sim sim(params(k == 0 ? 6 : 3, k, 1000), ids, 18);
    auto restart = [&] {
      sim.server = Server::load(sim.server.save());
      for (auto& [id, c] : sim.clients) c = Client::load(c.save());
    };
    for (int id : ids)
      if (id != 46) sim.server.receive_advertisement(wire(sim.clients.at(id).advertise_keys()));
    restart();  // mid stage 0
    sim.server.receive_advertisement(wire(sim.clients.at(46).advertise_keys()));
    const KeyDirectory dir = wire(sim.server.close_advertisements());
    restart();
    EXPECT_EQ(sim.server.key_directory().serialize(), dir.serialize());
    for (int id : ids)
      if (id != 11) sim.server.receive_shares(wire(sim.clients.at(id).share_keys(dir)));
    restart();
    sim.server.close_shares();
    restart();  // deliveries are fetched again from the reloaded server
    int sent = 0;
    for (int id : sim.server.shared()) {
      if (id == 21) continue;  // drops after stage 1
      sim.server.receive_masked_input(wire(
          sim.clients.at(id).mask_input(wire(sim.server.share_delivery(id)), sim.inputs.at(id))));
      if (++sent == 3) restart();  // mid stage 2: only the running sum is saved
    }
    sim.server.close_masked_inputs();
    restart();
    const UnmaskRequest req = sim.server.unmask_request();
    for (int id : req.survivors) {
      sim.server.receive_unmask_shares(wire(sim.clients.at(id).unmask(req)));
      if (id == 31) restart();  // mid stage 3
    }
    restart();
    EXPECT_EQ(sim.server.finish(), sim.expected()) << "k=" << k;
    EXPECT_EQ(sim.server.survivors().size(), 8u);
  }
}

TEST(SecAgg, LoadRejectsMalformedState) {
  Sim sim(params(3, 4, 20), range_ids(8), 19);
  auto req = sim.mask(sim.share(sim.advertise()));
  const Bytes server = sim.server.save(), client = sim.clients.at(0).save();
  EXPECT_EQ(Server::load(server).save(), server);
  EXPECT_EQ(Client::load(client).save(), client);
  EXPECT_THROW_MSG(Server::load(client), std::invalid_argument,
                   "secagg server state: holds a client state");
  EXPECT_THROW_MSG(Client::load(server), std::invalid_argument,
                   "secagg client state: holds a server state");
  for (std::size_t n = 0; n < client.size(); n += 7)
    EXPECT_THROW(
        Client::load(Bytes(client.begin(), client.begin() + static_cast<std::ptrdiff_t>(n))),
        std::invalid_argument);
  for (std::size_t n = 0; n < server.size(); n += 7)
    EXPECT_THROW(
        Server::load(Bytes(server.begin(), server.begin() + static_cast<std::ptrdiff_t>(n))),
        std::invalid_argument);
  (void)req;
}

// ----- Scale -----

TEST(SecAgg, HundredClientsSparseTiming) {
  const int n = 100, k = 14;  // k ~ 2 log2(n)
  const auto t0 = std::chrono::steady_clock::now();
  Sim sim(params(8, k, 10000), range_ids(n), 20);
  const auto sum = sim.run({3, 50}, {7, 8, 61}, {90});
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("[ timing   ] n=%d k=%d t=8 L=10000, 6 dropouts: %.3f s\n", n, k, s);
  EXPECT_EQ(sum, sim.expected());
  EXPECT_EQ(sim.server.survivors().size(), 95u);
  EXPECT_LT(s, 10.0);
}

}  // namespace
}  // namespace fl::secagg
