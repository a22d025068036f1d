#include "coordinator/coordinator_metrics.h"

#include "common/engine/round_engine.h"
#include "common/ops/metrics.h"

namespace fl::coordinator_metrics {
namespace {

metrics::Registry& reg() { return metrics::global(); }
metrics::Labels of_run(const std::string& run) { return {{"run", run}}; }

// Round durations from a second to a few hours.
const std::vector<double> kRoundBuckets = {1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200};

}  // namespace

void round_committed(const std::string& run, const RoundReport& r) {
  const auto l = of_run(run);
  reg().counter("fl_rounds_completed_total", "Rounds committed", l).inc();
  reg().gauge("fl_round", "The last committed round", l).set(r.round);
  reg().histogram("fl_round_duration_seconds", "A round's time: selection, training, aggregation and evaluation",
                  kRoundBuckets, l)
      .observe(r.wall_s + r.eval_s);
  const int delivered = static_cast<int>(r.selected.size()) - r.failures;
  reg().gauge("fl_round_participants", "Clients whose update the last round aggregated", l).set(delivered);
  reg().gauge("fl_round_selected_clients", "Clients the last round selected", l).set(static_cast<double>(r.selected.size()));
  reg().counter("fl_dropped_clients_total", "Selected clients that delivered nothing (failed or straggled)", l)
      .inc(static_cast<double>(r.dropped.size()));
  reg().counter("fl_round_rejected_results_total",
                "Results a round did not aggregate because they were refused (on arrival or by its screening)", l)
      .inc(r.rejected);
  reg().counter("fl_samples_total", "Training examples processed by the clients", l).inc(static_cast<double>(r.samples));
  reg().gauge("fl_train_loss", "The last round's training loss (example-weighted over the clients)", l).set(r.train_loss);
  if (r.global_accuracy >= 0) {
    reg().gauge("fl_global_accuracy", "The global model's accuracy on the server's test set", l).set(r.global_accuracy);
    reg().gauge("fl_global_loss", "The global model's loss on the server's test set", l).set(r.global_loss);
  }
  if (r.personalized_accuracy >= 0)
    reg().gauge("fl_federated_accuracy", "Mean accuracy of the received model on the clients' own test data", l)
        .set(r.personalized_accuracy);
  reg().gauge("fl_aggregate_seconds", "The last round's aggregation time", l).set(r.aggregate_s);
}

void run_state(const std::string& run, int registered_clients, int round) {
  reg().gauge("fl_registered_clients", "Clients registered with the run", of_run(run)).set(registered_clients);
  reg().gauge("fl_current_round", "The round in progress", of_run(run)).set(round);
}

void bytes_sent(uint64_t n) {
  static auto& c = reg().counter("fl_payload_bytes_sent_total", "Model bytes sent to clients");
  c.inc(static_cast<double>(n));
}

void bytes_received(uint64_t n) {
  static auto& c = reg().counter("fl_payload_bytes_received_total", "Update bytes received from clients");
  c.inc(static_cast<double>(n));
}

void update_rejected(const std::string& reason) {
  reg().counter("fl_update_rejections_total", "Client uploads refused on arrival, by reason", {{"reason", reason}})
      .inc();
}

std::string rejection_reason(const std::string& field) {
  if (field == "checksum") return "checksum";
  if (field == "total_bytes") return "too_large";
  if (field == "update") return "refused";
  return "malformed";
}

}  // namespace fl::coordinator_metrics
