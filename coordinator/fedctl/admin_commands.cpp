// fedctl's coordinator commands: each one is an Admin RPC over mutual TLS with an admin-role
// certificate, printed as a table (or --json: the reply message as JSON, proto field names).
#include <google/protobuf/util/json_util.h>
#include <grpcpp/grpcpp.h>
#include <zlib.h>

#include <cmath>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <thread>

#include "common/util/text.h"
#include "admin.grpc.pb.h"
#include "common/net/tls.h"
#include "common/run/run_spec.h"
#include "coordinator/fedctl/cli.h"
#include "strategies/registry.h"

namespace fl::fedctl {
namespace {

namespace fs = std::filesystem;

struct Connection {
  std::string coordinator = "localhost:50051";
  std::string pki_dir;
  std::string identity = "admin";
  std::string tls_ca, tls_cert, tls_key;
  std::string server_name;  // TLS name override (the coordinator's certificate names localhost by default)
  bool insecure = false;
  double timeout_s = 30;
};

// Exit code for a failed RPC: 3 when we could not reach or were not let in, 1 otherwise.
ExitCode exit_code_for(const grpc::Status& s) {
  switch (s.error_code()) {
    case grpc::StatusCode::UNAVAILABLE:
    case grpc::StatusCode::UNAUTHENTICATED:
    case grpc::StatusCode::PERMISSION_DENIED:
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      return kUnreachable;
    default:
      return kError;
  }
}

const char* code_name(grpc::StatusCode c) {
  switch (c) {
    case grpc::StatusCode::UNAVAILABLE: return "unavailable";
    case grpc::StatusCode::UNAUTHENTICATED: return "unauthenticated";
    case grpc::StatusCode::PERMISSION_DENIED: return "permission denied";
    case grpc::StatusCode::DEADLINE_EXCEEDED: return "deadline exceeded";
    case grpc::StatusCode::NOT_FOUND: return "not found";
    case grpc::StatusCode::INVALID_ARGUMENT: return "invalid argument";
    case grpc::StatusCode::FAILED_PRECONDITION: return "failed precondition";
    default: return "error";
  }
}

void check(const grpc::Status& s, const Connection& c) {
  if (s.ok()) return;
  std::string msg = std::string(code_name(s.error_code())) + ": " + s.error_message();
  if (s.error_code() == grpc::StatusCode::UNAVAILABLE || s.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED)
    msg += " (coordinator " + c.coordinator + "; is it running, and do its CA and yours match?)";
  throw CommandError(exit_code_for(s), msg);
}

class Client {
 public:
  explicit Client(const Connection& c) : c_(c) {
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(4 << 20);
    std::shared_ptr<grpc::ChannelCredentials> creds;
    if (c.insecure) {
      creds = grpc::InsecureChannelCredentials();
    } else {
      TlsFiles f{c.tls_ca, c.tls_cert, c.tls_key};
      if (!c.pki_dir.empty()) {
        if (f.ca.empty()) f.ca = (fs::path(c.pki_dir) / "ca.crt").string();
        if (f.cert.empty()) f.cert = (fs::path(c.pki_dir) / (c.identity + ".crt")).string();
        if (f.key.empty()) f.key = (fs::path(c.pki_dir) / (c.identity + ".key")).string();
      }
      if (f.ca.empty() || f.cert.empty() || f.key.empty())
        throw CommandError(kUsage, "give --pki-dir DIR (with --identity NAME) or --tls-ca/--tls-cert/--tls-key");
      try {
        creds = make_channel_credentials(f);
      } catch (const std::exception& e) {
        throw CommandError(kUnreachable, e.what());  // our own certificate or key is unusable
      }
      if (!c.server_name.empty()) args.SetSslTargetNameOverride(c.server_name);
    }
    stub_ = v1::Admin::NewStub(grpc::CreateCustomChannel(c.coordinator, creds, args));
  }
  v1::Admin::Stub& stub() { return *stub_; }
  std::unique_ptr<grpc::ClientContext> context() const {
    auto ctx = std::make_unique<grpc::ClientContext>();
    ctx->set_deadline(std::chrono::system_clock::now() +
                      std::chrono::milliseconds(static_cast<int64_t>(c_.timeout_s * 1000)));
    if (c_.insecure) ctx->AddMetadata("fl-client-name", c_.identity);
    return ctx;
  }
  // Runs one unary RPC; a failure becomes a CommandError with the right exit code.
  template <typename Req, typename Rep, typename Fn>
  Rep call(Fn fn, Req req) {
    req.set_protocol(v1::PROTOCOL_VERSION_1);
    Rep rep;
    auto ctx = context();
    check((stub_.get()->*fn)(ctx.get(), req, &rep), c_);
    return rep;
  }
  const Connection& connection() const { return c_; }

