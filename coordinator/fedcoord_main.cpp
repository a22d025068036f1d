// fedcoord: the coordinator service (issue: fedcoord + fedclient).
// Not implemented yet: this entry point only answers --help and exits non-zero.
#include <CLI/CLI.hpp>

#include <iostream>

int main(int argc, char** argv) {
  CLI::App app{"fedcoord: the coordinator service (issue: fedcoord + fedclient).\nNOT IMPLEMENTED YET: this build only prints this help; use fedsim."};
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  std::cerr << "fedcoord: not implemented yet (see --help)\n";
  return 3;
}
