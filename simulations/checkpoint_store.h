#pragma once
// DirectoryRunStore: fedsim's RunStore (--checkpoint-dir DIR), so that a simulation killed at
// any moment and started again with the same command resumes after its last committed round
// and ends with the same model, bit for bit, as a run that was never interrupted.
//
// Layout of DIR:
//   run.json               the run's identity (its settings); another run's directory is refused
//   round-<N>/global.safetensors   the global model after round N (N = 0: the initial model)
//   round-<N>/pool.safetensors     the virtual clients' personal tensors (ClientPool::save_state)
//   round-<N>/strategy.bin         Strategy::save_state()
//   round-<N>/rounds.json          the reports of rounds 1..N
//   LATEST                 "N": the last complete round directory
// Durability: a round's files are written and fsynced in round-<N>.tmp, which is renamed to
// round-<N> before LATEST is replaced atomically; round-<N-1> is removed after that (with
// keep_previous, round-<N-2>: a distributed run's ranks may have to resume from the round
// before their last, simulations/distributed.h). A crash leaves LATEST naming a complete
// directory: round N or round N-1, never a mix.
#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "common/engine/run_loop.h"

namespace fl {

class DirectoryRunStore : public RunStore {
 public:
  // `identity`: the settings that make the run what it is (device and worker counts excluded,
  // they do not change its numbers). Throws std::invalid_argument when DIR holds another run,
  // naming the first setting that differs.
  DirectoryRunStore(std::string dir, nlohmann::ordered_json identity, bool keep_previous = false);

  std::optional<RunCheckpoint> load() override;
  // LATEST's round; nullopt when no round was committed (not even round 0).
  std::optional<int> latest() const;
  // Round `round`'s state: LATEST's, or with keep_previous the one before it. Throws
  // std::runtime_error when that round's directory is not there.
  RunCheckpoint load_round(int round);
  void begin(const ModelState& initial) override;
  void commit(const RoundReport& report, const RunCheckpoint& state) override;

  // The reports of the committed rounds (filled by load(), extended by commit()).
  const std::vector<RoundReport>& reports() const { return reports_; }

 private:
  void write_round(int round, const RunCheckpoint& state);

  std::string dir_;
  nlohmann::ordered_json identity_;
  std::vector<RoundReport> reports_;
  bool keep_previous_ = false;
};

}  // namespace fl