 private:
  const Connection& c_;
  std::unique_ptr<v1::Admin::Stub> stub_;
};

void print_message(const google::protobuf::Message& m) {
  google::protobuf::util::JsonPrintOptions o;
  o.add_whitespace = true;
  o.preserve_proto_field_names = true;
  o.always_print_primitive_fields = true;
  std::string out;
  google::protobuf::util::MessageToJsonString(m, &out, o);
  std::cout << out;
  if (out.empty() || out.back() != '\n') std::cout << '\n';
}

std::string when(double unix_s) {
  if (unix_s <= 0) return "-";
  const std::time_t t = static_cast<std::time_t>(unix_s);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::string num(double v, int digits = 4) {
  if (v < 0 || !std::isfinite(v)) return "-";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}

template <typename Seq>
std::string join(const Seq& seq) {
  std::string s;
  for (const auto& x : seq) {
    std::ostringstream o;
    o << x;
    s += (s.empty() ? "" : ",") + o.str();
  }
  return s.empty() ? "-" : s;
}

std::string setting(const std::string& config_json, const char* key) {
  auto j = nlohmann::json::parse(config_json, nullptr, false);
  if (j.is_discarded() || !j.contains(key)) return "-";
  return j[key].is_string() ? j[key].get<std::string>() : j[key].dump();
}

void print_run(const v1::RunInfo& r) {
  print_fields(std::cout, {{"run", r.run_id()},
                           {"state", r.state() + (r.active() ? " (executing)" : "")},
                           {"round", std::to_string(std::min(r.current_round(), r.total_rounds() + 1) - 1) + " of " +
                                         std::to_string(r.total_rounds()) + " committed"},
                           {"global accuracy", num(r.last_global_accuracy())},
                           {"created", when(r.created_at())},
                           {"started", when(r.started_at())},
                           {"ended", when(r.ended_at())},
                           {"settings", r.config_json()}});
}

std::vector<std::string> round_row(const v1::RoundDetail& d) {
  const auto& i = d.info();
  return {std::to_string(i.round()), join(d.participant_names()), join(d.dropped_names()),
          num(i.train_loss()),       num(i.federated_accuracy()), num(i.global_accuracy()),
          num(i.wall_s(), 1)};
}
// One line of `runs watch`'s fixed-width table.
std::string fmt_row(const std::vector<std::string>& cells) {
  static const size_t kWidth[] = {7, 9, 9, 9, 9, 12, 0};
  std::string s;
  for (size_t c = 0; c < cells.size(); ++c)
    s += cells[c] + (kWidth[c] > cells[c].size() ? std::string(kWidth[c] - cells[c].size(), ' ') : " ");
  while (!s.empty() && s.back() == ' ') s.pop_back();
  return s + "\n";
}

const std::vector<std::string> kRoundHeader = {"ROUND", "PARTICIPANTS", "DROPPED", "LOSS", "FED_ACC", "GLOBAL_ACC", "WALL_S"};

std::vector<std::string> client_row(const v1::ClientDetail& d) {
  const auto& i = d.info();
  return {std::to_string(i.index()), i.name(), std::to_string(i.num_train_examples()),
          std::to_string(d.num_test_examples()), i.last_seen_s_ago() < 0 ? "-" : num(i.last_seen_s_ago(), 1) + "s",
          i.alive() ? "yes" : "no", d.revoked() ? "REVOKED" : "-", std::to_string(d.rounds_size()),
          i.model().empty() ? "(the run's)" : i.model()};
}
const std::vector<std::string> kClientHeader = {"INDEX", "NAME", "TRAIN", "TEST", "LAST_SEEN",
                                                "ALIVE", "REVOKED", "ROUNDS", "MODEL"};

}  // namespace

void add_admin_commands(CLI::App& app, Context& ctx) {
  static Connection conn;  // the parsed flags outlive parsing (actions run after it)
  const char* group = "Coordinator connection";
  app.add_option("--coordinator", conn.coordinator, "the coordinator's address host:port")
      ->envname("FEDCTL_COORDINATOR")->capture_default_str()->group(group);
  app.add_option("--pki-dir", conn.pki_dir, "PKI directory: DIR/ca.crt, DIR/<identity>.crt and .key")
      ->envname("FEDCTL_PKI_DIR")->group(group);
  app.add_option("--identity", conn.identity, "certificate name in --pki-dir (an admin-role one)")
      ->capture_default_str()->group(group);
  app.add_option("--tls-ca", conn.tls_ca, "CA certificate (PEM); overrides --pki-dir")->group(group);
  app.add_option("--tls-cert", conn.tls_cert, "admin certificate (PEM); overrides --pki-dir")->group(group);
  app.add_option("--tls-key", conn.tls_key, "admin private key (PEM); overrides --pki-dir")->group(group);
  app.add_option("--server-name", conn.server_name, "name to expect in the coordinator's certificate")->group(group);
  app.add_flag("--insecure", conn.insecure, "plaintext (a coordinator started with --insecure; tests only)")
      ->group(group);
  app.add_option("--timeout-s", conn.timeout_s, "per-request deadline")->check(CLI::PositiveNumber)->group(group);

  auto client = [] { return std::make_shared<Client>(conn); };
  Context* c = &ctx;

  // ---- strategies (this build's registry; no coordinator needed)
  auto* strategies = app.add_subcommand("strategies", "the strategies and their parameters");
  on_run(strategies, ctx, [c] {
    if (!c->json) return std::cout << strategies_text(), kOk;
    auto list = nlohmann::ordered_json::array();
    for (const auto* s : strategy_specs()) {
      auto params = nlohmann::ordered_json::array();
      for (const auto& p : s->params)
        params.push_back({{"name", p.name}, {"default", p.to_json(p.default_value)}, {"range", p.describe()},
                          {"doc", p.doc}});
      list.push_back({{"name", s->name}, {"description", s->description}, {"parameters", params}});
    }
    std::cout << list.dump(2) << "\n";
    return kOk;
  });

  // ---- status
  auto* status = app.add_subcommand("status", "the active (or latest) run: state, clients, rounds");
  on_run(status, ctx, [client, c] {
    auto cl = client();
    auto r = cl->call<v1::StatusRequest, v1::StatusReply>(&v1::Admin::Stub::Status, v1::StatusRequest());
    if (c->json) return print_message(r), kOk;
    int alive = 0;
    for (const auto& x : r.clients()) alive += x.alive();
    if (r.run_id().empty()) {
      std::cout << "coordinator " << cl->connection().coordinator << ": no runs yet (fedctl runs create)\n";
      return kOk;
    }
    print_fields(std::cout, {{"run", r.run_id()},
                             {"state", r.state()},
                             {"round", std::to_string(r.round()) + " of " + std::to_string(r.total_rounds())},
                             {"clients", std::to_string(alive) + " alive of " + std::to_string(r.clients_size())}});
    return kOk;
  });

  // ---- clients
  auto* clients = app.add_subcommand("clients", "registered clients of a run");
  clients->require_subcommand(1);
  static std::string client_run, client_name;
  auto* cl_list = clients->add_subcommand("list", "every client of the run");
  cl_list->add_option("--run", client_run, "run id (default: the active or latest run)");
  on_run(cl_list, ctx, [client, c] {
    v1::ListClientsRequest req;
    req.set_run_id(client_run);
    auto r = client()->call<v1::ListClientsRequest, v1::ListClientsReply>(&v1::Admin::Stub::ListClients, req);
    if (c->json) return print_message(r), kOk;
    std::vector<std::vector<std::string>> rows;
    for (const auto& d : r.clients()) rows.push_back(client_row(d));
    std::cout << "run " << r.run_id() << "\n";
    print_table(std::cout, kClientHeader, rows);
    return kOk;
  });
  for (const char* verb : {"show", "revoke"}) {
    const bool revoke = std::string(verb) == "revoke";
    auto* sub = clients->add_subcommand(
        verb, revoke ? "refuse this client from now on (its certificate CN; every run)" : "one client in detail");
    sub->add_option("NAME", client_name, "the client's certificate CN")->required();
    sub->add_option("--run", client_run, "run id (default: the active or latest run)");
    on_run(sub, ctx, [client, c, revoke] {
      v1::ClientRequest req;
      req.set_run_id(client_run);
      req.set_name(client_name);
      auto d = client()->call<v1::ClientRequest, v1::ClientDetail>(
          revoke ? &v1::Admin::Stub::RevokeClient : &v1::Admin::Stub::ShowClient, req);
      if (c->json) return print_message(d), kOk;
      const auto row = client_row(d);
      print_fields(std::cout, {{"name", d.info().name()},
                               {"index", row[0]},
                               {"examples", row[2] + " train, " + row[3] + " test"},
                               {"registered", when(d.registered_at())},
                               {"last seen", row[4] == "-" ? "-" : row[4] + " ago"},
                               {"alive", row[5]},
                               {"revoked", d.revoked() ? "yes" : "no"},
                               {"model", row[8]},
                               {"rounds", join(d.rounds())},
                               {"dropped in", join(d.dropped_in())}});
      return kOk;
    });
  }

  // ---- runs
  auto* runs = app.add_subcommand("runs", "create and control runs");
  runs->require_subcommand(1);
  static std::string run_id;
  static bool start_now = false;
  static std::string settings_text;
  auto* create = runs->add_subcommand("create", "a new run: the coordinator's settings with these overrides");
  create->add_option("RUN", run_id, "the new run's id")->required();
  create->add_flag("--start", start_now, "start it right away");
  create->add_option("--settings", settings_text, "more settings as a JSON object (the flags win)");
  // The run's settings as flags, from the same table as fedcoord's; only those given are sent.
  static RunSpec overrides;
  static RunOptions run_flags(*create, overrides, kRunScopeDeploy);
  on_run(create, ctx, [client, c] {
    nlohmann::ordered_json j = nlohmann::ordered_json::object();
    if (!settings_text.empty()) {
      auto extra = nlohmann::ordered_json::parse(settings_text, nullptr, false);
      if (extra.is_discarded() || !extra.is_object())
        throw CommandError(kUsage, "--settings must be a JSON object, got: " + settings_text);
      j = extra;
    }
    try {
      const auto given = run_flags.given_json();  // a named object: items() only refers to it
      for (const auto& [key, value] : given.items()) j[key] = value;
    } catch (const std::invalid_argument& e) {
      throw CommandError(kUsage, e.what());
    }
    v1::CreateRunRequest req;
    req.set_run_id(run_id);
    req.set_settings_json(j.dump());
    req.set_start(start_now);
    auto r = client()->call<v1::CreateRunRequest, v1::RunInfo>(&v1::Admin::Stub::CreateRun, req);
    if (c->json) return print_message(r), kOk;
    std::cout << "created run " << r.run_id() << " (" << r.state() << ")\n";
    return kOk;
  });
  struct Verb {
    const char* name;
    v1::ControlRunRequest::Action action;
    const char* help;
  };
  for (const Verb& v : {Verb{"start", v1::ControlRunRequest::ACTION_START, "queue a created run (it runs after those started before it)"},
                        Verb{"pause", v1::ControlRunRequest::ACTION_PAUSE, "no new round starts (the one in progress finishes)"},
                        Verb{"resume", v1::ControlRunRequest::ACTION_RESUME, "continue a paused run"},
                        Verb{"abort", v1::ControlRunRequest::ACTION_ABORT, "end a run now (the round in progress is dropped)"}}) {
    auto* sub = runs->add_subcommand(v.name, v.help);
    sub->add_option("RUN", run_id, "run id")->required();
    const auto action = v.action;
    const std::string name = v.name;
    on_run(sub, ctx, [client, c, action, name] {
      v1::ControlRunRequest req;
      req.set_run_id(run_id);
      req.set_action(action);
      auto r = client()->call<v1::ControlRunRequest, v1::RunInfo>(&v1::Admin::Stub::ControlRun, req);
      if (c->json) return print_message(r), kOk;
      std::cout << "run " << r.run_id() << ": " << r.state() << "\n";
      return kOk;
    });
  }
  auto* rlist = runs->add_subcommand("list", "every run, oldest first");
  on_run(rlist, ctx, [client, c] {
    auto r = client()->call<v1::ListRunsRequest, v1::ListRunsReply>(&v1::Admin::Stub::ListRuns, v1::ListRunsRequest());
    if (c->json) return print_message(r), kOk;
    std::vector<std::vector<std::string>> rows;
    for (const auto& x : r.runs())
      rows.push_back({x.run_id(), x.state() + (x.active() ? "*" : ""),
                      std::to_string(std::min(x.current_round(), x.total_rounds() + 1) - 1) + "/" +
                          std::to_string(x.total_rounds()),
                      setting(x.config_json(), "strategy"), setting(x.config_json(), "model"),
                      num(x.last_global_accuracy()), when(x.created_at())});
    print_table(std::cout, {"RUN", "STATE", "ROUNDS", "STRATEGY", "MODEL", "GLOBAL_ACC", "CREATED"}, rows);
    return kOk;
  });
  auto* rshow = runs->add_subcommand("show", "one run in detail");
  rshow->add_option("RUN", run_id, "run id (default: the active or latest run)");
  on_run(rshow, ctx, [client, c] {
    v1::RunRequest req;
    req.set_run_id(run_id);
    auto r = client()->call<v1::RunRequest, v1::RunInfo>(&v1::Admin::Stub::ShowRun, req);
    if (c->json) return print_message(r), kOk;
    print_run(r);
    return kOk;
  });

  // runs watch: follows a run until it ends, a line per committed round (--json: one JSON object
  // per line, the RoundDetail). A coordinator that goes away (a restart) is waited for.
  static double watch_interval_s = 2, watch_timeout_s = 0;
  auto* rwatch = runs->add_subcommand("watch", "follow a run live (round, participants, accuracy) until it ends");
  rwatch->add_option("RUN", run_id, "run id (default: the active or latest run)");
  rwatch->add_option("--interval-s", watch_interval_s, "seconds between looks")
      ->check(CLI::Range(0.05, 3600.0))->capture_default_str();
  rwatch->add_option("--timeout-s", watch_timeout_s, "give up after this long (0: never)")
      ->check(CLI::Range(0.0, 1e7))->capture_default_str();
  on_run(rwatch, ctx, [client, c] {
    auto cl = client();
    const auto start = std::chrono::steady_clock::now();
    const auto elapsed = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(); };
    std::string id = run_id, state;
    int printed = 0;  // the last round printed
    bool header = false, away = false;
    for (;;) {
      try {
        v1::RunRequest req;
        req.set_run_id(id);
        const auto info = cl->call<v1::RunRequest, v1::RunInfo>(&v1::Admin::Stub::ShowRun, req);
        id = info.run_id();  // pinned: a later run becoming active does not switch the watch
        if (away) std::cerr << "fedctl: coordinator is back\n";
        away = false;
        req.set_run_id(id);
        const auto rounds = cl->call<v1::RunRequest, v1::ListRoundsReply>(&v1::Admin::Stub::ListRounds, req);
        for (const auto& d : rounds.rounds()) {
          if (d.info().round() <= printed) continue;
          printed = d.info().round();
          if (c->json) {
            google::protobuf::util::JsonPrintOptions o;
            o.preserve_proto_field_names = true;
            std::string line;
            google::protobuf::util::MessageToJsonString(d, &line, o);
            std::cout << line << "\n";
          } else {  // fixed columns: rows appear one at a time
            const auto& i = d.info();
            if (!header) std::cout << fmt_row({"ROUND", "CLIENTS", "DROPPED", "LOSS", "FED_ACC", "GLOBAL_ACC", "WALL_S"});
            header = true;
            std::cout << fmt_row({std::to_string(i.round()), std::to_string(d.participant_names_size()),
                                  std::to_string(d.dropped_names_size()), num(i.train_loss()),
                                  num(i.federated_accuracy()), num(i.global_accuracy()), num(i.wall_s(), 1)});
          }
        }
        // After the rounds: "finished" comes below its last round.
        if (info.state() != state && !c->json)
          std::cout << "run " << id << ": " << info.state() << " (round "
                    << std::min(info.current_round(), info.total_rounds()) << " of " << info.total_rounds() << ")\n";
        state = info.state();
        std::cout.flush();
        if (state == "finished") return kOk;
        if (state == "aborted") throw CommandError(kError, "run '" + id + "' was aborted after " +
                                                               std::to_string(printed) + " committed round(s)");
      } catch (const CommandError& e) {
        // Unreachable after we saw the run: a coordinator restarting; keep watching.
        if (e.code != kUnreachable || state.empty()) throw;
        if (!away) std::cerr << "fedctl: " << e.what() << "; still watching\n";
        away = true;
      }
      if (watch_timeout_s > 0 && elapsed() > watch_timeout_s)
        throw CommandError(kError, "run '" + id + "' still " + state + " after " + num(watch_timeout_s, 1) + " s");
      std::this_thread::sleep_for(std::chrono::milliseconds(static_cast<int64_t>(watch_interval_s * 1000)));
    }
  });

