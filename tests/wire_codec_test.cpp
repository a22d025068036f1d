// The payload codec of common/net/codec: encodings (FP32/FP16/BF16/INT8/TOPK), the checksum,
// chunking and reassembly, and every validation error that a tampered payload triggers.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <set>
#include <string>
#include <vector>

#include "common/net/buffer_pool.h"
#include "common/net/codec.h"

namespace fl {
namespace {

bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

// Runs f, expecting a PayloadError; returns its field and message.
struct Caught {
  std::string field, message;
};
Caught payload_error(const std::function<void()>& f) {
  try {
    f();
  } catch (const PayloadError& e) {
    return {e.field(), e.what()};
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected PayloadError, got another exception: " << e.what();
    return {};
  }
  ADD_FAILURE() << "expected PayloadError, nothing was thrown";
  return {};
}

// Re-seal a tampered payload so that only the intended inconsistency remains.
void reseal(EncodedPayload& p) {
  p.manifest.set_total_bytes(p.bytes.size());
  p.manifest.set_checksum(payload_checksum(p.bytes));
}

// A small CNN-like state: float weights, a 0-d float, an int64 0-d BatchNorm counter.
ModelState sample_state() {
  torch::manual_seed(7);
  return ModelState({{"fc1.weight", torch::randn({4, 3})},
                     {"fc1.bias", torch::randn({4})},
                     {"bn.num_batches_tracked", torch::tensor(int64_t{123456789012}, torch::kLong)},
                     {"temperature", torch::tensor(0.25f)},
                     {"empty", torch::zeros({0, 5})},
                     {"fc2.weight", torch::randn({2, 4}) * 3}});
}

const v1::TensorHeader& header(const EncodedPayload& p, const std::string& name) {
  for (const auto& h : p.manifest.tensors())
    if (h.name() == name) return h;
  throw std::out_of_range(name);
}

EncodedPayload encode(const ModelState& s, v1::Encoding enc, const ModelState* base = nullptr, double frac = 0.01) {
  EncodeOptions opt;
  opt.encoding = enc;
  opt.topk_fraction = frac;
  return encode_state(s, opt, base);
}

TEST(WireCodec, ChecksumIsCrc32ShiftedXorLength) {
  // crc32("123456789") = 0xCBF43926 (the standard check value).
  EXPECT_EQ(payload_checksum("123456789"), (uint64_t{0xCBF43926} << 32) ^ 9u);
  EXPECT_EQ(payload_checksum(""), 0u);
  // The length is mixed in: same CRC state, different sizes differ.
  EXPECT_NE(payload_checksum(std::string(4, '\0')), payload_checksum(std::string(8, '\0')));
}

TEST(WireCodec, Fp32RoundTripIsBitExactWithIntegerAndScalarTensors) {
  ModelState s = sample_state();
  // -inf travels untouched in FP32 (attention masks do this).
  s.at("fc1.bias")[2] = -std::numeric_limits<float>::infinity();
  const EncodedPayload p = encode_state(s, EncodeOptions{});
  ASSERT_EQ(p.manifest.tensors_size(), 6);
  EXPECT_EQ(p.manifest.tensors(0).name(), "fc1.weight");
  EXPECT_EQ(p.manifest.tensors(0).dtype(), v1::DTYPE_F32);
  EXPECT_EQ(p.manifest.tensors(0).encoding(), v1::ENCODING_FP32);
  EXPECT_EQ(std::vector<int64_t>(p.manifest.tensors(0).shape().begin(), p.manifest.tensors(0).shape().end()),
            (std::vector<int64_t>{4, 3}));
  const auto& count = header(p, "bn.num_batches_tracked");
  EXPECT_EQ(count.dtype(), v1::DTYPE_I64);
  EXPECT_EQ(count.encoding(), v1::ENCODING_UNSPECIFIED);
  EXPECT_EQ(count.shape_size(), 0);
  EXPECT_EQ(count.encoded_bytes(), 8u);
  EXPECT_EQ(header(p, "temperature").encoded_bytes(), 4u);
  EXPECT_EQ(header(p, "empty").encoded_bytes(), 0u);
  const uint64_t want_total = (12 + 4 + 1 + 8) * 4 + 8;
  EXPECT_EQ(p.manifest.total_bytes(), want_total);
  EXPECT_EQ(p.bytes.size(), want_total);
  EXPECT_EQ(p.manifest.checksum(), payload_checksum(p.bytes));
  // The first tensor's bytes are its float32 values verbatim.
  EXPECT_EQ(std::memcmp(p.bytes.data(), s.at("fc1.weight").data_ptr(), 48), 0);

  const ModelState d = decode_state(p.manifest, p.bytes, &s, nullptr, /*require_all=*/true);
  EXPECT_TRUE(d.equal(s));
  EXPECT_EQ(d.names(), s.names());
  EXPECT_EQ(d.at("bn.num_batches_tracked").scalar_type(), at::kLong);
  EXPECT_EQ(d.at("bn.num_batches_tracked").dim(), 0);
  EXPECT_EQ(d.at("bn.num_batches_tracked").item<int64_t>(), 123456789012);
  EXPECT_EQ(d.at("temperature").dim(), 0);
  EXPECT_EQ(d.at("temperature").item<float>(), 0.25f);
  EXPECT_TRUE(d.at("fc1.weight").is_contiguous());
  EXPECT_TRUE(d.at("fc1.weight").device().is_cpu());
}

TEST(WireCodec, OtherDtypesTravelRawOrConvertBack) {
  ModelState s({{"d", torch::tensor({1.0, 1.0 / 3.0}, torch::kDouble)},
                {"h", torch::tensor({0.5f, -2.f}).to(torch::kHalf)},
                {"i32", torch::tensor({-5, 7}, torch::kInt)},
                {"i8", torch::tensor({-128, 127}, torch::kChar)},
                {"u8", torch::tensor({0, 255}, torch::kByte)}});
  // UNSPECIFIED: every tensor raw in its own dtype, lossless.
  const EncodedPayload raw = encode(s, v1::ENCODING_UNSPECIFIED);
  EXPECT_EQ(raw.bytes.size(), 16u + 4 + 8 + 2 + 2);
  EXPECT_TRUE(decode_state(raw.manifest, raw.bytes).equal(s));
  // FP32: the double is narrowed on the wire and comes back as a double.
  const EncodedPayload p = encode(s, v1::ENCODING_FP32);
  EXPECT_EQ(header(p, "d").dtype(), v1::DTYPE_F64);
  EXPECT_EQ(header(p, "d").encoded_bytes(), 8u);
  EXPECT_EQ(header(p, "i8").encoding(), v1::ENCODING_UNSPECIFIED);
  const ModelState d = decode_state(p.manifest, p.bytes, &s, nullptr, true);
  EXPECT_EQ(d.at("d").scalar_type(), at::kDouble);
  EXPECT_DOUBLE_EQ(d.at("d")[1].item<double>(), static_cast<double>(1.0f / 3.0f));
  EXPECT_TRUE(torch::equal(d.at("h"), s.at("h")));
  EXPECT_TRUE(torch::equal(d.at("i8"), s.at("i8")));
  EXPECT_TRUE(torch::equal(d.at("u8"), s.at("u8")));
  EXPECT_TRUE(torch::equal(d.at("i32"), s.at("i32")));
}

TEST(WireCodec, Fp16AndBf16StayWithinTheirPrecision) {
  torch::manual_seed(1);
  // Magnitudes in [0.5, 4) keep the relative bound meaningful (no values near zero).
  const at::Tensor w = (torch::rand({64, 33}) * 3.5 + 0.5) * (torch::randint(0, 2, {64, 33}) * 2 - 1);
  ModelState s({{"w", w}, {"steps", torch::tensor(int64_t{42})}});
  for (auto [enc, rel] : {std::pair{v1::ENCODING_FP16, 1e-3}, std::pair{v1::ENCODING_BF16, 1e-2}}) {
    SCOPED_TRACE(enc);
    const EncodedPayload p = encode(s, enc);
    EXPECT_EQ(header(p, "w").encoding(), enc);
    EXPECT_EQ(header(p, "w").dtype(), v1::DTYPE_F32);
    EXPECT_EQ(header(p, "w").encoded_bytes(), 64u * 33 * 2);
    const ModelState d = decode_state(p.manifest, p.bytes, &s);
    ASSERT_EQ(d.at("w").scalar_type(), at::kFloat);
    const double max_rel = ((d.at("w") - w).abs() / w.abs()).max().item<double>();
    EXPECT_LE(max_rel, rel);
    EXPECT_GT(max_rel, 0.0);  // really went through the narrow type
    EXPECT_EQ(d.at("steps").item<int64_t>(), 42);
    // Decoding equals torch's own conversion.
    EXPECT_TRUE(torch::equal(d.at("w"), w.to(enc == v1::ENCODING_FP16 ? torch::kHalf : torch::kBFloat16).to(torch::kFloat)));
  }
}

TEST(WireCodec, Fp16PayloadIsHalfTheFp32Payload) {
  torch::manual_seed(2);
  ModelState s({{"a", torch::randn({100, 7})}, {"b", torch::randn({13})}, {"c", torch::randn({})}});
  const EncodedPayload f32 = encode(s, v1::ENCODING_FP32);
  const EncodedPayload f16 = encode(s, v1::ENCODING_FP16);
  const EncodedPayload bf16 = encode(s, v1::ENCODING_BF16);
  EXPECT_EQ(f32.bytes.size(), (700u + 13 + 1) * 4);
  EXPECT_EQ(f16.bytes.size() * 2, f32.bytes.size());
  EXPECT_EQ(bf16.bytes.size() * 2, f32.bytes.size());
}

TEST(WireCodec, Int8ErrorIsAtMostHalfAScale) {
  torch::manual_seed(3);
  const at::Tensor w = torch::randn({1000}) * 0.7;
  ModelState s({{"w", w}, {"zeros", torch::zeros({3, 3})}, {"n", torch::tensor(int64_t{5})}});
  const EncodedPayload p = encode(s, v1::ENCODING_INT8);
  const auto& h = header(p, "w");
  EXPECT_EQ(h.encoding(), v1::ENCODING_INT8);
  EXPECT_EQ(h.encoded_bytes(), 1000u);  // one byte per element; the scale is in the header
  const float scale = w.abs().max().item<float>() / 127.0f;
  EXPECT_FLOAT_EQ(h.scale(), scale);
  EXPECT_EQ(header(p, "zeros").scale(), 0.0f);
  EXPECT_EQ(p.bytes.size(), 1000u + 9 + 8);  // numel bytes per int8 tensor + the raw int64
  // The largest |x| maps to +-127 with its sign; every q is within [-127, 127].
  const auto* q = reinterpret_cast<const int8_t*>(p.bytes.data());
  const int64_t j = w.abs().argmax().item<int64_t>();
  EXPECT_EQ(static_cast<int>(q[j]), w[j].item<float>() > 0 ? 127 : -127);
  EXPECT_GE(static_cast<int>(*std::min_element(q, q + 1000)), -127);
  const ModelState d = decode_state(p.manifest, p.bytes, &s, nullptr, true);
  const double max_err = (d.at("w") - w).abs().max().item<double>();
  EXPECT_LE(max_err, scale / 2 + 1e-6);  // + float rounding of q * scale
  EXPECT_GT(max_err, 0.0);
  EXPECT_TRUE(torch::equal(d.at("zeros"), torch::zeros({3, 3})));
  EXPECT_EQ(d.at("n").item<int64_t>(), 5);
}

TEST(WireCodec, TopkKeepsExactlyTheLargestDeltas) {
  torch::manual_seed(4);
  const at::Tensor base_w = torch::randn({10, 10});
  // Distinct |delta| = 0.01 .. 1.00 in a random order and random signs.
  const at::Tensor mags = (torch::arange(1, 101, torch::kFloat) * 0.01f).index_select(0, torch::randperm(100));
  const at::Tensor signs = torch::randint(0, 2, {100}).to(torch::kFloat) * 2 - 1;
  const at::Tensor delta = (mags * signs).view({10, 10});
  ModelState base({{"w", base_w}, {"n", torch::tensor(int64_t{1})}});
  ModelState s({{"w", base_w + delta}, {"n", torch::tensor(int64_t{9})}});

  const EncodedPayload p = encode(s, v1::ENCODING_TOPK, &base, 0.1);
  const auto& h = header(p, "w");
  EXPECT_EQ(h.encoding(), v1::ENCODING_TOPK);
  EXPECT_EQ(h.nnz(), 10u);
  EXPECT_EQ(h.encoded_bytes(), 80u);
  EXPECT_EQ(header(p, "n").encoding(), v1::ENCODING_UNSPECIFIED);
  // Indices on the wire: ascending, exactly the 10 largest |delta|.
  std::vector<int32_t> idx(10);
  std::memcpy(idx.data(), p.bytes.data(), 40);
  std::vector<int32_t> want;
  for (int32_t i = 0; i < 100; ++i)
    if (mags[i].item<float>() > 0.905f) want.push_back(i);
  ASSERT_EQ(want.size(), 10u);
  EXPECT_EQ(idx, want);
  std::vector<float> vals(10);
  std::memcpy(vals.data(), p.bytes.data() + 40, 40);
  for (int j = 0; j < 10; ++j) EXPECT_NEAR(vals[j], (mags * signs)[want[j]].item<float>(), 1e-5);

  const ModelState d = decode_state(p.manifest, p.bytes, &s, &base, true);
  const at::Tensor got = d.at("w").reshape({-1}), x = s.at("w").reshape({-1}), b = base_w.reshape({-1});
  at::Tensor kept = torch::zeros({100}, torch::kBool);
  for (int32_t i : want) kept[i] = true;
  EXPECT_TRUE(torch::allclose(got.masked_select(kept), x.masked_select(kept), 0, 1e-5));
  EXPECT_TRUE(torch::equal(got.masked_select(~kept), b.masked_select(~kept)));
  EXPECT_EQ(d.at("n").item<int64_t>(), 9);

  // k = max(1, ceil(fraction * numel)).
  EXPECT_EQ(header(encode(s, v1::ENCODING_TOPK, &base, 0.001), "w").nnz(), 1u);
  EXPECT_EQ(header(encode(s, v1::ENCODING_TOPK, &base, 0.105), "w").nnz(), 11u);
  EXPECT_EQ(header(encode(s, v1::ENCODING_TOPK, &base, 1.0), "w").nnz(), 100u);
  const EncodedPayload all = encode(s, v1::ENCODING_TOPK, &base, 1.0);
  EXPECT_TRUE(torch::allclose(decode_state(all.manifest, all.bytes, nullptr, &base).at("w"), s.at("w"), 0, 1e-5));

  // A TOPK payload cannot be decoded without its base, nor against one of another layout.
  auto e = payload_error([&] { decode_state(p.manifest, p.bytes); });
  EXPECT_EQ(e.field, "encoding");
  EXPECT_TRUE(contains(e.message, "'w'") && contains(e.message, "base")) << e.message;
  ModelState other({{"w", torch::zeros({100})}});
  e = payload_error([&] { decode_state(p.manifest, p.bytes, nullptr, &other); });
  EXPECT_EQ(e.field, "tensor 'w' shape");
  EXPECT_TRUE(contains(e.message, "[10,10]") && contains(e.message, "[100]")) << e.message;
  // Encoding needs a base too.
  EXPECT_THROW(encode(s, v1::ENCODING_TOPK), std::invalid_argument);
}

TEST(WireCodec, TopkOnLargeTensorsMatchesTheExactTopk) {
  // Large tensors take a sampled-threshold path; it must pick exactly what at::topk picks.
  torch::manual_seed(9);
  const int64_t n = int64_t{1} << 20;
  ModelState base({{"w", torch::randn({n})}, {"v", torch::zeros({n})}, {"u", torch::zeros({n})}});
  // w: continuous random deltas. v: every 16th element large (the strided sample sees only
  // those and overestimates the threshold). u: 1% large deltas that the sample never sees.
  const at::Tensor w = base.at("w") + torch::randn({n});
  at::Tensor v = torch::randn({n}) * 1e-3;
  v.slice(0, 0, n, 16).add_(10);
  at::Tensor u = torch::randn({n}) * 1e-3;
  const at::Tensor hidden = torch::arange(1, n, 16).narrow(0, 0, 20000);
  u.index_put_({hidden}, torch::rand({20000}) + 5);
  ModelState s({{"w", w}, {"v", v}, {"u", u}});
  const EncodedPayload p = encode(s, v1::ENCODING_TOPK, &base, 0.01);
  const int64_t k = (n + 99) / 100;
  size_t offset = 0;
  for (const auto& h : p.manifest.tensors()) {
    SCOPED_TRACE(h.name());
    ASSERT_EQ(h.nnz(), static_cast<uint64_t>(k));
    std::vector<int32_t> idx(k);
    std::memcpy(idx.data(), p.bytes.data() + offset, 4 * k);
    const at::Tensor delta = s.at(h.name()) - base.at(h.name());
    const at::Tensor ref = std::get<0>(torch::sort(std::get<1>(torch::topk(delta.abs(), k)))).to(torch::kInt);
    EXPECT_EQ(std::memcmp(idx.data(), ref.data_ptr<int32_t>(), 4 * k), 0);
    offset += h.encoded_bytes();
  }
  const ModelState d = decode_state(p.manifest, p.bytes, &s, &base, true);
  // Against a zero base, exactly the k kept deltas are nonzero, all among the large ones.
  EXPECT_EQ(d.at("v").ne(0).sum().item<int64_t>(), k);
  EXPECT_EQ(d.at("v").slice(0, 0, n, 16).ne(0).sum().item<int64_t>(), k);
  EXPECT_EQ(d.at("u").ne(0).sum().item<int64_t>(), k);
  EXPECT_EQ(d.at("u").index_select(0, hidden).ne(0).sum().item<int64_t>(), k);
}

TEST(WireCodec, EncodeRejectsWhatTheWireCannotCarry) {
  EXPECT_THROW(encode_state(ModelState({{"mask", torch::ones({2}, torch::kBool)}}), {}), std::invalid_argument);
  EXPECT_THROW(encode(ModelState({{"big", torch::tensor({1e6f})}}), v1::ENCODING_FP16), std::invalid_argument);
  EXPECT_THROW(encode(ModelState({{"nan", torch::tensor({1.f, NAN})}}), v1::ENCODING_INT8), std::invalid_argument);
  EXPECT_THROW(encode(ModelState({{"nan", torch::tensor({1.f, NAN})}}), v1::ENCODING_BF16), std::invalid_argument);
  ModelState s({{"w", torch::ones({4})}});
  EXPECT_THROW(encode(s, v1::ENCODING_TOPK, &s, 0.0), std::invalid_argument);
  ModelState wrong({{"w", torch::ones({5})}});
  EXPECT_THROW(encode(s, v1::ENCODING_TOPK, &wrong, 0.5), std::invalid_argument);
  // 65504 is FP16's largest value and is fine.
  EXPECT_NO_THROW(encode(ModelState({{"edge", torch::tensor({65504.f, -65504.f})}}), v1::ENCODING_FP16));
}

TEST(WireCodec, ChunkingSplitsAtOneMibAndReassembles) {
  torch::manual_seed(5);
  ModelState s({{"big", torch::randn({700000})}, {"n", torch::tensor(int64_t{3})}});
  const EncodedPayload p = encode_state(s, {});
  ASSERT_GT(p.bytes.size(), 2.5 * (1 << 20));
  std::vector<v1::PayloadChunk> chunks;
  EXPECT_TRUE(for_each_chunk(p, [&](const v1::PayloadChunk& c) {
    chunks.push_back(c);
    return true;
  }));
  ASSERT_EQ(chunks.size(), 4u);
  EXPECT_EQ(chunks[0].part_case(), v1::PayloadChunk::kManifest);
  EXPECT_EQ(chunks[0].manifest().SerializeAsString(), p.manifest.SerializeAsString());
  size_t sum = 0;
  for (size_t i = 1; i < chunks.size(); ++i) {
    ASSERT_EQ(chunks[i].part_case(), v1::PayloadChunk::kData);
    EXPECT_LE(chunks[i].data().size(), kMaxChunkBytes);
    sum += chunks[i].data().size();
  }
  EXPECT_EQ(chunks[1].data().size(), kMaxChunkBytes);
  EXPECT_EQ(sum, p.bytes.size());

  PayloadAssembler a(p.bytes.size());
  EXPECT_FALSE(a.complete());
  for (size_t i = 0; i < chunks.size(); ++i) {
    EXPECT_FALSE(a.complete());
    a.add(chunks[i]);
  }
  EXPECT_TRUE(a.complete());
  EXPECT_EQ(a.manifest().SerializeAsString(), p.manifest.SerializeAsString());
  EXPECT_EQ(a.checksum(), payload_checksum(p.bytes));  // computed chunk by chunk, same value
  EXPECT_EQ(a.checksum(), p.manifest.checksum());
  const std::string bytes = a.take_bytes();
  EXPECT_TRUE(bytes == p.bytes);
  EXPECT_TRUE(decode_state(a.manifest(), bytes, &s, nullptr, true).equal(s));

  // send() returning false stops the stream.
  int calls = 0;
  EXPECT_FALSE(for_each_chunk(p, [&](const v1::PayloadChunk&) { return ++calls < 2; }));
  EXPECT_EQ(calls, 2);
  // An empty state is a manifest alone.
  calls = 0;
  EXPECT_TRUE(for_each_chunk(encode_state(ModelState(), {}), [&](const v1::PayloadChunk&) { return ++calls > 0; }));
  EXPECT_EQ(calls, 1);
}

TEST(WireCodec, AssemblerEnforcesOrderAndLimits) {
  const EncodedPayload p = encode_state(ModelState({{"w", torch::ones({1000})}}), {});  // 4000 bytes
  v1::PayloadChunk manifest, data, huge, empty;
  *manifest.mutable_manifest() = p.manifest;
  data.set_data(p.bytes.substr(0, 3000));
  huge.set_data(std::string(kMaxChunkBytes + 1, 'x'));

  Caught e = payload_error([&] { PayloadAssembler(1 << 20).add(data); });
  EXPECT_EQ(e.field, "manifest");
  EXPECT_TRUE(contains(e.message, "before the manifest")) << e.message;

  e = payload_error([&] {
    PayloadAssembler a(1 << 20);
    a.add(manifest);
    a.add(manifest);
  });
  EXPECT_EQ(e.field, "manifest");
  EXPECT_TRUE(contains(e.message, "second manifest")) << e.message;

  e = payload_error([&] {
    PayloadAssembler a(1 << 30);
    a.add(manifest);
    a.add(huge);
  });
  EXPECT_EQ(e.field, "chunk");
  EXPECT_TRUE(contains(e.message, std::to_string(kMaxChunkBytes + 1))) << e.message;

  e = payload_error([&] {
    PayloadAssembler a(1 << 20);
    a.add(manifest);
    a.add(data);
    a.add(data);  // 6000 > 4000
  });
  EXPECT_EQ(e.field, "total_bytes");
  EXPECT_TRUE(contains(e.message, "6000") && contains(e.message, "4000")) << e.message;

  e = payload_error([&] { PayloadAssembler(3999).add(manifest); });
  EXPECT_EQ(e.field, "total_bytes");
  EXPECT_TRUE(contains(e.message, "4000") && contains(e.message, "3999")) << e.message;

  e = payload_error([&] { PayloadAssembler(1 << 20).add(empty); });
  EXPECT_EQ(e.field, "chunk");

  PayloadAssembler a(1 << 20);
  a.add(manifest);
  a.add(data);
  EXPECT_FALSE(a.complete());
  e = payload_error([&] { a.take_bytes(); });
  EXPECT_EQ(e.field, "total_bytes");
  EXPECT_TRUE(contains(e.message, "received 3000 of 4000 bytes")) << e.message;
  e = payload_error([&] { PayloadAssembler(1 << 20).take_bytes(); });
  EXPECT_EQ(e.field, "manifest");
  v1::PayloadChunk rest;
  rest.set_data(p.bytes.substr(3000));
  a.add(rest);
  EXPECT_TRUE(a.complete());
  EXPECT_EQ(a.take_bytes(), p.bytes);
}

// ---- Decoding a tampered payload: each check names its field. ----

TEST(WireCodecValidation, FlippedByteFailsTheChecksum) {
  ModelState s = sample_state();
  EncodedPayload p = encode_state(s, {});
  p.bytes[17] ^= 0x01;
  const Caught e = payload_error([&] { decode_state(p.manifest, p.bytes); });
  EXPECT_EQ(e.field, "checksum");
  EXPECT_TRUE(contains(e.message, "checksum mismatch")) << e.message;
}

// A receiver that computed the checksum while the bytes arrived passes it in; decoding trusts
// that value instead of hashing again, so a flipped byte it saw is still caught.
TEST(WireCodecValidation, ChecksumComputedWhileReceivingIsTheOneChecked) {
  ModelState s = sample_state();
  EncodedPayload p = encode_state(s, {});
  EXPECT_TRUE(decode_state(p.manifest, p.bytes, nullptr, nullptr, false, payload_checksum(p.bytes)).equal(s));
  std::string flipped = p.bytes;
  flipped[17] ^= 0x01;
  const Caught e = payload_error(
      [&] { decode_state(p.manifest, flipped, nullptr, nullptr, false, payload_checksum(flipped)); });
  EXPECT_EQ(e.field, "checksum");
  PayloadAssembler a(p.bytes.size());
  v1::PayloadChunk m, d;
  *m.mutable_manifest() = p.manifest;
  d.set_data(flipped);
  a.add(m);
  a.add(d);
  EXPECT_EQ(a.checksum(), payload_checksum(flipped));
  EXPECT_NE(a.checksum(), p.manifest.checksum());
}

// Handing the bytes over decodes fp32 without a copy: the state aliases the received buffer
// (which it keeps alive), with the same values as the copying decode; mixed dtypes still decode.
TEST(WireCodec, OwnedBytesDecodeWithoutACopy) {
  torch::manual_seed(9);
  const ModelState s({{"a", torch::randn({3, 5})}, {"b", torch::randn({7})}});
  EncodedPayload p = encode_state(s, {});
  std::string bytes = p.bytes;
  const char* buffer = bytes.data();
  const ModelState owned = decode_state(p.manifest, std::move(bytes));
  EXPECT_TRUE(owned.equal(s));
  EXPECT_EQ(static_cast<const char*>(owned.flat().data_ptr()), buffer);  // no copy
  EXPECT_EQ(static_cast<const char*>(owned.at("b").data_ptr()), buffer + 15 * 4);
  EXPECT_TRUE(decode_state(p.manifest, p.bytes).equal(s));

  const ModelState mixed = sample_state();  // integer and scalar tensors between the floats
  for (auto enc : {v1::ENCODING_FP32, v1::ENCODING_FP16, v1::ENCODING_INT8}) {
    EncodedPayload q = encode_state(mixed, {enc});
    const ModelState a = decode_state(q.manifest, q.bytes);
    const ModelState b = decode_state(q.manifest, std::string(q.bytes));
    EXPECT_TRUE(a.equal(b)) << v1::Encoding_Name(enc);
  }
  // Validation is the same: a flipped byte fails the checksum.
  std::string flipped = p.bytes;
  flipped[3] ^= 0x10;
  EXPECT_EQ(payload_error([&] { decode_state(p.manifest, std::move(flipped)); }).field, "checksum");
}

TEST(BufferPool, RecyclesBestFitKeepsOnlyLargeBuffersWithinTheCap) {
  const size_t MiB = size_t{1} << 20;
  BufferPool pool(10 * MiB);
  std::string a = pool.acquire(4 * MiB), b = pool.acquire(2 * MiB);
  EXPECT_GE(a.capacity(), 4 * MiB);
  EXPECT_TRUE(a.empty());
  const char* a_data = a.data();
  const char* b_data = b.data();
  a.append(3 * MiB, 'x');
  pool.release(std::move(a));
  pool.release(std::move(b));
  EXPECT_EQ(pool.idle_buffers(), 2u);
  // Best fit: a 1 MiB request gets the 2 MiB buffer, a 3 MiB one the 4 MiB buffer, emptied.
  std::string c = pool.acquire(1 * MiB);
  EXPECT_EQ(c.data(), b_data);
  std::string d = pool.acquire(3 * MiB);
  EXPECT_EQ(d.data(), a_data);
  EXPECT_TRUE(d.empty());
  EXPECT_EQ(pool.idle_bytes(), 0u);
  // Nothing idle that fits: a new buffer.
  std::string e = pool.acquire(5 * MiB);
  EXPECT_NE(e.data(), d.data());
  // Small buffers are not kept.
  std::string small(1000, 'y');
  pool.release(std::move(small));
  EXPECT_EQ(pool.idle_buffers(), 0u);
  // Over the cap (10 MiB): the smallest go, the largest stay.
  pool.release(std::move(c));
  pool.release(std::move(d));
  pool.release(std::move(e));
  EXPECT_LE(pool.idle_bytes(), 10 * MiB);
  EXPECT_EQ(pool.idle_buffers(), 2u);  // 5 + 4 MiB kept, the 2 MiB freed
  // Small requests, and requests under a quarter of a buffer, do not take it.
  EXPECT_LT(pool.acquire(1000).capacity(), MiB);
  EXPECT_EQ(pool.acquire(MiB).capacity() / MiB, 4u);  // the 4 MiB one: within 4x
  EXPECT_LT(pool.acquire(MiB).capacity(), 2 * MiB);   // the 5 MiB one is over 4x: a new buffer
  EXPECT_EQ(pool.idle_buffers(), 1u);
  EXPECT_GE(pool.acquire(2 * MiB).capacity(), 5 * MiB);
  EXPECT_EQ(pool.idle_buffers(), 0u);
  pool.set_max_idle_bytes(0);
  EXPECT_EQ(pool.idle_buffers(), 0u);
}

// The receive path end to end: the buffer a payload was assembled in goes back to the pool when
// the decoded update (which views it) is gone, and the next payload is received into it.
TEST(BufferPool, DecodedPayloadHandsItsReceiveBufferToTheNextOne) {
  BufferPool& pool = BufferPool::payloads();
  const size_t cap = pool.max_idle_bytes();
  pool.set_max_idle_bytes(0);  // start empty whatever ran before in this process
  pool.set_max_idle_bytes(cap);
  torch::manual_seed(4);
  const ModelState s({{"w", torch::randn({1 << 19})}});  // 2 MiB of fp32
  const EncodedPayload p = encode_state(s, {});
  auto receive = [&] {
    PayloadAssembler a(p.bytes.size());
    for_each_chunk(p, [&](const v1::PayloadChunk& c) {
      a.add(c);
      return true;
    });
    EXPECT_TRUE(a.complete());
    const uint64_t sum = a.checksum();  // before take_bytes(), which moves the bytes out
    return std::make_pair(sum, a.take_bytes());
  };
  auto [sum1, bytes1] = receive();
  const char* buffer = bytes1.data();
  {
    const ModelState got = decode_state(p.manifest, std::move(bytes1), &s, nullptr, true, sum1);
    EXPECT_TRUE(got.equal(s));
    EXPECT_EQ(static_cast<const char*>(got.flat().data_ptr()), buffer);  // a view of the receive buffer
    EXPECT_EQ(pool.idle_buffers(), 0u);  // still in use
  }
  EXPECT_EQ(pool.idle_buffers(), 1u);
  auto [sum2, bytes2] = receive();
  EXPECT_EQ(bytes2.data(), buffer);  // received into the recycled buffer
  EXPECT_EQ(sum2, sum1);
  EXPECT_TRUE(decode_state(p.manifest, std::move(bytes2), &s, nullptr, true, sum2).equal(s));
}

TEST(WireCodecValidation, TruncatedOrPaddedBytesFailTotalBytes) {
  ModelState s = sample_state();
  EncodedPayload p = encode_state(s, {});
  const std::string full = p.bytes;
  Caught e = payload_error([&] { decode_state(p.manifest, std::string_view(full).substr(0, full.size() - 4)); });
  EXPECT_EQ(e.field, "total_bytes");
  EXPECT_TRUE(contains(e.message, std::to_string(full.size())) && contains(e.message, std::to_string(full.size() - 4)))
      << e.message;
  // Extra bytes that the manifest accounts for in total_bytes but in no tensor.
  p.bytes += "xxxx";
  reseal(p);
  e = payload_error([&] { decode_state(p.manifest, p.bytes); });
  EXPECT_EQ(e.field, "total_bytes");
  EXPECT_TRUE(contains(e.message, "add up to " + std::to_string(full.size()))) << e.message;
}

TEST(WireCodecValidation, ShapeDtypeAndNamesAreCheckedAgainstExpected) {
  ModelState s = sample_state();
  const EncodedPayload p = encode_state(s, {});
  ModelState wrong_shape({{"fc1.weight", torch::zeros({3, 4})}, {"fc1.bias", torch::zeros({4})}});
  Caught e = payload_error([&] { decode_state(p.manifest, p.bytes, &wrong_shape); });
  EXPECT_EQ(e.field, "tensor 'fc1.weight' shape");
  EXPECT_TRUE(contains(e.message, "'fc1.weight'") && contains(e.message, "[4,3]") && contains(e.message, "[3,4]"))
      << e.message;

  std::vector<ModelState::Entry> entries = sample_state().entries();
  entries[1].tensor = entries[1].tensor.to(torch::kDouble);
  ModelState wrong_dtype(entries);
  e = payload_error([&] { decode_state(p.manifest, p.bytes, &wrong_dtype); });
  EXPECT_EQ(e.field, "dtype");
  EXPECT_TRUE(contains(e.message, "'fc1.bias'") && contains(e.message, "F32") && contains(e.message, "Double"))
      << e.message;

  // A subset of expected is fine, unless require_all.
  ModelState sub = decode_state(p.manifest, p.bytes, &s);
  ModelState more({{"fc1.weight", torch::zeros({4, 3})}, {"fc1.bias", torch::zeros({4})},
                   {"bn.num_batches_tracked", torch::tensor(int64_t{0})}, {"temperature", torch::tensor(0.f)},
                   {"empty", torch::zeros({0, 5})}, {"fc2.weight", torch::zeros({2, 4})}, {"extra", torch::zeros({1})}});
  EXPECT_NO_THROW(decode_state(p.manifest, p.bytes, &more));
  e = payload_error([&] { decode_state(p.manifest, p.bytes, &more, nullptr, true); });
  EXPECT_EQ(e.field, "name");
  EXPECT_TRUE(contains(e.message, "'extra'") && contains(e.message, "missing")) << e.message;

  // A payload tensor unknown to expected.
  const ModelState only_bias = wrong_shape.select({"fc1.bias"});
  e = payload_error([&] { decode_state(p.manifest, p.bytes, &only_bias); });
  EXPECT_EQ(e.field, "name");
  EXPECT_TRUE(contains(e.message, "'fc1.weight'")) << e.message;
}

TEST(WireCodecValidation, ManifestFieldsAreChecked) {
  const ModelState s = sample_state();
  const EncodedPayload good = encode_state(s, {});
  auto check = [&](const std::function<void(EncodedPayload&)>& tamper, const std::string& field,
                   const std::vector<std::string>& words) {
    EncodedPayload p = good;
    tamper(p);
    const Caught e = payload_error([&] { decode_state(p.manifest, p.bytes); });
    EXPECT_EQ(e.field, field);
    for (const auto& w : words) EXPECT_TRUE(contains(e.message, w)) << "'" << w << "' not in: " << e.message;
  };
  // Duplicate names.
  check([](EncodedPayload& p) { p.manifest.mutable_tensors(1)->set_name("fc1.weight"); }, "name",
        {"duplicate", "'fc1.weight'"});
  check([](EncodedPayload& p) { p.manifest.mutable_tensors(1)->set_name(""); }, "name", {"empty name"});
  // Unknown enum values.
  check([](EncodedPayload& p) { p.manifest.mutable_tensors(0)->set_dtype(static_cast<v1::DType>(42)); }, "dtype",
        {"'fc1.weight'", "42"});
  check([](EncodedPayload& p) { p.manifest.mutable_tensors(0)->set_dtype(v1::DTYPE_UNSPECIFIED); }, "dtype",
        {"DTYPE_UNSPECIFIED"});
  check([](EncodedPayload& p) { p.manifest.mutable_tensors(0)->set_encoding(static_cast<v1::Encoding>(9)); },
        "encoding", {"'fc1.weight'", "9"});
  // A lossy encoding on an integer tensor.
  check([](EncodedPayload& p) { p.manifest.mutable_tensors(2)->set_encoding(v1::ENCODING_FP16); }, "encoding",
        {"'bn.num_batches_tracked'", "I64", "FP16"});
  // Shapes: negative dimension, numel overflow.
  check([](EncodedPayload& p) { p.manifest.mutable_tensors(0)->set_shape(0, -4); }, "tensor 'fc1.weight' shape",
        {"negative", "[-4,3]"});
  check(
      [](EncodedPayload& p) {
        p.manifest.mutable_tensors(0)->set_shape(0, int64_t{1} << 40);
        p.manifest.mutable_tensors(0)->set_shape(1, int64_t{1} << 40);
      },
      "tensor 'fc1.weight' shape", {"too many elements"});
  // A zero beside huge dimensions: no elements, but strides that overflow.
  check(
      [](EncodedPayload& p) {
        auto* t = p.manifest.mutable_tensors(0);
        t->set_shape(0, 0);
        t->set_shape(1, int64_t{1} << 62);
        t->add_shape(int64_t{1} << 62);
      },
      "tensor 'fc1.weight' shape", {"dimension 4611686018427387904 (at most 2^40)"});
  check(
      [](EncodedPayload& p) {
        auto* t = p.manifest.mutable_tensors(0);
        t->set_shape(0, 0);
        for (int i = 0; i < 3; ++i) t->add_shape(int64_t{1} << 30);
      },
      "tensor 'fc1.weight' shape", {"too many elements"});
  // 500,000 dimensions of 1: refused before anything is built from them.
  check(
      [](EncodedPayload& p) {
        for (int i = 0; i < 500000; ++i) p.manifest.mutable_tensors(0)->add_shape(1);
      },
      "tensor 'fc1.weight' shape", {"500002 dimensions (at most 16)"});
  // encoded_bytes disagreeing with dtype/shape/encoding.
  check([](EncodedPayload& p) { p.manifest.mutable_tensors(0)->set_encoded_bytes(44); }, "encoded_bytes",
        {"'fc1.weight'", "44", "expected 48"});
  check([](EncodedPayload& p) { p.manifest.mutable_tensors(0)->set_encoding(v1::ENCODING_FP16); }, "encoded_bytes",
        {"'fc1.weight'", "48", "expected 24"});
  check([](EncodedPayload& p) { p.manifest.mutable_tensors(0)->set_shape(0, 5); }, "encoded_bytes",
        {"[5,3]", "expected 60"});
}

TEST(WireCodecValidation, Int8ScaleAndValuesAreChecked) {
  ModelState s({{"w", torch::linspace(-1, 1, 11)}});
  const EncodedPayload good = encode(s, v1::ENCODING_INT8);
  for (float bad : {-1.0f, std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
    EncodedPayload p = good;
    p.manifest.mutable_tensors(0)->set_scale(bad);
    const Caught e = payload_error([&] { decode_state(p.manifest, p.bytes); });
    EXPECT_EQ(e.field, "scale");
    EXPECT_TRUE(contains(e.message, "'w'") && contains(e.message, "finite")) << e.message;
  }
  EncodedPayload p = good;
  p.bytes[3] = static_cast<char>(-128);
  reseal(p);
  const Caught e = payload_error([&] { decode_state(p.manifest, p.bytes); });
  EXPECT_EQ(e.field, "values");
  EXPECT_TRUE(contains(e.message, "-128")) << e.message;
}

TEST(WireCodecValidation, Fp16NonFiniteValuesAreRejected) {
  ModelState s({{"w", torch::ones({4})}});
  EncodedPayload p = encode(s, v1::ENCODING_FP16);
  const uint16_t inf = 0x7c00;  // +inf in IEEE half
  std::memcpy(p.bytes.data() + 2, &inf, 2);
  reseal(p);
  const Caught e = payload_error([&] { decode_state(p.manifest, p.bytes); });
  EXPECT_EQ(e.field, "values");
  EXPECT_TRUE(contains(e.message, "'w'") && contains(e.message, "non-finite")) << e.message;
}

TEST(WireCodecValidation, TopkNnzIndicesAndValuesAreChecked) {
  torch::manual_seed(6);
  ModelState base({{"w", torch::zeros({50})}});
  ModelState s({{"w", torch::randn({50})}});
  const EncodedPayload good = encode(s, v1::ENCODING_TOPK, &base, 0.1);  // nnz 5
  ASSERT_EQ(good.manifest.tensors(0).nnz(), 5u);
  auto set_index = [](EncodedPayload& p, int j, int32_t v) {
    std::memcpy(p.bytes.data() + 4 * j, &v, 4);
    reseal(p);
  };
  auto decode = [&](const EncodedPayload& p) { return payload_error([&] { decode_state(p.manifest, p.bytes, nullptr, &base); }); };

  EncodedPayload p = good;
  set_index(p, 4, 50);
  Caught e = decode(p);
  EXPECT_EQ(e.field, "topk indices");
  EXPECT_TRUE(contains(e.message, "50") && contains(e.message, "out of range [0, 50)")) << e.message;

  p = good;
  set_index(p, 0, -1);
  e = decode(p);
  EXPECT_EQ(e.field, "topk indices");
  EXPECT_TRUE(contains(e.message, "-1")) << e.message;

  p = good;
  int32_t second;
  std::memcpy(&second, good.bytes.data() + 4, 4);
  set_index(p, 2, second);  // a repeat: not strictly ascending
  e = decode(p);
  EXPECT_EQ(e.field, "topk indices");
  EXPECT_TRUE(contains(e.message, "strictly ascending")) << e.message;

  p = good;
  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::memcpy(p.bytes.data() + 20 + 4, &nan, 4);
  reseal(p);
  e = decode(p);
  EXPECT_EQ(e.field, "values");

  p = good;
  p.manifest.mutable_tensors(0)->set_nnz(51);
  e = decode(p);
  EXPECT_EQ(e.field, "nnz");
  EXPECT_TRUE(contains(e.message, "51") && contains(e.message, "50")) << e.message;

  p = good;
  p.manifest.mutable_tensors(0)->set_nnz(4);
  e = decode(p);
  EXPECT_EQ(e.field, "encoded_bytes");
  EXPECT_TRUE(contains(e.message, "expected 32")) << e.message;

  // The base must hold the tensor with the same dtype.
  ModelState base_double({{"w", torch::zeros({50}, torch::kDouble)}});
  e = payload_error([&] { decode_state(good.manifest, good.bytes, nullptr, &base_double); });
  EXPECT_EQ(e.field, "dtype");
  ModelState base_other({{"v", torch::zeros({50})}});
  e = payload_error([&] { decode_state(good.manifest, good.bytes, nullptr, &base_other); });
  EXPECT_EQ(e.field, "name");
}

TEST(WireCodec, LargeStateRoundTripsThroughEveryEncoding) {
  // Large enough to exercise the vectorised paths and unaligned offsets (the int8 tensor of
  // odd size shifts everything after it).
  torch::manual_seed(8);
  ModelState s({{"a", torch::randn({1001})}, {"b", torch::randn({3, 100003})}, {"n", torch::tensor(int64_t{1})},
                {"c", torch::randn({7})}});
  ModelState base = s.scaled(0.9);
  for (auto enc : {v1::ENCODING_FP32, v1::ENCODING_FP16, v1::ENCODING_BF16, v1::ENCODING_INT8, v1::ENCODING_TOPK}) {
    SCOPED_TRACE(enc);
    const EncodedPayload p = encode(s, enc, &base, 0.05);
    const ModelState d = decode_state(p.manifest, p.bytes, &s, &base, true);
    ASSERT_TRUE(d.same_layout(s));
    if (enc == v1::ENCODING_FP32) {
      EXPECT_TRUE(d.equal(s));
    }
    const double err = (d.flat() - s.flat()).abs().max().item<double>();
    EXPECT_LT(err, enc == v1::ENCODING_TOPK ? 0.5 : 0.05);
  }
  // After a 1-byte int8 tensor every following tensor sits at an odd offset; still exact.
  ModelState odd({{"i8", torch::tensor({-3}, torch::kChar)}, {"f", torch::randn({5})},
                  {"h", torch::randn({3}).to(torch::kHalf)}, {"l", torch::tensor(int64_t{77})}});
  for (auto enc : {v1::ENCODING_UNSPECIFIED, v1::ENCODING_FP32}) {
    const EncodedPayload p = encode(odd, enc);
    EXPECT_TRUE(decode_state(p.manifest, p.bytes).equal(odd));
  }
  const EncodedPayload p = encode(odd, v1::ENCODING_FP16);
  const ModelState d = decode_state(p.manifest, p.bytes);
  EXPECT_TRUE(torch::equal(d.at("f"), odd.at("f").to(torch::kHalf).to(torch::kFloat)));
  EXPECT_TRUE(torch::equal(d.at("h"), odd.at("h")));
  EXPECT_EQ(d.at("l").item<int64_t>(), 77);
}

}  // namespace
}  // namespace fl

// fedcoord's download payloads (issue 20): a model whose tensors lie back to back in its packed
// buffer travels as a view of that buffer, byte-identical to the copied encoding; anything else
// (an integer entry apart, a lossy encoding) is copied as before.
TEST(WireCodec, ASharedBufferPayloadIsTheCopiedOneWithoutTheCopy) {
  using namespace fl;
  const ModelState s({{"fc1.weight", torch::randn({33, 7})}, {"fc1.bias", torch::randn({33})}, {"fc2.weight", torch::randn({5, 33})}});
  EncodeOptions share;
  share.share_buffer = true;
  const EncodedPayload copied = encode_state(s, EncodeOptions());
  const EncodedPayload viewed = encode_state(s, share);
  ASSERT_TRUE(viewed.view_of.defined());
  EXPECT_TRUE(viewed.bytes.empty());
  EXPECT_EQ(viewed.view_of.data_ptr(), s.flat().data_ptr()) << "no copy";
  EXPECT_EQ(viewed.data(), copied.data());
  EXPECT_EQ(viewed.manifest.SerializeAsString(), copied.manifest.SerializeAsString());
  std::string streamed;
  for_each_chunk(viewed, [&](const v1::PayloadChunk& c) {
    if (c.has_data()) streamed += c.data();
    return true;
  });
  EXPECT_EQ(streamed, copied.bytes);
  EXPECT_TRUE(decode_state(viewed.manifest, viewed.data()).equal(s));

  const ModelState with_int({{"w", torch::randn({4})}, {"n", torch::tensor(int64_t{3})}});
  EXPECT_FALSE(encode_state(with_int, share).view_of.defined());
  share.encoding = v1::ENCODING_FP16;
  const EncodedPayload half = encode_state(s, share);
  EXPECT_FALSE(half.view_of.defined());
  EXPECT_EQ(half.bytes.size(), static_cast<size_t>(s.numel() * 2));
}
