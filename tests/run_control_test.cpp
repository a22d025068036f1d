// RunController (the run life cycle behind `fedctl runs`) and the run settings that
// `runs create` sends, on a real StateStore.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include "coordinator/run_control.h"
#include "tests/expect_error.h"
#include "tests/temp_dir.h"

namespace fl {
namespace {

using testing_util::expect_error_of;
using testing_util::TempDir;
using Action = RunController::Action;

ModelState tiny() { return ModelState({{"w", torch::ones({2})}}); }
RoundRecord rec(int r) { return RoundRecord{r, "{\"round\":" + std::to_string(r) + "}"}; }

TEST(RunControl, TransitionsArePersistedAndWrongOnesNamed) {
  TempDir tmp;
  StateStore store(tmp.path());
  RunController runs(store);
  EXPECT_EQ(runs.create("a", "{}", 3, false).state, "created");
  expect_error_of<std::invalid_argument>([&] { runs.create("a", "{}", 3, false); }, "run 'a' exists already");
  expect_error_of<std::invalid_argument>([&] { runs.control("a", Action::kPause); }, "cannot pause run 'a': it is created");
  expect_error_of<std::invalid_argument>([&] { runs.control("a", Action::kResume); }, "only a paused run can be resumed");
  expect_error_of<std::invalid_argument>([&] { runs.control("zz", Action::kStart); }, "no run 'zz'");
  const RunRecord started = runs.control("a", Action::kStart);
  EXPECT_EQ(started.state, "waiting");
  EXPECT_GT(started.started_at, 0);
  expect_error_of<std::invalid_argument>([&] { runs.control("a", Action::kStart); }, "only a created run can be started");
  EXPECT_EQ(runs.control("a", Action::kPause).state, "paused");
  EXPECT_EQ(store.load_run("a")->state, "paused");  // written before it is acknowledged
  EXPECT_EQ(runs.control("a", Action::kResume).state, "waiting");  // it never began
  const RunRecord aborted = runs.control("a", Action::kAbort);
  EXPECT_EQ(aborted.state, "aborted");
  EXPECT_GT(aborted.ended_at, 0);
  expect_error_of<std::invalid_argument>([&] { runs.control("a", Action::kAbort); }, "cannot abort run 'a': it is aborted");
}

TEST(RunControl, NextRunnablePrefersTheRunInProgressThenStartOrder) {
  TempDir tmp;
  StateStore store(tmp.path());
  {
    RunController runs(store);
    runs.create("created-only", "{}", 2, false);
    runs.create("second", "{}", 2, true);
    runs.create("third", "{}", 2, true);
    RunRecord r = *store.load_run("second");
    r.started_at = 100;  // earlier than "third"
    store.save_run(r);
    r = *store.load_run("third");
    r.started_at = 200;
    store.save_run(r);
    ASSERT_TRUE(runs.next_runnable());
    EXPECT_EQ(runs.next_runnable()->run_id, "second");
    // "third" began executing and got a round in: after a restart it goes first, paused or not.
    runs.begin("third", [] {});
    runs.commit_round("third", 1, tiny(), "", rec(1));
    runs.control("third", Action::kPause);
  }
  RunController restarted(store);
  ASSERT_TRUE(restarted.next_runnable());
  EXPECT_EQ(restarted.next_runnable()->run_id, "third");
  EXPECT_EQ(restarted.next_runnable()->state, "paused");
  restarted.control("third", Action::kAbort);
  EXPECT_EQ(restarted.next_runnable()->run_id, "second");
  restarted.control("second", Action::kPause);  // paused before it began: waits for resume
  EXPECT_FALSE(restarted.next_runnable());
}

TEST(RunControl, RoundCommitsKeepAnAdminsStateAndFinishTheRun) {
  TempDir tmp;
  StateStore store(tmp.path());
  RunController runs(store);
  runs.create("r", "{}", 2, true);
  int aborts = 0;
  EXPECT_EQ(runs.begin("r", [&] { ++aborts; }).state, "running");
  EXPECT_EQ(runs.active(), "r");
  runs.control("r", Action::kPause);          // while round 1 runs
  runs.commit_round("r", 1, tiny(), "s1", rec(1));
  EXPECT_EQ(store.load_run("r")->state, "paused");  // the commit did not overwrite it
  EXPECT_EQ(store.load_run("r")->current_round, 2);
  std::atomic<bool> stop{false};
  EXPECT_EQ(runs.control("r", Action::kResume).state, "running");  // executing: goes on
  EXPECT_TRUE(runs.wait_until_runnable("r", stop));
  runs.commit_round("r", 2, tiny(), "s2", rec(2));
  const auto done = *store.load_run("r");
  EXPECT_EQ(done.state, "finished");
  EXPECT_EQ(done.current_round, 3);
  EXPECT_GT(done.ended_at, 0);
  EXPECT_EQ(aborts, 0);

  runs.create("s", "{}", 5, true);
  runs.begin("s", [&] { ++aborts; });
  runs.control("s", Action::kAbort);  // the executing run: its round is interrupted
  EXPECT_EQ(aborts, 1);
  EXPECT_FALSE(runs.wait_until_runnable("s", stop));
  runs.commit_round("s", 1, tiny(), "x", rec(1));  // a round that raced the abort is dropped
  EXPECT_FALSE(store.latest_model_version("s"));
  EXPECT_EQ(store.load_run("s")->state, "aborted");
  runs.end("s");
  EXPECT_EQ(runs.active(), "");
}

}  // namespace
}  // namespace fl
