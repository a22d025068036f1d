#include "common/data/idx.h"

#include <torch/torch.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <stdexcept>
#include <vector>

namespace fl {
namespace {

[[noreturn]] void fail(const std::string& path, const std::string& msg) {
  throw std::runtime_error(path + ": " + msg);
}

// gzopen reads plain files transparently, so one reader serves both forms.
class GzReader {
 public:
  explicit GzReader(const std::string& path) : path_(path) {
    if (!std::filesystem::exists(path)) fail(path, "no such file");
    f_ = gzopen(path.c_str(), "rb");
    if (!f_) fail(path, std::string("cannot open: ") + std::strerror(errno));
    gzbuffer(f_, 1 << 20);
  }
  ~GzReader() {
    if (f_) gzclose(f_);
  }
  GzReader(const GzReader&) = delete;
  GzReader& operator=(const GzReader&) = delete;

  // Reads up to n bytes; returns how many were read (fewer only at end of file).
  uint64_t read(void* dst, uint64_t n) {
    auto* p = static_cast<char*>(dst);
    uint64_t done = 0;
    while (done < n) {
      const unsigned chunk = static_cast<unsigned>(std::min<uint64_t>(n - done, 1u << 30));
      const int got = gzread(f_, p + done, chunk);
      if (got < 0) fail(path_, "gzip data is corrupt: " + gz_message());
      if (got == 0) {
        // gzread reports a cut-off gzip stream as a plain end of file; gzerror tells them apart.
        int code = Z_OK;
        gzerror(f_, &code);
        if (code != Z_OK) fail(path_, "gzip stream is truncated or corrupt: " + gz_message());
        break;
      }
      done += static_cast<uint64_t>(got);
    }
    return done;
  }

  // gzerror's text starts with the path, which our message already names.
  std::string gz_message() {
    int code = Z_OK;
    const char* msg = gzerror(f_, &code);
    std::string m = msg ? msg : "";
    if (m.rfind(path_ + ": ", 0) == 0) m.erase(0, path_.size() + 2);
    return m.empty() ? "read error" : m;
  }

  // Counts the bytes left until end of file.
  uint64_t remaining() {
    std::vector<char> buf(1 << 16);
    uint64_t total = 0;
    for (uint64_t got; (got = read(buf.data(), buf.size())) > 0;) total += got;
    return total;
  }

