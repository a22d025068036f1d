#include "common/net/codec.h"

#include <torch/torch.h>
#include <zlib.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <string>
#include <tuple>
#include <unordered_map>
#include <utility>
#include <vector>

#include "common/net/buffer_pool.h"

namespace fl {
namespace {

// Tensor bytes are copied verbatim: the wire format is little-endian.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the payload codec assumes a little-endian host");

struct DTypeInfo {
  v1::DType wire;
  at::ScalarType type;
  const char* name;
};

constexpr DTypeInfo kDTypes[] = {
    {v1::DTYPE_F32, at::kFloat, "F32"}, {v1::DTYPE_F16, at::kHalf, "F16"},  {v1::DTYPE_BF16, at::kBFloat16, "BF16"},
    {v1::DTYPE_I8, at::kChar, "I8"},    {v1::DTYPE_I64, at::kLong, "I64"},  {v1::DTYPE_F64, at::kDouble, "F64"},
    {v1::DTYPE_I32, at::kInt, "I32"},   {v1::DTYPE_U8, at::kByte, "U8"},
};

const DTypeInfo* info_of(at::ScalarType t) {
  for (const auto& d : kDTypes)
    if (d.type == t) return &d;
  return nullptr;
}

const DTypeInfo* info_of(int wire) {
  for (const auto& d : kDTypes)
    if (static_cast<int>(d.wire) == wire) return &d;
  return nullptr;
}

std::string encoding_name(int e) {
  switch (e) {
    case v1::ENCODING_UNSPECIFIED: return "UNSPECIFIED (raw)";
    case v1::ENCODING_FP32: return "FP32";
    case v1::ENCODING_FP16: return "FP16";
    case v1::ENCODING_BF16: return "BF16";
    case v1::ENCODING_INT8: return "INT8";
    case v1::ENCODING_TOPK: return "TOPK";
    default: return "unknown encoding " + std::to_string(e);
  }
}

std::string dtype_name(int wire) {
  const DTypeInfo* d = info_of(wire);
  return d ? d->name : "unknown dtype " + std::to_string(wire);
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? "," : "") + std::to_string(shape[i]);
  return s + "]";
}
std::string shape_str(at::IntArrayRef shape) { return shape_str(shape.vec()); }

bool is_floating(at::ScalarType t) {
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16 || t == at::kDouble;
}

// Bytes per element on the wire for a (dtype, dense encoding) pair; TOPK is per nonzero.
size_t wire_element_size(int encoding, at::ScalarType dtype) {
  switch (encoding) {
    case v1::ENCODING_FP32: return 4;
    case v1::ENCODING_FP16:
    case v1::ENCODING_BF16: return 2;
    case v1::ENCODING_INT8: return 1;
    case v1::ENCODING_TOPK: return 8;  // int32 index + float32 value
    default: return c10::elementSize(dtype);
  }
}

// k = max(1, ceil(fraction * numel)), at most numel. A product within rounding noise of an
// integer (0.1 * 100) is taken as that integer.
int64_t topk_count(double fraction, int64_t numel) {
  if (numel == 0) return 0;
  const double x = fraction * static_cast<double>(numel);
  const double r = std::round(x);
  double k = std::fabs(x - r) <= 1e-9 * std::max(1.0, x) ? r : std::ceil(x);
  k = std::max(1.0, std::min(k, static_cast<double>(numel)));
  return static_cast<int64_t>(k);
}

at::Tensor cpu_contiguous(const at::Tensor& t) { return t.detach().to(at::kCPU).contiguous(); }

// A 1-D view of `numel` elements of `type` at p (no copy), or an aligned copy when p is not
// aligned for the type (a tensor after an odd-sized int8 one). Valid while the bytes live.
at::Tensor wire_view(const char* p, int64_t numel, at::ScalarType type) {
  const size_t es = c10::elementSize(type);
  if (reinterpret_cast<uintptr_t>(p) % es == 0)
    return at::from_blob(const_cast<char*>(p), {numel}, at::TensorOptions().dtype(type));
  at::Tensor t = at::empty({numel}, at::TensorOptions().dtype(type));
  if (numel > 0) std::memcpy(t.data_ptr(), p, static_cast<size_t>(numel) * es);
  return t;
}

// A writable 1-D view over the output bytes. Unaligned views are fine for ATen's CPU copy
// kernels (unaligned vector loads and stores) on the little-endian hosts we support.
at::Tensor out_view(char* p, int64_t numel, at::ScalarType type) {
  return at::from_blob(p, {numel}, at::TensorOptions().dtype(type));
}

// True when every element is finite; one reduction pass for float/double, isfinite otherwise.
bool all_finite(const at::Tensor& t) {
  if (t.numel() == 0) return true;
  if (t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble) {
    auto [mn, mx] = at::aminmax(t);
    return std::isfinite(mn.item<double>()) && std::isfinite(mx.item<double>());
  }
  return at::isfinite(t).all().item<bool>();
}

// Ascending indices of the k largest values of `a` (1-D, float, finite). at::topk alone is a
// partial sort, O(n log k), ~50 ms per 2.4M elements; for large tensors a strided sample first
// gives a threshold that keeps roughly 1.3 k candidates, and the exact top-k runs over those.
// Exact by construction: every value below the threshold is below every candidate, and when
// fewer than k values reach it (an unrepresentative sample) the full top-k runs instead.
at::Tensor topk_indices(const at::Tensor& a, int64_t k) {
  const int64_t n = a.numel();
  if (k >= n) return at::arange(n, at::TensorOptions().dtype(at::kLong));
  auto exact = [k](const at::Tensor& v) { return std::get<1>(at::topk(v, k, 0, /*largest=*/true, /*sorted=*/false)); };
  constexpr int64_t kSample = int64_t{1} << 16;
  at::Tensor idx;
  if (n >= 4 * kSample) {
    const at::Tensor sample = a.slice(0, 0, n, n / kSample);  // a strided view, no copy
    const int64_t m = sample.numel();
    const double p = static_cast<double>(k) / static_cast<double>(n);
    // Sample elements to keep: 1.3x the expected count plus 4 standard deviations.
    const auto r = static_cast<int64_t>(std::ceil(1.3 * p * m + 4 * std::sqrt(p * m) + 16));
    if (r < m / 2) {
      const at::Tensor thr = std::get<0>(at::kthvalue(sample, m - r + 1));  // the r-th largest
      const at::Tensor cand = at::nonzero(a >= thr).view({-1});                 // ascending
      if (cand.numel() >= k) idx = cand.index_select(0, exact(a.index_select(0, cand)));
    }
  }
  if (!idx.defined()) idx = exact(a);
  return std::get<0>(at::sort(idx));
}

struct Planned {
  const std::string* name;
  at::Tensor t;     // CPU contiguous
  at::Tensor base;  // TOPK only: CPU contiguous
  v1::Encoding encoding;
  int64_t k = 0;    // TOPK
  uint64_t nbytes = 0;
};

}  // namespace

