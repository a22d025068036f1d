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

// A round's exchanges with a client are its phases: "fit" (local training), "evaluate"
// (federated evaluation of the new global model) and the further exchanges of a multi-exchange
// round ("fit-2", "fit-3", ...; Strategy::configure_fit_exchange). A phase name is 1 to 32
// characters of [a-z0-9-]: it appears in task ids, store keys and file names.
constexpr const char* kFitPhase = "fit";
constexpr const char* kEvaluatePhase = "evaluate";
bool valid_phase_name(const std::string& phase);
// "fit" for exchange 1 of a round, "fit-<k>" for exchange k > 1.
std::string fit_phase_name(int exchange);

struct ClientTask {
  int round = 0;
  int client_id = 0;
  std::string phase = kFitPhase;              // fit | evaluate | fit-<k> (see valid_phase_name)
  ModelState model;                           // the server's model, or the part of it it shares
  std::map<std::string, ModelState> tensors;  // extra payloads (control variates, ...)
  std::map<std::string, double> config;       // per-task parameters (mu, lr, ...)
  uint64_t seed = 0;                          // the client's randomness for this task
  // How a transport encodes the result's floating tensors ("fp32", "int8", ...: RunSpec's
  // update_encoding names); empty: the run's update_encoding.
  std::string encoding;
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
// contain '/'). unpack_payload reverses it; an entry without a '/' prefix is an error. Both
// share their input's storage where they can (a model alone, packed, is not copied: 147 MB
// fewer per task for a 37M-parameter model): treat their outputs as read-only.
ModelState pack_payload(const ModelState& model, const std::map<std::string, ModelState>& extras);
void unpack_payload(const ModelState& packed, ModelState& model, std::map<std::string, ModelState>& extras);

}  // namespace fl
