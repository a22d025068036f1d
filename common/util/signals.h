#pragma once
// SIGINT/SIGTERM as a flag: programs poll it and shut down cleanly (no work inside a handler).
#include <atomic>

namespace fl {

// Installs the handlers once and returns the flag they set.
const std::atomic<bool>& install_stop_signals();

}  // namespace fl
