#pragma once
// Process-wide logging setup: every program logs through spdlog's default logger to
// stderr, so stdout stays free for machine-readable output.

#include <string>

namespace fl {

// Makes spdlog's default logger write to stderr as
// "[2024-01-31 12:00:00.123] [program] [info] message" at the given level.
// level: trace|debug|info|warn|error|off (case-insensitive); anything else throws
// std::invalid_argument naming the bad level and the allowed ones.
void init_logging(const std::string& level, const std::string& program);

// True when stderr is a terminal, i.e. progress bars and colours are worth drawing.
bool stderr_is_terminal();

}  // namespace fl
