#include "strategies/secure_aggregation.h"

#include <ATen/CPUGeneratorImpl.h>
#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "common/engine/round_engine.h"

namespace fl {

namespace {

constexpr const char* kPayload = "secagg";  // task/result tensors key; its one entry is the message
constexpr const char* kMessage = "message";
// What a client keeps between the exchanges (personal state: it survives a fedclient restart).
constexpr const char* kClientState = "secagg_client";
constexpr const char* kUpdate = "secagg_update";
constexpr const char* kExamples = "secagg_examples";

// Fixed point: |sum of inputs| <= R, so 2^30 / R leaves room for every client's rounding.
double scale_for(double clip_range) { return std::ldexp(1.0, 30) / clip_range; }

double need(const ClientTask& task, const char* key) {
  auto it = task.config.find(key);
  if (it == task.config.end() || !std::isfinite(it->second))
    throw std::invalid_argument("secure aggregation round " + std::to_string(task.round) + ": the task has no " + key);
  return it->second;
}

ModelState bytes_state(const secagg::Bytes& bytes) {
  auto t = torch::empty({static_cast<int64_t>(bytes.size())}, torch::kUInt8);
  std::copy(bytes.begin(), bytes.end(), t.data_ptr<uint8_t>());
  return ModelState({{kMessage, t}});
}

secagg::Bytes state_bytes(const ModelState& state, const std::string& what) {
  if (!state.contains(kMessage)) throw std::invalid_argument(what + " carries no secure-aggregation message");
  auto t = state.at(kMessage).contiguous();
  if (t.scalar_type() != at::kByte || t.dim() != 1) throw std::invalid_argument(what + ": the message is not a byte vector");
  const uint8_t* p = t.data_ptr<uint8_t>();
  return secagg::Bytes(p, p + t.numel());
}

secagg::Bytes message_of(const std::map<std::string, ModelState>& tensors, const std::string& what) {
  auto it = tensors.find(kPayload);
  if (it == tensors.end()) throw std::invalid_argument(what + " carries no secure-aggregation payload");
  return state_bytes(it->second, what);
}

secagg::Params params_of(const ClientTask& task) {
  secagg::Params p;
  p.threshold = static_cast<int>(need(task, "secagg_threshold"));
  p.neighbours = static_cast<int>(need(task, "secagg_neighbours"));
  p.graph_seed = static_cast<uint64_t>(need(task, "secagg_graph_seed"));
  p.vector_length = static_cast<size_t>(need(task, "secagg_length"));
  p.round = static_cast<uint64_t>(task.round);
  return p;
}

// Every entry of `state` flattened in order, in double.
at::Tensor flat_double(const ModelState& state) {
  std::vector<at::Tensor> parts;
  for (const auto& e : state.entries()) parts.push_back(e.tensor.detach().to(torch::kCPU, at::kDouble).flatten());
  return parts.empty() ? torch::zeros({0}, at::kDouble) : torch::cat(parts);
}

class SecureAggregationClient : public ClientAlgorithm {
 public:
  explicit SecureAggregationClient(std::shared_ptr<const ClientAlgorithm> inner) : inner_(std::move(inner)) {}

  ClientResult fit(const ClientTask& task, ClientContext& ctx) const override {
    ClientResult r = inner_->fit(task, ctx);
    task.model.check_same_layout(r.model, "secure aggregation: the trained model");
    ModelState delta = r.model - task.model;
    secagg::Client client(params_of(task), task.client_id);
    const auto advertised = client.advertise_keys();
    ctx.personal[kClientState] = bytes_state(client.save());
    ctx.personal[kUpdate] = std::move(delta);
    ctx.personal[kExamples] = ModelState({{"n", torch::tensor({r.num_examples}, torch::kLong)}});
    r.model = ModelState();  // the update itself goes only masked, in exchange 3
    r.tensors[kPayload] = bytes_state(advertised.serialize());
    return r;
  }

  ClientResult evaluate(const ClientTask& task, ClientContext& ctx) const override { return inner_->evaluate(task, ctx); }

