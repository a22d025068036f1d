#pragma once
// A file's bytes, or "" when it is missing or unreadable (tests poll for files that may not exist
// yet, such as a checkpoint's LATEST).
#include <fstream>
#include <sstream>
#include <string>

namespace fl::testing_util {

inline std::string file_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream out;
  out << in.rdbuf();
  return out.str();
}

}  // namespace fl::testing_util
