#pragma once
// InProcessPool: many virtual clients on one machine. Each worker thread owns one model
// replica and trains the clients handed to it one after another; client data stays resident
// on the training device. Results come back in task order, so a seeded run gives the same
// numbers whatever the scheduling.
#include <map>
#include <memory>
#include <vector>

#include "common/data/dataset.h"
#include "common/engine/round_engine.h"
#include "common/engine/strategy.h"
#include "common/models/model.h"
#include "common/train/local_trainer.h"

namespace fl {

struct VirtualClient {
  TensorDataset train;
  TensorDataset test;  // empty when the partition has no per-client test split
  std::map<std::string, ModelState> personal;
  int model = 0;       // which of the pool's model specs this client trains (mixed-model runs)
  // This client's own client half (fedsim's Byzantine clients); null: the pool's.
  std::shared_ptr<const ClientAlgorithm> algorithm;
};

struct PoolOptions {
  int workers = 1;             // concurrent clients (a worker per core on CPU)
  int threads_per_worker = 1;  // ATen intra-op threads inside each worker
  EvalOptions evaluation;      // what the clients' evaluations measure beyond clean accuracy
};

class InProcessPool : public ClientPool {
 public:
  InProcessPool(std::vector<VirtualClient> clients, const ModelSpec& spec, const c10::Device& device,
                std::shared_ptr<const ClientAlgorithm> algorithm, TrainOptions train_options, PoolOptions options);
  // Mixed architectures: client c trains specs[c.model]. A client whose task carries no model
  // (its strategy shares no weights: feddistill) and that keeps none of its own yet starts from
  // its architecture's initial weights, drawn once here, so that the results do not depend on
  // which worker's replica it lands on.
  InProcessPool(std::vector<VirtualClient> clients, std::vector<ModelSpec> specs, const c10::Device& device,
                std::shared_ptr<const ClientAlgorithm> algorithm, TrainOptions train_options, PoolOptions options);
  int num_clients() const override { return static_cast<int>(clients_.size()); }
  std::vector<ClientResult> execute(const std::vector<ClientTask>& tasks) override;
  const VirtualClient& client(int id) const { return clients_.at(id); }
  // Every client's personal tensors as one state: "<client>/<key>/<tensor name>".
  ModelState save_state() const override;
  void load_state(const ModelState& state) override;

 private:
  ClientResult run_one(const ClientTask& task, std::vector<std::unique_ptr<Model>>& models);

  std::vector<VirtualClient> clients_;
  std::vector<std::vector<std::unique_ptr<Model>>> replicas_;  // [worker][spec]
  std::vector<ModelState> initial_;                              // [spec]: a new client's weights
  std::shared_ptr<const ClientAlgorithm> algorithm_;
  TrainOptions train_options_;
  PoolOptions options_;
};

}  // namespace fl
