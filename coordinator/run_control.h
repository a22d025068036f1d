#pragma once
// RunController: the life cycle of a coordinator's runs, shared by the Admin service (fedctl
// runs create|start|pause|resume|abort) and the coordinator's run loop.
//
//   created --start--> waiting --(its turn)--> running --(last round)--> finished
//                        |  ^                   |  ^
//                  pause |  | resume      pause |  | resume        any unfinished --abort--> aborted
//                        v  |                   v  |
//                       paused <-----------------+--
//
// One run executes at a time; started runs wait their turn in start order. Pause takes
// effect between rounds (the round in progress finishes and is committed); abort drops the
// round in progress at once. Every transition is written to the StateStore before it is
// acknowledged, and the run loop commits rounds through commit_round() here, so an admin's
// state change is never overwritten by a round commit (one mutex orders both).
#include <atomic>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "coordinator/store/state_store.h"

namespace fl {

class RunController {
 public:
  explicit RunController(StateStore& store) : store_(store) {}

  // ---- Admin side. Errors: std::invalid_argument (unknown run, transition not allowed)
  // naming the run, its state and the action.
  RunRecord create(const std::string& run_id, const std::string& config_json, int total_rounds, bool start);
  enum class Action { kStart, kPause, kResume, kAbort };
  RunRecord control(const std::string& run_id, Action action);
  std::optional<RunRecord> load(const std::string& run_id) const { return store_.load_run(run_id); }
  std::string active() const;  // the run executing now ("" = none)

  // ---- Run loop side.
  // The next run to execute: an unfinished run that was executing (running, or paused after it
  // began: a restart resumes it) first, then waiting runs in start order; paused runs that
  // had not begun wait for resume. nullopt when none.
  std::optional<RunRecord> next_runnable() const;
  // Blocks until a control action changed something or `timeout` passes.
  void wait_for_change(std::chrono::milliseconds timeout);
  // The run starts executing: waiting -> running (a paused run stays paused). `on_abort` is
  // called (under no lock of ours) when an admin aborts it while it executes.
  RunRecord begin(const std::string& run_id, std::function<void()> on_abort);
  // Blocks while the run is paused. Returns false when it was aborted or `stop` became true.
  bool wait_until_runnable(const std::string& run_id, const std::atomic<bool>& stop);
  bool aborted(const std::string& run_id) const;
  // Commits a round (StateStore::commit_round) with the run's current state; the last round
  // finishes it unless it was aborted meanwhile.
  void commit_round(const std::string& run_id, int round, const ModelState& global, const std::string& strategy_state,
                    const RoundRecord& rec);
  void end(const std::string& run_id);  // it no longer executes (finished, aborted or interrupted)

 private:
  RunRecord require(const std::string& run_id) const;  // under mu_
  StateStore& store_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::string active_;
  std::function<void()> on_abort_;
  uint64_t changes_ = 0;
};

double unix_now();
const char* action_name(RunController::Action a);

}  // namespace fl
