#pragma once
// Helpers the strategy library shares: which entries of a state are parameters, normalisation
// statistics or BatchNorm modules, the packed floating blocks that server-side rules work on,
// and the save_state()/load_state() blob format.
#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <map>
#include <string>
#include <vector>

#include "common/core/model_state.h"
#include "common/models/model.h"

namespace fl {

// BatchNorm's running_mean, running_var and num_batches_tracked: buffers, not parameters.
bool is_statistic(const std::string& name);
std::vector<std::string> statistic_names(const ModelState& s);
// Every entry that is not a statistic (the model's parameters for the built-in models).
std::vector<std::string> parameter_names(const ModelState& s);
// The names of model.parameters(), in that order. Throws when the state's non-statistic entries
// do not line up with the parameters (a model with other kinds of buffers).
std::vector<std::string> model_parameter_names(Model& model);
// Every entry of every BatchNorm module (a module is one when it has a running_mean):
// weight, bias and the statistics.
std::vector<std::string> batchnorm_names(const ModelState& s);
// Entries whose name starts with "<group>." for one of the groups.
std::vector<std::string> names_in_groups(const ModelState& s, const std::vector<std::string>& groups);
// The names of `s` that are not in `exclude`, in order.
std::vector<std::string> names_except(const ModelState& s, const std::vector<std::string>& exclude);

// The floating-point storage of a state as a few 1-D-or-shaped tensors that alias it: the packed
// buffer when there is one, else each floating entry. States with one layout give matching lists,
// so a rule can run block by block and write into a clone in place.
std::vector<at::Tensor> float_blocks(const ModelState& s);
// The device of the state's tensors (CPU for an empty state).
c10::Device device_of(const ModelState& s);

// save_state() blobs: named states plus numbers, as safetensors bytes tagged with the strategy's
// name. load_states checks the tag (a blob from another strategy is an error naming both).
std::string save_states(const std::string& strategy, const std::map<std::string, ModelState>& states,
                        const std::map<std::string, double>& numbers = {});
std::map<std::string, ModelState> load_states(const std::string& strategy, const std::string& blob,
                                              std::map<std::string, double>* numbers = nullptr);

}  // namespace fl