  ClientResult exchange(const ClientTask& task, ClientContext& ctx) const override {
    const std::string where = "secure aggregation round " + std::to_string(task.round) + " (" + task.phase + ")";
    auto kept = ctx.personal.find(kClientState);
    if (kept == ctx.personal.end())
      throw std::invalid_argument(where + ": no protocol state kept from exchange 1 (was the client's state lost?)");
    secagg::Client client = secagg::Client::load(state_bytes(kept->second, where));
    const secagg::Bytes in = message_of(task.tensors, where);
    secagg::Bytes out;
    if (task.phase == fit_phase_name(2)) {
      out = client.share_keys(secagg::KeyDirectory::parse(in)).serialize();
    } else if (task.phase == fit_phase_name(3)) {
      out = client.mask_input(secagg::ShareDelivery::parse(in), input(task, ctx)).serialize();
    } else if (task.phase == fit_phase_name(4)) {
      out = client.unmask(secagg::UnmaskRequest::parse(in)).serialize();
    } else {
      return inner_->exchange(task, ctx);
    }
    ClientResult r;
    // Every exchange's result carries the client's example count (transports require one).
    auto n = ctx.personal.find(kExamples);
    r.num_examples = n != ctx.personal.end() ? n->second.at("n").item<int64_t>() : 1;
    if (task.phase == fit_phase_name(4)) {
      for (const char* key : {kClientState, kUpdate, kExamples}) ctx.personal.erase(key);
    } else {
      ctx.personal[kClientState] = bytes_state(client.save());
    }
    r.round = task.round;
    r.client_id = task.client_id;
    r.tensors[kPayload] = bytes_state(out);
    return r;
  }

 private:
  // The client's input: its update (clamped to [-R, R], or clipped to L2 norm C and noised
  // under distributed DP) times its weight, then the weight, in fixed point mod 2^32.
  std::vector<uint32_t> input(const ClientTask& task, ClientContext& ctx) const {
    auto kept = ctx.personal.find(kUpdate);
    if (kept == ctx.personal.end()) throw std::invalid_argument("secure aggregation: no update kept from exchange 1");
    const double range = need(task, "secagg_clip_range");
    const double scale = scale_for(range);
    at::Tensor x = flat_double(kept->second);
    double weight;
    const auto dp = task.config.find("dp_clip");
    if (dp != task.config.end() && dp->second > 0) {
      const double advertised = need(task, "secagg_advertised");
      const double norm = x.norm().item<double>();
      if (norm > dp->second) x.mul_(dp->second / norm);
      auto gen = at::detail::createCPUGenerator(mix_seed(task.seed, 0xd9e7a5));
      x.add_(at::normal(0.0, need(task, "dp_noise") * dp->second / std::sqrt(advertised), x.sizes(), gen,
                        torch::TensorOptions().dtype(at::kDouble)));
      weight = 1.0 / advertised;
    } else {
      weight = need(task, "secagg_weight");
    }
    if (!(weight > 0 && weight <= 1)) throw std::invalid_argument("secure aggregation: the task's weight is not in (0, 1]");
    x = at::cat({x.clamp(-range, range).mul_(weight), torch::full({1}, weight, at::kDouble)});
    // Two's complement into Z_(2^32): int64 keeps the sign, the low 32 bits are the residue.
    const at::Tensor q = x.mul_(scale).round_().to(at::kLong);
    const int64_t* p = q.data_ptr<int64_t>();
    std::vector<uint32_t> out(static_cast<size_t>(q.numel()));
    for (size_t i = 0; i < out.size(); ++i) out[i] = static_cast<uint32_t>(static_cast<uint64_t>(p[i]));
    return out;
  }

