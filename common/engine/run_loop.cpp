#include "common/engine/run_loop.h"

namespace fl {

int resume_run(Strategy& strategy, ClientPool& pool, RunStore& store, const std::function<ModelState()>& initial) {
  if (auto saved = store.load()) {
    strategy.initialize(saved->global);
    strategy.load_state(saved->strategy_state);
    pool.load_state(saved->pool_state);
    return saved->round + 1;
  }
  strategy.initialize(initial());
  store.begin(strategy.global_model());
  return 1;
}

int run_rounds(int first, int last, const std::function<RoundReport(int round)>& run_round, Strategy& strategy,
               ClientPool& pool, RunStore& store, const RunLoopHooks& hooks) {
  int round = first;
  while (round <= last) {
    if (hooks.may_start && !hooks.may_start(round)) break;
    RoundReport report;
    try {
      report = run_round(round);
    } catch (const std::exception& e) {
      if (hooks.retry && hooks.retry(round, e)) continue;
      throw;
    }
    RunCheckpoint state;
    state.round = round;
    state.global = strategy.global_model();
    state.strategy_state = strategy.save_state();
    state.pool_state = pool.save_state();
    store.commit(report, state);
    if (hooks.committed) hooks.committed(report);
    ++round;
  }
  return round - 1;
}

}  // namespace fl
