#pragma once
// The strategy library (issue 6): registers fedavgm, fedadam, fedyogi, fedadagrad, fedmedian,
// trimmedmean, krum, multikrum, scaffold, fedbn, fedper, fedrep and local with their parameters.
namespace fl {
void register_library_strategies();
}  // namespace fl
