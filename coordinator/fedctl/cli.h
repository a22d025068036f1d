#pragma once
// What every fedctl subcommand shares: the exit-code contract, the chosen action, --json,
// and the output helpers (aligned tables for people, JSON for scripts).
#include <CLI/CLI.hpp>

#include <nlohmann/json.hpp>

#include <functional>
#include <iosfwd>
#include <stdexcept>
#include <string>
#include <vector>

namespace fl::fedctl {

// Exit codes (the contract scripts rely on).
enum ExitCode : int {
  kOk = 0,
  kError = 1,        // the coordinator (or the local PKI) reported an error
  kUsage = 2,        // bad flags or arguments
  kUnreachable = 3,  // cannot connect or authenticate
};

// An error with the exit code it maps to; main prints "fedctl: error: <what>" on stderr.
struct CommandError : std::runtime_error {
  CommandError(ExitCode c, const std::string& what) : std::runtime_error(what), code(c) {}
  ExitCode code;
};

struct Context {
  bool json = false;            // --json: one JSON document on stdout instead of tables
  std::function<int()> action;  // set by the parsed leaf subcommand's callback
};

// Registers `fn` as what runs when `sub` was given on the command line.
inline void on_run(CLI::App* sub, Context& ctx, std::function<int()> fn) {
  sub->callback([&ctx, fn = std::move(fn)] { ctx.action = fn; });
}

// Columns padded to their widest cell, a header line, two spaces between columns.
void print_table(std::ostream& out, const std::vector<std::string>& header,
                 const std::vector<std::vector<std::string>>& rows);
// "key: value" lines, keys padded to the longest.
void print_fields(std::ostream& out, const std::vector<std::pair<std::string, std::string>>& fields);
// Pretty JSON (2-space indent) and a newline.
void print_json(std::ostream& out, const nlohmann::ordered_json& j);

// Subcommand groups (each in its own file).
void add_pki_commands(CLI::App& app, Context& ctx);    // pki init|issue|revoke|list
void add_admin_commands(CLI::App& app, Context& ctx);  // status, clients, runs, rounds, model, audit
// model evaluate (local: a model file on CSV files); after add_admin_commands, which makes `model`.
void add_model_commands(CLI::App& app, Context& ctx);
void add_stats_commands(CLI::App& app, Context& ctx);  // stats pool (local: feature statistics files)

}  // namespace fl::fedctl
