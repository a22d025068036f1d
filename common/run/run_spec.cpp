#include "common/util/json_text.h"
#include "common/run/run_spec.h"

#include <CLI/CLI.hpp>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <set>
#include <stdexcept>

#include "common/engine/round_engine.h"
#include "common/models/model.h"
#include "common/util/text.h"
#include "strategies/differential_privacy.h"
#include "strategies/registry.h"
#include "strategies/secure_aggregation.h"

namespace fl {
namespace {

using json = nlohmann::json;
using ojson = nlohmann::ordered_json;

[[noreturn]] void bad(const std::string& key, const json& v, const std::string& want) {
  throw std::invalid_argument("run setting '" + printable(key) + "' = " + json_for_message(v) + ": " + want);
}

// One run setting: how to read, check and write it, and its flag. `check` takes the JSON
// value and returns it normalised (or throws); `assign` stores a checked value.
struct Field {
  std::string key;
  std::string doc;
  unsigned scope = kRunScopeAll;
  std::function<json(const json&)> check;
  std::function<ojson(const RunSpec&)> get;
  std::function<void(RunSpec&, const json&)> assign;
  // Adds the flag bound to the spec's member; the validator runs `check` on the text.
  std::function<CLI::Option*(CLI::App&, RunSpec&, const std::string& flag, const Field&)> add_flag;
};

std::string flag_of(const std::string& key) {
  std::string f = "--" + key;
  std::replace(f.begin(), f.end(), '_', '-');
  return f;
}

// Text from a flag -> the JSON value `check` expects.
json number_from_text(const std::string& text) {
  double d = 0;
  if (!parse_number(text, &d)) return json(text);  // check() names it "must be a number"
  if (d == std::floor(d) && std::abs(d) < 9e15) return json(static_cast<int64_t>(d));
  return json(d);
}

// A CLI11 validator that runs the field's check on the flag's text (message without the
// "run setting" prefix: CLI11 puts the flag's name in front).
CLI::Validator validator(const Field& f, bool numeric) {
  const auto check = f.check;
  const std::string key = f.key;
  return CLI::Validator(
      [check, key, numeric](std::string& text) -> std::string {
        try {
          check(numeric ? number_from_text(text) : json(text));
          return {};
        } catch (const std::invalid_argument& e) {
          const std::string msg = e.what();
          const auto colon = msg.find(": ");
          return colon == std::string::npos ? msg : "'" + text + "' " + msg.substr(colon + 2);
        }
      },
      "");
}

template <typename T>
Field integer_field(std::string key, T RunSpec::*member, int64_t lo, int64_t hi, std::string doc,
                    unsigned scope = kRunScopeAll) {
  Field f;
  f.key = key;
  f.doc = std::move(doc);
  f.scope = scope;
  f.check = [key, lo, hi](const json& v) -> json {
    if (!v.is_number()) bad(key, v, "must be an integer");
    if (!v.is_number_integer()) {
      const double d = v.get<double>();
      if (d != std::floor(d) || !std::isfinite(d)) bad(key, v, "must be an integer");
    }
    const double d = v.get<double>();
    if (d < static_cast<double>(lo) || d > static_cast<double>(hi))
      bad(key, v, "must be in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
    return json(static_cast<int64_t>(d));
  };
  f.get = [member](const RunSpec& s) { return ojson(s.*member); };
  f.assign = [member](RunSpec& s, const json& v) { s.*member = static_cast<T>(v.get<int64_t>()); };
  f.add_flag = [member](CLI::App& app, RunSpec& s, const std::string& flag, const Field& self) {
    return app.add_option(flag, s.*member, self.doc)->check(validator(self, true))->capture_default_str();
  };
  return f;
}

Field number_field(std::string key, double RunSpec::*member, double lo, double hi, bool lo_open, std::string doc,
                   unsigned scope = kRunScopeAll) {
  Field f;
  f.key = key;
  f.doc = std::move(doc);
  f.scope = scope;
  f.check = [key, lo, hi, lo_open](const json& v) -> json {
    if (!v.is_number()) bad(key, v, "must be a number");
    const double d = v.get<double>();
    if (!std::isfinite(d) || d < lo || d > hi || (lo_open && d == lo))
      bad(key, v, "must be in " + std::string(lo_open ? "(" : "[") + json(lo).dump() + ", " + json(hi).dump() + "]");
    return json(d);
  };
  f.get = [member](const RunSpec& s) { return ojson(s.*member); };
  f.assign = [member](RunSpec& s, const json& v) { s.*member = v.get<double>(); };
  f.add_flag = [member](CLI::App& app, RunSpec& s, const std::string& flag, const Field& self) {
    return app.add_option(flag, s.*member, self.doc)->check(validator(self, true))->capture_default_str();
  };
  return f;
}

// A string from a list that may grow at run time (models and strategies register themselves).
Field choice_field(std::string key, std::string RunSpec::*member, std::function<std::vector<std::string>()> choices,
                   std::string doc, unsigned scope = kRunScopeAll) {
  Field f;
  f.key = key;
  f.doc = std::move(doc);
  f.scope = scope;
  f.check = [key, choices](const json& v) -> json {
    if (!v.is_string()) bad(key, v, "must be a string");
    const auto allowed = choices();
    if (std::find(allowed.begin(), allowed.end(), v.get<std::string>()) == allowed.end())
      bad(key, v, "must be one of " + join(allowed));
    return v;
  };
  f.get = [member](const RunSpec& s) { return ojson(s.*member); };
  f.assign = [member](RunSpec& s, const json& v) { s.*member = v.get<std::string>(); };
  f.add_flag = [member, choices](CLI::App& app, RunSpec& s, const std::string& flag, const Field& self) {
    return app.add_option(flag, s.*member, self.doc + " (" + join(choices(), " | ") + ")")
        ->check(validator(self, false))
        ->capture_default_str();
  };
  return f;
}

// A list of positive integers (layer widths, a shape); `allow_empty` for the mlp's widths.
Field widths_field(std::string key, std::vector<int64_t> RunSpec::*member, bool allow_empty, std::string doc,
                   unsigned scope = kRunScopeAll) {
  Field f;
  f.key = key;
  f.doc = std::move(doc);
  f.scope = scope;
  f.check = [key, allow_empty](const json& v) -> json {
    const std::string want = std::string("must be a") + (allow_empty ? "n" : " non-empty") +
                             " array of positive integers";
    if (!v.is_array() || (!allow_empty && v.empty())) bad(key, v, want);
    for (const auto& e : v)
      if (!e.is_number_integer() || e.get<int64_t>() < 1 || e.get<int64_t>() > (int64_t{1} << 31)) bad(key, v, want);
    return v;
  };
  f.get = [member](const RunSpec& s) { return ojson(s.*member); };
  f.assign = [member](RunSpec& s, const json& v) { s.*member = v.get<std::vector<int64_t>>(); };
  f.add_flag = [member](CLI::App& app, RunSpec& s, const std::string& flag, const Field& self) {
    // Each element is checked as one positive integer.
    return app.add_option(flag, s.*member, self.doc)
        ->check(CLI::Validator(
            [](std::string& text) -> std::string {
              const json v = number_from_text(text);
              if (v.is_number_integer() && v.get<int64_t>() >= 1) return {};
              return "'" + text + "' is not a positive integer";
            },
            ""))
        ->capture_default_str();
  };
  return f;
}

// A list of distinct client (certificate) names: 1 to 64 letters, digits, '.', '_' or '-', as
// `fedctl pki issue` makes them. Flags take them comma-separated or repeated.
Field names_field(std::string key, std::vector<std::string> RunSpec::*member, std::string doc,
                  unsigned scope = kRunScopeAll) {
  Field f;
  f.key = key;
  f.doc = std::move(doc);
  f.scope = scope;
  f.check = [key](const json& v) -> json {
    if (!v.is_array()) bad(key, v, "must be an array of client names");
    std::set<std::string> seen;
    for (const auto& e : v) {
      const std::string why = e.is_string() ? client_name_problem(e.get<std::string>()) : "is not a string";
      if (!why.empty()) bad(key, v, "entry " + json_for_message(e) + " " + why);
      if (!seen.insert(e.get<std::string>()).second) bad(key, v, "names " + json_for_message(e) + " twice");
    }
    return v;
  };
  f.get = [member](const RunSpec& s) { return ojson(s.*member); };
  f.assign = [member](RunSpec& s, const json& v) { s.*member = v.get<std::vector<std::string>>(); };
  f.add_flag = [member](CLI::App& app, RunSpec& s, const std::string& flag, const Field& self) {
    return app.add_option(flag, s.*member, self.doc)
        ->delimiter(',')
        ->check(CLI::Validator(
            [](std::string& text) -> std::string {
              const std::string why = client_name_problem(text);
              return why.empty() ? why : "'" + text + "' " + why;
            },
            ""));
  };
  return f;
}

std::vector<std::string> optimizer_names() { return {"sgd", "adam"}; }
std::vector<std::string> local_training_names() { return {"standard", "fal"}; }
std::vector<std::string> eval_attack_names() { return {"none", "fgsm", "pgd", "all"}; }
std::vector<std::string> dp_names() { return {"none", "central", "distributed"}; }
std::vector<std::string> secagg_names() { return {"none", "secagg", "secagg+"}; }

// The table: every run setting, once. Order is the JSON's and the help's.
const std::vector<Field>& fields() {
  static const std::vector<Field> table = [] {
    std::vector<Field> t;
    t.push_back(choice_field("model", &RunSpec::model, registered_models, "model architecture"));
    t.push_back(widths_field("hidden", &RunSpec::hidden, true, "mlp: hidden layer widths"));
    t.push_back(widths_field("input_shape", &RunSpec::input_shape, false,
                             "one example's shape when there is no evaluation set", kRunScopeDeploy));
    t.push_back(integer_field("num_classes", &RunSpec::num_classes, 2, 1 << 20, "classes when there is no evaluation set",
                              kRunScopeDeploy));
    t.push_back(integer_field("local_epochs", &RunSpec::local_epochs, 0, 100000, "local epochs per round"));
    t.push_back(integer_field("local_steps", &RunSpec::local_steps, 0, int64_t{1} << 40,
                              "local optimizer steps per round; > 0 replaces --local-epochs (0: use epochs)"));
    t.push_back(integer_field("batch_size", &RunSpec::batch_size, 1, 1 << 24, "local batch size"));
    t.push_back(choice_field("optimizer", &RunSpec::optimizer, optimizer_names, "local optimizer"));
    t.push_back(number_field("lr", &RunSpec::lr, 0, 1e3, true, "local learning rate"));
    t.push_back(number_field("momentum", &RunSpec::momentum, 0, 0.999, false, "local SGD momentum"));
    t.push_back(number_field("weight_decay", &RunSpec::weight_decay, 0, 1e3, false, "local weight decay"));
    t.push_back(choice_field("local_training", &RunSpec::local_training, local_training_names,
                             "standard, or fal: federated adversarial learning (each local step trains on PGD "
                             "examples crafted against the current model; combines with any strategy)"));
    t.push_back(number_field("fal_epsilon", &RunSpec::fal_epsilon, 0, 10, true,
                             "fal: L-inf radius of the adversarial examples, in raw input units (pixels in [0, 1])"));
    t.push_back(integer_field("fal_steps", &RunSpec::fal_steps, 1, 1000, "fal: PGD steps per batch"));
    t.push_back(number_field("fal_alpha", &RunSpec::fal_alpha, 0, 10, false,
                             "fal: PGD step size in raw units (0: 2.5 * fal_epsilon / fal_steps)"));
    t.push_back(choice_field("fal_loss", &RunSpec::fal_loss, [] { return adversarial_loss_names(); },
                             "fal: pgd trains on the adversarial examples (Madry et al.), trades on clean "
                             "examples plus fal_beta * KL(clean || adversarial) (Zhang et al.)"));
    t.push_back(number_field("fal_clean_weight", &RunSpec::fal_clean_weight, 0, 1, false,
                             "fal, pgd loss: weight of the clean examples' loss (0: adversarial only)"));
    t.push_back(number_field("fal_beta", &RunSpec::fal_beta, 0, 1000, false, "fal, trades loss: robustness weight"));
    t.push_back(choice_field("eval_attack", &RunSpec::eval_attack, eval_attack_names,
                             "also evaluate accuracy under attack: fgsm, pgd (eval_pgd_steps steps), all, none"));
    t.push_back(number_field("eval_epsilon", &RunSpec::eval_epsilon, 0, 10, true,
                             "robust evaluation: L-inf radius in raw input units"));
    t.push_back(integer_field("eval_pgd_steps", &RunSpec::eval_pgd_steps, 1, 1000, "robust evaluation: PGD steps"));
    t.push_back(integer_field("eval_attack_examples", &RunSpec::eval_attack_examples, 0, int64_t{1} << 40,
                              "robust evaluation: attack the first N test examples (0: all)"));
    t.push_back(choice_field("strategy", &RunSpec::strategy, registered_strategies,
                             "aggregation strategy; parameters with --strategy-param KEY=VALUE (`fedsim strategies` "
                             "or `fedctl strategies` lists them)"));
    t.push_back(choice_field("dp", &RunSpec::dp, dp_names,
                             "client-level differential privacy: central clips each update to dp_clip and adds "
                             "Gaussian noise dp_noise * dp_clip to their sum (DP-FedAvg; FedAvg-family strategies); "
                             "distributed: the clients do both under secagg"));
    t.push_back(number_field("dp_clip", &RunSpec::dp_clip, 0, 1e6, true, "dp: L2 bound of one client's update"));
    t.push_back(number_field("dp_noise", &RunSpec::dp_noise, 0, 1e6, false,
                             "dp: noise multiplier z (noise std on the sum: z * dp_clip)"));
    t.push_back(number_field("dp_delta", &RunSpec::dp_delta, 0, 1, true, "dp: delta of the reported (epsilon, delta)"));
    t.push_back(choice_field("secagg", &RunSpec::secagg, secagg_names,
                             "secure aggregation (Bonawitz et al.; secagg+: the sparse graph of Bell et al.): the "
                             "coordinator learns only the sum of the updates (FedAvg-family strategies)"));
    t.push_back(integer_field("secagg_neighbours", &RunSpec::secagg_neighbours, 0, 1 << 20,
                              "secagg+: neighbours per client (0: 2 ceil(log2 n))"));
    t.push_back(number_field("secagg_threshold", &RunSpec::secagg_threshold, 0.5, 1, true,
                             "secagg: fraction of each neighbourhood that must survive to unmask"));
    t.push_back(number_field("secagg_clip_range", &RunSpec::secagg_clip_range, 0, 1e6, true,
                             "secagg: per-coordinate bound of an update (its fixed-point range)"));
    t.push_back(number_field("max_update_norm", &RunSpec::max_update_norm, 0, 1e12, false,
                             "reject an update whose L2 distance from the model its client was sent exceeds this "
                             "(0: no bound)"));
    t.push_back(integer_field("max_examples_per_client", &RunSpec::max_examples_per_client, 1,
                              int64_t{1} << 53,
                              "most training (or test) examples a client may claim: the weight of its update"));
    t.push_back(choice_field("workflow", &RunSpec::workflow, workflow_names,
                             "scatter-gather: the round's clients train at once, then aggregate; cyclic: one after "
                             "another, each from the previous one's model"));
    t.push_back(integer_field("rounds", &RunSpec::rounds, 1, 1000000, "federated rounds"));
    t.push_back(number_field("fraction", &RunSpec::fraction, 0, 1, true, "fraction of clients per round"));
    t.push_back(integer_field("min_clients", &RunSpec::min_clients, 1, 1000000,
                              "at least this many clients per round (deployments: to start)"));
    t.push_back(names_field("client_names", &RunSpec::client_names,
                            "the run's clients by certificate name, in index order (comma-separated): one seed "
                            "then gives one run whatever order they register in; others are refused (empty: any "
                            "certified client, indexed as it first registers)",
                            kRunScopeDeploy));
    t.push_back(integer_field("eval_every", &RunSpec::eval_every, 0, 1000000,
                              "evaluate the global model every k rounds (0: only after the last)"));
    t.push_back(integer_field("local_eval_every", &RunSpec::local_eval_every, 0, 1000000,
                              "every k rounds, clients evaluate the model they receive on their own test split "
                              "before training (personalized accuracy; 0: never, so that fit only trains)"));
    t.push_back(number_field("fraction_evaluate", &RunSpec::fraction_evaluate, 0, 1, false,
                             "after each round, this fraction of the clients evaluates the new global model on its "
                             "own test data (federated evaluation; 0: none)"));
    t.push_back(integer_field("seed", &RunSpec::seed, 0, std::numeric_limits<int64_t>::max(),
                              "seed for initialisation, selection and shuffling"));
    t.push_back(choice_field("update_encoding", &RunSpec::update_encoding,
                             [] { return update_encoding_names(); }, "how clients encode their updates",
                             kRunScopeDeploy));
    t.push_back(number_field("topk_fraction", &RunSpec::topk_fraction, 1e-6, 1, false,
                             "topk encoding: fraction of entries sent", kRunScopeDeploy));
    return t;
  }();
  return table;
}

// The strategies that declare a dedicated flag, each with the parameter it sets.
std::vector<std::pair<const StrategySpec*, const ParamSpec*>> flag_owners(const std::string& flag) {
  std::vector<std::pair<const StrategySpec*, const ParamSpec*>> out;
  for (const auto* s : strategy_specs())
    for (const auto& p : s->params)
      if (p.flag == flag) out.emplace_back(s, &p);
  return out;
}

const Field* find_field(const std::string& key) {
  for (const auto& f : fields())
    if (f.key == key) return &f;
  return nullptr;
}

}  // namespace

const std::vector<std::string>& update_encoding_names() {
  static const std::vector<std::string> names{"fp32", "fp16", "bf16", "int8", "topk"};
  return names;
}

std::vector<std::string> run_setting_keys() {
  std::vector<std::string> keys;
  for (const auto& f : fields()) keys.push_back(f.key);
  keys.push_back("strategy_params");
  return keys;
}

TrainOptions RunSpec::train_options() const {
  TrainOptions t;
  t.epochs = local_steps > 0 ? 0 : local_epochs;
  t.max_steps = local_steps;
  t.batch_size = batch_size;
  t.optimizer = optimizer;
  t.lr = lr;
  t.momentum = momentum;
  t.weight_decay = weight_decay;
  t.seed = seed;
  t.adversarial.enabled = local_training == "fal";
  t.adversarial.attack.method = "pgd";
  t.adversarial.attack.epsilon = fal_epsilon;
  t.adversarial.attack.steps = fal_steps;
  t.adversarial.attack.alpha = fal_alpha;
  t.adversarial.loss = fal_loss;
  t.adversarial.clean_weight = fal_clean_weight;
  t.adversarial.beta = fal_beta;
  return t;
}

EvalOptions RunSpec::eval_options() const {
  EvalOptions e;
  e.attack_examples = eval_attack_examples;
  AttackOptions a;
  a.epsilon = eval_epsilon;
  a.steps = eval_pgd_steps;
  if (eval_attack == "fgsm" || eval_attack == "all") {
    a.method = "fgsm";
    e.attacks.push_back(a);
  }
  if (eval_attack == "pgd" || eval_attack == "all") {
    a.method = "pgd";
    e.attacks.push_back(a);
  }
  return e;
}

EngineOptions RunSpec::engine_options() const {
  EngineOptions eo;
  eo.rounds = rounds;
  eo.fraction = fraction;
  eo.min_clients = min_clients;
  eo.seed = seed;
  eo.eval_every = eval_every;
  eo.local_eval_every = local_eval_every;
  eo.fraction_evaluate = fraction_evaluate;
  eo.workflow = parse_workflow(workflow);
  eo.max_update_norm = max_update_norm;
  eo.max_examples = max_examples_per_client;
  return eo;
}

ModelSpec RunSpec::model_spec(const std::string& path) const {
  ModelSpec spec;
  spec.name = model;
  spec.path = path;
  spec.hidden = hidden;
  spec.input_shape = input_shape;
  spec.num_classes = num_classes;
  return spec;
}

void RunSpec::validate() {
  for (const auto& f : fields()) f.check(json::parse(f.get(*this).dump()));
  if (local_epochs == 0 && local_steps == 0)
    throw std::invalid_argument("run settings: local_epochs and local_steps are both 0 (nothing to train)");
  strategy_params = complete_strategy_params(strategy, strategy_params);
  train_options().validate();
  eval_options().validate();
  check_strategy_training(strategy, strategy_params, train_options());
  if (!client_names.empty() && static_cast<size_t>(min_clients) > client_names.size())
    throw std::invalid_argument("run settings: min_clients = " + std::to_string(min_clients) + " but client_names names only " +
                                std::to_string(client_names.size()));
  if (dp != "none" || secagg != "none") {
    const std::string key = dp != "none" ? "dp" : "secagg";
    const std::string value = dp != "none" ? dp : secagg;
    if (!strategy_spec(strategy).mean_aggregation)
      throw std::invalid_argument("run setting '" + key + "' = \"" + value + "\": strategy " + strategy +
                                  " does not aggregate a mean of the clients' models (it works with " +
                                  join(mean_aggregation_strategies()) + ")");
    if (workflow != "scatter-gather")
      throw std::invalid_argument("run setting '" + key + "' = \"" + value + "\": needs the scatter-gather workflow (one mean per round)");
    if (dp == "distributed" && secagg == "none")
      throw std::invalid_argument("run setting 'dp' = \"distributed\": needs secagg (the clients add the noise under its masks)");
    if (dp == "central" && secagg != "none")
      throw std::invalid_argument("run setting 'dp' = \"central\": the coordinator cannot clip updates it never sees "
                                  "under secagg; use dp distributed");
  }
}

std::unique_ptr<Strategy> RunSpec::create_strategy() const {
  auto inner = fl::create_strategy(strategy, strategy_params);
  if (secagg != "none") {
    SecAggOptions o;
    o.sparse = secagg == "secagg+";
    o.neighbours = static_cast<int>(secagg_neighbours);
    o.threshold = secagg_threshold;
    o.clip_range = secagg_clip_range;
    o.graph_seed = seed;
    if (dp == "distributed") {
      o.dp_clip = dp_clip;
      o.dp_noise = dp_noise;
      o.dp_delta = dp_delta;
    }
    return std::make_unique<SecureAggregation>(std::move(inner), o);
  }
  if (dp == "none") return inner;
  DpOptions o;
  o.clip = dp_clip;
  o.noise_multiplier = dp_noise;
  o.delta = dp_delta;
  o.seed = seed;
  return std::make_unique<DifferentialPrivacy>(std::move(inner), o);
}

std::shared_ptr<const ClientAlgorithm> RunSpec::create_client_algorithm() const {
  auto algorithm = fl::create_client_algorithm(strategy);
  return secagg == "none" ? algorithm : secure_aggregation_client(std::move(algorithm));
}

nlohmann::ordered_json RunSpec::to_json() const {
  ojson j;
  for (const auto& f : fields()) {
    j[f.key] = f.get(*this);
    if (f.key == "strategy") j["strategy_params"] = strategy_params_to_json(strategy, strategy_params);
  }
  return j;
}

void RunSpec::apply_json(const nlohmann::json& s) {
  if (!s.is_object()) throw std::invalid_argument("run settings must be a JSON object, got " + json_for_message(s));
  for (const auto& [key, v] : s.items()) {
    if (key == "strategy_params") continue;  // after the strategy is known
    const Field* f = find_field(key);
    if (!f) throw std::invalid_argument("unknown run setting '" + printable(key) + "' (known: " + join(run_setting_keys()) + ")");
    const std::string before = strategy;
    f->assign(*this, f->check(v));
    if (key == "strategy" && strategy != before) strategy_params.clear();  // the new strategy's defaults
  }
  if (s.contains("strategy_params")) {
    try {
      strategy_params = strategy_params_from_json(strategy, s["strategy_params"]);
    } catch (const std::invalid_argument& e) {
      throw std::invalid_argument(std::string("run setting 'strategy_params': ") + e.what());
    }
  }
  validate();
}

RunSpec RunSpec::from_json(const nlohmann::json& settings) {
  RunSpec spec;
  spec.apply_json(settings);
  return spec;
}

// ---------------------------------------------------------------- flags

RunOptions::RunOptions(CLI::App& app, RunSpec& spec, unsigned scope) : app_(app), spec_(spec) {
  for (const auto& f : fields())
    if (f.scope & scope) options_[f.key] = f.add_flag(app, spec, flag_of(f.key), f);
  app.add_option("--strategy-param", param_entries_, "a strategy parameter KEY=VALUE (repeatable)");
  for (const auto* s : strategy_specs())
    for (const auto& p : s->params) {
      if (p.flag.empty() || param_flags_.count(p.flag)) continue;
      param_flags_[p.flag];
      const ParamSpec spec = p;
      app.add_option("--" + p.flag, param_flags_[p.flag], s->name + ": " + p.doc + " [" + p.describe() + "]")
          ->check(CLI::Validator(
              [spec](std::string& text) -> std::string {
                try {
                  spec.parse(text, spec.name);
                  return {};
                } catch (const std::invalid_argument& e) {
                  return e.what();
                }
              },
              ""));
    }
}

RunOptions::~RunOptions() = default;

StrategyParams RunOptions::resolved_params() const {
  StrategyParams params = parse_strategy_params(spec_.strategy, param_entries_);
  for (const auto& [flag, text] : param_flags_) {
    if (app_.get_option("--" + flag)->count() == 0) continue;
    const ParamSpec* p = nullptr;
    std::vector<std::string> owners;
    for (const auto& [s, q] : flag_owners(flag)) {
      owners.push_back(s->name);
      if (s->name == spec_.strategy) p = q;
    }
    if (!p)
      throw std::invalid_argument("--" + flag + " is a parameter of " + join(owners) + ", not of the run's strategy " +
                                  spec_.strategy);
    if (params.count(p->name))
      throw std::invalid_argument("--" + flag + " and --strategy-param " + p->name + "=... both given");
    params[p->name] = p->parse(text, "--" + flag);
  }
  return params;
}

RunSpec& RunOptions::finish() {
  // Flags never given keep the program's defaults; strategy parameters start from the strategy's.
  spec_.strategy_params = resolved_params();
  spec_.validate();
  return spec_;
}

nlohmann::ordered_json RunOptions::given_json() const {
  ojson j = ojson::object();
  for (const auto& f : fields()) {
    auto it = options_.find(f.key);
    if (it != options_.end() && it->second->count() > 0) j[f.key] = f.get(spec_);
  }
  const bool strategy_given = j.contains("strategy");
  bool any_param = !param_entries_.empty();
  for (const auto& kv : param_flags_) any_param |= app_.get_option("--" + kv.first)->count() > 0;
  if (!any_param) return j;
  if (strategy_given) {
    j["strategy_params"] = strategy_params_to_json(spec_.strategy, resolved_params());
    return j;
  }
  // The coordinator knows the run's strategy: send the text, it parses it by that strategy's kinds.
  ojson p = ojson::object();
  for (const auto& e : param_entries_) {
    const auto [key, text] = split_strategy_param(e);
    if (p.contains(key)) throw std::invalid_argument("--strategy-param '" + key + "' is given twice");
    p[key] = text;
  }
  for (const auto& [flag, text] : param_flags_) {
    if (app_.get_option("--" + flag)->count() == 0) continue;
    for (const auto& owner : flag_owners(flag)) p[owner.second->name] = text;
  }
  j["strategy_params"] = p;
  return j;
}

}  // namespace fl
