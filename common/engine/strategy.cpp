#include "common/engine/strategy.h"

#include <torch/torch.h>

#include <cmath>
#include <limits>
#include <set>
#include <stdexcept>

namespace fl {

void ClientAlgorithm::load_task_model(const ClientTask& task, ClientContext& ctx) const {
  ctx.model.assign_state(task.model);  // the task may carry only the shared part of the model
  auto personal = ctx.personal.find("model");
  if (personal != ctx.personal.end()) ctx.model.assign_state(personal->second);  // they override the global ones
}

ClientResult ClientAlgorithm::begin_fit(const ClientTask& task, ClientContext& ctx) const {
  load_task_model(task, ctx);
  ClientResult result;
  result.round = task.round;
  result.client_id = task.client_id;
  const auto local_eval = task.config.find(kLocalEvalKey);
  const bool wanted = local_eval == task.config.end() || local_eval->second != 0;
  if (wanted && ctx.test && ctx.test->size() > 0) {
    auto ev = LocalTrainer::evaluate(ctx.model, *ctx.test);
    result.metrics["personalized_accuracy"] = ev.accuracy;
    result.metrics["personalized_loss"] = ev.loss;
    result.metrics["personalized_examples"] = static_cast<double>(ctx.test->size());
  }
  return result;
}

ClientResult ClientAlgorithm::fit(const ClientTask& task, ClientContext& ctx) const {
  ClientResult result = begin_fit(task, ctx);
  TrainOptions options = ctx.train_options;
  options.seed = task.seed;
  auto tr = local_train(task, ctx, options);
  result.model = std::move(tr.state);
  result.num_examples = tr.num_examples;
  result.metrics["train_loss"] = tr.loss;
  result.metrics["train_accuracy"] = tr.accuracy;
  result.metrics["samples"] = static_cast<double>(tr.samples_seen);
  result.metrics["steps"] = static_cast<double>(tr.steps);
  result.metrics["train_s"] = tr.wall_s;
  finish(task, ctx, result);
  return result;
}

TrainResult ClientAlgorithm::local_train(const ClientTask& task, ClientContext& ctx, const TrainOptions& options) const {
  return LocalTrainer(options).train(ctx.model, ctx.train, train_hooks(task, ctx));
}

ClientResult ClientAlgorithm::evaluate(const ClientTask& task, ClientContext& ctx) const {
  load_task_model(task, ctx);
  ClientResult result;
  result.round = task.round;
  result.client_id = task.client_id;
  if (!ctx.test || ctx.test->size() == 0) {
    result.ok = false;
    result.error = "client has no local test data";
    return result;
  }
  auto ev = LocalTrainer::evaluate(ctx.model, *ctx.test, ctx.evaluation);
  result.num_examples = ev.num_examples;
  result.metrics["accuracy"] = ev.accuracy;
  result.metrics["loss"] = ev.loss;
  for (const auto& [key, value] : ev.metrics) result.metrics[key] = value;
  return result;
}

ClientResult ClientAlgorithm::exchange(const ClientTask& task, ClientContext&) const {
  throw std::invalid_argument("this strategy's client has no exchange '" + task.phase + "'");
}

ClientResult ClientAlgorithm::run(const ClientTask& task, ClientContext& ctx) const {
  if (task.phase == kFitPhase) return fit(task, ctx);
  if (task.phase == kEvaluatePhase) return evaluate(task, ctx);
  return exchange(task, ctx);
}

std::vector<ClientTask> Strategy::configure_evaluate(int round, const std::vector<int>& clients) {
  auto tasks = Strategy::configure_fit(round, clients);
  for (auto& t : tasks) t.phase = kEvaluatePhase;
  return tasks;
}

Metrics Strategy::aggregate_evaluate(int round, const std::vector<ClientResult>& results) {
  Metrics m;
  m["clients"] = static_cast<double>(results.size());
  if (results.empty()) return m;
  m["accuracy"] = weighted_metric(results, "accuracy");
  m["loss"] = weighted_metric(results, "loss");
  // Accuracy under attack (EvalOptions), weighted like the clean accuracy. Robust accuracy is
  // measured on min(attack_examples, test size) examples; the clients' test sizes weigh it.
  std::set<std::string> robust;
  for (const auto& r : results)
    for (const auto& kv : r.metrics)
      if (kv.first.rfind("robust_accuracy_", 0) == 0) robust.insert(kv.first);
  for (const auto& key : robust) m[key] = weighted_metric(results, key);
  double examples = 0;
  for (const auto& r : results) examples += static_cast<double>(r.num_examples);
  m["examples"] = examples;
  return m;
}

std::vector<ClientTask> Strategy::configure_fit(int round, const std::vector<int>& clients) {
  std::vector<ClientTask> tasks;
  tasks.reserve(clients.size());
  for (int c : clients) {
    ClientTask t;
    t.round = round;
    t.client_id = c;
    t.model = global_;  // shares storage: clients only read it
    tasks.push_back(std::move(t));
  }
  return tasks;
}

std::string Strategy::check_result(const ClientTask& task, const ClientResult& result) const {
  return result_model_entries_of_task(task, result);
}

std::string result_model_entries_of_task(const ClientTask& task, const ClientResult& result) {
  size_t from = 0;  // the task's entries are walked once: the result's must come in their order
  const auto& want = task.model.entries();
  for (const auto& e : result.model.entries()) {
    size_t i = from;
    while (i < want.size() && want[i].name != e.name) ++i;
    if (i == want.size())
      return task.model.contains(e.name) ? "model tensor '" + e.name + "' is out of the model's order"
                                         : "model tensor '" + e.name + "' is not a tensor of the model sent";
    if (want[i].tensor.sizes() != e.tensor.sizes() || want[i].tensor.scalar_type() != e.tensor.scalar_type())
      return "model tensor '" + e.name + "' is " + std::string(c10::toString(e.tensor.scalar_type())) +
             c10::str(e.tensor.sizes()) + ", the model's is " +
             std::string(c10::toString(want[i].tensor.scalar_type())) + c10::str(want[i].tensor.sizes());
    from = i + 1;
  }
  return "";
}

std::string result_model_is_whole(const ClientTask& task, const ClientResult& result) {
  std::string why = result_model_entries_of_task(task, result);
  if (!why.empty() || result.model.size() == task.model.size()) return why;
  for (const auto& e : task.model.entries())
    if (!result.model.contains(e.name)) return "model tensor '" + e.name + "' is missing";
  return "";
}

ModelState weighted_average_of(const std::vector<ClientResult>& results) {
  if (results.empty()) throw std::invalid_argument("aggregate: no results");
  std::vector<const ModelState*> states;
  std::vector<double> weights;
  for (const auto& r : results) {
    states.push_back(&r.model);
    weights.push_back(static_cast<double>(r.num_examples));
  }
  return ModelState::weighted_average(states, weights);
}

double weighted_metric(const std::vector<ClientResult>& results, const std::string& key) {
  double sum = 0, weight = 0;
  for (const auto& r : results) {
    auto it = r.metrics.find(key);
    if (it == r.metrics.end()) continue;
    sum += it->second * r.num_examples;
    weight += r.num_examples;
  }
  return weight > 0 ? sum / weight : std::numeric_limits<double>::quiet_NaN();
}

}  // namespace fl
