#include "simulations/checkpoint_store.h"

#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include "common/io/atomic_file.h"
#include "common/io/safetensors.h"
#include "simulations/report.h"

namespace fl {
namespace {

namespace fs = std::filesystem;

std::string read_all(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) throw std::runtime_error("checkpoint: cannot read " + p.string());
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

fs::path round_dir(const std::string& dir, int round) { return fs::path(dir) / ("round-" + std::to_string(round)); }

}  // namespace

DirectoryRunStore::DirectoryRunStore(std::string dir, nlohmann::ordered_json identity, bool keep_previous)
    : dir_(std::move(dir)), identity_(std::move(identity)), keep_previous_(keep_previous) {
  fs::create_directories(dir_);
  const fs::path run = fs::path(dir_) / "run.json";
  if (!fs::exists(run)) return;
  const auto stored = nlohmann::ordered_json::parse(read_all(run), nullptr, false);
  if (stored.is_discarded() || !stored.is_object())
    throw std::invalid_argument("checkpoint directory " + dir_ + ": run.json is not a JSON object");
  for (const auto& [key, value] : identity_.items()) {
    const auto it = stored.find(key);
    if (it == stored.end() || *it != value)
      throw std::invalid_argument("checkpoint directory " + dir_ + " holds another run: its " + key + " is " +
                                  (it == stored.end() ? std::string("not set") : it->dump()) + ", this one's " +
                                  value.dump() + " (use another --checkpoint-dir, or remove this one)");
  }
}

std::optional<int> DirectoryRunStore::latest() const {
  const fs::path latest = fs::path(dir_) / "LATEST";
  if (!fs::exists(latest)) return std::nullopt;
  try {
    return std::stoi(read_all(latest));
  } catch (const std::logic_error&) {
    throw std::runtime_error("checkpoint directory " + dir_ + ": LATEST does not hold a round number");
  }
}

std::optional<RunCheckpoint> DirectoryRunStore::load() {
  const auto round = latest();
  if (!round) return std::nullopt;
  return load_round(*round);
}

RunCheckpoint DirectoryRunStore::load_round(int round) {
  RunCheckpoint c;
  c.round = round;
  const fs::path d = round_dir(dir_, c.round);
  if (!fs::is_directory(d))
    throw std::runtime_error("checkpoint directory " + dir_ + " has no round " + std::to_string(round) +
                             (latest() ? " (its last is round " + std::to_string(*latest()) + ")" : ""));
  c.global = read_safetensors((d / "global.safetensors").string());
  if (fs::exists(d / "pool.safetensors")) c.pool_state = read_safetensors((d / "pool.safetensors").string());
  c.strategy_state = read_all(d / "strategy.bin");
  reports_.clear();
  for (const auto& r : nlohmann::json::parse(read_all(d / "rounds.json"))) reports_.push_back(round_from_json(r));
  return c;
}

void DirectoryRunStore::begin(const ModelState& initial) {
  write_file_atomically((fs::path(dir_) / "run.json").string(), identity_.dump(2) + "\n");
  reports_.clear();
  RunCheckpoint c;
  c.global = initial;
  write_round(0, c);
}

void DirectoryRunStore::commit(const RoundReport& report, const RunCheckpoint& state) {
  reports_.push_back(report);
  write_round(state.round, state);
}

void DirectoryRunStore::write_round(int round, const RunCheckpoint& state) {
  const fs::path final_dir = round_dir(dir_, round), tmp = final_dir.string() + ".tmp";
  fs::remove_all(tmp);
  fs::create_directories(tmp);
  write_safetensors((tmp / "global.safetensors").string(), state.global);
  if (!state.pool_state.empty()) write_safetensors((tmp / "pool.safetensors").string(), state.pool_state);
  write_file_atomically((tmp / "strategy.bin").string(), state.strategy_state);
  auto rounds = nlohmann::ordered_json::array();
  for (const auto& r : reports_) rounds.push_back(round_json(r));
  write_file_atomically((tmp / "rounds.json").string(), rounds.dump() + "\n");
  fs::remove_all(final_dir);  // a leftover of a crash between the rename and LATEST
  fs::rename(tmp, final_dir);
  sync_directory(dir_);
  write_file_atomically((fs::path(dir_) / "LATEST").string(), std::to_string(round));
  const fs::path previous = round_dir(dir_, round - 1);
  for (const auto& e : fs::directory_iterator(dir_)) {
    const auto name = e.path().filename().string();
    if (name.rfind("round-", 0) != 0 || e.path() == final_dir) continue;
    if (keep_previous_ && e.path() == previous) continue;
    fs::remove_all(e.path());
  }
}

}  // namespace fl
