#pragma once
// BufferPool: recycles the large buffers that payloads are received into.
//
// A fresh buffer of a large update (147 MB for a 37M-parameter fp32 model) is mapped by the
// kernel page by page on first touch: on the 2-core build machine that is ~80 ms of a ~260 ms
// upload, before a byte of real work. A buffer that has held a payload before is already
// mapped, so the PayloadAssembler takes one from here and the decoded update, whose fp32
// tensors are views of the buffer, gives it back when the last of them is gone (end of the
// round). Idle buffers are capped in total bytes; past the cap they are freed.
#include <cstddef>
#include <mutex>
#include <string>
#include <vector>

namespace fl {

class BufferPool {
 public:
  // Buffers below this capacity are not worth keeping (malloc serves them from its heap).
  static constexpr size_t kMinRecycledBytes = size_t{1} << 20;
  // A request is not served a buffer more than this many times its size (a small payload would
  // otherwise pin a large buffer for as long as its update lives).
  static constexpr size_t kMaxOversize = 4;
  // The process-wide pool's default cap on idle bytes.
  static constexpr size_t kDefaultMaxIdleBytes = size_t{1} << 30;

  explicit BufferPool(size_t max_idle_bytes = kDefaultMaxIdleBytes) : max_idle_bytes_(max_idle_bytes) {}
  BufferPool(const BufferPool&) = delete;
  BufferPool& operator=(const BufferPool&) = delete;

  // An empty string whose capacity is >= `capacity`: the smallest idle buffer that fits (for
  // requests of at least kMinRecycledBytes, within kMaxOversize), else a new one (reserved, not
  // touched).
  std::string acquire(size_t capacity);
  // Takes `buffer` back for a later acquire() (cleared, capacity kept) when it is large enough
  // and the idle total stays within the cap; otherwise frees it. The biggest idle buffers are
  // the ones kept first when the cap forces a choice.
  void release(std::string&& buffer);

  size_t idle_bytes() const;
  size_t idle_buffers() const;
  size_t max_idle_bytes() const;
  void set_max_idle_bytes(size_t bytes);  // frees idle buffers beyond the new cap
  void release_idle();                    // frees every idle buffer (the cap stays)

  // The pool payload receive buffers come from and go back to.
  static BufferPool& payloads();

 private:
  void trim_locked();
  mutable std::mutex mu_;
  size_t max_idle_bytes_;
  size_t idle_bytes_ = 0;
  std::vector<std::string> idle_;
};

}  // namespace fl
