#include "coordinator/run_settings.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "common/engine/round_engine.h"
#include "common/models/model.h"
#include "strategies/registry.h"

namespace fl {
namespace {

using json = nlohmann::json;

[[noreturn]] void bad(const std::string& key, const json& v, const std::string& want) {
  throw std::invalid_argument("run setting '" + key + "' = " + v.dump() + ": " + want);
}

double number(const std::string& key, const json& v, double lo, double hi, bool lo_open = false) {
  if (!v.is_number()) bad(key, v, "must be a number");
  const double d = v.get<double>();
  if (!std::isfinite(d) || d < lo || d > hi || (lo_open && d == lo))
    bad(key, v, "must be in " + std::string(lo_open ? "(" : "[") + json(lo).dump() + ", " + json(hi).dump() + "]");
  return d;
}

int64_t integer(const std::string& key, const json& v, int64_t lo, int64_t hi) {
  if (!v.is_number_integer()) bad(key, v, "must be an integer");
  const int64_t i = v.get<int64_t>();
  if (i < lo || i > hi) bad(key, v, "must be in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
  return i;
}

std::string one_of(const std::string& key, const json& v, const std::vector<std::string>& allowed) {
  if (!v.is_string()) bad(key, v, "must be a string");
  const auto s = v.get<std::string>();
  if (std::find(allowed.begin(), allowed.end(), s) == allowed.end()) {
    std::string list;
    for (const auto& a : allowed) list += (list.empty() ? "" : ", ") + a;
    bad(key, v, "must be one of " + list);
  }
  return s;
}

std::vector<int64_t> positive_ints(const std::string& key, const json& v) {
  if (!v.is_array() || v.empty()) bad(key, v, "must be a non-empty array of positive integers");
  std::vector<int64_t> out;
  for (const auto& e : v) out.push_back(integer(key, e, 1, int64_t{1} << 31));
  return out;
}

}  // namespace

nlohmann::ordered_json run_settings_json(const CoordinatorConfig& c) {
  nlohmann::ordered_json j;
  j["run_id"] = c.run_id;
  j["strategy"] = c.strategy;
  j["strategy_params"] = strategy_params_from_flags(c.strategy, c.strategy_params, c.mu);
  j["model"] = c.model;
  j["input_shape"] = c.input_shape;
  j["num_classes"] = c.num_classes;
  j["rounds"] = c.rounds;
  j["fraction"] = c.fraction;
  j["min_clients"] = c.min_clients;
  j["workflow"] = c.workflow;
  j["local_epochs"] = c.local_epochs;
  j["local_steps"] = c.local_steps;
  j["batch_size"] = c.batch_size;
  j["optimizer"] = c.optimizer;
  j["lr"] = c.lr;
  j["momentum"] = c.momentum;
  j["weight_decay"] = c.weight_decay;
  j["update_encoding"] = c.update_encoding;
  j["seed"] = c.seed;
  return j;
}

void apply_run_settings(CoordinatorConfig& c, const json& s) {
  if (!s.is_object()) throw std::invalid_argument("run settings must be a JSON object, got " + s.dump());
  for (const auto& [key, v] : s.items()) {
    if (key == "run_id") {
      if (!v.is_string() || v.get<std::string>().empty()) bad(key, v, "must be a non-empty string");
      c.run_id = v.get<std::string>();
    } else if (key == "strategy") {
      c.strategy = one_of(key, v, registered_strategies());
    } else if (key == "strategy_params") {
      if (!v.is_object()) bad(key, v, "must be an object of numbers");
      c.strategy_params.clear();
      for (const auto& [pk, pv] : v.items()) {
        if (!pv.is_number()) bad(key + "." + pk, pv, "must be a number");
        c.strategy_params.push_back(pk + "=" + pv.dump());
      }
    } else if (key == "model") {
      c.model = one_of(key, v, registered_models());
    } else if (key == "input_shape") {
      c.input_shape = positive_ints(key, v);
    } else if (key == "num_classes") {
      c.num_classes = integer(key, v, 2, 1 << 20);
    } else if (key == "rounds") {
      c.rounds = static_cast<int>(integer(key, v, 1, 1000000));
    } else if (key == "fraction") {
      c.fraction = number(key, v, 0, 1, /*lo_open=*/true);
    } else if (key == "min_clients") {
      c.min_clients = static_cast<int>(integer(key, v, 1, 1000000));
    } else if (key == "workflow") {
      c.workflow = one_of(key, v, workflow_names());
    } else if (key == "local_epochs") {
      c.local_epochs = integer(key, v, 0, 100000);
    } else if (key == "local_steps") {
      c.local_steps = integer(key, v, 0, int64_t{1} << 40);
    } else if (key == "batch_size") {
      c.batch_size = integer(key, v, 1, 1 << 24);
    } else if (key == "optimizer") {
      c.optimizer = one_of(key, v, {"sgd", "adam"});
    } else if (key == "lr") {
      c.lr = number(key, v, 0, 1e3, /*lo_open=*/true);
    } else if (key == "momentum") {
      c.momentum = number(key, v, 0, 0.999);
    } else if (key == "weight_decay") {
      c.weight_decay = number(key, v, 0, 1e3);
    } else if (key == "update_encoding") {
      c.update_encoding = one_of(key, v, {"fp32", "fp16", "bf16", "int8", "topk"});
    } else if (key == "seed") {
      c.seed = static_cast<uint64_t>(integer(key, v, 0, std::numeric_limits<int64_t>::max()));
    } else {
      throw std::invalid_argument("unknown run setting '" + key +
                                  "' (known: strategy, strategy_params, model, input_shape, num_classes, rounds, "
                                  "fraction, min_clients, workflow, local_epochs, local_steps, batch_size, optimizer, lr, "
                                  "momentum, weight_decay, update_encoding, seed)");
    }
  }
  if (c.local_epochs == 0 && c.local_steps == 0)
    throw std::invalid_argument("run settings: local_epochs and local_steps are both 0 (nothing to train)");
  // The strategy must accept its parameters now, not when the run starts.
  try {
    create_strategy(c.strategy, strategy_params_from_flags(c.strategy, c.strategy_params, c.mu));
  } catch (const std::exception& e) {
    throw std::invalid_argument(std::string("run settings: strategy '") + c.strategy + "': " + e.what());
  }
}

}  // namespace fl