namespace {
uint64_t checksum_of(uLong crc, uint64_t size) {
  return (static_cast<uint64_t>(crc & 0xffffffffu) << 32) ^ size;
}
}  // namespace

uint64_t payload_checksum(std::string_view bytes) {
  return checksum_of(crc32_z(0L, reinterpret_cast<const Bytef*>(bytes.data()), bytes.size()), bytes.size());
}

void PayloadChecksum::update(std::string_view piece) {
  crc_ = crc32_z(crc_, reinterpret_cast<const Bytef*>(piece.data()), piece.size());
  size_ += piece.size();
}

uint64_t PayloadChecksum::value() const { return checksum_of(crc_, size_); }

EncodedPayload encode_state(const ModelState& s, const EncodeOptions& opt, const ModelState* base) {
  if (!v1::Encoding_IsValid(opt.encoding))
    throw std::invalid_argument("encode_state: unknown encoding " + std::to_string(opt.encoding));
  if (opt.encoding == v1::ENCODING_TOPK) {
    if (!base) throw std::invalid_argument("encode_state: ENCODING_TOPK needs a base state");
    if (!(opt.topk_fraction > 0 && opt.topk_fraction <= 1))
      throw std::invalid_argument("encode_state: topk_fraction must be in (0, 1], got " +
                                  std::to_string(opt.topk_fraction));
  }
  torch::NoGradGuard no_grad;
  std::unordered_map<std::string, const at::Tensor*> base_by_name;
  if (opt.encoding == v1::ENCODING_TOPK)
    for (const auto& e : base->entries()) base_by_name.emplace(e.name, &e.tensor);

  EncodedPayload out;
  std::vector<Planned> plan;
  plan.reserve(s.size());
  uint64_t total = 0;
  for (const auto& e : s.entries()) {
    const DTypeInfo* info = info_of(e.tensor.scalar_type());
    if (!info)
      throw std::invalid_argument("encode_state: tensor '" + e.name + "' has dtype " +
                                  std::string(c10::toString(e.tensor.scalar_type())) +
                                  ", which has no wire dtype (F32, F16, BF16, F64, I64, I32, I8, U8)");
    Planned p;
    p.name = &e.name;
    p.t = cpu_contiguous(e.tensor);
    const int64_t numel = p.t.numel();
    p.encoding = is_floating(p.t.scalar_type()) ? opt.encoding : v1::ENCODING_UNSPECIFIED;
    if (p.encoding == v1::ENCODING_TOPK) {
      auto it = base_by_name.find(e.name);
      if (it == base_by_name.end()) {
        p.encoding = v1::ENCODING_FP32;  // nothing to take a delta against
      } else {
        const at::Tensor& b = *it->second;
        if (b.sizes() != p.t.sizes() || b.scalar_type() != p.t.scalar_type())
          throw std::invalid_argument("encode_state: tensor '" + e.name + "' is " + shape_str(p.t.sizes()) + " " +
                                      std::string(c10::toString(p.t.scalar_type())) + " but the TOPK base has " +
                                      shape_str(b.sizes()) + " " + std::string(c10::toString(b.scalar_type())));
        if (numel > std::numeric_limits<int32_t>::max())
          throw std::invalid_argument("encode_state: tensor '" + e.name + "' has " + std::to_string(numel) +
                                      " elements, too many for TOPK's int32 indices");
        p.base = cpu_contiguous(b);
        p.k = topk_count(opt.topk_fraction, numel);
      }
    }
    p.nbytes = p.encoding == v1::ENCODING_TOPK
                   ? static_cast<uint64_t>(p.k) * 8
                   : static_cast<uint64_t>(numel) * wire_element_size(p.encoding, p.t.scalar_type());
    total += p.nbytes;

    v1::TensorHeader* h = out.manifest.add_tensors();
    h->set_name(e.name);
    h->set_dtype(info->wire);
    for (int64_t d : p.t.sizes()) h->add_shape(d);
    h->set_encoding(p.encoding);
    h->set_encoded_bytes(p.nbytes);
    if (p.encoding == v1::ENCODING_TOPK) h->set_nnz(static_cast<uint64_t>(p.k));
    plan.push_back(std::move(p));
  }

  // Every tensor verbatim and back to back in one buffer: the payload is that buffer.
  if (opt.share_buffer && !plan.empty() && total > 0) {
    bool contiguous = true;
    const char* next = static_cast<const char*>(plan[0].t.data_ptr());
    for (const Planned& p : plan) {
      const bool verbatim = p.encoding == v1::ENCODING_UNSPECIFIED ||
                            (p.encoding == v1::ENCODING_FP32 && p.t.scalar_type() == at::kFloat);
      contiguous = contiguous && verbatim && p.t.device().is_cpu() &&
                   (p.nbytes == 0 || static_cast<const char*>(p.t.data_ptr()) == next) &&
                   p.t.storage().is_alias_of(plan[0].t.storage());
      next += p.nbytes;
    }
    if (contiguous) {
      // A uint8 view of the storage from the first tensor's first byte: it keeps the buffer alive.
      const at::Tensor& first = plan[0].t;
      out.view_of = at::empty({0}, first.options().dtype(at::kByte))
                        .set_(first.storage(), first.storage_offset() * first.element_size(),
                              {static_cast<int64_t>(total)}, {1});
      out.manifest.set_total_bytes(total);
      out.manifest.set_checksum(payload_checksum(out.data()));
      return out;
    }
  }

  // One allocation. Verbatim tensors are appended (no zero-fill pass); converted ones grow the
  // string by their size and are written in place through a tensor view.
  out.bytes.reserve(total);
  for (size_t i = 0; i < plan.size(); ++i) {
    Planned& p = plan[i];
    const std::string& name = *p.name;
    const int64_t numel = p.t.numel();
    const at::Tensor flat = p.t.reshape({-1});
    const bool verbatim = p.encoding == v1::ENCODING_UNSPECIFIED ||
                          (p.encoding == v1::ENCODING_FP32 && p.t.scalar_type() == at::kFloat);
    if (verbatim) {
      if (p.nbytes) out.bytes.append(static_cast<const char*>(p.t.data_ptr()), p.nbytes);
      continue;
    }
    const size_t at_offset = out.bytes.size();
    out.bytes.resize(at_offset + p.nbytes);
    char* dst = out.bytes.data() + at_offset;
    switch (p.encoding) {
      case v1::ENCODING_FP32:
        out_view(dst, numel, at::kFloat).copy_(flat);
        break;
      case v1::ENCODING_FP16:
      case v1::ENCODING_BF16: {
        const bool fp16 = p.encoding == v1::ENCODING_FP16;
        at::Tensor v = out_view(dst, numel, fp16 ? at::kHalf : at::kBFloat16);
        v.copy_(flat);
        bool ok;
        if (flat.scalar_type() == at::kFloat || flat.scalar_type() == at::kDouble) {
          // One pass over the source: the conversion is monotonic, so if both extremes land
          // finite in the wire type, every value does.
          ok = true;
          if (numel > 0) {
            auto [mn, mx] = at::aminmax(flat);
            for (double x : {mn.item<double>(), mx.item<double>()}) {
              const float w = fp16 ? static_cast<float>(c10::Half(static_cast<float>(x)))
                                   : static_cast<float>(c10::BFloat16(static_cast<float>(x)));
              ok = ok && std::isfinite(x) && std::isfinite(w);
            }
          }
        } else {
          ok = all_finite(v);
        }
        if (!ok)
          throw std::invalid_argument("encode_state: tensor '" + name + "' has non-finite values" +
                                      (fp16 ? " or values beyond FP16's range (65504)" : "") +
                                      ", which " + encoding_name(p.encoding) + " cannot carry");
        break;
      }
      case v1::ENCODING_INT8: {
        if (numel == 0) break;
        const at::Tensor f = flat.to(at::kFloat);
        auto [mn, mx] = at::aminmax(f);
        const double amax = std::max(std::fabs(mn.item<double>()), std::fabs(mx.item<double>()));
        const float scale = static_cast<float>(amax / 127.0);
        if (!std::isfinite(amax) || !std::isfinite(scale))
          throw std::invalid_argument("encode_state: tensor '" + name +
                                      "' has non-finite values, which INT8 cannot carry");
        out.manifest.mutable_tensors(static_cast<int>(i))->set_scale(scale);
        if (scale == 0) {
          std::memset(dst, 0, p.nbytes);
        } else {
          out_view(dst, numel, at::kChar).copy_(at::div(f, scale).round_().clamp_(-127, 127));
        }
        break;
      }
      case v1::ENCODING_TOPK: {
        if (p.k == 0) break;
        const at::Tensor delta = flat.to(at::kFloat) - p.base.reshape({-1}).to(at::kFloat);
        if (!all_finite(delta))
          throw std::invalid_argument("encode_state: tensor '" + name +
                                      "' has a non-finite delta against the base, which TOPK cannot carry");
        const at::Tensor idx = topk_indices(delta.abs(), p.k);
        const at::Tensor values = delta.index_select(0, idx);
        out_view(dst, p.k, at::kInt).copy_(idx);
        out_view(dst + 4 * p.k, p.k, at::kFloat).copy_(values);
        break;
      }
      default:
        throw std::logic_error("encode_state: unhandled encoding");
    }
  }
  out.manifest.set_total_bytes(total);
  out.manifest.set_checksum(payload_checksum(out.bytes));
  return out;
}

