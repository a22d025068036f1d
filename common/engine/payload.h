#pragma once
// What travels between the round engine and a client, whatever the transport: typed payloads,
// not always "a model" (CreamFL sends representations, SCAFFOLD control variates, secure
// aggregation several phases of keys and masked inputs).
#include <cstdint>
#include <map>
#include <string>

#include "common/core/model_state.h"

namespace fl {

using Metrics = std::map<std::string, double>;

struct ClientTask {
  int round = 0;
  int client_id = 0;
  std::string phase = "fit";                  // fit | evaluate (more phases later)
  ModelState model;                           // the server's model, or the part of it it shares
  std::map<std::string, ModelState> tensors;  // extra payloads (control variates, ...)
  std::map<std::string, double> config;       // per-task parameters (mu, lr, ...)
  uint64_t seed = 0;                          // the client's randomness for this task
};

struct ClientResult {
  int round = 0;
  int client_id = 0;
  bool ok = true;
  std::string error;                          // why, when !ok
  ModelState model;                           // weights or a delta, as the strategy defines
  std::map<std::string, ModelState> tensors;
  int64_t num_examples = 0;                   // the weight of this result in aggregation
  Metrics metrics;
};

}  // namespace fl

namespace fl {

// A task's or result's model and extra tensors as ONE flat state, for transports that ship a
// single payload: model entries become "model/<name>", extras "<key>/<name>" (keys must not
// contain '/'). unpack_payload reverses it; an entry without a '/' prefix is an error. Its
// outputs share `packed`'s storage where they can (no copy): treat them as read-only.
ModelState pack_payload(const ModelState& model, const std::map<std::string, ModelState>& extras);
void unpack_payload(const ModelState& packed, ModelState& model, std::map<std::string, ModelState>& extras);

}  // namespace fl
