#pragma once
// Process-wide logging setup: every program logs through spdlog's default logger to
// stderr, so stdout stays free for machine-readable output.
//
// Lines about a round carry what they are about: the run and round (set process-wide by the
// program that drives them) and the client (process-wide in fedclient; per thread in fedcoord,
// for the duration of one client's request). In text they appear as "[run=r round=3
// client=hospital-1] " before the message; in JSON as the fields "run", "round", "client".
#include <string>

namespace fl {

// Makes spdlog's default logger write to stderr at the given level, as
//   text: "[2024-01-31 12:00:00.123] [program] [info] [run=r round=3] message"
//   json: one object per line, {"time":"2024-01-31T12:00:00.123Z","level":"info",
//         "program":"fedcoord","run":"r","round":3,"client":"hospital-1","msg":"..."}
//         (UTC; run/round/client only when set; every string JSON-escaped, invalid UTF-8
//         replaced), for log shippers.
// level: trace|debug|info|warn|error|off (case-insensitive); format: text|json. Anything else
// throws std::invalid_argument naming the bad value and the allowed ones.
void init_logging(const std::string& level, const std::string& program, const std::string& format = "text");

// The run and round the process works on now ("" / 0: none).
void set_log_run(const std::string& run);
void set_log_round(int round);
// The client the process is (fedclient): lines carry it unless a LogClientScope says otherwise.
void set_log_client(const std::string& client);

// The client this thread serves (fedcoord's request handlers, once the caller is known); a
// LogClientScope around the handler forgets it again, so a pooled thread's next request starts
// with none.
void set_thread_log_client(const std::string& client);
class LogClientScope {
 public:
  LogClientScope();
  ~LogClientScope();
  LogClientScope(const LogClientScope&) = delete;
  LogClientScope& operator=(const LogClientScope&) = delete;
};

// True when stderr is a terminal, i.e. progress bars and colours are worth drawing.
bool stderr_is_terminal();

}  // namespace fl
