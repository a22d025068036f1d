// fedctl: the admin CLI. Local PKI management (pki ...) and the coordinator's Admin service
// over mutual TLS with an admin-role certificate (status, clients, runs, rounds, model, audit).
//
// Exit codes: 0 ok, 1 error reported by the coordinator (or the local PKI), 2 usage error,
// 3 cannot connect or authenticate.
#include <iostream>
#include <functional>

#include "coordinator/fedctl/cli.h"

int main(int argc, char** argv) {
  using namespace fl::fedctl;
  Context ctx;
  CLI::App app{"fedctl: administer a federation (PKI, runs, rounds, clients, models, audit)"};
  app.require_subcommand(1);
  app.add_flag("--json", ctx.json, "print one JSON document instead of tables");
  add_pki_commands(app, ctx);
  add_admin_commands(app, ctx);
  add_model_commands(app, ctx);
  add_stats_commands(app, ctx);
  // Let the global --json come after the subcommand too ("fedctl runs list --json").
  std::function<void(CLI::App*)> fall = [&](CLI::App* a) {
    for (auto* sub : a->get_subcommands({})) {
      sub->fallthrough();
      fall(sub);
    }
  };
  fall(&app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? kOk : kUsage;
  }
  if (!ctx.action) {
    std::cerr << "fedctl: error: no command given (see --help)\n";
    return kUsage;
  }
  try {
    return ctx.action();
  } catch (const CommandError& e) {
    std::cerr << "fedctl: error: " << e.what() << "\n";
    return e.code;
  } catch (const std::exception& e) {
    std::cerr << "fedctl: error: " << e.what() << "\n";
    return kError;
  }
}