  std::shared_ptr<const ClientAlgorithm> inner_;
};

}  // namespace

void SecAggOptions::validate() const {
  if (neighbours < 0) throw std::invalid_argument("secagg: neighbours must be >= 0");
  if (!(threshold > 0.5 && threshold <= 1)) throw std::invalid_argument("secagg: the threshold must be in (0.5, 1]");
  if (!(clip_range > 0) || !std::isfinite(clip_range)) throw std::invalid_argument("secagg: the clip range must be > 0");
  if (dp_clip < 0 || dp_noise < 0) throw std::invalid_argument("secagg: distributed dp needs dp_clip and dp_noise >= 0");
}

int secagg_threshold(int holders, double fraction) {
  return std::max({2, holders / 2 + 1, static_cast<int>(std::ceil(fraction * holders - 1e-9))});
}

SecureAggregation::SecureAggregation(std::unique_ptr<Strategy> inner, SecAggOptions options)
    : WrappedStrategy(std::move(inner), "secagg"), options_(options) {
  options_.validate();
}

std::vector<ClientTask> SecureAggregation::configure_fit(int round, const std::vector<int>& clients) {
  failure_.clear();
  server_.reset();
  advertised_ = 0;
  auto tasks = WrappedStrategy::configure_fit(round, clients);
  secagg::Params p;
  p.neighbours = !options_.sparse ? 0
                 : options_.neighbours > 0 ? options_.neighbours
                                           : 2 * static_cast<int>(std::ceil(std::log2(std::max<size_t>(clients.size(), 2))));
  p.round = static_cast<uint64_t>(round);
  p.graph_seed = options_.graph_seed & ((uint64_t{1} << 52) - 1);  // exact in a task's double config
  p.vector_length = static_cast<size_t>(global_model().numel()) + 1;
  p.threshold = secagg_threshold(static_cast<int>(secagg::graph_degree(clients.size(), p.neighbours)) + 1,
                                 options_.threshold);
  try {
    server_.emplace(p, clients);
  } catch (const std::exception& e) {
    failure_ = e.what();  // e.g. too few clients for any threshold: the round fails after exchange 1
  }
  for (auto& t : tasks) {
    t.config["secagg_threshold"] = p.threshold;
    t.config["secagg_neighbours"] = p.neighbours;
    t.config["secagg_graph_seed"] = static_cast<double>(p.graph_seed);
    t.config["secagg_length"] = static_cast<double>(p.vector_length);
  }
  return tasks;
}

std::vector<ClientTask> SecureAggregation::fail(int round, const std::string& why) {
  failure_ = why;
  spdlog::warn("secure aggregation round {} failed: {}", round, why);
  return {};
}

std::vector<ClientTask> SecureAggregation::configure_fit_exchange(int round, int exchange,
                                                                  const std::vector<ClientResult>& results) {
  if (!failure_.empty() || !server_) return fail(round, failure_.empty() ? "no protocol" : failure_);
  if (exchange > 3) return {};
  secagg::Server& server = *server_;
  // A message must come from the client it names (the transport authenticated r.client_id); a
  // malformed one drops only its sender.
  auto each = [&](const char* stage, const std::function<void(const ClientResult&, const secagg::Bytes&)>& take) {
    for (const auto& r : results) {
      try {
        take(r, message_of(r.tensors, "client " + std::to_string(r.client_id) + "'s " + stage));
      } catch (const std::exception& e) {
        spdlog::warn("secure aggregation round {}: client {} left out of {}: {}", round, r.client_id, stage, e.what());
      }
    }
  };
  auto check_sender = [](int claimed, const ClientResult& r) {
    if (claimed != r.client_id)
      throw std::invalid_argument("the message claims client " + std::to_string(claimed));
  };
  std::vector<ClientTask> tasks;
  auto task_for = [&](int client, const secagg::Bytes& message) {
    ClientTask t;
    t.client_id = client;
    t.tensors[kPayload] = bytes_state(message);
    tasks.push_back(std::move(t));
    return &tasks.back();
  };
  try {
    if (exchange == 1) {
      std::map<int, int64_t> examples;
      each("advertisement", [&](const ClientResult& r, const secagg::Bytes& m) {
        const auto a = secagg::AdvertiseKeys::parse(m);
        check_sender(a.keys.id, r);
        if (r.num_examples <= 0) throw std::invalid_argument("no examples");
        server.receive_advertisement(a);
        examples[r.client_id] = r.num_examples;
      });
      const auto directory = server.close_advertisements();
      const auto bytes = directory.serialize();
      double total = 0;
      for (const auto& kv : examples) total += static_cast<double>(kv.second);
      advertised_ = static_cast<int>(examples.size());
      weights_.clear();
      for (const auto& kv : examples) {
        weights_[kv.first] = static_cast<double>(kv.second) / total;
        task_for(kv.first, bytes);
      }
    } else if (exchange == 2) {
      each("shares", [&](const ClientResult& r, const secagg::Bytes& m) {
        const auto s = secagg::ShareKeys::parse(m);
        check_sender(s.sender, r);
        server.receive_shares(s);
      });
      for (const auto& [client, delivery] : server.close_shares()) {
        // What the client's input needs: its weight (or, under distributed DP, the noise shares' count).
        ClientTask* t = task_for(client, delivery.serialize());
        t->config["secagg_weight"] = weights_.at(client);
        t->config["secagg_advertised"] = advertised_;
        t->config["secagg_clip_range"] = options_.clip_range;
        if (options_.dp_clip > 0) {
          t->config["dp_clip"] = options_.dp_clip;
          t->config["dp_noise"] = options_.dp_noise;
        }
      }
    } else {
      each("masked input", [&](const ClientResult& r, const secagg::Bytes& m) {
        const auto s = secagg::MaskedInput::parse(m);
        check_sender(s.sender, r);
        server.receive_masked_input(s);
      });
      const auto request = server.close_masked_inputs();
      for (int client : request.survivors) task_for(client, request.serialize());
    }
  } catch (const std::exception& e) {
    return fail(round, e.what());
  }
  return tasks;
}

std::string SecureAggregation::check_result(const ClientTask&, const ClientResult& result) const {
  if (!result.model.empty()) return "a model in the clear (secure aggregation sends only masked messages)";
  if (result.tensors.size() > 1) return "tensors beside the secure-aggregation message";
  try {
    message_of(result.tensors, "the result");
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return "";
}

Metrics SecureAggregation::aggregate_fit(int round, const std::vector<ClientResult>& results) {
  Metrics m{{"secagg_failed", 0}};
  std::vector<uint32_t> sum;
  if (failure_.empty() && server_) {
    for (const auto& r : results) {
      try {
        const auto s = secagg::UnmaskShares::parse(message_of(r.tensors, "client " + std::to_string(r.client_id) + "'s unmasking shares"));
        if (s.sender != r.client_id) throw std::invalid_argument("the message claims client " + std::to_string(s.sender));
        server_->receive_unmask_shares(s);
      } catch (const std::exception& e) {
        spdlog::warn("secure aggregation round {}: client {}'s unmasking shares refused: {}", round, r.client_id, e.what());
      }
    }
    try {
      sum = server_->finish();
    } catch (const std::exception& e) {
      fail(round, e.what());
    }
  }
  if (!failure_.empty() || sum.empty()) {
    // The round fails cleanly: the global model stays, the run goes on.
    m["secagg_failed"] = 1;
    if (server_) m["secagg_survivors"] = static_cast<double>(server_->survivors().size());
    return m;
  }
  const double scale = scale_for(options_.clip_range);
  auto values = torch::empty({static_cast<int64_t>(sum.size())}, at::kDouble);
  double* v = values.data_ptr<double>();
  for (size_t i = 0; i < sum.size(); ++i) v[i] = static_cast<double>(static_cast<int32_t>(sum[i])) / scale;
  const double weight = v[sum.size() - 1];
  if (!(weight > 0)) {
    m["secagg_failed"] = 1;
    return m;
  }
  const at::Tensor mean = values.narrow(0, 0, static_cast<int64_t>(sum.size()) - 1) / weight;
  const ModelState& global = inner_->global_model();
  std::vector<ModelState::Entry> entries;
  int64_t offset = 0;
  for (const auto& e : global.entries()) {
    at::Tensor part = mean.narrow(0, offset, e.tensor.numel()).view(e.tensor.sizes());
    if (!e.tensor.is_floating_point()) part = part.round();
    entries.push_back({e.name, part.to(e.tensor.device(), e.tensor.scalar_type())});
    offset += e.tensor.numel();
  }
  ClientResult mean_result;
  mean_result.round = round;
  mean_result.client_id = -1;
  mean_result.model = ModelState(std::move(entries)).add_(global);
  mean_result.num_examples = 1;
  Metrics inner = inner_->aggregate_fit(round, {mean_result});
  m.insert(inner.begin(), inner.end());
  m["clients"] = static_cast<double>(server_->survivors().size());
  m["secagg_survivors"] = static_cast<double>(server_->survivors().size());
  m["secagg_advertised"] = advertised_;
  m["secagg_weight"] = weight;
  if (options_.dp_clip > 0)
    for (const auto& kv : account(options_.dp_noise, options_.dp_delta)) m[kv.first] = kv.second;
  return m;
}

std::shared_ptr<const ClientAlgorithm> secure_aggregation_client(std::shared_ptr<const ClientAlgorithm> inner) {
  return std::make_shared<SecureAggregationClient>(std::move(inner));
}

}  // namespace fl
