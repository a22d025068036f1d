// fedctl's Admin-service commands (placeholder).
#include "coordinator/fedctl/cli.h"

namespace fl::fedctl {

void add_admin_commands(CLI::App& app, Context& ctx) { (void)app; (void)ctx; }

}  // namespace fl::fedctl
