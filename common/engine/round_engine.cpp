#include "common/engine/round_engine.h"

#include "common/engine/streaming_aggregation.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>
#include <random>
#include <stdexcept>

#include <torch/torch.h>

#include "common/util/text.h"

namespace fl {

uint64_t mix_seed(uint64_t seed, uint64_t a, uint64_t b) {
  // splitmix64 over the three words: stable across platforms and releases.
  auto mix = [](uint64_t z) {
    z += 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  };
  return mix(mix(mix(seed) ^ a) ^ b);
}

namespace {

// max(at_least, round(fraction * n)) of the n clients (at most n), drawn by a partial
// Fisher-Yates shuffle seeded with rng_seed, in ascending order.
std::vector<int> sample_clients(int n, double fraction, int at_least, uint64_t rng_seed) {
  int k = static_cast<int>(std::lround(fraction * n));
  k = std::min(n, std::max(k, at_least));
  std::vector<int> ids(n);
  std::iota(ids.begin(), ids.end(), 0);
  if (k < n) {
    std::mt19937_64 rng(rng_seed);
    for (int i = 0; i < k; ++i) {
      std::uniform_int_distribution<int> pick(i, n - 1);
      std::swap(ids[i], ids[pick(rng)]);
    }
    ids.resize(k);
    std::sort(ids.begin(), ids.end());
  }
  return ids;
}

}  // namespace

const std::vector<std::string>& workflow_names() {
  static const std::vector<std::string> names{"scatter-gather", "cyclic"};  // in enum order
  return names;
}

Workflow parse_workflow(const std::string& name) {
  const auto& names = workflow_names();
  const auto it = std::find(names.begin(), names.end(), name);
  if (it == names.end()) throw std::invalid_argument("unknown workflow '" + name + "' (" + join(names) + ")");
  return static_cast<Workflow>(it - names.begin());
}

std::string workflow_name(Workflow w) { return workflow_names().at(static_cast<size_t>(w)); }

void EngineOptions::validate(int num_clients) const {
  if (rounds < 1) throw std::invalid_argument("rounds must be >= 1");
  if (!(fraction > 0 && fraction <= 1)) throw std::invalid_argument("fraction must be in (0, 1]");
  if (min_clients < 1) throw std::invalid_argument("min_clients must be >= 1");
  if (min_clients > num_clients)
    throw std::invalid_argument("min_clients (" + std::to_string(min_clients) + ") exceeds the number of clients (" +
                                std::to_string(num_clients) + ")");
  if (eval_every < 0) throw std::invalid_argument("eval_every must be >= 0");
  if (local_eval_every < 0) throw std::invalid_argument("local_eval_every must be >= 0");
  if (!(fraction_evaluate >= 0 && fraction_evaluate <= 1)) throw std::invalid_argument("fraction_evaluate must be in [0, 1]");
  if (!(max_update_norm >= 0)) throw std::invalid_argument("max_update_norm must be >= 0");
  if (max_examples < 0) throw std::invalid_argument("max_examples must be >= 0, got " + std::to_string(max_examples));
  if (schedule.empty()) return;
  if (static_cast<int64_t>(schedule.size()) < rounds)
    throw std::invalid_argument("the selection schedule has " + std::to_string(schedule.size()) +
                                " rounds, the run " + std::to_string(rounds));
  for (size_t r = 0; r < schedule.size(); ++r) {
    const std::string where = "selection schedule round " + std::to_string(r + 1);
    if (schedule[r].empty()) throw std::invalid_argument(where + " selects no client");
    std::vector<bool> seen(num_clients, false);
    for (int c : schedule[r]) {
      if (c < 0 || c >= num_clients)
        throw std::invalid_argument(where + ": client " + std::to_string(c) + " is not in [0, " +
                                    std::to_string(num_clients) + ")");
      if (seen[c]) throw std::invalid_argument(where + ": client " + std::to_string(c) + " twice");
      seen[c] = true;
    }
  }
}

std::string result_problem(const Strategy& strategy, const ClientTask& task, const ClientResult& result,
                           int64_t max_examples) {
  const bool evaluation = task.phase == kEvaluatePhase;
  if (result.num_examples < (evaluation ? 0 : 1))
    return "num_examples must be > " + std::string(evaluation ? "= 0" : "0") + ", got " +
           std::to_string(result.num_examples);
  if (max_examples > 0 && result.num_examples > max_examples)
    return "num_examples " + std::to_string(result.num_examples) + " exceeds the run's limit of " +
           std::to_string(max_examples) + " examples per client";
  for (const auto& [key, value] : result.metrics)
    if (!std::isfinite(value)) return "metric '" + key + "' is not finite";
  if (auto it = result.metrics.find("samples"); it != result.metrics.end()) {
    const double v = it->second;
    if (v < 0 || v != std::floor(v) || v >= 9007199254740992.0)  // 2^53: exact in a double and an int64
      return "metric 'samples' must be a whole count in [0, 2^53), got " + std::to_string(v);
  }
  if (auto name = result.model.non_finite_entry(); !name.empty()) return "model tensor '" + name + "' is not finite";
  for (const auto& [key, state] : result.tensors)
    if (auto name = state.non_finite_entry(); !name.empty())
      return "tensor '" + key + "/" + name + "' is not finite";
  return evaluation ? "" : strategy.check_result(task, result);
}

void reject_result(ClientResult& result, const std::string& why) {
  result.ok = false;
  result.error = "update rejected: " + why;
  result.metrics["rejected"] = 1;
}

RoundEngine::RoundEngine(Strategy& strategy, ClientPool& pool, EngineOptions options, GlobalEvaluator evaluate)
    : strategy_(strategy), pool_(pool), options_(options), evaluate_(std::move(evaluate)) {
  options_.validate(pool_.num_clients());
  strategy_.set_total_rounds(options_.rounds);
}

std::vector<int> RoundEngine::select(int round) const {
  if (!options_.schedule.empty()) {
    if (round < 1 || round > static_cast<int>(options_.schedule.size()))
      throw std::out_of_range("round " + std::to_string(round) + " is outside the selection schedule");
    return options_.schedule[round - 1];
  }
  return sample_clients(pool_.num_clients(), options_.fraction, options_.min_clients,
                        mix_seed(options_.seed, 0x5e1ec7, static_cast<uint64_t>(round)));
}

std::vector<ClientResult> RoundEngine::train(int round, const std::vector<int>& clients, int* exchanges) {
  auto tasks = strategy_.configure_fit(round, clients);
  const bool local_eval = options_.local_eval_every > 0 && round % options_.local_eval_every == 0;
  for (auto& t : tasks) {
    t.seed = mix_seed(options_.seed, static_cast<uint64_t>(round), static_cast<uint64_t>(t.client_id));
    if (!local_eval) t.config[kLocalEvalKey] = 0;
  }
  auto results = pool_.execute(tasks);
  screen(tasks, results);
  std::vector<ClientResult> failed;
  std::map<int, Metrics> earlier;  // each client's metrics of the exchanges before the last
  for (int exchange = 1;; ++exchange) {
    *exchanges = std::max(*exchanges, exchange);
    std::vector<ClientResult> ok;
    for (auto& r : results) (r.ok ? ok : failed).push_back(std::move(r));
    results.clear();
    if (ok.empty()) break;  // nobody left: the round fails below
    auto next = strategy_.configure_fit_exchange(round, exchange, ok);
    if (next.empty()) {
      // A client's round metrics are those of all its exchanges (a later one's win): training
      // loss and samples come with exchange 1, whatever the last one reports.
      for (auto& r : ok)
        for (const auto& kv : earlier[r.client_id]) r.metrics.emplace(kv.first, kv.second);
      results = std::move(ok);
      break;
    }
    for (const auto& r : ok)
      for (const auto& kv : r.metrics) earlier[r.client_id][kv.first] = kv.second;
    for (auto& t : next) {
      t.round = round;
      t.phase = fit_phase_name(exchange + 1);
      t.seed = mix_seed(options_.seed ^ static_cast<uint64_t>(exchange), static_cast<uint64_t>(round),
                        static_cast<uint64_t>(t.client_id));
    }
    results = pool_.execute(next);
    screen(next, results);
  }
  if (options_.max_update_norm > 0) {
    std::map<int, const ModelState*> sent;
    for (const auto& t : tasks) sent[t.client_id] = &t.model;
    for (auto& r : results) {
      auto it = sent.find(r.client_id);
      if (it == sent.end() || it->second->empty() || !it->second->same_layout(r.model)) continue;
      const double norm = (r.model - *it->second).norm();
      if (norm <= options_.max_update_norm) continue;  // NaN fails this too
      reject_result(r, "its norm " + std::to_string(norm) + " exceeds the run's bound max_update_norm = " +
                           std::to_string(options_.max_update_norm));
    }
  }
  for (auto& r : failed) results.push_back(std::move(r));
  return results;
}

void RoundEngine::screen(const std::vector<ClientTask>& tasks, std::vector<ClientResult>& results) const {
  // A pool that deferred the models checked each result with result_problem before taking it.
  if (auto* deferred = dynamic_cast<const DeferredResultModels*>(&pool_); deferred && deferred->result_models_deferred())
    return;
  std::map<int, const ClientTask*> task_of;
  for (const auto& t : tasks) task_of[t.client_id] = &t;
  for (auto& r : results) {
    if (!r.ok) continue;
    auto it = task_of.find(r.client_id);
    std::string why = it == task_of.end() ? "a result for a task it was not given"
                                          : result_problem(strategy_, *it->second, r, options_.max_examples);
    if (!why.empty()) reject_result(r, why);
  }
}

namespace {

// What a strategy had before an aggregation that may throw: the global model (strategies replace
// it, never write into it) and the rest of its state. restore() puts both back.
struct StrategySnapshot {
  explicit StrategySnapshot(Strategy& s) : strategy(s), global(s.global_model()), state(s.save_state()) {}
  void restore() const {
    strategy.initialize(global);
    strategy.load_state(state);
  }
  Strategy& strategy;
  const ModelState global;
  const std::string state;
};

void reject_after_aggregation(RoundReport& report, int client, const std::string& error) {
  ++report.failures;
  ++report.rejected;
  report.dropped.push_back(client);
  report.failure_reasons[client] = "update rejected: aggregation failed on it: " + error;
}

// Streaming aggregation (common/engine/streaming_aggregation.h): the results' models are read
// back from the pool one at a time, in task order, and folded into their example-weighted mean
// (or the pool reduces them itself: DeferredResultModels::reduce_mean);
// only the strategy's last step sees the mean. A result that cannot be read back or does not fit
// the others is rejected and the mean is folded again without it; a throwing last step leaves the
// round with the model and state it started with (as aggregate_guarded does).
void aggregate_streaming(Strategy& strategy, MeanAggregation& mean_strategy, DeferredResultModels& pool, int round,
                         std::vector<ClientResult>& ok, RoundReport& report) {
  while (!ok.empty()) {
    size_t failed = ok.size();
    std::string error;
    ModelState mean;
    if (auto reduced = pool.reduce_mean(ok)) {  // the pool sums them itself
      if (reduced->rejected >= static_cast<int>(ok.size()))
        throw std::logic_error("reduce_mean blamed result " + std::to_string(reduced->rejected) + " of " +
                               std::to_string(ok.size()));
      if (reduced->rejected >= 0) {
        failed = static_cast<size_t>(reduced->rejected);
        error = reduced->error;
      } else {
        mean = std::move(reduced->mean);
      }
    } else {
      double total = 0;
      for (const auto& r : ok) total += static_cast<double>(r.num_examples);
      WeightedMeanAccumulator fold(total);
      for (size_t i = 0; i < ok.size() && failed == ok.size(); ++i) {
        try {
          const double weight = static_cast<double>(ok[i].num_examples);
          if (!pool.add_result_model(ok[i], fold, weight)) {
            pool.load_result_model(ok[i]);
            fold.add(ok[i].model, weight);
          }
        } catch (const std::exception& e) {
          failed = i;
          error = e.what();
        }
        ok[i].model = ModelState();  // one update in memory at a time
        ok[i].tensors.clear();
      }
      if (failed == ok.size()) mean = fold.take();
    }
    if (failed != ok.size()) {
      reject_after_aggregation(report, ok[failed].client_id, error);
      ok.erase(ok.begin() + static_cast<std::ptrdiff_t>(failed));
      continue;
    }
    const StrategySnapshot before(strategy);
    try {
      report.strategy_metrics = mean_strategy.aggregate_mean(round, std::move(mean), ok);
    } catch (const std::exception& e) {
      before.restore();
      report.aggregation_error = e.what();
      report.strategy_metrics = {{"aggregation_failed", 1}};
    }
    return;
  }
  report.aggregation_error = "no update of the round could be read back";
  report.strategy_metrics = {{"aggregation_failed", 1}};
}

}  // namespace

void RoundEngine::aggregate_guarded(int round, std::vector<ClientResult>& ok, RoundReport& report) {
  const StrategySnapshot before(strategy_);
  try {
    report.strategy_metrics = strategy_.aggregate_fit(round, ok);
    return;
  } catch (const std::exception& e) {
    before.restore();
    const std::string error = e.what();
    // One result to blame: the others aggregate without it.
    for (size_t i = 0; ok.size() > 1 && i < ok.size(); ++i) {
      std::vector<ClientResult> others;
      for (size_t j = 0; j < ok.size(); ++j)
        if (j != i) others.push_back(ok[j]);  // shallow: tensors are shared
      try {
        report.strategy_metrics = strategy_.aggregate_fit(round, others);
      } catch (const std::exception&) {
        before.restore();
        continue;
      }
      reject_after_aggregation(report, ok[i].client_id, error);
      ok = std::move(others);
      return;
    }
    report.aggregation_error = error;
    report.strategy_metrics = {{"aggregation_failed", 1}};
  }
}

void RoundEngine::evaluate_on_clients(int round, RoundReport& report) {
  const auto ids = sample_clients(pool_.num_clients(), options_.fraction_evaluate, 1,
                                  mix_seed(options_.seed, 0xe7a1, static_cast<uint64_t>(round)));
  auto tasks = strategy_.configure_evaluate(round, ids);
  for (auto& t : tasks) {
    t.phase = kEvaluatePhase;
    t.seed = mix_seed(options_.seed, static_cast<uint64_t>(round), 0xe7a1ULL ^ static_cast<uint64_t>(t.client_id));
  }
  std::vector<ClientResult> ok;
  for (auto& r : pool_.execute(tasks)) {
    if (r.ok) {
      ok.push_back(std::move(r));
    } else {
      ++report.evaluate_failures;
    }
  }
  report.federated_evaluation = strategy_.aggregate_evaluate(round, ok);
}

RoundReport RoundEngine::run_round(int round) {
  const auto t0 = std::chrono::steady_clock::now();
  RoundReport report;
  report.round = round;
  report.selected = select(round);
  const bool cyclic = options_.workflow == Workflow::kCyclic;
  auto* mean_strategy = dynamic_cast<MeanAggregation*>(&strategy_);
  bool streamed = false;
  // Switches a pool's deferral off when the round is over (aggregated, or thrown out of).
  struct DeferralScope {
    DeferredResultModels* pool = nullptr;
    ~DeferralScope() {
      if (pool) pool->defer_result_models(false);
    }
  } deferring;
  if (cyclic && options_.schedule.empty()) {
    std::mt19937_64 rng(mix_seed(options_.seed, 0xc7c11c, static_cast<uint64_t>(round)));
    std::shuffle(report.selected.begin(), report.selected.end(), rng);
  }
  strategy_.set_num_clients(pool_.num_clients());
  std::vector<ClientResult> ok;
  auto keep = [&](ClientResult& r) {
    if (!r.ok) {
      ++report.failures;
      if (r.metrics.count("rejected")) ++report.rejected;
      report.dropped.push_back(r.client_id);
      report.failure_reasons[r.client_id] = r.error.empty() ? "no reason given" : r.error;
      return false;
    }
    ok.push_back(std::move(r));
    return true;
  };
  if (cyclic) {
    for (int c : report.selected)
      for (auto& r : train(round, {c}, &report.exchanges))
        if (keep(r)) {
          std::vector<ClientResult> one{ok.back()};
          aggregate_guarded(round, one, report);
          if (!report.aggregation_error.empty()) {  // alone, this result is to blame: the cycle goes on
            reject_after_aggregation(report, c, report.aggregation_error);
            report.aggregation_error.clear();
            report.strategy_metrics.clear();
            ok.pop_back();
          }
        }
  } else {
    // Streamed when the strategy aggregates a mean and the pool can hand the models over later.
    auto* deferred = dynamic_cast<DeferredResultModels*>(&pool_);
    if (deferred && mean_strategy && options_.max_update_norm <= 0 && deferred->defer_result_models(true))
      deferring.pool = deferred;
    for (auto& r : train(round, report.selected, &report.exchanges)) keep(r);
    streamed = deferring.pool && deferred->result_models_deferred();
  }
  if (ok.empty()) {
    // The clients' own reasons: a strategy's refusal or a data problem must not be lost here.
    std::string why;
    int listed = 0;
    for (const auto& [client, reason] : report.failure_reasons) {
      if (listed++ == 3) {
        why += "; ...";
        break;
      }
      why += (why.empty() ? "" : "; ") + ("client " + std::to_string(client) + ": " + reason);
    }
    throw std::runtime_error("round " + std::to_string(round) + ": every client failed (" + why + ")");
  }
  double pers_sum = 0, pooled_correct = 0, pooled_examples = 0;
  int pers_n = 0;
  for (const auto& r : ok) {
    auto it = r.metrics.find("samples");
    report.samples += it != r.metrics.end() ? static_cast<int64_t>(it->second) : r.num_examples;
    auto p = r.metrics.find("personalized_accuracy");
    if (p != r.metrics.end()) {
      pers_sum += p->second;
      ++pers_n;
      auto e = r.metrics.find("personalized_examples");
      if (e != r.metrics.end() && e->second > 0) {
        pooled_correct += p->second * e->second;
        pooled_examples += e->second;
      }
    }
  }
  report.train_loss = weighted_metric(ok, "train_loss");
  if (pers_n > 0) report.personalized_accuracy = pers_sum / pers_n;
  if (pooled_examples > 0) report.personalized_accuracy_pooled = pooled_correct / pooled_examples;
  report.personalized_examples = pooled_examples;
  if (!cyclic) {
    const auto a0 = std::chrono::steady_clock::now();
    if (streamed)
      aggregate_streaming(strategy_, *mean_strategy, *deferring.pool, round, ok, report);
    else
      aggregate_guarded(round, ok, report);
    report.aggregate_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - a0).count();
  }
  if (options_.fraction_evaluate > 0) evaluate_on_clients(round, report);
  const auto t1 = std::chrono::steady_clock::now();
  report.wall_s = std::chrono::duration<double>(t1 - t0).count();
  const bool last = round == options_.rounds;
  if (evaluate_ && strategy_.has_global_model() && (last || (options_.eval_every > 0 && round % options_.eval_every == 0))) {
    auto ev = evaluate_(strategy_.global_model());
    report.global_accuracy = ev.accuracy;
    report.global_loss = ev.loss;
    report.global_metrics = ev.metrics;
    report.eval_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();
  }
  return report;
}

}  // namespace fl
