#include "simulations/in_process_pool.h"

#include <ATen/Parallel.h>
#include <torch/torch.h>

#include <atomic>
#include <map>
#include <stdexcept>
#include <thread>

namespace fl {

InProcessPool::InProcessPool(std::vector<VirtualClient> clients, const ModelSpec& spec, const c10::Device& device,
                             std::shared_ptr<const ClientAlgorithm> algorithm, TrainOptions train_options,
                             PoolOptions options)
    : InProcessPool(std::move(clients), std::vector<ModelSpec>{spec}, device, std::move(algorithm),
                    std::move(train_options), options) {}

InProcessPool::InProcessPool(std::vector<VirtualClient> clients, std::vector<ModelSpec> specs,
                             const c10::Device& device, std::shared_ptr<const ClientAlgorithm> algorithm,
                             TrainOptions train_options, PoolOptions options)
    : clients_(std::move(clients)),
      algorithm_(std::move(algorithm)),
      train_options_(std::move(train_options)),
      options_(options) {
  if (clients_.empty()) throw std::invalid_argument("in-process pool: no clients");
  if (options_.workers < 1) throw std::invalid_argument("in-process pool: workers must be >= 1");
  if (options_.threads_per_worker < 1) throw std::invalid_argument("in-process pool: threads per worker must be >= 1");
  train_options_.validate();
  if (specs.empty()) throw std::invalid_argument("in-process pool: no model spec");
  for (size_t i = 0; i < clients_.size(); ++i)
    if (clients_[i].model < 0 || clients_[i].model >= static_cast<int>(specs.size()))
      throw std::invalid_argument("in-process pool: client " + std::to_string(i) + " trains model " +
                                  std::to_string(clients_[i].model) + " of " + std::to_string(specs.size()));
  for (auto& c : clients_) {
    c.train = c.train.to(device);
    if (c.test.size() > 0) c.test = c.test.to(device);
  }
  // Worker-major, as when there was one spec: a single-model run draws the same random stream.
  replicas_.resize(options_.workers);
  for (int w = 0; w < options_.workers; ++w)
    for (const auto& spec : specs) {
      replicas_[w].push_back(build_model(spec));
      replicas_[w].back()->to(device);
    }
  for (const auto& replica : replicas_[0]) initial_.push_back(replica->state());
}

ModelState InProcessPool::save_state() const {
  std::vector<ModelState::Entry> entries;
  for (size_t i = 0; i < clients_.size(); ++i)
    for (const auto& [key, state] : clients_[i].personal)
      for (const auto& e : state.entries())
        entries.push_back({std::to_string(i) + "/" + key + "/" + e.name, e.tensor.to(torch::kCPU)});
  return ModelState(std::move(entries));
}

void InProcessPool::load_state(const ModelState& state) {
  std::map<std::pair<int, std::string>, std::vector<ModelState::Entry>> groups;  // (client, key) -> tensors
  for (const auto& e : state.entries()) {
    const auto a = e.name.find('/'), b = a == std::string::npos ? a : e.name.find('/', a + 1);
    size_t used = 0;
    int id = -1;
    try {
      if (b != std::string::npos) id = std::stoi(e.name.substr(0, a), &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (b == std::string::npos || used != a || id < 0 || id >= num_clients())
      throw std::invalid_argument("in-process pool state: entry '" + e.name + "' is not <client>/<key>/<tensor> of this pool");
    const auto device = clients_[id].train.x.device();
    groups[{id, e.name.substr(a + 1, b - a - 1)}].push_back({e.name.substr(b + 1), e.tensor.to(device)});
  }
  for (auto& c : clients_) c.personal.clear();
  for (auto& [where, entries] : groups) clients_[where.first].personal[where.second] = ModelState(std::move(entries));
}

ClientResult InProcessPool::run_one(const ClientTask& task, std::vector<std::unique_ptr<Model>>& models) {
  if (task.client_id < 0 || task.client_id >= num_clients())
    throw std::out_of_range("in-process pool: no client " + std::to_string(task.client_id));
  VirtualClient& c = clients_[task.client_id];
  Model& model = *models[c.model];
  ClientContext ctx{model, c.train, c.test.size() > 0 ? &c.test : nullptr, train_options_, c.personal,
                    options_.evaluation};
  try {
    if (task.model.empty() && !c.personal.count("model")) model.load_state(initial_[c.model]);
    return (c.algorithm ? *c.algorithm : *algorithm_).run(task, ctx);
  } catch (const std::exception& e) {
    ClientResult r;
    r.round = task.round;
    r.client_id = task.client_id;
    r.ok = false;
    r.error = e.what();
    return r;
  }
}

std::vector<ClientResult> InProcessPool::execute(const std::vector<ClientTask>& tasks) {
  std::vector<ClientResult> results(tasks.size());
  const int workers = std::min<int>(options_.workers, static_cast<int>(tasks.size()));
  if (workers <= 1) {
    at::set_num_threads(options_.threads_per_worker);
    for (size_t i = 0; i < tasks.size(); ++i) results[i] = run_one(tasks[i], replicas_[0]);
    return results;
  }
  // Work stealing over an atomic index: a worker takes the next task when it is free, so a
  // large client does not hold a whole static slice back.
  std::atomic<size_t> next{0};
  std::vector<std::thread> threads;
  for (int w = 0; w < workers; ++w) {
    threads.emplace_back([&, w] {
      // OpenMP's thread count is per calling thread: set it inside each worker.
      at::set_num_threads(options_.threads_per_worker);
      for (size_t i = next++; i < tasks.size(); i = next++) results[i] = run_one(tasks[i], replicas_[w]);
    });
  }
  for (auto& t : threads) t.join();
  return results;
}

}  // namespace fl
