#pragma once
// StreamGuard: the Federation service's streaming calls (uploads, downloads) that one client
// could hold open for nothing. Each client may have at most `uploads_per_client` uploads and
// `downloads_per_client` downloads open at once (one more is refused: RESOURCE_EXHAUSTED), and
// a watchdog thread cancels any stream idle longer than `idle_timeout` (no chunk read or
// written), so a stalled or slow-dripping client holds neither a server thread nor a temp file
// past it, round or no round. Thread-safe.
#include <grpcpp/server_context.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <thread>

namespace fl {

struct StreamGuardOptions {
  std::chrono::milliseconds idle_timeout{std::chrono::seconds(120)};
  int uploads_per_client = 1;    // a client has one task at a time
  int downloads_per_client = 2;  // a retry may overlap a download that is still winding down
};

class StreamGuard {
 public:
  using Options = StreamGuardOptions;
  enum class Kind { kUpload, kDownload };

  // One open stream, registered while it lives. Call touch() on every chunk.
  class Lease {
   public:
    Lease() = default;
    Lease(Lease&& o) noexcept : guard_(o.guard_), id_(o.id_) { o.guard_ = nullptr; }
    Lease& operator=(Lease&&) = delete;
    Lease(const Lease&) = delete;
    ~Lease();
    explicit operator bool() const { return guard_ != nullptr; }
    void touch();
    // Whether the watchdog cancelled this stream for idling.
    bool timed_out() const;

   private:
    friend class StreamGuard;
    Lease(StreamGuard* g, uint64_t id) : guard_(g), id_(id) {}
    StreamGuard* guard_ = nullptr;
    uint64_t id_ = 0;
  };

  explicit StreamGuard(Options options = Options());
  ~StreamGuard();
  StreamGuard(const StreamGuard&) = delete;
  StreamGuard& operator=(const StreamGuard&) = delete;

  // An empty Lease when `client` has as many streams of this kind open as it may.
  Lease open(grpc::ServerContext* ctx, const std::string& client, Kind kind);
  int open_streams() const;
  const Options& options() const { return options_; }

 private:
  struct Entry {
    grpc::ServerContext* ctx;
    std::string client;
    Kind kind;
    std::chrono::steady_clock::time_point last_activity;
    bool timed_out = false;
  };
  void watch();

  Options options_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::map<uint64_t, Entry> entries_;
  uint64_t next_id_ = 1;
  bool stopping_ = false;
  std::thread watchdog_;
};

}  // namespace fl
