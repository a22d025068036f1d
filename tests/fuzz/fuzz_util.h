#pragma once
// Shared by the libFuzzer targets: the file readers take a path, so their input goes to a
// per-process file in /dev/shm (or /tmp) first.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

namespace fl::fuzz {

inline std::string scratch_file(const char* suffix) {
  const char* dir = std::filesystem::is_directory("/dev/shm") ? "/dev/shm" : "/tmp";
  return std::string(dir) + "/fl-fuzz-" + std::to_string(::getpid()) + suffix;
}

inline const std::string& write_scratch(const char* suffix, const uint8_t* data, size_t size) {
  static const std::string path = scratch_file(suffix);
  std::ofstream(path, std::ios::binary | std::ios::trunc).write(reinterpret_cast<const char*>(data),
                                                               static_cast<std::streamsize>(size));
  return path;
}

}  // namespace fl::fuzz