namespace {

struct Item {
  const v1::TensorHeader* h;
  at::ScalarType type;
  std::vector<int64_t> shape;
  int64_t numel;
  uint64_t offset;
  const at::Tensor* base = nullptr;  // TOPK
};

std::string tensor_field(const std::string& name, const char* what) { return "tensor '" + name + "' " + what; }

}  // namespace

namespace {

// decode_state's body. `backing`, when defined, is a uint8 tensor over `bytes` that owns them:
// FP32 and raw tensors then become views of it (no copy) and the result aliases it when its
// floating tensors lie back to back (ModelState::share); otherwise every tensor is copied.
ModelState decode_impl(const v1::PayloadManifest& m, std::string_view bytes, const at::Tensor& backing,
                       const ModelState* expected, const ModelState* base, bool require_all,
                       std::optional<uint64_t> known_checksum) {
  if (m.total_bytes() != bytes.size())
    throw PayloadError("total_bytes", "payload: manifest total_bytes is " + std::to_string(m.total_bytes()) +
                                          " but " + std::to_string(bytes.size()) + " bytes were received");
  std::unordered_map<std::string, const at::Tensor*> expected_by_name, base_by_name;
  if (expected)
    for (const auto& e : expected->entries()) expected_by_name.emplace(e.name, &e.tensor);
  if (base)
    for (const auto& e : base->entries()) base_by_name.emplace(e.name, &e.tensor);

  // 1. The manifest on its own (and against expected/base): cheap, before touching the bytes.
  std::vector<Item> items;
  items.reserve(m.tensors_size());
  std::unordered_map<std::string, int> seen;
  uint64_t offset = 0;
  for (int i = 0; i < m.tensors_size(); ++i) {
    const v1::TensorHeader& h = m.tensors(i);
    const std::string& name = h.name();
    if (name.empty()) throw PayloadError("name", "payload: tensor #" + std::to_string(i) + " has an empty name");
    if (auto [it, fresh] = seen.emplace(name, i); !fresh)
      throw PayloadError("name", "payload: duplicate tensor name '" + name + "' (tensors #" +
                                     std::to_string(it->second) + " and #" + std::to_string(i) + ")");
    const DTypeInfo* info = info_of(static_cast<int>(h.dtype()));
    if (!info)
      throw PayloadError("dtype", "payload: tensor '" + name + "' has " +
                                      (h.dtype() == v1::DTYPE_UNSPECIFIED ? std::string("no dtype (DTYPE_UNSPECIFIED)")
                                                                          : dtype_name(h.dtype())));
    if (!v1::Encoding_IsValid(h.encoding()))
      throw PayloadError("encoding", "payload: tensor '" + name + "' has " + encoding_name(h.encoding()));
    Item it{&h, info->type, {}, 1, offset};
    if (h.shape_size() > 16)  // before the shape is copied or printed
      throw PayloadError(tensor_field(name, "shape"), "payload: tensor '" + name + "' has " +
                                                          std::to_string(h.shape_size()) + " dimensions (at most 16)");
    it.shape.assign(h.shape().begin(), h.shape().end());
    if (auto why = tensor_shape_problem(it.shape); !why.empty())
      throw PayloadError(tensor_field(name, "shape"),
                         "payload: tensor '" + name + "' shape " + shape_str(it.shape) + " has " + why);
    for (int64_t d : it.shape) it.numel *= d;
    if (expected) {
      auto e = expected_by_name.find(name);
      if (e == expected_by_name.end())
        throw PayloadError("name", "payload: tensor '" + name + "' is not in the expected state");
      const at::Tensor& want = *e->second;
      if (want.sizes() != at::IntArrayRef(it.shape))
        throw PayloadError(tensor_field(name, "shape"), "payload: tensor '" + name + "' has shape " + shape_str(it.shape) +
                                                            ", expected " + shape_str(want.sizes()));
      if (want.scalar_type() != it.type)
        throw PayloadError("dtype", "payload: tensor '" + name + "' has dtype " + info->name + ", expected " +
                                        std::string(c10::toString(want.scalar_type())));
    }
    const bool floating = is_floating(it.type);
    if (!floating && h.encoding() != v1::ENCODING_UNSPECIFIED)
      throw PayloadError("encoding", "payload: tensor '" + name + "' has integer dtype " + info->name +
                                         " but encoding " + encoding_name(h.encoding()) +
                                         "; integer tensors travel raw (ENCODING_UNSPECIFIED)");
    uint64_t want_bytes = static_cast<uint64_t>(it.numel) * wire_element_size(h.encoding(), it.type);
    if (h.encoding() == v1::ENCODING_INT8 && !(std::isfinite(h.scale()) && h.scale() >= 0))
      throw PayloadError("scale", "payload: tensor '" + name + "' has INT8 scale " + std::to_string(h.scale()) +
                                      ", expected a finite value >= 0");
    if (h.encoding() == v1::ENCODING_TOPK) {
      if (h.nnz() > static_cast<uint64_t>(it.numel))
        throw PayloadError("nnz", "payload: tensor '" + name + "' has TOPK nnz " + std::to_string(h.nnz()) +
                                      ", more than its " + std::to_string(it.numel) + " elements");
      if (it.numel > std::numeric_limits<int32_t>::max())
        throw PayloadError(tensor_field(name, "shape"), "payload: TOPK tensor '" + name + "' has " +
                                                            std::to_string(it.numel) +
                                                            " elements, beyond int32 indices");
      if (!base)
        throw PayloadError("encoding", "payload: tensor '" + name + "' is TOPK-encoded but no base state was given");
      auto b = base_by_name.find(name);
      if (b == base_by_name.end())
        throw PayloadError("name", "payload: TOPK tensor '" + name + "' is not in the base state");
      if (b->second->sizes() != at::IntArrayRef(it.shape))
        throw PayloadError(tensor_field(name, "shape"), "payload: TOPK tensor '" + name + "' has shape " +
                                                            shape_str(it.shape) + ", the base has " +
                                                            shape_str(b->second->sizes()));
      if (b->second->scalar_type() != it.type)
        throw PayloadError("dtype", "payload: TOPK tensor '" + name + "' has dtype " + info->name +
                                        ", the base has " + std::string(c10::toString(b->second->scalar_type())));
      it.base = b->second;
      want_bytes = h.nnz() * 8;
    }
    if (h.encoded_bytes() != want_bytes)
      throw PayloadError("encoded_bytes", "payload: tensor '" + name + "' (" + info->name + " " + shape_str(it.shape) +
                                              ", " + encoding_name(h.encoding()) + ") has encoded_bytes " +
                                              std::to_string(h.encoded_bytes()) + ", expected " +
                                              std::to_string(want_bytes));
    if (h.encoded_bytes() > m.total_bytes() - offset)
      throw PayloadError("total_bytes", "payload: the tensors up to '" + name + "' take more than total_bytes " +
                                            std::to_string(m.total_bytes()));
    offset += h.encoded_bytes();
    items.push_back(std::move(it));
  }
  if (offset != m.total_bytes())
    throw PayloadError("total_bytes", "payload: the tensors' encoded_bytes add up to " + std::to_string(offset) +
                                          " but total_bytes is " + std::to_string(m.total_bytes()));
  if (expected && require_all)
    for (const auto& e : expected->entries())
      if (!seen.count(e.name))
        throw PayloadError("name", "payload: tensor '" + e.name + "' of the expected state is missing");

  // 2. The bytes.
  const uint64_t sum = known_checksum ? *known_checksum : payload_checksum(bytes);
  if (sum != m.checksum()) {
    char buf[96];
    std::snprintf(buf, sizeof buf, "manifest says 0x%016llx, the bytes hash to 0x%016llx",
                  static_cast<unsigned long long>(m.checksum()), static_cast<unsigned long long>(sum));
    throw PayloadError("checksum", std::string("payload: checksum mismatch: ") + buf);
  }

  // 3. Decode: views over the bytes; the ModelState constructor makes the one copy (none when
  // the bytes are owned by `backing` and the tensors can stay views of it).
  torch::NoGradGuard no_grad;
  auto view = [&](const char* p, int64_t numel, at::ScalarType type) {
    const size_t es = c10::elementSize(type);
    const int64_t off = p - bytes.data();
    if (backing.defined() && off % static_cast<int64_t>(es) == 0 &&
        reinterpret_cast<uintptr_t>(bytes.data()) % es == 0)
      return backing.narrow(0, off, numel * static_cast<int64_t>(es)).view(type);
    return wire_view(p, numel, type);
  };
  std::vector<ModelState::Entry> entries;
  entries.reserve(items.size());
  for (const Item& it : items) {
    const v1::TensorHeader& h = *it.h;
    const std::string& name = h.name();
    const char* p = bytes.data() + it.offset;
    at::Tensor t;
    switch (h.encoding()) {
      case v1::ENCODING_UNSPECIFIED:
        t = view(p, it.numel, it.type);
        break;
      case v1::ENCODING_FP32:
        t = view(p, it.numel, at::kFloat);
        if (it.type != at::kFloat) t = t.to(it.type);
        break;
      case v1::ENCODING_FP16:
      case v1::ENCODING_BF16: {
        const at::ScalarType wt = h.encoding() == v1::ENCODING_FP16 ? at::kHalf : at::kBFloat16;
        t = wire_view(p, it.numel, wt);
        if (it.type != wt) t = t.to(it.type);
        if (!all_finite(t))
          throw PayloadError("values", "payload: tensor '" + name + "' (" + encoding_name(h.encoding()) +
                                           ") has non-finite values");
        break;
      }
      case v1::ENCODING_INT8: {
        const at::Tensor q = wire_view(p, it.numel, at::kChar);
        if (it.numel > 0) {
          auto [mn, mx] = at::aminmax(q);
          if (mn.item<int64_t>() < -127)
            throw PayloadError("values", "payload: tensor '" + name + "' has INT8 value " +
                                             std::to_string(mn.item<int64_t>()) + ", expected [-127, 127]");
        }
        t = q.to(at::kFloat).mul_(h.scale());
        if (it.type != at::kFloat) t = t.to(it.type);
        break;
      }
      case v1::ENCODING_TOPK: {
        const int64_t nnz = static_cast<int64_t>(h.nnz());
        const at::Tensor idx = wire_view(p, nnz, at::kInt);
        const at::Tensor vals = wire_view(p + 4 * nnz, nnz, at::kFloat);
        const int32_t* ix = idx.data_ptr<int32_t>();
        for (int64_t j = 0; j < nnz; ++j) {
          const bool bad = ix[j] < 0 || ix[j] >= it.numel;
          if (bad || (j > 0 && ix[j] <= ix[j - 1]))
            throw PayloadError("topk indices",
                               "payload: tensor '" + name + "' TOPK index #" + std::to_string(j) + " is " +
                                   std::to_string(ix[j]) +
                                   (bad ? ", out of range [0, " + std::to_string(it.numel) + ")"
                                        : ", not above the previous index " + std::to_string(ix[j - 1]) +
                                              " (indices must be strictly ascending)"));
        }
        if (!all_finite(vals))
          throw PayloadError("values", "payload: tensor '" + name + "' has non-finite TOPK values");
        at::Tensor acc = cpu_contiguous(*it.base).reshape({-1}).to(at::kFloat, /*non_blocking=*/false, /*copy=*/true);
        if (nnz > 0) acc.index_add_(0, idx.to(at::kLong), vals);
        t = acc.to(it.type);
        break;
      }
      default:
        throw std::logic_error("decode_state: unhandled encoding");
    }
    entries.push_back({name, t.view(it.shape)});
  }
  return backing.defined() ? ModelState::share(std::move(entries)) : ModelState(std::move(entries));
}

}  // namespace

