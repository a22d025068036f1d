// fedctl pki init|issue|revoke|list (placeholder until the PKI library lands).
#include "coordinator/fedctl/cli.h"

namespace fl::fedctl {

void add_pki_commands(CLI::App& app, Context& ctx) { (void)app; (void)ctx; }

}  // namespace fl::fedctl
