#include "common/net/buffer_pool.h"

#include <algorithm>

namespace fl {

std::string BufferPool::acquire(size_t capacity) {
  if (capacity >= kMinRecycledBytes) {
    std::lock_guard<std::mutex> lock(mu_);
    auto best = idle_.end();
    for (auto it = idle_.begin(); it != idle_.end(); ++it)
      if (it->capacity() >= capacity && it->capacity() / kMaxOversize <= capacity &&
          (best == idle_.end() || it->capacity() < best->capacity()))
        best = it;
    if (best != idle_.end()) {
      std::string out = std::move(*best);
      idle_.erase(best);
      idle_bytes_ -= out.capacity();
      return out;
    }
  }
  std::string out;
  out.reserve(capacity);
  return out;
}

void BufferPool::release(std::string&& buffer) {
  std::string taken = std::move(buffer);
  if (taken.capacity() < kMinRecycledBytes) return;
  taken.clear();  // keeps the capacity (and the pages behind it)
  std::lock_guard<std::mutex> lock(mu_);
  idle_bytes_ += taken.capacity();
  idle_.push_back(std::move(taken));
  trim_locked();
}

void BufferPool::trim_locked() {
  if (idle_bytes_ <= max_idle_bytes_) return;
  // Keep the largest buffers: they are the expensive ones to fault in again.
  std::sort(idle_.begin(), idle_.end(), [](const std::string& a, const std::string& b) {
    return a.capacity() > b.capacity();
  });
  while (idle_bytes_ > max_idle_bytes_ && !idle_.empty()) {  // the smallest go first
    idle_bytes_ -= idle_.back().capacity();
    idle_.pop_back();
  }
}

size_t BufferPool::idle_bytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  return idle_bytes_;
}

size_t BufferPool::idle_buffers() const {
  std::lock_guard<std::mutex> lock(mu_);
  return idle_.size();
}

size_t BufferPool::max_idle_bytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  return max_idle_bytes_;
}

void BufferPool::set_max_idle_bytes(size_t bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  max_idle_bytes_ = bytes;
  trim_locked();
}

void BufferPool::release_idle() {
  std::vector<std::string> freed;
  {
    std::lock_guard<std::mutex> lock(mu_);
    freed.swap(idle_);
    idle_bytes_ = 0;
  }
}

BufferPool& BufferPool::payloads() {
  // Never destroyed: decoded tensors may hand their buffer back during static destruction.
  static BufferPool* pool = new BufferPool;
  return *pool;
}

}  // namespace fl