ModelState decode_state(const v1::PayloadManifest& m, std::string_view bytes, const ModelState* expected,
                        const ModelState* base, bool require_all, std::optional<uint64_t> known_checksum) {
  return decode_impl(m, bytes, at::Tensor(), expected, base, require_all, known_checksum);
}

ModelState decode_state(const v1::PayloadManifest& m, std::string&& bytes, const ModelState* expected,
                        const ModelState* base, bool require_all, std::optional<uint64_t> known_checksum) {
  auto owned = std::make_shared<std::string>(std::move(bytes));
  const std::string_view view(*owned);
  // When the last tensor viewing the buffer is gone, the buffer goes back to the payload pool
  // for the next receive (already mapped: no page faults).
  at::Tensor backing = at::from_blob(
      owned->data(), {static_cast<int64_t>(owned->size())},
      [owned](void*) mutable {
        BufferPool::payloads().release(std::move(*owned));
        owned.reset();
      },
      at::TensorOptions().dtype(at::kByte));
  return decode_impl(m, view, backing, expected, base, require_all, known_checksum);
}

bool for_each_chunk(const EncodedPayload& p, v1::PayloadChunk* chunk, const std::function<bool()>& send) {
  *chunk->mutable_manifest() = p.manifest;
  if (!send()) return false;
  const std::string_view bytes = p.data();
  for (size_t off = 0; off < bytes.size(); off += kMaxChunkBytes) {
    const size_t n = std::min(kMaxChunkBytes, bytes.size() - off);
    chunk->set_data(bytes.data() + off, n);  // reuses the buffer of the previous chunk
    if (!send()) return false;
  }
  return true;
}

