#pragma once
// Personalisation: part of every client's model never leaves it. The server always sends the
// full global model (so a worker's replica never carries the previous client's tensors); the
// client overrides the personal part with its own copy (ctx.personal["model"], kept across
// rounds by fedsim and on disk by fedclient), trains, keeps the new personal part and sends
// back only the shared part, which the server averages into the global model.
//   fedbn  (Li et al. 2021): BatchNorm weights, biases and statistics stay local.
//   fedper (Arivazhagan et al. 2019): the last k layer groups stay local.
//   fedrep (Collins et al. 2021): the head (last layer group) stays local; each round trains the
//          head for head_epochs with the body frozen, then the body for the other epochs with
//          the head frozen; only the body is shared.
//   local: nothing is shared (every client trains alone; the personalised floor).
#include "common/engine/strategy.h"

namespace fl {

// Server half: example-weighted average of the shared tensors the clients send back, assigned
// into the global model (personal entries keep their initial values there).
class PartialFedAvg : public Strategy {
 public:
  Metrics aggregate_fit(int round, const std::vector<ClientResult>& results) override;
};

class FedBN : public PartialFedAvg {
 public:
  std::string name() const override { return "fedbn"; }
};

class FedPer : public PartialFedAvg {
 public:
  explicit FedPer(int k);
  std::string name() const override { return "fedper"; }
  std::vector<ClientTask> configure_fit(int round, const std::vector<int>& clients) override;

 private:
  int k_;
};

class FedRep : public PartialFedAvg {
 public:
  explicit FedRep(int head_epochs);
  std::string name() const override { return "fedrep"; }
  std::vector<ClientTask> configure_fit(int round, const std::vector<int>& clients) override;

 private:
  int head_epochs_;
};

class LocalOnly : public Strategy {
 public:
  std::string name() const override { return "local"; }
  Metrics aggregate_fit(int round, const std::vector<ClientResult>& results) override;
};

// Client half shared by the four: keeps personal_names() local after training.
class PersonalClient : public ClientAlgorithm {
 public:
  // The entries of the model (state `s`) that stay on the client.
  virtual std::vector<std::string> personal_names(const ClientTask& task, Model& model, const ModelState& s) const = 0;

 protected:
  void finish(const ClientTask& task, ClientContext& ctx, ClientResult& result) const override;
};

class FedBNClient : public PersonalClient {
 public:
  std::vector<std::string> personal_names(const ClientTask& task, Model& model, const ModelState& s) const override;
};

// task.config["k"]: the number of personal layer groups, counted from the end.
class FedPerClient : public PersonalClient {
 public:
  std::vector<std::string> personal_names(const ClientTask& task, Model& model, const ModelState& s) const override;
};

// task.config["head_epochs"]. The head is the last layer group.
class FedRepClient : public PersonalClient {
 public:
  std::vector<std::string> personal_names(const ClientTask& task, Model& model, const ModelState& s) const override;

 protected:
  TrainResult local_train(const ClientTask& task, ClientContext& ctx, const TrainOptions& options) const override;
};

// FedRep's rule: epochs, not steps, and head_epochs below them (the body needs at least one).
void check_fedrep_epochs(int head_epochs, const TrainOptions& options);

class LocalClient : public PersonalClient {
 public:
  std::vector<std::string> personal_names(const ClientTask& task, Model& model, const ModelState& s) const override;
};

}  // namespace fl
