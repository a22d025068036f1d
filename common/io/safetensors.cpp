#include "common/io/safetensors.h"

#include <torch/torch.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <set>
#include <stdexcept>
#include <utility>
#include <vector>

#include "common/io/atomic_file.h"

namespace fl {
namespace {

// The format stores little-endian data; we copy tensor bytes verbatim.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "safetensors I/O assumes a little-endian host");

using ordered_json = nlohmann::ordered_json;

constexpr uint64_t kMaxHeaderBytes = 100ull * 1000 * 1000;  // same bound as the reference reader
constexpr const char* kMetadataKey = "__metadata__";

struct DtypeInfo {
  const char* name;
  at::ScalarType type;
};

constexpr DtypeInfo kDtypes[] = {
    {"F64", at::kDouble}, {"F32", at::kFloat}, {"F16", at::kHalf}, {"BF16", at::kBFloat16},
    {"I64", at::kLong},   {"I32", at::kInt},   {"I16", at::kShort}, {"I8", at::kChar},
    {"U8", at::kByte},    {"BOOL", at::kBool},
};

const char* dtype_name(at::ScalarType t, const std::string& tensor) {
  for (const auto& d : kDtypes)
    if (d.type == t) return d.name;
  throw std::invalid_argument("safetensors: tensor '" + tensor + "' has unsupported dtype " +
                              std::string(c10::toString(t)));
}

bool dtype_from_name(const std::string& name, at::ScalarType* out) {
  for (const auto& d : kDtypes)
    if (name == d.name) {
      *out = d.type;
      return true;
    }
  return false;
}

// Header (with its length prefix and padding) plus the CPU-contiguous tensors to append.
struct Prepared {
  std::string head;
  std::vector<at::Tensor> tensors;
};

Prepared prepare(const ModelState& s, const std::map<std::string, std::string>& metadata) {
  Prepared p;
  ordered_json header = ordered_json::object();
  if (!metadata.empty()) {
    ordered_json md = ordered_json::object();
    for (const auto& [k, v] : metadata) md[k] = v;
    header[kMetadataKey] = std::move(md);
  }
  uint64_t offset = 0;
  for (const auto& e : s.entries()) {
    if (e.name == kMetadataKey)
      throw std::invalid_argument("safetensors: a tensor may not be named '__metadata__'");
    const char* dtype = dtype_name(e.tensor.scalar_type(), e.name);
    at::Tensor t = e.tensor.to(at::kCPU).contiguous();
    const uint64_t n = static_cast<uint64_t>(t.numel()) * t.element_size();
    ordered_json entry = ordered_json::object();
    entry["dtype"] = dtype;
    entry["shape"] = t.sizes().vec();
    entry["data_offsets"] = {offset, offset + n};
    header[e.name] = std::move(entry);
    offset += n;
    p.tensors.push_back(std::move(t));
  }
  std::string json;
  try {
    json = header.dump();
  } catch (const nlohmann::json::exception& ex) {
    // dump() rejects invalid UTF-8 in names or metadata.
    throw std::invalid_argument(std::string("safetensors: cannot encode header: ") + ex.what());
  }
  // Pad so that 8 + N is a multiple of 8 and the data buffer starts aligned.
  json.append((8 - json.size() % 8) % 8, ' ');
  const uint64_t n = json.size();
  p.head.resize(8);
  for (int i = 0; i < 8; ++i) p.head[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  p.head += json;
  return p;
}

struct Parsed {
  std::string name;
  at::ScalarType dtype;
  std::vector<int64_t> shape;
  uint64_t begin, end;
};

[[noreturn]] void fail(const std::string& what, const std::string& msg) {
  throw std::runtime_error(what + ": " + msg);
}

}  // namespace

std::string to_safetensors_bytes(const ModelState& s, const std::map<std::string, std::string>& metadata) {
  Prepared p = prepare(s, metadata);
  std::string out = std::move(p.head);
  for (const auto& t : p.tensors)
    if (t.numel() > 0) out.append(static_cast<const char*>(t.data_ptr()), t.numel() * t.element_size());
  return out;
}

void write_safetensors(const std::string& path, const ModelState& s,
                       const std::map<std::string, std::string>& metadata) {
  const Prepared p = prepare(s, metadata);
  // Chunk by chunk: a large model is never copied into one buffer.
  write_file_atomically(path, [&](const ChunkSink& out) {
    out(p.head.data(), p.head.size());
    for (const auto& t : p.tensors)
      if (t.numel() > 0) out(t.data_ptr(), t.numel() * t.element_size());
  });
}

ModelState read_safetensors(const std::string& path, std::map<std::string, std::string>* metadata) {
  std::ifstream f(path, std::ios::binary);
  if (!f) {
    if (!std::filesystem::exists(path)) throw std::runtime_error(path + ": no such file");
    throw std::runtime_error(path + ": cannot open for reading: " + std::strerror(errno));
  }
  std::string bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  if (f.bad()) throw std::runtime_error(path + ": read error");
  return from_safetensors_bytes(bytes, metadata, path);
}

ModelState from_safetensors_bytes(const std::string& bytes, std::map<std::string, std::string>* metadata,
                                  const std::string& what) {
  if (bytes.size() < 8)
    fail(what, "too short: expected at least 8 bytes for the header length, found " +
                   std::to_string(bytes.size()));
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(bytes[i]);
  if (n > kMaxHeaderBytes)
    fail(what, "header length " + std::to_string(n) + " is too large (limit " +
                   std::to_string(kMaxHeaderBytes) + " bytes)");
  if (n > bytes.size() - 8)
    fail(what, "header length " + std::to_string(n) + " exceeds the file size (" +
                   std::to_string(bytes.size() - 8) + " bytes after the length prefix)");

  // Duplicate keys are legal JSON but nlohmann keeps only one of them, so catch them while
  // parsing (depth 1 = keys of the top-level object).
  std::set<std::string> seen;
  std::string duplicate;
  auto cb = [&](int depth, ordered_json::parse_event_t ev, ordered_json& parsed) {
    if (depth == 1 && ev == ordered_json::parse_event_t::key && parsed.is_string()) {
      const auto& k = parsed.get_ref<const std::string&>();
      if (!seen.insert(k).second && duplicate.empty()) duplicate = k;
    }
    return true;
  };
  ordered_json header;  // ordered: zero-size tensors sharing an offset keep the file's order
  try {
    header = ordered_json::parse(bytes.begin() + 8, bytes.begin() + 8 + n, cb);
  } catch (const nlohmann::json::exception& ex) {
    fail(what, std::string("invalid JSON header: ") + ex.what());
  }
  if (!duplicate.empty()) fail(what, "duplicate tensor name '" + duplicate + "' in header");
  if (!header.is_object()) fail(what, std::string("header is not a JSON object (it is ") + header.type_name() + ")");

  const uint64_t data_size = bytes.size() - 8 - n;
  std::vector<Parsed> tensors;
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const auto& v = it.value();
    if (name == kMetadataKey) {
      if (!v.is_object()) fail(what, "__metadata__ must be an object of strings");
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string()) fail(what, "__metadata__ value for '" + m.key() + "' is not a string");
        if (metadata) (*metadata)[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    const std::string where = "tensor '" + name + "': ";
    if (!v.is_object()) fail(what, where + "entry is not an object");
    for (const char* field : {"dtype", "shape", "data_offsets"})
      if (!v.contains(field)) fail(what, where + "missing " + field);
    Parsed p;
    p.name = name;
    if (!v["dtype"].is_string()) fail(what, where + "dtype is not a string");
    const auto dt = v["dtype"].get<std::string>();
    if (!dtype_from_name(dt, &p.dtype)) fail(what, where + "unknown dtype '" + dt + "'");
    const auto& shape = v["shape"];
    if (!shape.is_array()) fail(what, where + "shape is not an array");
    uint64_t numel = 1;
    for (const auto& d : shape) {
      if (d.is_number_integer() && !d.is_number_unsigned())
        fail(what, where + "negative dimension " + d.dump() + " in shape " + shape.dump());
      if (!d.is_number_unsigned() || d.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX))
        fail(what, where + "invalid dimension " + d.dump() + " in shape " + shape.dump());
      const uint64_t dim = d.get<uint64_t>();
      if (__builtin_mul_overflow(numel, dim, &numel)) fail(what, where + "shape " + shape.dump() + " overflows");
      p.shape.push_back(static_cast<int64_t>(dim));
    }
    const auto& off = v["data_offsets"];
    if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() || !off[1].is_number_unsigned())
      fail(what, where + "data_offsets must be two non-negative integers, got " + off.dump());
    p.begin = off[0].get<uint64_t>();
    p.end = off[1].get<uint64_t>();
    if (p.end < p.begin)
      fail(what, where + "data_offsets end " + std::to_string(p.end) + " < begin " + std::to_string(p.begin));
    uint64_t nbytes = 0;
    if (__builtin_mul_overflow(numel, static_cast<uint64_t>(c10::elementSize(p.dtype)), &nbytes))
      fail(what, where + "shape " + shape.dump() + " overflows");
    if (p.end - p.begin != nbytes)
      fail(what, where + "data_offsets size " + std::to_string(p.end - p.begin) + " does not match shape " +
                     shape.dump() + " x " + dt + " (" + std::to_string(nbytes) + " bytes)");
    if (p.end > data_size)
      fail(what, where + "data_offsets [" + std::to_string(p.begin) + ", " + std::to_string(p.end) +
                     "] beyond the data buffer (" + std::to_string(data_size) + " bytes)");
    tensors.push_back(std::move(p));
  }