bool for_each_chunk(const EncodedPayload& p, const std::function<bool(const v1::PayloadChunk&)>& send) {
  v1::PayloadChunk chunk;
  return for_each_chunk(p, &chunk, [&] { return send(chunk); });
}

void PayloadAssembler::add(const v1::PayloadChunk& chunk) {
  if (taken_) throw PayloadError("chunk", "payload: chunk after the payload was complete and taken");
  switch (chunk.part_case()) {
    case v1::PayloadChunk::kManifest:
      if (has_manifest_) throw PayloadError("manifest", "payload: a second manifest arrived");
      if (chunk.manifest().total_bytes() > max_total_bytes_)
        throw PayloadError("total_bytes", "payload: manifest announces " +
                                              std::to_string(chunk.manifest().total_bytes()) +
                                              " bytes, more than the limit of " + std::to_string(max_total_bytes_));
      manifest_ = chunk.manifest();
      has_manifest_ = true;
      if (keep_bytes_) bytes_ = BufferPool::payloads().acquire(manifest_.total_bytes());
      return;
    case v1::PayloadChunk::kData: {
      if (!has_manifest_)
        throw PayloadError("manifest", "payload: a data chunk arrived before the manifest (the first chunk must be the manifest)");
      const std::string& d = chunk.data();
      if (d.size() > kMaxChunkBytes)
        throw PayloadError("chunk", "payload: data chunk of " + std::to_string(d.size()) + " bytes, limit is " +
                                        std::to_string(kMaxChunkBytes));
      if (d.size() > manifest_.total_bytes() - received_.size())
        throw PayloadError("total_bytes", "payload: received " + std::to_string(received_.size() + d.size()) +
                                              " bytes, more than the manifest's total_bytes " +
                                              std::to_string(manifest_.total_bytes()));
      if (keep_bytes_) bytes_.append(d);
      received_.update(d);
      return;
    }
    default:
      throw PayloadError("chunk", "payload: a chunk with neither manifest nor data");
  }
}

