// fedctl stats pool: federated feature statistics, here, without a coordinator. Each site writes
// its training CSV's count, per-feature sums and sums of squares (fedclient --feature-stats-out;
// no rows leave the site); the study coordinator pools them into one file that every site then
// standardises with (fedclient --feature-stats), and that `fedctl model evaluate --feature-stats`
// scores with.
#include <cmath>
#include <cstdio>
#include <iostream>
#include <memory>

#include "common/data/feature_stats.h"
#include "coordinator/fedctl/cli.h"

namespace fl::fedctl {
namespace {

std::string number(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.6g", v);
  return buf;
}

}  // namespace

void add_stats_commands(CLI::App& app, Context& ctx) {
  auto* stats = app.add_subcommand("stats", "federated feature statistics (local files, no coordinator)");
  stats->require_subcommand(1);
  struct Opts {
    std::vector<std::string> files;
    std::string out;
  };
  auto o = std::make_shared<Opts>();
  auto* pool = stats->add_subcommand(
      "pool", "pool the sites' feature statistics (fedclient --feature-stats-out files): counts, sums and sums of "
              "squares added; prints each feature's pooled count, mean and std");
  pool->add_option("files", o->files, "the sites' statistics files (JSON)")->required()->check(CLI::ExistingFile);
  pool->add_option("--out", o->out, "write the pooled statistics here (for fedclient --feature-stats)");
  on_run(pool, ctx, [&ctx, o] {
    std::vector<FeatureStats> parts;
    for (const auto& f : o->files) {
      try {
        parts.push_back(read_feature_stats(f));
      } catch (const std::exception& e) {
        throw CommandError(kError, e.what());
      }
    }
    FeatureStats pooled;
    try {
      pooled = pool_feature_stats(parts, o->files);
      if (!o->out.empty()) write_feature_stats(o->out, pooled);
    } catch (const std::exception& e) {
      throw CommandError(kError, e.what());
    }
    const auto mean = pooled.mean(), sd = pooled.std();
    if (ctx.json) {
      nlohmann::ordered_json j;
      j["sources"] = o->files;
      j["counts"] = nlohmann::ordered_json::array();
      for (const auto& p : parts) j["counts"].push_back(p.count);
      j["count"] = pooled.count;
      if (!o->out.empty()) j["out"] = o->out;
      j["features"] = nlohmann::ordered_json::array();
      for (size_t i = 0; i < pooled.names.size(); ++i)
        j["features"].push_back({{"name", pooled.names[i]}, {"mean", mean[i]}, {"std", sd[i]}});
      print_json(std::cout, j);
      return int(kOk);
    }
    std::cout << "pooled " << parts.size() << " site(s): " << pooled.count << " rows, " << pooled.names.size()
              << " features" << (o->out.empty() ? "" : "; written to " + o->out) << "\n";
    std::vector<std::vector<std::string>> rows;
    for (size_t i = 0; i < pooled.names.size(); ++i)
      rows.push_back({pooled.names[i], std::to_string(pooled.count), number(mean[i]), number(sd[i])});
    print_table(std::cout, {"FEATURE", "COUNT", "MEAN", "STD"}, rows);
    return int(kOk);
  });
}

}  // namespace fl::fedctl