  // The spec requires the tensors to cover the data buffer exactly: no overlap, no holes.
  std::stable_sort(tensors.begin(), tensors.end(), [](const Parsed& a, const Parsed& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t pos = 0;
  const Parsed* prev = nullptr;
  for (const auto& p : tensors) {
    if (p.begin < pos)
      fail(what, "tensor '" + p.name + "' overlaps tensor '" + prev->name + "' in the data buffer (begins at " +
                     std::to_string(p.begin) + ", previous ends at " + std::to_string(pos) + ")");
    if (p.begin > pos)
      fail(what, "data buffer is not contiguous: hole of " + std::to_string(p.begin - pos) + " bytes at offset " +
                     std::to_string(pos) + " before tensor '" + p.name + "'");
    pos = p.end;
    prev = &p;
  }
  if (pos != data_size)
    fail(what, "data buffer is not contiguous: " + std::to_string(data_size - pos) +
                   " trailing bytes not covered by any tensor (offset " + std::to_string(pos) + ")");

  const char* data = bytes.data() + 8 + n;
  std::vector<ModelState::Entry> entries;
  entries.reserve(tensors.size());
  for (const auto& p : tensors) {
    at::Tensor t = at::empty(p.shape, at::TensorOptions().dtype(p.dtype));
    if (p.end > p.begin) std::memcpy(t.data_ptr(), data + p.begin, p.end - p.begin);
    entries.push_back({p.name, std::move(t)});
  }
  return ModelState(std::move(entries));
}

}  // namespace fl