const v1::PayloadManifest& PayloadAssembler::manifest() const {
  if (!has_manifest_) throw PayloadError("manifest", "payload: no manifest received");
  return manifest_;
}

uint64_t PayloadAssembler::checksum() const { return received_.value(); }

std::string PayloadAssembler::take_bytes() {
  if (!has_manifest_) throw PayloadError("manifest", "payload: incomplete, no manifest received");
  if (taken_) throw PayloadError("chunk", "payload: bytes already taken");
  if (received_.size() != manifest_.total_bytes())
    throw PayloadError("total_bytes", "payload: incomplete, received " + std::to_string(received_.size()) + " of " +
                                          std::to_string(manifest_.total_bytes()) + " bytes");
  taken_ = true;
  return std::move(bytes_);
}

v1::Encoding parse_encoding(const std::string& s) {
  if (s == "fp32") return v1::ENCODING_FP32;
  if (s == "fp16") return v1::ENCODING_FP16;
  if (s == "bf16") return v1::ENCODING_BF16;
  if (s == "int8") return v1::ENCODING_INT8;
  if (s == "topk") return v1::ENCODING_TOPK;
  throw std::invalid_argument("update encoding '" + s + "' is unknown (fp32, fp16, bf16, int8, topk)");
}

void declaration_to_wire(const ModelDeclaration& d, v1::ModelDeclaration* out) {
  out->set_architecture(d.architecture);
  for (int64_t w : d.hidden) out->add_hidden(w);
  for (const auto& t : d.layout) {
    const DTypeInfo* info = info_of(t.dtype);
    if (!info) throw std::invalid_argument("model declaration: tensor '" + t.name + "' has a dtype the wire cannot carry");
    auto* h = out->add_layout();
    h->set_name(t.name);
    h->set_dtype(info->wire);
    for (int64_t s : t.shape) h->add_shape(s);
  }
}

ModelDeclaration declaration_from_wire(const v1::ModelDeclaration& in) {
  ModelDeclaration d;
  d.architecture = in.architecture();
  d.hidden.assign(in.hidden().begin(), in.hidden().end());
  for (const auto& h : in.layout()) {
    const DTypeInfo* info = info_of(static_cast<int>(h.dtype()));
    if (!info)
      throw std::invalid_argument("model declaration: tensor '" + h.name() + "' has " + dtype_name(h.dtype()));
    d.layout.push_back({h.name(), info->type, std::vector<int64_t>(h.shape().begin(), h.shape().end())});
  }
  d.validate();
  return d;
}

}  // namespace fl
