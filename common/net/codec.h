#pragma once
// Payload codec: a ModelState <-> (PayloadManifest, bytes) and the chunked transport of both.
//
// A payload is a manifest (one TensorHeader per tensor, in ModelState order) plus the
// concatenation of every tensor's encoded bytes, in manifest order, little-endian:
//   ENCODING_FP32         float32, numel * 4 bytes
//   ENCODING_FP16 / BF16  IEEE half / bfloat16, numel * 2 bytes
//   ENCODING_INT8         int8 q with x ~= q * header.scale, numel bytes; symmetric per-tensor
//                         scale = max|x| / 127 (scale 0 -> all q = 0), q = round(x / scale) in [-127, 127]
//   ENCODING_TOPK         a sparse delta against a base state: nnz int32 indices into the
//                         flattened tensor (strictly ascending) then nnz float32 values;
//                         decoded = base + scattered delta. nnz * 8 bytes.
//   ENCODING_UNSPECIFIED  raw bytes in the tensor's own dtype (numel * element size). Integer
//                         tensors (num_batches_tracked, ...) always travel this way; with
//                         EncodeOptions::encoding == UNSPECIFIED floating tensors do too.
// header.dtype is always the dtype of the tensor the receiver gets back.
//
// The checksum (PayloadManifest.checksum) covers the concatenated bytes only; see
// payload_checksum(). The manifest itself is protected by its own validation.
#include <ATen/core/Tensor.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>

#include "common/core/model_state.h"
#include "common/models/model_declaration.h"
#include "federation.pb.h"

namespace fl {

// Largest PayloadChunk.data the sender produces and the receiver accepts.
constexpr size_t kMaxChunkBytes = size_t{1} << 20;  // 1 MiB

// A payload that fails validation. field() says what was wrong, e.g. "checksum",
// "total_bytes", "encoded_bytes", "tensor 'fc1.weight' shape", "dtype", "encoding", "name",
// "scale", "nnz", "topk indices", "values", "manifest", "chunk"; what() is the full message,
// naming the tensor and the expected vs received values.
class PayloadError : public std::runtime_error {
 public:
  PayloadError(std::string field, const std::string& message)
      : std::runtime_error(message), field_(std::move(field)) {}
  const std::string& field() const noexcept { return field_; }

 private:
  std::string field_;
};

struct EncodeOptions {
  v1::Encoding encoding = v1::ENCODING_FP32;  // for floating tensors
  double topk_fraction = 0.01;                // ENCODING_TOPK: keep max(1, ceil(fraction * numel))
  // When every tensor travels verbatim (FP32 float32, raw integers) and the tensors lie back to
  // back in one CPU buffer (a ModelState's packed floats), the payload views that buffer instead
  // of copying it (EncodedPayload::view_of). The state must then not be written to while the
  // payload lives: fedcoord's download payloads of the global model, which strategies replace and
  // never write into.
  bool share_buffer = false;
};

// "fp32" | "fp16" | "bf16" | "int8" | "topk" (RunSpec::update_encoding); anything else throws
// std::invalid_argument naming the value.
v1::Encoding parse_encoding(const std::string& name);

// A client's model declaration on the wire and back. from_wire validates (an unknown dtype,
// a missing name...: std::invalid_argument naming it).
void declaration_to_wire(const ModelDeclaration& d, v1::ModelDeclaration* out);
ModelDeclaration declaration_from_wire(const v1::ModelDeclaration& in);

struct EncodedPayload {
  v1::PayloadManifest manifest;
  std::string bytes;   // the encoded bytes, unless the payload is a view (view_of defined)
  at::Tensor view_of;  // a byte view of the tensors' own buffer (EncodeOptions::share_buffer)
  // The encoded bytes, whichever holds them.
  std::string_view data() const {
    return view_of.defined() ? std::string_view(static_cast<const char*>(view_of.data_ptr()), view_of.numel())
                             : std::string_view(bytes);
  }
};

// Encodes every entry of `s` in order. Tensors are moved to the CPU first. ENCODING_TOPK needs
// `base`: a floating tensor whose name is in `base` (same shape and dtype, else
// std::invalid_argument) is sent as its top-k delta; one absent from `base` travels as FP32.
// Throws std::invalid_argument for a dtype without a wire DType (bool, int16, complex), bad
// options, or values the lossy encodings cannot carry (non-finite, beyond FP16 range).
EncodedPayload encode_state(const ModelState& s, const EncodeOptions& opt, const ModelState* base = nullptr);

// 64-bit payload checksum: (uint64(zlib crc32_z(bytes)) << 32) ^ bytes.size().
uint64_t payload_checksum(std::string_view bytes);
// The same, over consecutive pieces of the bytes (a payload read or received piece by piece).
class PayloadChecksum {
 public:
  void update(std::string_view piece);
  uint64_t value() const;
  uint64_t size() const { return size_; }  // bytes so far

