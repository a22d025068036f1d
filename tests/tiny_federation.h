#pragma once
// What the tests of round logic share: a tiny MLP (4 features, 3 classes), synthetic clients
// whose classes are separable, and a pool wrapper that records every exchange's results and can
// make chosen clients fail in one phase (a dropout between exchanges).
#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <map>
#include <set>
#include <string>
#include <vector>

#include "common/engine/round_engine.h"
#include "common/models/model.h"
#include "simulations/in_process_pool.h"

namespace fl::testing_util {

inline ModelSpec tiny_mlp(std::vector<int64_t> hidden = {8}) {
  ModelSpec s;
  s.name = "mlp";
  s.input_shape = {4};
  s.num_classes = 3;
  s.hidden = std::move(hidden);
  return s;
}

// n examples, labels 0, 1, 2, 0, ..., features N(label, 1) drawn from `seed`.
inline VirtualClient synthetic_client(int64_t n, uint64_t seed) {
  auto gen = at::detail::createCPUGenerator(seed);
  VirtualClient c;
  c.train.y = torch::arange(n, torch::kLong).remainder(3);
  c.train.x = torch::randn({n, 4}, gen) + c.train.y.unsqueeze(1).to(torch::kFloat);
  c.train.num_classes = 3;
  return c;
}

// Forwards to a pool, keeps every phase's results, and fails the clients in `fail` in `fail_phase`.
struct RecordingPool : ClientPool {
  explicit RecordingPool(ClientPool& p) : inner(p) {}
  int num_clients() const override { return inner.num_clients(); }
  std::vector<ClientResult> execute(const std::vector<ClientTask>& tasks) override {
    auto results = inner.execute(tasks);
    for (auto& r : results)
      if (tasks.front().phase == fail_phase && fail.count(r.client_id)) {
        r.ok = false;
        r.error = "gone";
      }
    seen[tasks.front().phase] = results;
    return results;
  }
  ClientPool& inner;
  std::map<std::string, std::vector<ClientResult>> seen;
  std::string fail_phase;
  std::set<int> fail;
};

}  // namespace fl::testing_util
