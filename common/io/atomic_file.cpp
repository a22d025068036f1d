#include "common/io/atomic_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <stdexcept>

namespace fl {
namespace {

// Unique per process and call, so two writers of the same path never share a temporary.
std::string temp_name(const std::string& path) {
  static std::atomic<unsigned long> counter{0};
  return path + ".tmp." + std::to_string(::getpid()) + "." + std::to_string(counter++);
}

}  // namespace

void write_file_atomically(const std::string& path, const std::function<void(const ChunkSink&)>& produce,
                           mode_t mode, bool exact_mode) {
  const std::string tmp = temp_name(path);
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
  if (fd < 0) throw std::runtime_error(path + ": cannot create '" + tmp + "': " + std::strerror(errno));
  auto fail = [&](const std::string& what) {
    ::close(fd);
    ::unlink(tmp.c_str());
    throw std::runtime_error(path + ": " + what);
  };
  if (exact_mode && ::fchmod(fd, mode) != 0) fail(std::string("cannot set its mode: ") + std::strerror(errno));
  const ChunkSink sink = [&](const void* data, std::size_t size) {
    const char* p = static_cast<const char*>(data);
    while (size > 0) {
      const ssize_t n = ::write(fd, p, size);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) throw std::runtime_error(std::string("write failed: ") + std::strerror(errno));
      p += n;
      size -= static_cast<std::size_t>(n);
    }
  };
  try {
    produce(sink);
  } catch (const std::exception& e) {
    fail(e.what());
  }
  if (::fsync(fd) != 0) fail(std::string("write failed: ") + std::strerror(errno));
  if (::close(fd) != 0) {
    const std::string err = std::strerror(errno);
    ::unlink(tmp.c_str());
    throw std::runtime_error(path + ": write failed: " + err);
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string err = std::strerror(errno);
    ::unlink(tmp.c_str());
    throw std::runtime_error(path + ": cannot rename '" + tmp + "' into place: " + err);
  }
  const auto dir = std::filesystem::path(path).parent_path();
  sync_directory(dir.empty() ? "." : dir.string());
}

void sync_directory(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) throw std::runtime_error(dir + ": cannot open the directory: " + std::strerror(errno));
  const int rc = ::fsync(fd);
  const std::string err = rc != 0 ? std::strerror(errno) : "";
  ::close(fd);
  if (rc != 0) throw std::runtime_error(dir + ": cannot fsync the directory: " + err);
}

void write_file_atomically(const std::string& path, const std::string& data, mode_t mode, bool exact_mode) {
  write_file_atomically(path, [&](const ChunkSink& out) { out(data.data(), data.size()); }, mode, exact_mode);
}

}  // namespace fl
