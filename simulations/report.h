#pragma once
// fedsim's outputs: the JSON report, a CSV of the rounds and an accuracy-per-round SVG plot,
// plus a terminal progress line.
#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "common/engine/round_engine.h"

namespace fl {

struct SimulationSummary {
  nlohmann::ordered_json config;      // the effective configuration
  std::vector<RoundReport> rounds;
  double samples_per_s = 0;           // training samples / (sum of round wall_s)
  double total_wall_s = 0;
};

nlohmann::ordered_json report_json(const SimulationSummary& s);
// One entry of the report's "rounds", and back (a resumed run reads its checkpoint's rounds).
nlohmann::ordered_json round_json(const RoundReport& r);
RoundReport round_from_json(const nlohmann::json& o);
// Writes FILE (JSON), FILE's stem + ".csv" and + ".svg". Returns the paths written.
std::vector<std::string> write_report(const SimulationSummary& s, const std::string& json_path);
std::string rounds_csv(const std::vector<RoundReport>& rounds);
// A self-contained SVG line chart of global (and personalized) accuracy per round.
std::string accuracy_svg(const std::vector<RoundReport>& rounds, const std::string& title);
// "round 12/50 [#####.....] global 0.8731 pers 0.9012  ETA 1m03s"
std::string progress_line(int round, int total, double global_acc, double pers_acc, double eta_s, int width = 30);

}  // namespace fl
