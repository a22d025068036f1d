#pragma once
// YAML configuration files for CLI11 programs.
//
// Every program declares its options once with CLI11 and calls add_config_option();
// `--config run.yaml` then accepts any long flag as a YAML key:
//
//   rounds: 50                  # same as --rounds 50
//   local_epochs: 2             # '_' or '-' both work: --local-epochs 2
//   layers: [64, 32]            # a sequence gives several values: --layers 64 32
//   verbose: true               # flags take true/false
//   serve:                      # a nested mapping holds a subcommand's options
//     port: 7000
//
// Flags given on the command line win over the file (CLI11 only fills options from the
// file that the command line left empty).
//
// Errors:
//  * unknown keys, a YAML syntax error, a non-mapping top level, a null value or a
//    nested list: CLI::ConfigError whose message names the file and the key (or line);
//  * bad values (`rounds: abc`, `rounds: -3` with CLI::PositiveNumber, `strategy: foo`
//    with CLI::IsMember): CLI11 itself converts and validates values from the file
//    exactly as it does values from flags, and throws CLI::ConversionError or
//    CLI::ValidationError whose message starts with the option name ("--rounds: ...").

#include <CLI/CLI.hpp>

#include <functional>
#include <istream>
#include <string>
#include <vector>

namespace fl {

class YamlConfig : public CLI::Config {
  public:
    // app is used to reject unknown keys and to name the file in errors; it must outlive
    // this formatter (it does when installed on that app through add_config_option).
    explicit YamlConfig(const CLI::App* app) : app_(app) {}

    // Writes the options' current values (and defaults if default_also) as YAML.
    std::string to_config(const CLI::App* app, bool default_also, bool write_description,
                          std::string prefix) const override;

    std::vector<CLI::ConfigItem> from_config(std::istream& input) const override;

  private:
    std::string source_name() const;

    const CLI::App* app_;
};

// Installs YamlConfig on app and adds `--config FILE.yaml`.
void add_config_option(CLI::App& app);

// --log-level and --log-format, the same in every program (init_logging's values).
void add_logging_options(CLI::App& app, std::string& level, std::string& format);

// Parses argv and runs body. Returns 0 after --help, 2 after any usage/config error
// (message printed to stderr), 1 if body throws (prints "error: <what>"), else body().
int run_cli(CLI::App& app, int argc, char** argv, std::function<int()> body);

}  // namespace fl