 private:
  std::string path_;
  gzFile f_ = nullptr;
};

struct IdxType {
  unsigned char code;
  at::ScalarType dtype;
  const char* name;
};
constexpr IdxType kTypes[] = {{0x08, at::kByte, "uint8"},  {0x09, at::kChar, "int8"},
                              {0x0B, at::kShort, "int16"}, {0x0C, at::kInt, "int32"},
                              {0x0D, at::kFloat, "float32"}, {0x0E, at::kDouble, "float64"}};

std::string find_file(const std::string& dir, const std::string& base) {
  namespace fs = std::filesystem;
  for (const auto& name : {base, base + ".gz"})
    if (fs::exists(fs::path(dir) / name)) return (fs::path(dir) / name).string();
  throw std::runtime_error(dir + ": Fashion-MNIST file not found: neither " + base + " nor " + base + ".gz");
}

}  // namespace

at::Tensor read_idx(const std::string& path) {
  GzReader in(path);
  unsigned char magic[4];
  const uint64_t got = in.read(magic, 4);
  if (got < 4) fail(path, "truncated: expected a 4-byte IDX magic number, found " + std::to_string(got) + " bytes");
  if (magic[0] != 0 || magic[1] != 0)
    fail(path, "bad magic: an IDX file starts with 0x00 0x00, found 0x" + [&] {
      char buf[16];
      std::snprintf(buf, sizeof buf, "%02x 0x%02x", magic[0], magic[1]);
      return std::string(buf);
    }());
  const IdxType* type = nullptr;
  for (const auto& t : kTypes)
    if (t.code == magic[2]) type = &t;
  if (!type) fail(path, "unknown IDX data type code " + std::to_string(magic[2]));
  const int ndims = magic[3];
  if (ndims < 1 || ndims > 8) fail(path, "invalid number of dimensions " + std::to_string(ndims) + " (must be 1..8)");

  unsigned char dimbuf[4 * 8];
  const uint64_t dimbytes = in.read(dimbuf, 4u * ndims);
  if (dimbytes < 4u * ndims)
    fail(path, "truncated: expected " + std::to_string(4 * ndims) + " bytes of dimensions, found " +
                   std::to_string(dimbytes));
  // The product is checked before each multiplication (8 dimensions of up to 2^32 - 1 would wrap).
  constexpr uint64_t kMaxBytes = uint64_t{1} << 34;  // 16 GiB: more than any data set read here
  const uint64_t itemsize = c10::elementSize(type->dtype);
  std::vector<int64_t> dims(ndims);
  uint64_t numel = 1;
  for (int i = 0; i < ndims; ++i) {
    const unsigned char* b = dimbuf + 4 * i;
    dims[i] = (int64_t{b[0]} << 24) | (int64_t{b[1]} << 16) | (int64_t{b[2]} << 8) | int64_t{b[3]};
    const uint64_t d = static_cast<uint64_t>(dims[i]);
    if (d != 0 && numel > kMaxBytes / itemsize / d) {
      std::string shape;
      for (int j = 0; j < ndims; ++j) {
        const unsigned char* c = dimbuf + 4 * j;
        shape += (j ? " x " : "") + std::to_string((uint64_t{c[0]} << 24) | (uint64_t{c[1]} << 16) |
                                                   (uint64_t{c[2]} << 8) | uint64_t{c[3]});
      }
      fail(path, "dimensions " + shape + " are implausibly large (over 16 GiB of " + type->name + ")");
    }
    numel *= d;
  }

  const uint64_t expected = numel * itemsize;
  // Read into a buffer that grows with what the file holds, not with what its header claims.
  std::string data;
  while (data.size() < expected) {
    const uint64_t want = std::min<uint64_t>(expected - data.size(), uint64_t{64} << 20);
    const size_t at = data.size();
    data.resize(at + want);
    const uint64_t got = in.read(&data[at], want);
    data.resize(at + got);
    if (got < want) break;
  }
  if (data.size() < expected)
    fail(path, "truncated: expected " + std::to_string(expected) + " bytes of data, found " +
                   std::to_string(data.size()));
  at::Tensor t = at::empty(dims, at::TensorOptions().dtype(type->dtype));
  if (expected > 0) std::memcpy(t.data_ptr(), data.data(), expected);
  data = std::string();
  const uint64_t extra = in.remaining();
  if (extra > 0)
    fail(path, "trailing bytes: " + std::to_string(extra) + " bytes after the expected " + std::to_string(expected) +
                   " bytes of data");

  // IDX data is big-endian: reverse the bytes of each element.
  if (itemsize > 1 && t.numel() > 0)
    t = t.view(at::kByte).view({t.numel(), static_cast<int64_t>(itemsize)}).flip({1}).contiguous().view(type->dtype).view(dims);
  return t;
}

TensorDataset load_fashion_mnist(const std::string& dir, const std::string& split, int64_t limit) {
  std::string prefix;
  if (split == "train") prefix = "train";
  else if (split == "test") prefix = "t10k";
  else throw std::invalid_argument("load_fashion_mnist: split must be \"train\" or \"test\", got \"" + split + "\"");

  const std::string img_path = find_file(dir, prefix + "-images-idx3-ubyte");
  const std::string lbl_path = find_file(dir, prefix + "-labels-idx1-ubyte");
  at::Tensor images = read_idx(img_path);
  at::Tensor labels = read_idx(lbl_path);
  if (images.scalar_type() != at::kByte || images.dim() != 3 || images.size(1) != 28 || images.size(2) != 28)
    fail(img_path, "expected uint8 images of shape [N, 28, 28], got " + std::string(c10::toString(images.scalar_type())) +
                       " " + c10::str(images.sizes()));
  if (labels.scalar_type() != at::kByte || labels.dim() != 1)
    fail(lbl_path, "expected uint8 labels of shape [N], got " + std::string(c10::toString(labels.scalar_type())) + " " +
                       c10::str(labels.sizes()));
  if (images.size(0) != labels.size(0))
    fail(dir, "Fashion-MNIST " + split + ": " + std::to_string(images.size(0)) + " images but " +
                  std::to_string(labels.size(0)) + " labels");
  if (labels.numel() > 0 && labels.max().item<int64_t>() >= 10)
    fail(lbl_path, "label " + std::to_string(labels.max().item<int64_t>()) + " is outside [0, 10)");

  if (limit >= 0 && limit < images.size(0)) {
    images = images.narrow(0, 0, limit);
    labels = labels.narrow(0, 0, limit);
  }
  constexpr double kMean = 0.2860, kStd = 0.3530;
  at::Tensor x = images.to(at::kFloat).div_(255.0).sub_(kMean).div_(kStd).unsqueeze(1).contiguous();
  // Pixels in [0, 1]: attacks clamp to that box and measure their radius in pixels.
  return TensorDataset{x, labels.to(at::kLong), 10, FeatureDomain{-kMean / kStd, (1 - kMean) / kStd, 1 / kStd}};
}

std::string default_fashion_mnist_dir() {
  const char* env = std::getenv("FASHION_MNIST_DIR");
  return env && *env ? std::string(env) : std::string("/usr/share/datasets/fashion-mnist");
}

}  // namespace fl
