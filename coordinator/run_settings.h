#pragma once
// A run's settings as stored with the run (RunRecord::config_json) and as `fedctl runs create`
// sends them: a JSON object whose keys override the coordinator's own configuration.
#include <nlohmann/json.hpp>

#include "coordinator/coordinator.h"

namespace fl {

// The settings that define a run (and that a resumed run must not change), as JSON.
nlohmann::ordered_json run_settings_json(const CoordinatorConfig& c);

// Applies `settings` (an object; keys as run_settings_json writes them) over `c`. Unknown
// keys, wrong types and out-of-range values throw std::invalid_argument naming the key and
// the value; so does a strategy that does not accept its parameters or an unknown model.
void apply_run_settings(CoordinatorConfig& c, const nlohmann::json& settings);

}  // namespace fl
