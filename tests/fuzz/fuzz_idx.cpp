// An IDX file (plain or gzip) as read_idx reads it: errors are std::runtime_error naming the file.
#include <cstdint>
#include <stdexcept>

#include "common/data/idx.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string& path = fl::fuzz::write_scratch(".idx", data, size);
  try {
    fl::read_idx(path);
  } catch (const std::runtime_error&) {
  }
  return 0;
}
