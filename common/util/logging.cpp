#include "common/util/logging.h"

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <memory>
#include <stdexcept>
#include <utility>

namespace fl {
namespace {

// spdlog::level::from_str maps unknown names to "off", which would silently hide all
// logs on a typo; hence our own table.
constexpr std::pair<const char*, spdlog::level::level_enum> kLevels[] = {
    {"trace", spdlog::level::trace}, {"debug", spdlog::level::debug},
    {"info", spdlog::level::info},   {"warn", spdlog::level::warn},
    {"error", spdlog::level::err},   {"off", spdlog::level::off},
};

spdlog::level::level_enum parse_level(const std::string& level) {
    std::string lower = level;
    std::transform(lower.begin(), lower.end(), lower.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    std::string allowed;
    for (const auto& [name, value] : kLevels) {
        if (lower == name) return value;
        allowed += allowed.empty() ? name : std::string("|") + name;
    }
    throw std::invalid_argument("unknown log level '" + level + "' (allowed: " + allowed + ")");
}

}  // namespace

void init_logging(const std::string& level, const std::string& program) {
    const auto lvl = parse_level(level);  // validate before touching the current logger
    // The colour sink drops colour codes by itself when stderr is not a terminal.
    auto sink = std::make_shared<spdlog::sinks::stderr_color_sink_mt>();
    auto logger = std::make_shared<spdlog::logger>(program, std::move(sink));
    logger->set_pattern("[%Y-%m-%d %H:%M:%S.%e] [%n] [%^%l%$] %v");
    logger->set_level(lvl);
    logger->flush_on(spdlog::level::warn);
    spdlog::set_default_logger(std::move(logger));
    spdlog::set_level(lvl);  // also loggers registered later by other modules
}

bool stderr_is_terminal() { return ::isatty(::fileno(stderr)) != 0; }

}  // namespace fl
