#include "common/util/logging.h"

#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
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

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

spdlog::level::level_enum parse_level(const std::string& level) {
  const std::string l = lower(level);
  std::string allowed;
  for (const auto& [name, value] : kLevels) {
    if (l == name) return value;
    allowed += allowed.empty() ? name : std::string("|") + name;
  }
  throw std::invalid_argument("unknown log level '" + level + "' (allowed: " + allowed + ")");
}

// What the lines are about (logging.h).
struct Context {
  std::mutex mu;
  std::string run, client;
  std::atomic<int> round{0};
};
Context& context() {
  static Context* c = new Context();  // outlives every logger, also at exit
  return *c;
}
thread_local bool t_has_client = false;
thread_local std::string t_client;

struct Snapshot {
  std::string run, client;
  int round = 0;
};
Snapshot snapshot() {
  Context& c = context();
  Snapshot s;
  {
    std::lock_guard<std::mutex> lock(c.mu);
    s.run = c.run;
    s.client = c.client;
  }
  s.round = c.round.load(std::memory_order_relaxed);
  if (t_has_client) s.client = t_client;
  return s;
}

// "%*" in the text pattern: "[run=r round=3 client=c] ", or nothing when no context is set.
class ContextFlag : public spdlog::custom_flag_formatter {
 public:
  void format(const spdlog::details::log_msg&, const std::tm&, spdlog::memory_buf_t& dest) override {
    const Snapshot s = snapshot();
    std::string out;
    if (!s.run.empty()) out += "run=" + s.run;
    if (s.round > 0) out += (out.empty() ? "" : " ") + std::string("round=") + std::to_string(s.round);
    if (!s.client.empty()) out += (out.empty() ? "" : " ") + std::string("client=") + s.client;
    if (out.empty()) return;
    out = "[" + out + "] ";
    dest.append(out.data(), out.data() + out.size());
  }
  std::unique_ptr<custom_flag_formatter> clone() const override { return std::make_unique<ContextFlag>(); }
};

std::string json_string(const std::string& s) {
  return nlohmann::json(s).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

// One JSON object per line.
class JsonFormatter : public spdlog::formatter {
 public:
  void format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) override {
    using namespace std::chrono;
    const auto t = msg.time;
    const std::time_t secs = system_clock::to_time_t(t);
    const auto ms = duration_cast<milliseconds>(t.time_since_epoch()).count() % 1000;
    std::tm tm{};
    gmtime_r(&secs, &tm);
    char when[96];  // room for any int the compiler can imagine (-Wformat-truncation)
    std::snprintf(when, sizeof when, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
                  tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, static_cast<int>(ms));
    const auto level = spdlog::level::to_string_view(msg.level);
    const Snapshot s = snapshot();
    std::string out = std::string("{\"time\":\"") + when + "\",\"level\":\"" + std::string(level.data(), level.size()) +
                      "\",\"program\":" + json_string(std::string(msg.logger_name.data(), msg.logger_name.size()));
    if (!s.run.empty()) out += ",\"run\":" + json_string(s.run);
    if (s.round > 0) out += ",\"round\":" + std::to_string(s.round);
    if (!s.client.empty()) out += ",\"client\":" + json_string(s.client);
    out += ",\"msg\":" + json_string(std::string(msg.payload.data(), msg.payload.size())) + "}\n";
    dest.append(out.data(), out.data() + out.size());
  }
  std::unique_ptr<spdlog::formatter> clone() const override { return std::make_unique<JsonFormatter>(); }
};

}  // namespace

void init_logging(const std::string& level, const std::string& program, const std::string& format) {
  const auto lvl = parse_level(level);  // validate before touching the current logger
  const std::string fmt = lower(format);
  if (fmt != "text" && fmt != "json")
    throw std::invalid_argument("unknown log format '" + format + "' (allowed: text|json)");
  // The colour sink drops colour codes by itself when stderr is not a terminal.
  auto sink = std::make_shared<spdlog::sinks::stderr_color_sink_mt>();
  if (fmt == "json") sink->set_color_mode(spdlog::color_mode::never);
  auto logger = std::make_shared<spdlog::logger>(program, std::move(sink));
  if (fmt == "json") {
    logger->set_formatter(std::make_unique<JsonFormatter>());
  } else {
    auto f = std::make_unique<spdlog::pattern_formatter>();
    f->add_flag<ContextFlag>('*').set_pattern("[%Y-%m-%d %H:%M:%S.%e] [%n] [%^%l%$] %*%v");
    logger->set_formatter(std::move(f));
  }
  logger->set_level(lvl);
  logger->flush_on(spdlog::level::warn);
  spdlog::set_default_logger(std::move(logger));
  spdlog::set_level(lvl);  // also loggers registered later by other modules
}

void set_log_run(const std::string& run) {
  std::lock_guard<std::mutex> lock(context().mu);
  context().run = run;
}

void set_log_round(int round) { context().round.store(round, std::memory_order_relaxed); }

void set_log_client(const std::string& client) {
  std::lock_guard<std::mutex> lock(context().mu);
  context().client = client;
}

LogClientScope::LogClientScope() {
  t_has_client = false;
  t_client.clear();
}
LogClientScope::~LogClientScope() {
  t_has_client = false;
  t_client.clear();
}
void set_thread_log_client(const std::string& client) {
  t_has_client = true;
  t_client = client;
}

bool stderr_is_terminal() { return ::isatty(::fileno(stderr)) != 0; }

}  // namespace fl
