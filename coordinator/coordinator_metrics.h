#pragma once
// What fedcoord tells Prometheus: every metric's name, help text and labels in one place, updated
// through these calls and served by the MetricsServer (--metrics-listen) from metrics::global().
#include <cstdint>
#include <string>

namespace fl {

struct RoundReport;

namespace coordinator_metrics {

// A committed round of `run`: rounds, duration, participants, dropped stragglers, rejections
// by the round's screening, loss and accuracies.
void round_committed(const std::string& run, const RoundReport& report);
void run_state(const std::string& run, int registered_clients, int round);
// Payload bytes over the Federation service (model downloads out, update uploads in).
void bytes_sent(uint64_t n);
void bytes_received(uint64_t n);
// An upload refused on arrival: reason is one of checksum | too_large | refused (a payload the
// run cannot aggregate) | malformed (its encoding) | header (not the client's current task,
// refused already, an example count or metrics the run does not take): a bounded set, as
// Prometheus labels must be.
void update_rejected(const std::string& reason);
// The reason label for a refused upload's PayloadError field.
std::string rejection_reason(const std::string& payload_error_field);

}  // namespace coordinator_metrics
}  // namespace fl