  // ---- rounds
  auto* rounds = app.add_subcommand("rounds", "committed rounds of a run");
  rounds->require_subcommand(1);
  static std::string rounds_run;
  static int round_no = 0;
  auto* rdl = rounds->add_subcommand("list", "every committed round");
  rdl->add_option("--run", rounds_run, "run id (default: the active or latest run)");
  on_run(rdl, ctx, [client, c] {
    v1::RunRequest req;
    req.set_run_id(rounds_run);
    auto r = client()->call<v1::RunRequest, v1::ListRoundsReply>(&v1::Admin::Stub::ListRounds, req);
    if (c->json) return print_message(r), kOk;
    std::vector<std::vector<std::string>> rows;
    for (const auto& d : r.rounds()) rows.push_back(round_row(d));
    std::cout << "run " << r.run_id() << "\n";
    print_table(std::cout, kRoundHeader, rows);
    return kOk;
  });
  auto* rds = rounds->add_subcommand("show", "one round: participants, metrics, durations, dropped stragglers");
  rds->add_option("ROUND", round_no, "round number")->required()->check(CLI::PositiveNumber);
  rds->add_option("--run", rounds_run, "run id (default: the active or latest run)");
  on_run(rds, ctx, [client, c] {
    v1::RoundRequest req;
    req.set_run_id(rounds_run);
    req.set_round(round_no);
    auto d = client()->call<v1::RoundRequest, v1::RoundDetail>(&v1::Admin::Stub::ShowRound, req);
    if (c->json) return print_message(d), kOk;
    const auto row = round_row(d);
    std::vector<std::pair<std::string, std::string>> f = {
        {"round", row[0]},       {"participants", row[1]},   {"dropped", row[2]},
        {"samples", std::to_string(d.samples())},            {"train loss", row[3]},
        {"federated accuracy", row[4]},                      {"global accuracy", row[5]},
        {"global loss", num(d.global_loss())},               {"wall", row[6] + " s (+ " + num(d.eval_s(), 1) + " s eval)"}};
    for (const auto& kv : d.global_metrics()) f.push_back({"global " + kv.first, num(kv.second)});
    for (const auto& kv : d.federated_evaluation()) f.push_back({"federated evaluation " + kv.first, num(kv.second)});
    for (const auto& kv : d.strategy_metrics()) f.push_back({"strategy " + kv.first, num(kv.second)});
    print_fields(std::cout, f);
    return kOk;
  });

