#pragma once
// This process's memory as the kernel counts it (Linux /proc/self/status): what fedcoord logs
// after each round, so that growth across rounds shows in its log.
#include <cstdint>
#include <fstream>
#include <string>

namespace fl {

struct ProcessMemory {
  int64_t rss_bytes = -1;   // resident now (VmRSS); -1 when unknown
  int64_t peak_bytes = -1;  // the most resident so far (VmHWM)
};

inline ProcessMemory process_memory() {
  ProcessMemory m;
  std::ifstream in("/proc/self/status");
  for (std::string line; std::getline(in, line);) {
    auto kb = [&](const char* key) -> int64_t {
      const std::string k(key);
      if (line.compare(0, k.size(), k) != 0) return -1;
      return std::stoll(line.substr(k.size())) * 1024;  // "VmRSS:   123456 kB"
    };
    if (auto v = kb("VmRSS:"); v >= 0) m.rss_bytes = v;
    if (auto v = kb("VmHWM:"); v >= 0) m.peak_bytes = v;
  }
  return m;
}

}  // namespace fl
