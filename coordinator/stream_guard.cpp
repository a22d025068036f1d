#include "coordinator/stream_guard.h"

#include <spdlog/spdlog.h>

#include <algorithm>

#include "common/util/text.h"

namespace fl {

using Clock = std::chrono::steady_clock;

StreamGuard::StreamGuard(Options options) : options_(options) {
  watchdog_ = std::thread([this] { watch(); });
}

StreamGuard::~StreamGuard() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  watchdog_.join();
}

StreamGuard::Lease StreamGuard::open(grpc::ServerContext* ctx, const std::string& client, Kind kind) {
  std::lock_guard<std::mutex> lock(mu_);
  const int allowed = kind == Kind::kUpload ? options_.uploads_per_client : options_.downloads_per_client;
  int open = 0;
  for (const auto& kv : entries_) open += kv.second.client == client && kv.second.kind == kind;
  if (open >= allowed) return Lease();
  const uint64_t id = next_id_++;
  entries_[id] = Entry{ctx, client, kind, Clock::now(), false};
  return Lease(this, id);
}

int StreamGuard::open_streams() const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int>(entries_.size());
}

void StreamGuard::watch() {
  // Checks four times per timeout: a stream is cancelled between 1 and 1.25 timeouts idle.
  const auto period = std::max(options_.idle_timeout / 4, std::chrono::milliseconds(10));
  std::unique_lock<std::mutex> lock(mu_);
  while (!stopping_) {
    cv_.wait_for(lock, period);
    const auto now = Clock::now();
    for (auto& [id, e] : entries_) {
      if (e.timed_out || now - e.last_activity <= options_.idle_timeout) continue;
      e.timed_out = true;
      spdlog::warn("cancelling an idle {} of client {} (nothing for {} ms)",
                   e.kind == Kind::kUpload ? "upload" : "download", printable(e.client),
                   options_.idle_timeout.count());
      e.ctx->TryCancel();  // the blocked Read()/Write() returns false
    }
  }
}

StreamGuard::Lease::~Lease() {
  if (!guard_) return;
  std::lock_guard<std::mutex> lock(guard_->mu_);
  guard_->entries_.erase(id_);
}

void StreamGuard::Lease::touch() {
  if (!guard_) return;
  std::lock_guard<std::mutex> lock(guard_->mu_);
  auto it = guard_->entries_.find(id_);
  if (it != guard_->entries_.end()) it->second.last_activity = Clock::now();
}

bool StreamGuard::Lease::timed_out() const {
  if (!guard_) return false;
  std::lock_guard<std::mutex> lock(guard_->mu_);
  auto it = guard_->entries_.find(id_);
  return it != guard_->entries_.end() && it->second.timed_out;
}

}  // namespace fl