  // ---- model export
  auto* model = app.add_subcommand("model", "models of a run");
  model->require_subcommand(1);
  static std::string exp_run, exp_format = "safetensors", exp_out;
  static int exp_round = -1;
  auto* exp = model->add_subcommand("export", "write a round's global model to a file");
  exp->add_option("--run", exp_run, "run id (default: the active or latest run)");
  exp->add_option("--round", exp_round, "the model after this round (0: initial; default: latest)")
      ->check(CLI::Range(-1, 1 << 30));
  exp->add_option("--format", exp_format, "file format")->check(CLI::IsMember({"safetensors"}))->capture_default_str();
  exp->add_option("--out", exp_out, "output file")->required();
  on_run(exp, ctx, [client, c] {
    auto cl = client();
    v1::ExportModelRequest req;
    req.set_protocol(v1::PROTOCOL_VERSION_1);
    req.set_run_id(exp_run);
    req.set_round(exp_round);
    req.set_format(exp_format);
    auto ctx = cl->context();
    auto reader = cl->stub().ExportModel(ctx.get(), req);
    const fs::path out(exp_out);
    const fs::path tmp = out.string() + ".part";
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    if (!f) throw CommandError(kError, "cannot write " + tmp.string());
    v1::ExportChunk chunk;
    uint64_t total = 0, got = 0;
    uint32_t want_crc = 0;
    int version = -1;
    uLong crc = ::crc32(0L, Z_NULL, 0);
    bool first = true;
    while (reader->Read(&chunk)) {
      if (first) {
        total = chunk.total_bytes();
        want_crc = chunk.crc32();
        version = chunk.version();
        first = false;
      }
      crc = ::crc32(crc, reinterpret_cast<const Bytef*>(chunk.data().data()), static_cast<uInt>(chunk.data().size()));
      got += chunk.data().size();
      f.write(chunk.data().data(), static_cast<std::streamsize>(chunk.data().size()));
    }
    f.close();
    const auto st = reader->Finish();
    if (!st.ok()) {
      fs::remove(tmp);
      check(st, cl->connection());
    }
    if (first || got != total || static_cast<uint32_t>(crc) != want_crc) {
      fs::remove(tmp);
      throw CommandError(kError, "export arrived damaged: " + std::to_string(got) + " of " + std::to_string(total) +
                                     " bytes, CRC-32 " + std::to_string(crc) + " vs " + std::to_string(want_crc));
    }
    if (!f) throw CommandError(kError, "writing " + tmp.string() + " failed");
    fs::rename(tmp, out);
    if (c->json) {
      print_json(std::cout, {{"file", out.string()}, {"bytes", got}, {"round", version}, {"crc32", want_crc}});
    } else {
      std::cout << "wrote " << out.string() << " (" << got << " bytes, model after round " << version << ")\n";
    }
    return kOk;
  });

  // ---- audit
  auto* audit = app.add_subcommand("audit", "who did what, when, with what outcome (every admin request)");
  static int limit = 50;
  audit->add_option("--limit", limit, "the last N records (0: all)")->check(CLI::NonNegativeNumber)->capture_default_str();
  on_run(audit, ctx, [client, c] {
    v1::AuditRequest req;
    req.set_limit(limit);
    auto r = client()->call<v1::AuditRequest, v1::AuditReply>(&v1::Admin::Stub::Audit, req);
    if (c->json) return print_message(r), kOk;
    std::vector<std::vector<std::string>> rows;
    for (const auto& a : r.records())
      // Records written before the coordinator escaped them may hold anything: never raw to a terminal.
      rows.push_back({std::to_string(a.seq()), when(a.time()), a.who().empty() ? "-" : printable(a.who()),
                      a.role().empty() ? "-" : printable(a.role()), printable(a.action()),
                      a.target().empty() ? "-" : printable(a.target(), 200), printable(a.outcome(), 500)});
    print_table(std::cout, {"SEQ", "TIME", "WHO", "ROLE", "ACTION", "TARGET", "OUTCOME"}, rows);
    return kOk;
  });
}

}  // namespace fl::fedctl
