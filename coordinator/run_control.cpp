#include "coordinator/run_control.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <stdexcept>

namespace fl {

double unix_now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

const char* action_name(RunController::Action a) {
  switch (a) {
    case RunController::Action::kStart: return "start";
    case RunController::Action::kPause: return "pause";
    case RunController::Action::kResume: return "resume";
    case RunController::Action::kAbort: return "abort";
  }
  return "?";
}

namespace {

bool ended(const RunRecord& r) { return r.state == "finished" || r.state == "aborted"; }

[[noreturn]] void refuse(const RunRecord& r, RunController::Action a, const std::string& why) {
  throw std::invalid_argument("cannot " + std::string(action_name(a)) + " run '" + r.run_id + "': it is " + r.state +
                              (why.empty() ? "" : " (" + why + ")"));
}

}  // namespace

RunRecord RunController::require(const std::string& run_id) const {
  auto r = store_.load_run(run_id);
  if (!r) throw std::invalid_argument("no run '" + run_id + "'");
  return *r;
}

RunRecord RunController::create(const std::string& run_id, const std::string& config_json, int total_rounds,
                                bool start) {
  std::lock_guard<std::mutex> lock(mu_);
  if (store_.load_run(run_id)) throw std::invalid_argument("run '" + run_id + "' exists already");
  RunRecord r;
  r.run_id = run_id;
  r.config_json = config_json;
  r.state = start ? "waiting" : "created";
  r.current_round = 1;
  r.total_rounds = total_rounds;
  r.created_at = unix_now();
  if (start) r.started_at = r.created_at;
  store_.save_run(r);
  ++changes_;
  cv_.notify_all();
  return r;
}

RunRecord RunController::control(const std::string& run_id, Action a) {
  std::function<void()> abort_now;
  RunRecord r;
  {
    std::lock_guard<std::mutex> lock(mu_);
    r = require(run_id);
    switch (a) {
      case Action::kStart:
        if (r.state != "created") refuse(r, a, "only a created run can be started");
        r.state = "waiting";
        r.started_at = unix_now();
        break;
      case Action::kPause:
        if (r.state != "waiting" && r.state != "running") refuse(r, a, "");
        r.state = "paused";
        break;
      case Action::kResume:
        if (r.state != "paused") refuse(r, a, "only a paused run can be resumed");
        // A run that has executed rounds (or is executing) goes on; one that never began waits its turn.
        r.state = (active_ == run_id || r.current_round > 1) ? "running" : "waiting";
        break;
      case Action::kAbort:
        if (ended(r)) refuse(r, a, "");
        r.state = "aborted";
        r.ended_at = unix_now();
        if (active_ == run_id) abort_now = on_abort_;
        break;
    }
    store_.save_run(r);
    ++changes_;
  }
  cv_.notify_all();
  spdlog::info("run '{}': {} -> {}", run_id, action_name(a), r.state);
  if (abort_now) abort_now();
  return r;
}

std::string RunController::active() const {
  std::lock_guard<std::mutex> lock(mu_);
  return active_;
}

std::optional<RunRecord> RunController::next_runnable() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::optional<RunRecord> best;
  auto rank = [](const RunRecord& r) { return (r.state == "running" || r.state == "paused") ? 0 : 1; };
  for (const auto& r : store_.list_runs()) {
    const bool began = r.state == "running" || (r.state == "paused" && r.current_round > 1);
    if (!began && r.state != "waiting") continue;
    if (!best || rank(r) < rank(*best) || (rank(r) == rank(*best) && r.started_at < best->started_at)) best = r;
  }
  return best;
}

void RunController::wait_for_change(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  const uint64_t seen = changes_;
  cv_.wait_for(lock, timeout, [&] { return changes_ != seen; });
}

RunRecord RunController::begin(const std::string& run_id, std::function<void()> on_abort) {
  std::lock_guard<std::mutex> lock(mu_);
  RunRecord r = require(run_id);
  active_ = run_id;
  on_abort_ = std::move(on_abort);
  if (r.state == "waiting") {
    r.state = "running";
    if (r.started_at == 0) r.started_at = unix_now();
    store_.save_run(r);
  }
  return r;
}

bool RunController::wait_until_runnable(const std::string& run_id, const std::atomic<bool>& stop) {
  std::unique_lock<std::mutex> lock(mu_);
  bool logged = false;
  for (;;) {
    const RunRecord r = require(run_id);
    if (stop || r.state == "aborted") return false;
    if (r.state != "paused") return true;
    if (!logged) spdlog::info("run '{}' is paused; waiting for resume", run_id);
    logged = true;
    cv_.wait_for(lock, std::chrono::milliseconds(200));
  }
}

bool RunController::aborted(const std::string& run_id) const {
  std::lock_guard<std::mutex> lock(mu_);
  return require(run_id).state == "aborted";
}

void RunController::commit_round(const std::string& run_id, int round, const ModelState& global,
                                 const std::string& strategy_state, const RoundRecord& rec) {
  std::lock_guard<std::mutex> lock(mu_);
  RunRecord r = require(run_id);
  if (r.state == "aborted") return;  // aborted while the round ran: its result is dropped
  if (round >= r.total_rounds) {
    r.state = "finished";
    r.ended_at = unix_now();
  }
  store_.commit_round(r, round, global, strategy_state, rec);
}

void RunController::end(const std::string& run_id) {
  std::lock_guard<std::mutex> lock(mu_);
  if (active_ == run_id) {
    active_.clear();
    on_abort_ = nullptr;
  }
}

}  // namespace fl
