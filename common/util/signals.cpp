#include "common/util/signals.h"

#include <csignal>

namespace fl {
namespace {

std::atomic<bool> g_stop{false};

extern "C" void on_stop_signal(int) { g_stop.store(true); }  // async-signal-safe: lock-free store

}  // namespace

const std::atomic<bool>& install_stop_signals() {
  static_assert(std::atomic<bool>::is_always_lock_free, "needed inside a signal handler");
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  return g_stop;
}

}  // namespace fl
