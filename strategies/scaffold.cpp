#include "strategies/scaffold.h"

#include "strategies/registry.h"

#include <torch/torch.h>

#include <stdexcept>

#include "strategies/state_ops.h"

namespace fl {
namespace {

const char* kPersonalKey = "scaffold_c";

// The server's c from the task, checked against the model's parameters.
const ModelState& server_c(const ClientTask& task, const std::vector<std::string>& names) {
  auto it = task.tensors.find("c");
  if (it == task.tensors.end()) throw std::invalid_argument("scaffold task carries no control variate 'c'");
  if (it->second.names() != names)
    throw std::invalid_argument("scaffold task: control variate 'c' has " + std::to_string(it->second.size()) +
                                " tensors that do not match the model's " + std::to_string(names.size()) +
                                " parameters");
  return it->second;
}

// The client's c_i on the training device: its personal copy, or zeros the first time.
ModelState client_c(ClientContext& ctx, const ModelState& c, const c10::Device& device) {
  auto it = ctx.personal.find(kPersonalKey);
  if (it == ctx.personal.end()) return c.zeros_like().to(device);
  c.check_same_layout(it->second, "scaffold personal control variate");
  return it->second.to(device);
}

}  // namespace

TrainHooks ScaffoldClient::train_hooks(const ClientTask& task, ClientContext& ctx) const {
  // The correction and option II's (x - y_i) / (K lr) assume plain SGD steps of size lr.
  if (ctx.train_options.optimizer != "sgd")
    throw std::invalid_argument("scaffold needs the sgd optimizer, not '" + ctx.train_options.optimizer + "'");
  const auto names = model_parameter_names(ctx.model);
  const auto device = ctx.model.device();
  const ModelState c = server_c(task, names).to(device);
  const ModelState ci = client_c(ctx, c, device);
  const ModelState diff = c - ci;
  std::vector<at::Tensor> correction;
  for (const auto& n : names) correction.push_back(diff.at(n));
  TrainHooks hooks;
  // SGD on g - c_i + c: after the optimiser's step on g, subtract lr (c - c_i).
  const double lr = ctx.train_options.lr;
  hooks.after_step = [params = ctx.model.parameters(), correction, lr](Model&) mutable {
    torch::NoGradGuard no_grad;
    at::_foreach_add_(params, correction, -lr);
  };
  return hooks;
}

void ScaffoldClient::finish(const ClientTask& task, ClientContext& ctx, ClientResult& result) const {
  const auto names = model_parameter_names(ctx.model);
  const auto device = ctx.model.device();
  const ModelState c = server_c(task, names).to(device);
  const ModelState ci = client_c(ctx, c, device);
  auto it = result.metrics.find("steps");
  const double steps = it == result.metrics.end() ? 0 : it->second;
  if (!(steps >= 1)) throw std::runtime_error("scaffold: no local step was taken");
  const ModelState x = task.model.select(names).to(device), y = result.model.select(names);
  // Option II: c_i+ = c_i - c + (x - y_i) / (K lr).
  ModelState ci_new = (ci - c).add_(x - y, 1.0 / (steps * ctx.train_options.lr));
  result.tensors["delta_c"] = ci_new - ci;
  ctx.personal[kPersonalKey] = std::move(ci_new);
}

Scaffold::Scaffold(double server_lr) : lr_(server_lr) {
  if (!(server_lr > 0)) throw std::invalid_argument("scaffold: server_lr must be > 0");
}

void Scaffold::initialize(const ModelState& initial) {
  Strategy::initialize(initial);
  c_ = global_.select(parameter_names(global_)).zeros_like();
}

void Scaffold::set_num_clients(int n) {
  if (n < 1) throw std::invalid_argument("scaffold: the federation has no clients");
  num_clients_ = n;
}

std::vector<ClientTask> Scaffold::configure_fit(int round, const std::vector<int>& clients) {
  auto tasks = Strategy::configure_fit(round, clients);
  for (auto& t : tasks) t.tensors["c"] = c_;  // shares storage: clients only read it
  return tasks;
}

std::string Scaffold::check_result(const ClientTask& task, const ClientResult& result) const {
  std::string why = result_model_is_whole(task, result);
  if (!why.empty()) return why;
  auto dc = result.tensors.find("delta_c");
  if (dc == result.tensors.end()) return "no 'delta_c' (SCAFFOLD's control-variate update)";
  auto c = task.tensors.find("c");
  if (c != task.tensors.end() && !c->second.same_layout(dc->second)) {
    try {
      c->second.check_same_layout(dc->second, "delta_c");
    } catch (const std::invalid_argument& e) {
      return e.what();
    }
  }
  return "";
}

Metrics Scaffold::aggregate_fit(int round, const std::vector<ClientResult>& results) {
  const std::string what = "scaffold round " + std::to_string(round);
  if (num_clients_ < 1) throw std::logic_error(what + ": set_num_clients was not called");
  ModelState avg = weighted_average_of(results);
  global_.check_same_layout(avg, what);
  const auto device = device_of(avg);
  std::vector<const ModelState*> deltas;
  for (const auto& r : results) {
    auto it = r.tensors.find("delta_c");
    if (it == r.tensors.end())
      throw std::invalid_argument(what + ": client " + std::to_string(r.client_id) + " sent no 'delta_c'");
    c_.check_same_layout(it->second, what + " delta_c of client " + std::to_string(r.client_id));
    deltas.push_back(&it->second);
  }
  // x + lr (avg - x) on the parameters; statistics take the average.
  ModelState x = global_.to(device);
  ModelState next = x.clone().add_(avg - x, lr_);
  next.assign(avg.select(statistic_names(avg)));
  global_ = std::move(next);
  const double k = static_cast<double>(results.size());
  ModelState mean_dc = ModelState::weighted_sum(deltas, std::vector<double>(deltas.size(), 1.0 / k));
  c_ = c_.to(device).add_(mean_dc, k / num_clients_);
  return {{"clients", k}, {"c_norm", c_.norm()}};
}


std::string Scaffold::save_state() const { return save_states(name(), {{"c", c_}}); }

void Scaffold::load_state(const std::string& blob) {
  c_ = global_.select(parameter_names(global_)).zeros_like();
  if (blob.empty()) return;
  auto saved = load_states(name(), blob);
  auto it = saved.find("c");
  if (it == saved.end()) throw std::invalid_argument("scaffold: saved state has no control variate 'c'");
  c_.check_same_layout(it->second, "scaffold saved state 'c'");
  c_ = it->second.to(device_of(c_));
}

namespace {

const StrategyRegistrar kScaffold{
    {"scaffold", "SCAFFOLD (Karimireddy et al. 2020): control variates correct the client drift (option II)",
     {ParamSpec::number("server_lr", 1.0, 0, std::numeric_limits<double>::infinity(), "server learning rate", true)},
     [](const StrategyParams& p) { return std::make_unique<Scaffold>(p.at("server_lr")); },
     [] { return std::make_shared<ScaffoldClient>(); },
     [](const StrategyParams&, const TrainOptions& t) {
       if (t.optimizer != "sgd")
         throw std::invalid_argument("scaffold needs the sgd optimizer (its correction is an SGD step), not '" +
                                     t.optimizer + "'");
     }}};

}  // namespace

}  // namespace fl