 private:
  unsigned long crc_ = 0;
  uint64_t size_ = 0;
};

// Validates the manifest against the bytes (and against `expected` / `base` when given) and
// decodes; throws PayloadError on anything inconsistent (see PayloadError::field()):
//   total_bytes == bytes.size() == sum of encoded_bytes; checksum; known dtype/encoding enums
//   and an encoding that fits the dtype; non-empty unique names; shapes non-negative without
//   numel overflow; encoded_bytes as implied by dtype/shape/encoding(/nnz); int8 scale finite
//   >= 0 and q in [-127, 127]; topk nnz <= numel, indices strictly ascending and < numel;
//   finite values for FP16/BF16/INT8/TOPK.
// expected: every manifest tensor must be in it with the same shape and dtype; a subset is
//   fine unless require_all (then a missing name is an error too).
// base: needed by TOPK tensors only (same shape and dtype as the header); ignored otherwise.
// known_checksum: payload_checksum(bytes) as the receiver computed it while the bytes arrived
//   (PayloadAssembler::checksum()), so decoding skips a second pass over them.
// The result holds CPU, contiguous tensors of the header dtypes, in manifest order.
ModelState decode_state(const v1::PayloadManifest& m, std::string_view bytes, const ModelState* expected = nullptr,
                        const ModelState* base = nullptr, bool require_all = false,
                        std::optional<uint64_t> known_checksum = std::nullopt);
// The same, taking the bytes over: FP32 (and raw) tensors stay views of the received buffer,
// and when the floating tensors lie back to back the result aliases it, so a large fp32 update
// is decoded without copying it.
ModelState decode_state(const v1::PayloadManifest& m, std::string&& bytes, const ModelState* expected = nullptr,
                        const ModelState* base = nullptr, bool require_all = false,
                        std::optional<uint64_t> known_checksum = std::nullopt);

// Calls send() with the manifest chunk, then data chunks of at most kMaxChunkBytes, stopping
// early (returning false) as soon as send() returns false. The chunk passed to send() is reused
// between calls: copy it if it must outlive the call.
bool for_each_chunk(const EncodedPayload& p, const std::function<bool(const v1::PayloadChunk&)>& send);
// The same, filling `*chunk` before each send(): `chunk` may be the chunk field of the message
// that goes on the wire (an UploadChunk), which then needs no copy of 1 MiB to wrap it.
bool for_each_chunk(const EncodedPayload& p, v1::PayloadChunk* chunk, const std::function<bool()>& send);

// Reassembles a chunk stream (manifest first, then data) with size limits.
class PayloadAssembler {
 public:
  explicit PayloadAssembler(uint64_t max_total_bytes) : max_total_bytes_(max_total_bytes) {}
  // false (before the first chunk): the data chunks are counted and checksummed, not kept; the
  // receiver streams them elsewhere (fedcoord: to the update's file) and take_bytes() returns ""
  // once the payload is complete. Bounds a receiver's memory whatever the payload's size.
  void keep_bytes(bool keep) { keep_bytes_ = keep; }

  // Throws PayloadError: data before the manifest or a second manifest ("manifest"), a chunk
  // with neither part or data over kMaxChunkBytes ("chunk"), a manifest announcing more than
  // max_total_bytes or data beyond the manifest's total_bytes ("total_bytes").
  void add(const v1::PayloadChunk& chunk);
  bool has_manifest() const { return has_manifest_; }
  // Manifest received and all of its total_bytes too (false again once take_bytes() ran).
  bool complete() const { return has_manifest_ && !taken_ && received_.size() == manifest_.total_bytes(); }
  uint64_t received_bytes() const { return received_.size(); }
  // payload_checksum() of the bytes received so far, computed chunk by chunk as they arrive
  // (while each chunk is hot in cache) instead of in a second pass.
  uint64_t checksum() const;
  // Throws PayloadError("manifest") before the manifest arrived.
  const v1::PayloadManifest& manifest() const;
  // The payload bytes (moved out: call once). Throws PayloadError("total_bytes") naming
  // received vs expected bytes when incomplete.
  std::string take_bytes();

 private:
  uint64_t max_total_bytes_;
  bool has_manifest_ = false;
  bool taken_ = false;
  v1::PayloadManifest manifest_;
  bool keep_bytes_ = true;
  std::string bytes_;
  PayloadChecksum received_;  // of the data bytes so far (bytes_ when they are kept)
};

}  // namespace fl
