// The upload path from the wire: a stream of PayloadChunk messages (each length-prefixed in
// the input) into the PayloadAssembler, then decode_state against an expected model and a base
// (TOPK deltas). Anything but a PayloadError (or a clean decode) is a finding.
#include <google/protobuf/stubs/logging.h>
#include <torch/torch.h>

#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <string>

#include "common/net/codec.h"

namespace {

const fl::ModelState& expected() {
  static const fl::ModelState s({{"fc.weight", torch::zeros({4, 3})}, {"fc.bias", torch::zeros({4})},
                                 {"bn.num_batches_tracked", torch::zeros({}, torch::kLong)}});
  return s;
}

// The input format: [u16 big-endian length][PayloadChunk]...
std::string framed(const fl::EncodedPayload& p) {
  std::string out;
  fl::for_each_chunk(p, [&](const fl::v1::PayloadChunk& c) {
    const std::string b = c.SerializeAsString();
    out.push_back(static_cast<char>(b.size() >> 8));
    out.push_back(static_cast<char>(b.size() & 0xff));
    out += b;
    return true;
  });
  return out;
}

}  // namespace

// FL_FUZZ_WRITE_SEEDS=DIR: writes the seed corpus (one valid upload per encoding) and exits.
extern "C" int LLVMFuzzerInitialize(int*, char***) {
  google::protobuf::SetLogHandler(nullptr);  // invalid UTF-8 in a name is a failed parse, not news
  const char* dir = std::getenv("FL_FUZZ_WRITE_SEEDS");
  if (!dir) return 0;
  fl::ModelState s({{"fc.weight", torch::linspace(-1, 1, 12).view({4, 3})}, {"fc.bias", torch::ones({4})},
                    {"bn.num_batches_tracked", torch::tensor(int64_t{3})}});
  for (const char* enc : {"fp32", "fp16", "bf16", "int8", "topk"}) {
    fl::EncodeOptions o;
    o.encoding = fl::parse_encoding(enc);
    o.topk_fraction = 0.5;
    const auto p = fl::encode_state(s, o, &expected());
    std::ofstream(std::string(dir) + "/" + enc + ".bin", std::ios::binary) << framed(p);
  }
  std::exit(0);
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fl::PayloadAssembler assembler(1 << 20);
  try {
    size_t at = 0;
    while (at + 2 <= size) {  // [u16 length][PayloadChunk bytes]...
      const size_t n = std::min<size_t>(static_cast<size_t>(data[at]) << 8 | data[at + 1], size - at - 2);
      fl::v1::PayloadChunk chunk;
      if (!chunk.ParseFromArray(data + at + 2, static_cast<int>(n))) return 0;
      at += 2 + n;
      assembler.add(chunk);
    }
    if (!assembler.complete()) return 0;
    const fl::v1::PayloadManifest manifest = assembler.manifest();
    std::string bytes = assembler.take_bytes();
    fl::decode_state(manifest, std::string_view(bytes), &expected(), &expected());
    fl::decode_state(manifest, std::move(bytes), nullptr, &expected(), false);
  } catch (const fl::PayloadError&) {
  }
  return 0;
}
