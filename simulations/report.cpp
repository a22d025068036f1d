#include "simulations/report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <sstream>
#include <stdexcept>

#include "common/io/atomic_file.h"

namespace fl {
namespace {

// Rounds that were not evaluated carry -1; the report shows them as null.
nlohmann::ordered_json maybe(double v) { return v < 0 ? nlohmann::ordered_json(nullptr) : nlohmann::ordered_json(v); }

std::string stem(const std::string& path) {
  auto dot = path.rfind('.');
  auto slash = path.rfind('/');
  if (dot == std::string::npos || (slash != std::string::npos && dot < slash)) return path;
  return path.substr(0, dot);
}

const RoundReport* last_with(const std::vector<RoundReport>& rounds, double RoundReport::*field) {
  for (auto it = rounds.rbegin(); it != rounds.rend(); ++it)
    if ((*it).*field >= 0) return &*it;
  return nullptr;
}

double or_unset(const nlohmann::json& v) { return v.is_number() ? v.get<double>() : -1; }

// Metrics as the report writes them: a NaN (no client reported it) became null.
Metrics metrics_from_json(const nlohmann::json& o) {
  Metrics m;
  for (const auto& [k, v] : o.items()) m[k] = v.is_number() ? v.get<double>() : std::nan("");
  return m;
}

}  // namespace

nlohmann::ordered_json round_json(const RoundReport& r) {
  nlohmann::ordered_json o;
  o["round"] = r.round;
  o["global_accuracy"] = maybe(r.global_accuracy);
  o["personalized_accuracy"] = maybe(r.personalized_accuracy);
  o["personalized_accuracy_pooled"] = maybe(r.personalized_accuracy_pooled);
  o["personalized_examples"] = r.personalized_examples;
  o["loss"] = r.train_loss;
  o["global_loss"] = maybe(r.global_loss);
  if (!r.global_metrics.empty()) o["global_metrics"] = r.global_metrics;  // robust accuracy, ...
  o["clients"] = r.selected.size();
  o["selected"] = r.selected;
  o["failures"] = r.failures;
  o["dropped"] = r.dropped;
  if (r.rejected > 0) o["rejected"] = r.rejected;
  if (!r.aggregation_error.empty()) o["aggregation_error"] = r.aggregation_error;
  for (const auto& [client, why] : r.failure_reasons) o["failed"][std::to_string(client)] = why;
  o["samples"] = r.samples;
  o["wall_s"] = r.wall_s;
  o["eval_s"] = r.eval_s;
  if (!r.strategy_metrics.empty()) o["strategy"] = r.strategy_metrics;  // e.g. FedCMD's selected layer
  if (r.exchanges > 1) o["exchanges"] = r.exchanges;
  if (!r.federated_evaluation.empty()) {
    o["federated_evaluation"] = r.federated_evaluation;
    o["evaluate_failures"] = r.evaluate_failures;
  }
  return o;
}

RoundReport round_from_json(const nlohmann::json& o) {
  RoundReport r;
  r.round = o.at("round").get<int>();
  r.global_accuracy = or_unset(o.at("global_accuracy"));
  r.personalized_accuracy = or_unset(o.at("personalized_accuracy"));
  r.personalized_accuracy_pooled = or_unset(o.at("personalized_accuracy_pooled"));
  r.personalized_examples = o.at("personalized_examples").get<double>();
  r.train_loss = o.at("loss").is_number() ? o.at("loss").get<double>() : std::nan("");
  r.global_loss = or_unset(o.at("global_loss"));
  r.selected = o.at("selected").get<std::vector<int>>();
  r.failures = o.at("failures").get<int>();
  r.dropped = o.at("dropped").get<std::vector<int>>();
  r.rejected = o.value("rejected", 0);
  r.aggregation_error = o.value("aggregation_error", std::string());
  if (o.contains("failed"))
    for (const auto& [client, why] : o["failed"].items()) r.failure_reasons[std::stoi(client)] = why.get<std::string>();
  r.samples = o.at("samples").get<int64_t>();
  r.wall_s = o.at("wall_s").get<double>();
  r.eval_s = o.at("eval_s").get<double>();
  if (o.contains("global_metrics")) r.global_metrics = metrics_from_json(o["global_metrics"]);
  if (o.contains("strategy")) r.strategy_metrics = metrics_from_json(o["strategy"]);
  r.exchanges = o.value("exchanges", 1);
  if (o.contains("federated_evaluation")) {
    r.federated_evaluation = metrics_from_json(o["federated_evaluation"]);
    r.evaluate_failures = o.value("evaluate_failures", 0);
  }
  return r;
}

nlohmann::ordered_json report_json(const SimulationSummary& s) {
  nlohmann::ordered_json j;
  j["config"] = s.config;
  auto rounds = nlohmann::ordered_json::array();
  for (const auto& r : s.rounds) rounds.push_back(round_json(r));
  j["rounds"] = rounds;
  const RoundReport* g = last_with(s.rounds, &RoundReport::global_accuracy);
  const RoundReport* p = last_with(s.rounds, &RoundReport::personalized_accuracy);
  j["final"] = {{"global_accuracy", g ? nlohmann::ordered_json(g->global_accuracy) : nlohmann::ordered_json(nullptr)},
                {"personalized_accuracy",
                 p ? nlohmann::ordered_json(p->personalized_accuracy) : nlohmann::ordered_json(nullptr)}};
  if (g)
    for (const auto& [key, value] : g->global_metrics) j["final"][key] = value;  // of the same evaluation
  // The FedCMD protocol: personalized accuracy averaged over the last 10 rounds that have it.
  auto last10 = [&](double RoundReport::*field) {
    double sum = 0;
    int n = 0;
    for (auto it = s.rounds.rbegin(); it != s.rounds.rend() && n < 10; ++it)
      if ((*it).*field >= 0) {
        sum += (*it).*field;
        ++n;
      }
    return n ? nlohmann::ordered_json(sum / n) : nlohmann::ordered_json(nullptr);
  };
  j["final"]["personalized_accuracy_last10"] = last10(&RoundReport::personalized_accuracy);
  j["final"]["personalized_accuracy_pooled_last10"] = last10(&RoundReport::personalized_accuracy_pooled);
  j["samples_per_s"] = s.samples_per_s;
  j["total_wall_s"] = s.total_wall_s;
  return j;
}

std::string rounds_csv(const std::vector<RoundReport>& rounds) {
  std::ostringstream out;
  out << "round,global_accuracy,personalized_accuracy,personalized_accuracy_pooled,loss,global_loss,clients,failures,samples,wall_s,eval_s,personalized_examples\n";
  auto cell = [](double v) { return v < 0 ? std::string() : std::to_string(v); };
  for (const auto& r : rounds)
    out << r.round << ',' << cell(r.global_accuracy) << ',' << cell(r.personalized_accuracy) << ','
        << cell(r.personalized_accuracy_pooled) << ',' << r.train_loss
        << ',' << cell(r.global_loss) << ',' << r.selected.size() << ',' << r.failures << ',' << r.samples << ','
        << r.wall_s << ',' << r.eval_s << ',' << r.personalized_examples << '\n';
  return out.str();
}

std::string accuracy_svg(const std::vector<RoundReport>& rounds, const std::string& title) {
  const double W = 640, H = 400, L = 60, R = 20, T = 40, B = 50;
  const int max_round = rounds.empty() ? 1 : std::max(1, rounds.back().round);
  double lo = 1.0;
  for (const auto& r : rounds) {
    if (r.global_accuracy >= 0) lo = std::min(lo, r.global_accuracy);
    if (r.personalized_accuracy >= 0) lo = std::min(lo, r.personalized_accuracy);
  }
  lo = std::floor(std::max(0.0, lo - 0.05) * 10) / 10;  // y axis from a round tenth below the data
  auto x = [&](double round) { return L + (W - L - R) * (round / max_round); };
  auto y = [&](double acc) { return T + (H - T - B) * (1 - (acc - lo) / (1 - lo)); };
  std::ostringstream s;
  s << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << W << "\" height=\"" << H
    << "\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
  s << "<text x=\"" << W / 2 << "\" y=\"22\" text-anchor=\"middle\" font-size=\"14\">" << title << "</text>\n";
  for (int i = 0; i <= 5; ++i) {  // horizontal grid with labels
    const double acc = lo + (1 - lo) * i / 5;
    s << "<line x1=\"" << L << "\" x2=\"" << W - R << "\" y1=\"" << y(acc) << "\" y2=\"" << y(acc)
      << "\" stroke=\"#ddd\"/><text x=\"" << L - 6 << "\" y=\"" << y(acc) + 4 << "\" text-anchor=\"end\">"
      << std::round(acc * 1000) / 1000 << "</text>\n";
  }
  s << "<text x=\"" << (L + W - R) / 2 << "\" y=\"" << H - 12 << "\" text-anchor=\"middle\">round (max " << max_round
    << ")</text>\n";
  auto series = [&](double RoundReport::*field, const char* color, const char* label, int slot) {
    std::ostringstream pts;
    int n = 0;
    for (const auto& r : rounds)
      if (r.*field >= 0) {
        pts << x(r.round) << ',' << y(r.*field) << ' ';
        ++n;
      }
    if (n == 0) return;
    s << "<polyline fill=\"none\" stroke=\"" << color << "\" stroke-width=\"2\" points=\"" << pts.str() << "\"/>\n";
    s << "<text x=\"" << L + 10 << "\" y=\"" << T + 16 + 16 * slot << "\" fill=\"" << color << "\">" << label
      << "</text>\n";
  };
  series(&RoundReport::global_accuracy, "#1f77b4", "global accuracy", 0);
  series(&RoundReport::personalized_accuracy, "#d62728", "personalized accuracy", 1);
  s << "</svg>\n";
  return s.str();
}

std::vector<std::string> write_report(const SimulationSummary& s, const std::string& json_path) {
  const std::string base = stem(json_path);
  write_file_atomically(json_path, report_json(s).dump(2) + "\n");
  write_file_atomically(base + ".csv", rounds_csv(s.rounds));
  std::string title = "fedsim";
  if (s.config.contains("strategy")) title += " " + s.config["strategy"].get<std::string>();
  write_file_atomically(base + ".svg", accuracy_svg(s.rounds, title));
  return {json_path, base + ".csv", base + ".svg"};
}

std::string progress_line(int round, int total, double global_acc, double pers_acc, double eta_s, int width) {
  const int filled = total > 0 ? static_cast<int>(std::lround(width * static_cast<double>(round) / total)) : 0;
  std::string bar(filled, '#');
  bar += std::string(width - filled, '.');
  char buf[256];
  const int eta = static_cast<int>(std::lround(std::max(0.0, eta_s)));
  std::string acc;
  if (global_acc >= 0) acc += " global " + std::to_string(global_acc).substr(0, 6);
  if (pers_acc >= 0) acc += " pers " + std::to_string(pers_acc).substr(0, 6);
  std::snprintf(buf, sizeof buf, "round %d/%d [%s]%s  ETA %dm%02ds", round, total, bar.c_str(), acc.c_str(), eta / 60,
                eta % 60);
  return buf;
}

}  // namespace fl
