#pragma once
// Reading and writing a ModelState in the safetensors format
// (https://github.com/huggingface/safetensors): an 8-byte little-endian header length N,
// N bytes of JSON header (padded with spaces so that the data starts 8-byte aligned), then
// the raw little-endian tensor bytes, laid out back to back.
#include <map>
#include <string>

#include "common/core/model_state.h"

namespace fl {

// Writes the tensors (moved to CPU, made contiguous) in the state's order, atomically
// (write_file_atomically): a crash never leaves a half-written file.
void write_safetensors(const std::string& path, const ModelState& s,
                       const std::map<std::string, std::string>& metadata = {});
std::string to_safetensors_bytes(const ModelState& s,
                                 const std::map<std::string, std::string>& metadata = {});

// Reads every tensor (CPU), ordered by position in the data buffer, so files written by
// write_safetensors round-trip in order. The "__metadata__" map goes to `metadata` if given.
// Any malformed input throws std::runtime_error naming `path` / `what` and the problem.
ModelState read_safetensors(const std::string& path,
                            std::map<std::string, std::string>* metadata = nullptr);
ModelState from_safetensors_bytes(const std::string& bytes,
                                  std::map<std::string, std::string>* metadata = nullptr,
                                  const std::string& what = "buffer");

}  // namespace fl
