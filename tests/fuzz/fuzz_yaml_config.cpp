// A --config YAML file as fedsim and fedcoord read it: the run's settings (every RunSpec field,
// strategy parameters included) through CLI11 and YamlConfig, then RunOptions::finish()'s
// validation. Errors are CLI::Error or std::invalid_argument naming the key; nothing else.
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/config/yaml_config.h"
#include "common/run/run_spec.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string& path = fl::fuzz::write_scratch(".yaml", data, size);
  CLI::App app{"fuzz"};
  fl::RunSpec spec;
  fl::RunOptions options(app, spec, fl::kRunScopeAll);
  fl::add_config_option(app);
  try {
    std::vector<std::string> args = {path, "--config"};  // CLI11 takes them in reverse
    app.parse(args);
    options.finish();
  } catch (const CLI::Error&) {
  } catch (const std::invalid_argument&) {
  }
  return 0;
}
