#include "strategies/fedcmd.h"

#include "strategies/registry.h"

#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>

#include "common/io/safetensors.h"

namespace fl {

// ---------------------------------------------------------------- selection maths

Gaussian1d fit_gaussian(const at::Tensor& t) {
  if (!t.defined() || t.numel() == 0) throw std::invalid_argument("fedcmd: cannot fit a Gaussian to an empty tensor");
  torch::NoGradGuard no_grad;
  const auto f = t.detach().to(at::kDouble);
  const auto mn = f.min(), mx = f.max();
  const auto n = (f - mn) / (mx - mn);  // constant tensor: 0/0 = NaN, the degenerate case
  return {n.mean().item<double>(), n.std().item<double>()};
}

double gaussian_distance(const Gaussian1d& a, const Gaussian1d& b, FedCmdDistance mode) {
  const double dmu = a.mean - b.mean, ds = a.std - b.std;
  return mode == FedCmdDistance::kMean ? std::abs(dmu) : std::sqrt(dmu * dmu + ds * ds);
}

std::vector<double> fedcmd_layer_scores(const std::vector<at::Tensor>& outs, const at::Tensor& x,
                                        const at::Tensor& y, FedCmdDistance mode) {
  if (outs.size() < 2) throw std::invalid_argument("fedcmd: scores need o_0 and at least one candidate output");
  const auto gx = fit_gaussian(x), gy = fit_gaussian(y.to(at::kDouble));
  std::vector<double> dx, dy;
  for (const auto& o : outs) {
    const auto g = fit_gaussian(o);
    dx.push_back(gaussian_distance(g, gx, mode));
    dy.push_back(gaussian_distance(g, gy, mode));
  }
  std::vector<double> scores;
  for (size_t l = 1; l < outs.size(); ++l)
    scores.push_back(std::abs(std::abs(dy[l] - dy[l - 1]) - std::abs(dx[l] - dx[l - 1])));
  return scores;
}

int fedcmd_vote(const std::vector<double>& scores) {
  int best = -1;
  for (size_t i = 0; i < scores.size(); ++i) {
    if (std::isnan(scores[i])) return -1;
    if (best < 0 || scores[i] < scores[best]) best = static_cast<int>(i);
  }
  return best;
}

double fedcmd_similarity(const ModelState& a, const ModelState& b) {
  a.check_same_layout(b, "fedcmd similarity");
  torch::NoGradGuard no_grad;
  // Blocks of entries sharing a first dimension, in order of first appearance.
  std::vector<std::pair<int64_t, std::pair<std::vector<at::Tensor>, std::vector<at::Tensor>>>> blocks;
  for (size_t k = 0; k < a.size(); ++k) {
    const auto& ta = a.entries()[k].tensor;
    const auto& tb = b.entries()[k].tensor;
    if (!ta.is_floating_point()) continue;
    const int64_t rows = ta.dim() == 0 ? 1 : ta.size(0);
    auto it = std::find_if(blocks.begin(), blocks.end(), [&](const auto& blk) { return blk.first == rows; });
    if (it == blocks.end()) it = blocks.insert(blocks.end(), {rows, {}});
    it->second.first.push_back(ta.reshape({rows, -1}).to(at::kDouble));
    it->second.second.push_back(tb.reshape({rows, -1}).to(at::kDouble));
  }
  double sum = 0;
  int64_t rows = 0;
  for (const auto& blk : blocks) {
    const auto ma = torch::cat(blk.second.first, 1), mb = torch::cat(blk.second.second, 1);
    sum += torch::cosine_similarity(ma, mb, 1, 1e-8).sum().item<double>();
    rows += blk.first;
  }
  if (rows == 0) return 0;
  return std::max(0.0, sum / static_cast<double>(rows));
}

std::vector<std::string> state_groups(const ModelState& state) {
  std::vector<std::string> groups;
  for (const auto& e : state.entries()) {
    const std::string g = e.name.substr(0, e.name.find('.'));
    if (std::find(groups.begin(), groups.end(), g) == groups.end()) groups.push_back(g);
  }
  return groups;
}

int default_first_candidate(const ModelState& state, const std::vector<std::string>& groups) {
  int first = 0;
  for (const auto& e : state.entries()) {
    const auto& n = e.name;
    const bool weight = n.size() >= 6 && n.compare(n.size() - 6, 6, "weight") == 0;
    if (!weight || e.tensor.dim() != 4) continue;
    const auto it = std::find(groups.begin(), groups.end(), n.substr(0, n.find('.')));
    first = std::max(first, static_cast<int>(it - groups.begin()) + 1);
  }
  return first;
}

namespace {

bool has_prefix(const std::string& s, const std::string& p) { return s.compare(0, p.size(), p) == 0; }
bool has_suffix(const std::string& s, const std::string& p) {
  return s.size() >= p.size() && s.compare(s.size() - p.size(), p.size(), p) == 0;
}
// BatchNorm's running statistics: always local.
bool is_bn_stat(const std::string& name) {
  return has_suffix(name, ".running_mean") || has_suffix(name, ".running_var") ||
         has_suffix(name, ".num_batches_tracked");
}

int config_int(const ClientTask& task, const std::string& key, int lo, int hi) {
  auto it = task.config.find(key);
  if (it == task.config.end()) throw std::invalid_argument("fedcmd task: missing config '" + key + "'");
  const double v = it->second;
  if (!(v >= lo && v <= hi) || v != std::floor(v))
    throw std::invalid_argument("fedcmd task: config '" + key + "' = " + std::to_string(v) +
                                " is not an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
  return static_cast<int>(v);
}

// The floating parameters of group `g` (what l*'s delta holds): no BatchNorm statistics.
std::vector<std::string> delta_names(const ModelState& s, const std::string& g) {
  std::vector<std::string> out;
  for (const auto& e : s.entries())
    if (has_prefix(e.name, g + ".") && e.tensor.is_floating_point() && !is_bn_stat(e.name)) out.push_back(e.name);
  return out;
}

class FedCmdClient : public ClientAlgorithm {
 public:
  ClientResult fit(const ClientTask& task, ClientContext& ctx) const override {
    const auto groups = ctx.model.layer_groups();
    const int n_groups = static_cast<int>(groups.size());
    const bool selecting = config_int(task, "fedcmd_select", 0, 1) == 1;
    const int first = config_int(task, "fedcmd_first", 0, n_groups - 1);
    const int layer = config_int(task, "fedcmd_layer", -1, n_groups - 1);
    const auto mode = static_cast<FedCmdDistance>(config_int(task, "fedcmd_distance", 0, 1));
    const auto delta_from = static_cast<FedCmdDelta>(config_int(task, "fedcmd_delta", 0, 1));
    if (!selecting && layer < first)
      throw std::invalid_argument("fedcmd task: after the selection phase fedcmd_layer (" + std::to_string(layer) +
                                  ") must name a candidate (>= " + std::to_string(first) + ")");
    ClientResult result = begin_fit(task, ctx);
    const std::string lstar = selecting ? "" : groups[layer];
    ModelState before;
    std::vector<std::string> dnames;
    if (!selecting) {
      const auto s = ctx.model.state();
      dnames = delta_names(s, lstar);
      // kShared: the task carries the shared l* (the client's own copy replaced it in the model).
      before = delta_from == FedCmdDelta::kShared ? task.model.select(dnames) : s.select(dnames);
    }

    TrainHooks hooks;
    auto votes = std::make_shared<std::vector<int64_t>>(n_groups - first, 0);
    if (selecting) {
      hooks.on_batch = [votes, first, mode](Model& m, const at::Tensor& x, const at::Tensor& y) {
        torch::NoGradGuard no_grad;
        // The same train-mode forward as the step, but it must not move BatchNorm's running
        // statistics a second time: restore them.
        const ModelState saved = m.state();
        auto outs = m.forward_groups(x);
        m.load_state(saved);
        std::vector<at::Tensor> o{first > 0 ? outs[first - 1] : x};
        for (size_t k = first; k < outs.size(); ++k) o.push_back(outs[k]);
        const int v = fedcmd_vote(fedcmd_layer_scores(o, x, y, mode));
        if (v >= 0) ++(*votes)[v];
      };
    }
    TrainOptions options = ctx.train_options;
    options.seed = task.seed;
    auto tr = LocalTrainer(options).train(ctx.model, ctx.train, hooks);

    // Sent: everything but l*; l* travels only as its delta.
    std::vector<std::string> sent, kept;
    for (const auto& e : tr.state.entries()) {
      const bool in_lstar = selecting ? false : has_prefix(e.name, lstar + ".");
      if (!in_lstar) sent.push_back(e.name);
      if (in_lstar || is_bn_stat(e.name)) kept.push_back(e.name);
    }
    result.model = tr.state.select(sent);
    if (!selecting) result.tensors[kFedCmdDeltaKey] = tr.state.select(dnames) - before;
    if (kept.empty()) ctx.personal.erase("model");
    else ctx.personal["model"] = tr.state.select(kept);
    if (selecting)
      for (int k = 0; k < n_groups - first; ++k)
        result.metrics[kFedCmdVotePrefix + groups[first + k]] = static_cast<double>((*votes)[k]);
    result.num_examples = tr.num_examples;
    result.metrics["train_loss"] = tr.loss;
    result.metrics["train_accuracy"] = tr.accuracy;
    result.metrics["samples"] = static_cast<double>(tr.samples_seen);
    result.metrics["train_s"] = tr.wall_s;
    return result;
  }
};

}  // namespace

// ---------------------------------------------------------------- server side

FedCmd::FedCmd(double rho, FedCmdDistance distance, int first_candidate, FedCmdDelta delta, FedCmdHead head,
               FedCmdBody body)
    : rho_(rho), distance_(distance), first_override_(first_candidate), delta_(delta), head_(head), body_(body) {
  if (!(rho > 0 && rho <= 1)) throw std::invalid_argument("fedcmd: rho must be in (0, 1], got " + std::to_string(rho));
  if (first_candidate < -1) throw std::invalid_argument("fedcmd: first_layer must be >= 0 (or -1: automatic)");
}

void FedCmd::initialize(const ModelState& initial) {
  Strategy::initialize(initial);
  groups_ = state_groups(global_);
  first_ = first_override_ >= 0 ? first_override_ : default_first_candidate(global_, groups_);
  if (first_ >= static_cast<int>(groups_.size()))
    throw std::invalid_argument("fedcmd: the first candidate layer is group #" + std::to_string(first_) +
                                " but the model has " + std::to_string(groups_.size()) +
                                " layer groups (set first_layer, or use a model with layers after its convolutions)");
  candidates_.assign(groups_.begin() + first_, groups_.end());
  initial_candidates_ = delta_ == FedCmdDelta::kInit ? global_.select(candidate_names()).clone() : ModelState();
  tally_.clear();
  selected_.clear();
  phi_.clear();
  post_.clear();
  latest_.clear();
  bodies_.clear();
}

void FedCmd::set_total_rounds(int rounds) {
  if (rounds < 1) throw std::invalid_argument("fedcmd: total rounds must be >= 1");
  total_rounds_ = rounds;
}

int FedCmd::selection_rounds() const {
  if (total_rounds_ < 1) throw std::logic_error("fedcmd: the run's total rounds are unknown (set_total_rounds)");
  return std::max(1, static_cast<int>(std::lround(rho_ * total_rounds_)));
}

bool FedCmd::is_selected_entry(const std::string& name) const {
  return !selected_.empty() && has_prefix(name, selected_ + ".");
}

bool FedCmd::is_after_selected(const std::string& name) const {
  if (selected_.empty()) return false;
  const auto l = std::find(groups_.begin(), groups_.end(), selected_) - groups_.begin();
  const auto g = std::find(groups_.begin(), groups_.end(), name.substr(0, name.find('.'))) - groups_.begin();
  return g > l;
}

void FedCmd::split_around_selected(std::vector<std::string>& body, std::vector<std::string>& post) const {
  for (const auto& e : global_.entries()) {
    if (is_after_selected(e.name)) post.push_back(e.name);
    else if (!is_selected_entry(e.name)) body.push_back(e.name);
  }
}

std::vector<std::string> FedCmd::candidate_names() const {
  std::vector<std::string> names;
  for (const auto& c : candidates_)
    for (auto& n : delta_names(global_, c)) names.push_back(std::move(n));
  return names;
}

double FedCmd::similarity(int i, int j) const {
  if (i == j) return 1.0;
  auto it = phi_.find({std::min(i, j), std::max(i, j)});
  return it == phi_.end() ? 0.0 : it->second;
}

const ModelState* FedCmd::personalized(int client) const {
  auto it = post_.find(client);
  return it == post_.end() ? nullptr : &it->second;
}

ModelState FedCmd::softmax_head(int client) const {
  std::vector<const ModelState*> states;
  std::vector<double> weights;
  for (const auto& kv : latest_) {
    states.push_back(&kv.second);
    weights.push_back(std::exp(similarity(client, kv.first)));
  }
  return ModelState::weighted_average(states, weights);
}

std::vector<ClientTask> FedCmd::configure_fit(int round, const std::vector<int>& clients) {
  if (global_.empty()) throw std::logic_error("fedcmd: configure_fit before initialize");
  selection_rounds();  // T must be known
  const int layer = selected_.empty()
                        ? -1
                        : static_cast<int>(std::find(groups_.begin(), groups_.end(), selected_) - groups_.begin());
  std::vector<ClientTask> tasks;
  for (int c : clients) {
    ClientTask t;
    t.round = round;
    t.client_id = c;
    // Always the full model: a client's own personal tensors override what they must, so
    // nothing leaks from the previous user of a reused model replica.
    auto it = post_.find(c);
    if (head_ == FedCmdHead::kSoftmaxAll && !latest_.empty()) {
      t.model = global_.clone();
      t.model.assign(softmax_head(c));
    } else if (it == post_.end()) {
      t.model = global_;
    } else {
      t.model = global_.clone();
      t.model.assign(it->second);
    }
    t.config["fedcmd_select"] = selected_.empty() ? 1 : 0;
    t.config["fedcmd_first"] = first_;
    t.config["fedcmd_layer"] = layer;
    t.config["fedcmd_distance"] = static_cast<double>(distance_);
    // kInit is the server's business: the client measures from the shared copy (kShared).
    t.config["fedcmd_delta"] = static_cast<double>(delta_ == FedCmdDelta::kRound ? FedCmdDelta::kRound : FedCmdDelta::kShared);
    tasks.push_back(std::move(t));
  }
  return tasks;
}

Metrics FedCmd::aggregate_fit(int round, const std::vector<ClientResult>& results) {
  if (results.empty()) throw std::invalid_argument("fedcmd: no results");
  Metrics m{{"clients", static_cast<double>(results.size())}};
  auto group_index = [&](const std::string& g) {
    return static_cast<double>(std::find(groups_.begin(), groups_.end(), g) - groups_.begin());
  };

  if (selected_.empty()) {
    // Selection phase: FedAvg on every shared tensor, and the votes.
    ModelState avg = weighted_average_of(results);
    global_.check_same_layout(avg, "fedcmd round " + std::to_string(round));
    global_ = std::move(avg);
    std::vector<int64_t> sum(candidates_.size(), 0);
    const std::string prefix = kFedCmdVotePrefix;
    for (const auto& r : results)
      for (const auto& kv : r.metrics) {
        if (!has_prefix(kv.first, prefix)) continue;
        const auto name = kv.first.substr(prefix.size());
        const auto it = std::find(candidates_.begin(), candidates_.end(), name);
        const double v = kv.second;
        if (it == candidates_.end() || !(v >= 0 && v <= 1e12) || v != std::floor(v)) {
          spdlog::warn("fedcmd round {}: client {} sent an invalid vote '{}' = {} (ignored)", round, r.client_id,
                       kv.first, v);
          continue;
        }
        sum[it - candidates_.begin()] += static_cast<int64_t>(v);
      }
    int64_t total = 0;
    int best = -1;
    for (size_t k = 0; k < sum.size(); ++k) {
      total += sum[k];
      if (sum[k] > 0 && (best < 0 || sum[k] > sum[best])) best = static_cast<int>(k);
    }
    m["fedcmd_round_votes"] = static_cast<double>(total);
    m["fedcmd_round_layer"] = best >= 0 ? group_index(candidates_[best]) : -1;
    if (best >= 0) ++tally_[candidates_[best]];
    if (round >= selection_rounds() && !tally_.empty()) {
      std::string top;
      for (const auto& c : candidates_)  // candidate order: the earliest wins a tie
        if (tally_.count(c) && (top.empty() || tally_.at(c) > tally_.at(top))) top = c;
      selected_ = top;
      spdlog::info("fedcmd: layer '{}' selected after round {} ({} of {} majority rounds)", selected_, round,
                   tally_.at(top), [&] { int64_t n = 0; for (const auto& kv : tally_) n += kv.second; return n; }());
    }
    m["fedcmd_layer"] = selected_.empty() ? -1 : group_index(selected_);
    return m;
  }

  // Personalisation phase. Layers before l* (and the global copy of those after it, used for
  // evaluation and for clients not seen since the phase): example-weighted average.
  std::vector<std::string> post_names, body_names;
  split_around_selected(body_names, post_names);
  // Everything but l*, in model order: the body comes before l*, the layers after it after.
  std::vector<std::string> shared_names = body_names;
  shared_names.insert(shared_names.end(), post_names.begin(), post_names.end());
  const ModelState shared_layout = global_.select(shared_names);
  for (const auto& r : results)
    shared_layout.check_same_layout(r.model, "fedcmd round " + std::to_string(round) + ": client " +
                                                  std::to_string(r.client_id) + "'s update");
  global_.assign(weighted_average_of(results));
  if (body_ == FedCmdBody::kPopulation) {
    for (const auto& r : results) bodies_[r.client_id] = {r.model.select(body_names).clone(), r.num_examples};
    std::vector<const ModelState*> states;
    std::vector<double> weights;
    for (const auto& kv : bodies_) {
      states.push_back(&kv.second.layers);
      weights.push_back(static_cast<double>(kv.second.examples));
    }
    global_.assign(ModelState::weighted_average(states, weights));
  }

  // Phi from the deltas of l*; a client without a valid delta is similar to nobody.
  const ModelState delta_layout = global_.select(delta_names(global_, selected_));
  std::vector<const ModelState*> deltas(results.size(), nullptr);
  int valid = 0;
  for (size_t i = 0; i < results.size(); ++i) {
    auto it = results[i].tensors.find(kFedCmdDeltaKey);
    if (it != results[i].tensors.end() && it->second.same_layout(delta_layout)) {
      deltas[i] = &it->second;
      ++valid;
    } else {
      spdlog::warn("fedcmd round {}: client {} sent no valid delta of layer '{}' (similar to nobody this round)",
                   round, results[i].client_id, selected_);
    }
  }
  // kInit: from the shared copy to the initial l*, the part of every delta the client cannot see.
  std::vector<ModelState> from_init;
  if (delta_ == FedCmdDelta::kInit) {
    const ModelState offset = delta_layout - initial_candidates_.select(delta_layout.names());
    from_init.reserve(results.size());
    for (auto& d : deltas)
      if (d) {
        from_init.push_back(*d + offset);
        d = &from_init.back();
      }
  }
  const size_t n = results.size();
  std::vector<std::vector<double>> w(n, std::vector<double>(n, 1.0));
  double phi_sum = 0;
  int pairs = 0;
  for (size_t i = 0; i < n; ++i)
    for (size_t j = i + 1; j < n; ++j) {
      const double v = deltas[i] && deltas[j] ? fedcmd_similarity(*deltas[i], *deltas[j]) : 0.0;
      const int a = results[i].client_id, b = results[j].client_id;
      if (a != b) phi_[{std::min(a, b), std::max(a, b)}] = v;
      w[i][j] = w[j][i] = v;
      phi_sum += v;
      ++pairs;
    }
  // Layers after l*: client i gets sum_j Phi_ij w_j / sum_j Phi_ij (Phi_ii = 1); or, for the
  // public code's variant, keep each upload for the softmax at the client's next task.
  if (!post_names.empty() && head_ == FedCmdHead::kSoftmaxAll) {
    for (const auto& r : results) latest_[r.client_id] = r.model.select(post_names).clone();
  } else if (!post_names.empty() && head_ == FedCmdHead::kPhi) {
    std::vector<ModelState> posts;
    posts.reserve(n);
    for (const auto& r : results) posts.push_back(r.model.select(post_names));
    std::vector<const ModelState*> ptrs;
    for (const auto& p : posts) ptrs.push_back(&p);
    for (size_t i = 0; i < n; ++i) post_[results[i].client_id] = ModelState::weighted_average(ptrs, w[i]);
  }
  m["fedcmd_layer"] = group_index(selected_);
  m["fedcmd_deltas"] = valid;
  m["fedcmd_phi_mean"] = pairs > 0 ? phi_sum / pairs : 0.0;
  return m;
}


// State blob: safetensors bytes; the personalised layers as "post/<client>/<name>" tensors,
// the rest (tally, l*, Phi) as JSON in the metadata entry "fedcmd".
std::string FedCmd::save_state() const {
  nlohmann::json j;
  j["version"] = 1;
  j["selected"] = selected_;
  j["tally"] = nlohmann::json::object();
  for (const auto& kv : tally_) j["tally"][kv.first] = kv.second;
  j["phi"] = nlohmann::json::array();
  for (const auto& kv : phi_) j["phi"].push_back({kv.first.first, kv.first.second, kv.second});
  j["body_examples"] = nlohmann::json::array();
  for (const auto& kv : bodies_) j["body_examples"].push_back({kv.first, kv.second.examples});
  std::vector<ModelState::Entry> entries;
  for (const auto& kv : post_)
    for (const auto& e : kv.second.entries())
      entries.push_back({"post/" + std::to_string(kv.first) + "/" + e.name, e.tensor});
  for (const auto& kv : latest_)
    for (const auto& e : kv.second.entries())
      entries.push_back({"latest/" + std::to_string(kv.first) + "/" + e.name, e.tensor});
  // kInit measures from the initial l*, which a restarted coordinator cannot rebuild.
  if (delta_ == FedCmdDelta::kInit)
    for (const auto& e : initial_candidates_.entries()) entries.push_back({"init/" + e.name, e.tensor});
  for (const auto& kv : bodies_)
    for (const auto& e : kv.second.layers.entries())
      entries.push_back({"body/" + std::to_string(kv.first) + "/" + e.name, e.tensor});
  return to_safetensors_bytes(ModelState(std::move(entries)), {{"fedcmd", j.dump()}});
}

void FedCmd::load_state(const std::string& blob) {
  if (blob.empty()) return;  // a fresh run
  if (global_.empty()) throw std::logic_error("fedcmd: load_state before initialize");
  std::map<std::string, std::string> meta;
  const ModelState tensors = from_safetensors_bytes(blob, &meta, "fedcmd state");
  auto bad = [](const std::string& why) { return std::runtime_error("fedcmd state: " + why); };
  if (!meta.count("fedcmd")) throw bad("no 'fedcmd' metadata");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(meta.at("fedcmd"));
  } catch (const std::exception& e) {
    throw bad(std::string("metadata is not JSON: ") + e.what());
  }
  if (!j.is_object() || j.value("version", 0) != 1) throw bad("unknown version");
  std::string selected;
  std::map<std::string, int64_t> tally;
  std::map<std::pair<int, int>, double> phi;
  std::map<int, int64_t> body_examples;
  try {
    selected = j.at("selected").get<std::string>();
    for (const auto& kv : j.at("tally").items()) {
      const auto v = kv.value().get<int64_t>();
      if (std::find(candidates_.begin(), candidates_.end(), kv.key()) == candidates_.end() || v < 0)
        throw bad("tally entry '" + kv.key() + "' is not a candidate layer or is negative");
      tally[kv.key()] = v;
    }
    for (const auto& e : j.at("phi")) {
      const int a = e.at(0).get<int>(), b = e.at(1).get<int>();
      const double v = e.at(2).get<double>();
      if (a < 0 || b <= a || !(v >= 0 && v <= 1)) throw bad("Phi entry " + e.dump() + " is invalid");
      phi[{a, b}] = v;
    }
    if (j.contains("body_examples"))
      for (const auto& e : j.at("body_examples")) {
        const int c = e.at(0).get<int>();
        const auto n = e.at(1).get<int64_t>();
        if (c < 0 || n < 0) throw bad("body_examples entry " + e.dump() + " is invalid");
        body_examples[c] = n;
      }
  } catch (const nlohmann::json::exception& e) {
    throw bad(std::string("malformed: ") + e.what());
  }
  if (!selected.empty() && std::find(candidates_.begin(), candidates_.end(), selected) == candidates_.end())
    throw bad("selected layer '" + selected + "' is not a candidate of this model");
  selected_ = selected;
  tally_ = std::move(tally);
  phi_ = std::move(phi);
  // The personalised layers, checked against this model's layout after l*.
  std::vector<std::string> post_names, body_names;
  split_around_selected(body_names, post_names);
  // "post/<client>/<name>" (kPhi), "latest/<client>/<name>" (kSoftmaxAll), "body/<client>/<name>"
  // (kPopulation), "init/<name>" (kInit).
  std::map<std::string, std::map<int, std::vector<ModelState::Entry>>> by_kind;
  std::vector<ModelState::Entry> initial;
  for (const auto& e : tensors.entries()) {
    const auto kind = e.name.substr(0, e.name.find('/'));
    if (kind == "init" && kind.size() < e.name.size()) {
      initial.push_back({e.name.substr(kind.size() + 1), e.tensor});
      continue;
    }
    const auto slash = e.name.find('/', kind.size() + 1);
    if ((kind != "post" && kind != "latest" && kind != "body") || slash == std::string::npos)
      throw bad("unexpected tensor '" + e.name + "'");
    int client = -1;
    try {
      client = std::stoi(e.name.substr(kind.size() + 1, slash - kind.size() - 1));
    } catch (const std::exception&) {
    }
    if (client < 0) throw bad("tensor '" + e.name + "' names no client");
    by_kind[kind][client].push_back({e.name.substr(slash + 1), e.tensor});
  }
  const ModelState post_layout = global_.select(post_names);
  const auto device = global_.flat().defined() ? global_.flat().device() : c10::Device(c10::kCPU);
  if (delta_ == FedCmdDelta::kInit) {
    if (initial.empty()) throw bad("no initial parameters of the candidate layers (delta=init needs them)");
    ModelState s(std::move(initial));
    global_.select(candidate_names()).check_same_layout(s, "fedcmd state: the candidates' initial parameters");
    initial_candidates_ = s.to(device);
  }
  const ModelState body_layout = global_.select(body_names);
  post_.clear();
  latest_.clear();
  bodies_.clear();
  for (auto& kind : by_kind)
    for (auto& kv : kind.second) {
      ModelState s(std::move(kv.second));
      const std::string what = "fedcmd state: client " + std::to_string(kv.first) + "'s " + kind.first + " layers";
      if (kind.first == "body") {
        body_layout.check_same_layout(s, what);
        if (!body_examples.count(kv.first)) throw bad("client " + std::to_string(kv.first) + "'s body has no example count");
        bodies_[kv.first] = {s.to(device), body_examples.at(kv.first)};
      } else {
        post_layout.check_same_layout(s, what);
        (kind.first == "post" ? post_ : latest_)[kv.first] = s.to(device);
      }
    }
  for (const auto& kv : body_examples)
    if (!bodies_.count(kv.first)) throw bad("client " + std::to_string(kv.first) + " has an example count but no body");
}

namespace {

const StrategyRegistrar kFedCmd{
    {"fedcmd",
     "FedCMD (Chen et al. 2024): a Wasserstein-selected personal layer, Phi-weighted layers after it (docs/results.md)",
     {ParamSpec::number("rho", 0.1, 0, 1, "fraction of the rounds spent selecting the personal layer", true),
      ParamSpec::choice("distance", {"w2", "mean"}, "layer-vote distance: the paper's W2, or the public code's |dmu|")
          .with_flag("fedcmd-distance"),
      ParamSpec::integer("first_layer", -1, -1, 1000, "first candidate layer group (-1: after the last convolution)"),
      ParamSpec::choice("delta", {"shared", "round", "init"},
                        "what l*'s delta is measured from: the shared l*, this round's start, the initial l*")
          .with_flag("fedcmd-delta"),
      ParamSpec::choice("head", {"phi", "softmax", "shared"},
                        "the layers after l*: Phi over the round (the paper), softmax over every client's latest "
                        "upload (the public code), or the round's average")
          .with_flag("fedcmd-head"),
      ParamSpec::choice("body", {"round", "population"},
                        "the layers before l*: averaged over the round, or over every client's latest upload")
          .with_flag("fedcmd-body")},
     [](const StrategyParams& p) {
       return std::make_unique<FedCmd>(p.at("rho"), static_cast<FedCmdDistance>(static_cast<int>(p.at("distance"))),
                                       static_cast<int>(p.at("first_layer")),
                                       static_cast<FedCmdDelta>(static_cast<int>(p.at("delta"))),
                                       static_cast<FedCmdHead>(static_cast<int>(p.at("head"))),
                                       static_cast<FedCmdBody>(static_cast<int>(p.at("body"))));
     },
     [] { return std::make_shared<FedCmdClient>(); }}};

}  // namespace

}  // namespace fl
