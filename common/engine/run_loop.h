#pragma once
// The run loop shared by fedsim and fedcoord: resume from the RunStore's last committed round
// (global model, strategy state, the pool's client state), run the remaining rounds and commit
// each one before the next starts. fedcoord's store is RocksDB (coordinator/store), fedsim's a
// directory (--checkpoint-dir) or nothing.
//
// Durability contract of a RunStore: commit() is atomic and durable when it returns; after a
// crash load() gives round r or round r-1 whole, never a mix. With a deterministic pool a run
// killed at any moment and resumed with the same settings ends bit-identical to one that was
// never interrupted (rounds are seeded by their number, not by what ran before in the process).
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "common/core/model_state.h"
#include "common/engine/round_engine.h"
#include "common/engine/strategy.h"

namespace fl {

struct RunCheckpoint {
  int round = 0;               // rounds committed; 0: only the initial model
  ModelState global;
  std::string strategy_state;  // Strategy::save_state()
  ModelState pool_state;       // ClientPool::save_state() (empty for pools that keep none)
};

class RunStore {
 public:
  virtual ~RunStore() = default;
  // The last committed state; nullopt for a run that has not begun.
  virtual std::optional<RunCheckpoint> load() = 0;
  // A new run's initial global model (round 0), before round 1 starts.
  virtual void begin(const ModelState& initial) = 0;
  // Round report.round is done: its report and the state after it, atomically.
  virtual void commit(const RoundReport& report, const RunCheckpoint& state) = 0;
};

// A run nobody resumes (fedsim without --checkpoint-dir): commits go nowhere.
class NoRunStore : public RunStore {
 public:
  std::optional<RunCheckpoint> load() override { return std::nullopt; }
  void begin(const ModelState&) override {}
  void commit(const RoundReport&, const RunCheckpoint&) override {}
};

// Sets the strategy (and the pool's client state) up from the store's checkpoint, or from
// initial() for a new run (which the store then records). Returns the first round to run.
int resume_run(Strategy& strategy, ClientPool& pool, RunStore& store, const std::function<ModelState()>& initial);

struct RunLoopHooks {
  // Before each round: false stops the loop there (paused, aborted, a signal). Null: go on.
  std::function<bool(int round)> may_start;
  // A round threw: true runs it again, false lets the exception out. Null: let it out.
  std::function<bool(int round, const std::exception& error)> retry;
  // After each committed round (progress, logs, housekeeping).
  std::function<void(const RoundReport& report)> committed;
};

// Runs rounds first..last with run_round, committing each to the store. Returns the last
// round committed (first - 1 when none was).
int run_rounds(int first, int last, const std::function<RoundReport(int round)>& run_round, Strategy& strategy,
               ClientPool& pool, RunStore& store, const RunLoopHooks& hooks = {});

}  // namespace fl
