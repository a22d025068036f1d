// RunSpec: one definition of a run's settings (JSON, flags, validation) and the strategy
// registry's typed parameters behind it.
#include "common/run/run_spec.h"

#include <CLI/CLI.hpp>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <fstream>
#include <sstream>

#include "common/models/model.h"
#include "strategies/registry.h"

namespace fl {
namespace {

template <typename E = std::invalid_argument, typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const E& e) {
    return e.what();
  }
  return "no error";
}

TEST(RunSpec, JsonRoundTripAndValidation) {
  RunSpec base;
  base.strategy = "fedprox";
  base.strategy_params = {{"mu", 0.2}};
  base.lr = 0.03;
  base.workflow = "cyclic";
  base.hidden = {16, 8};
  base.validate();
  const auto j = base.to_json();
  EXPECT_DOUBLE_EQ(j["strategy_params"]["mu"].get<double>(), 0.2);
  EXPECT_EQ(j["hidden"].dump(), "[16,8]");
  const RunSpec back = RunSpec::from_json(nlohmann::json::parse(j.dump()));
  EXPECT_EQ(back.to_json().dump(), j.dump());
  EXPECT_EQ(back.workflow, "cyclic");

  auto bad = [&](const char* text, const std::string& message) {
    RunSpec s;
    const auto err = error_of([&] { s.apply_json(nlohmann::json::parse(text)); });
    EXPECT_NE(err.find(message), std::string::npos) << text << " -> " << err;
  };
  bad(R"({"lr": -1})", "run setting 'lr' = -1: must be in (0");
  bad(R"({"lr": "fast"})", "'lr' = \"fast\": must be a number");
  bad(R"({"rounds": 2.5})", "'rounds' = 2.5: must be an integer");
  bad(R"({"fraction": 0})", "'fraction' = 0");
  bad(R"({"model": "gpt"})", "'model' = \"gpt\": must be one of");
  bad(R"({"strategy": "nosuch"})", "'strategy' = \"nosuch\"");
  bad(R"({"optimizer": "lbfgs"})", "must be one of sgd, adam");
  bad(R"({"workflow": "ring"})", "'workflow' = \"ring\": must be one of scatter-gather, cyclic");
  bad(R"({"hidden": [8, 0]})", "'hidden' = [8,0]: must be an array of positive integers");
  bad(R"({"update_encoding": "zip"})", "must be one of fp32, fp16, bf16, int8, topk");
  bad(R"({"warp": 1})", "unknown run setting 'warp'");
  // A run's id is its key in the store, never a setting (it used to override the id).
  bad(R"({"run_id": "other"})", "unknown run setting 'run_id'");
  bad(R"({"strategy": "fedprox", "strategy_params": {"mu": -1}})", "strategy 'fedprox': parameter 'mu' = -1");
  bad(R"({"strategy": "fedprox", "strategy_params": {"mu": "x"}})", "parameter 'mu' = 'x': must be a number");
  bad(R"({"strategy_params": {"mu": 0.1}})", "strategy 'fedavg' has no parameter 'mu'");
  bad(R"({"local_epochs": 0, "local_steps": 0})", "nothing to train");
  bad(R"([1, 2])", "must be a JSON object");
  // Invalid UTF-8 in a value (a YAML config can hold any bytes; found by fuzz_yaml_config): the
  // message quotes it escaped instead of json's dump() throwing a type_error from inside CLI11.
  RunSpec s;
  const auto err = error_of([&] { s.apply_json(nlohmann::json{{"strategy", std::string("fed\xff\x1b[2J")}}); });
  EXPECT_NE(err.find(R"(run setting 'strategy' = "fed\xef\xbf\xbd\u001b[2J": must be one of)"), std::string::npos) << err;
}

// The epochs/steps rule has one meaning: local_steps > 0 trains exactly that many steps, even
// when that takes more than the one epoch local_epochs says.
TEST(RunSpec, LocalStepsMeanExactlyThatManySteps) {
  RunSpec s;
  s.local_epochs = 1;
  s.local_steps = 7;
  s.batch_size = 4;
  s.validate();
  const auto t = s.train_options();
  EXPECT_EQ(t.epochs, 0);
  EXPECT_EQ(t.max_steps, 7);

  ModelSpec spec;
  spec.name = "mlp";
  spec.input_shape = {3};
  spec.hidden = {4};
  spec.num_classes = 2;
  auto model = build_model(spec);
  TensorDataset data;
  data.x = torch::randn({10, 3});  // 3 batches an epoch
  data.y = torch::randint(0, 2, {10}, torch::kLong);
  data.num_classes = 2;
  const auto r = LocalTrainer(t).train(*model, data);
  EXPECT_EQ(r.steps, 7);

  s.local_steps = 0;
  s.local_epochs = 2;
  EXPECT_EQ(LocalTrainer(s.train_options()).train(*model, data).steps, 6);
}

TEST(RunSpec, AStrategyRefusesSettingsItCannotUseWithItsReason) {
  RunSpec fedrep;
  fedrep.strategy = "fedrep";
  fedrep.local_epochs = 1;
  EXPECT_NE(error_of([&] { fedrep.validate(); }).find("head_epochs=1 leaves no epoch for the body"), std::string::npos);
  fedrep.local_epochs = 2;
  EXPECT_NO_THROW(fedrep.validate());
  fedrep.local_steps = 5;
  EXPECT_NE(error_of([&] { fedrep.validate(); }).find("use local epochs, not local steps"), std::string::npos);

  RunSpec scaffold;
  scaffold.strategy = "scaffold";
  scaffold.optimizer = "adam";
  EXPECT_NE(error_of([&] { scaffold.validate(); }).find("scaffold needs the sgd optimizer"), std::string::npos);
}

TEST(RunSpec, EnumParametersTravelByName) {
  RunSpec s;
  s.apply_json(nlohmann::json::parse(R"({"strategy": "fedcmd", "strategy_params": {"distance": "mean", "head": 2}})"));
  EXPECT_EQ(s.strategy_params.at("distance"), 1);
  EXPECT_EQ(s.strategy_params.at("head"), 2);  // an index (settings stored before the names) still reads
  EXPECT_EQ(s.strategy_params.at("rho"), 0.1);  // completed with the defaults
  const auto j = s.to_json();
  EXPECT_EQ(j["strategy_params"]["distance"], "mean");
  EXPECT_EQ(j["strategy_params"]["head"], "shared");
  EXPECT_EQ(j["strategy_params"]["first_layer"], -1);
  EXPECT_NE(error_of([&] { s.apply_json(nlohmann::json::parse(R"({"strategy_params": {"distance": "l1"}})")); })
                .find("parameter 'distance' = 'l1': must be one of w2, mean"),
            std::string::npos);

  // Another strategy without parameters starts from its own defaults, not the old ones.
  s.apply_json(nlohmann::json::parse(R"({"strategy": "fedprox"})"));
  EXPECT_EQ(s.strategy_params, (StrategyParams{{"mu", 0.01}}));
}

struct Cli {
  CLI::App app{"t", "prog"};
  RunSpec spec;
  std::unique_ptr<RunOptions> options;
  explicit Cli(unsigned scope = kRunScopeAll) { options = std::make_unique<RunOptions>(app, spec, scope); }
  void parse(std::vector<std::string> args) {
    args.insert(args.begin(), "prog");
    std::vector<const char*> argv;
    for (const auto& a : args) argv.push_back(a.c_str());
    app.parse(static_cast<int>(argv.size()), argv.data());
  }
};

TEST(RunOptions, FlagsWriteTheSpecAndStrategyFlagsComeFromTheRegistry) {
  Cli c;
  c.parse({"--local-epochs", "3", "--strategy", "fedcmd", "--fedcmd-distance", "mean", "--strategy-param", "rho=0.5",
           "--hidden", "16", "8"});
  const RunSpec& s = c.options->finish();
  EXPECT_EQ(s.local_epochs, 3);
  EXPECT_EQ(s.hidden, (std::vector<int64_t>{16, 8}));
  EXPECT_EQ(s.strategy_params.at("distance"), 1);
  EXPECT_EQ(s.strategy_params.at("rho"), 0.5);
  // Only what was given, for `fedctl runs create`.
  const auto given = c.options->given_json();
  EXPECT_EQ(given.size(), 4u) << given.dump();
  EXPECT_EQ(given["strategy_params"]["distance"], "mean");
  EXPECT_FALSE(given.contains("lr"));

  Cli mu;
  mu.parse({"--mu", "0.3"});
  EXPECT_NE(error_of([&] { mu.options->finish(); }).find("--mu is a parameter of fedprox, not of the run's strategy fedavg"),
            std::string::npos);
  Cli both;
  both.parse({"--strategy", "fedprox", "--mu", "0.3", "--strategy-param", "mu=0.1"});
  EXPECT_NE(error_of([&] { both.options->finish(); }).find("both given"), std::string::npos);
  Cli prox;
  prox.parse({"--strategy", "fedprox", "--mu", "0.3"});
  EXPECT_EQ(prox.options->finish().strategy_params.at("mu"), 0.3);
  // Parameters without --strategy go as text: the coordinator parses them by the run's strategy.
  Cli loose;
  loose.parse({"--strategy-param", "k=2"});
  EXPECT_EQ(loose.options->given_json().dump(), R"({"strategy_params":{"k":"2"}})");

  for (const auto& [args, says] : std::vector<std::pair<std::vector<std::string>, std::string>>{
           {{"--lr=-1"}, "--lr"}, {{"--rounds", "2.5"}, "must be an integer"}, {{"--model", "gpt"}, "--model"},
           {{"--hidden", "0"}, "not a positive integer"}, {{"--fedcmd-distance", "l1"}, ""}}) {
    Cli bad;
    std::string err;
    try {
      bad.parse(args);
      bad.options->finish();
      err = "no error";
    } catch (const std::exception& e) {
      err = e.what();
    }
    EXPECT_NE(err, "no error") << args[0];
    EXPECT_NE(err.find(says), std::string::npos) << args[0] << ": " << err;
  }
}

TEST(RunOptions, ScopeHidesDeploymentSettingsFromTheSimulator) {
  Cli sim(kRunScopeSim);
  EXPECT_EQ(sim.app.get_option_no_throw("--update-encoding"), nullptr);
  EXPECT_EQ(sim.app.get_option_no_throw("--num-classes"), nullptr);
  EXPECT_NE(sim.app.get_option_no_throw("--local-steps"), nullptr);
  Cli deploy(kRunScopeDeploy);
  EXPECT_NE(deploy.app.get_option_no_throw("--update-encoding"), nullptr);
}

// A deployment's roster: names as certificates have them, each once, at least min_clients of
// them; comma-separated on the command line.
TEST(RunOptions, ClientNamesAreCheckedAndTakeACommaSeparatedList) {
  Cli c(kRunScopeDeploy);
  c.parse({"--client-names", "hospital-1,hospital-2", "--client-names", "lab.3", "--min-clients", "3"});
  const RunSpec& s = c.options->finish();
  EXPECT_EQ(s.client_names, (std::vector<std::string>{"hospital-1", "hospital-2", "lab.3"}));
  EXPECT_EQ(s.to_json()["client_names"].dump(), R"(["hospital-1","hospital-2","lab.3"])");
  EXPECT_EQ(RunSpec::from_json(nlohmann::json::parse(s.to_json().dump())).client_names, s.client_names);
  EXPECT_EQ(Cli(kRunScopeSim).app.get_option_no_throw("--client-names"), nullptr);

  auto bad = [&](const char* text, const std::string& message) {
    RunSpec r;
    const auto err = error_of([&] { r.apply_json(nlohmann::json::parse(text)); });
    EXPECT_NE(err.find(message), std::string::npos) << text << " -> " << err;
  };
  bad(R"({"client_names": "hospital-1"})", "'client_names' = \"hospital-1\": must be an array of client names");
  bad(R"({"client_names": ["a", "b", "a"]})", "names \"a\" twice");
  bad(R"({"client_names": ["a", 7]})", "entry 7 is not a string");
  bad(R"({"client_names": ["a b"]})", "entry \"a b\" is not a client name (1 to 64 letters");
  bad(R"({"client_names": ["-x"]})", "is not a client name");
  bad(R"({"client_names": ["a", "b"], "min_clients": 3})", "min_clients = 3 but client_names names only 2");
  Cli flag(kRunScopeDeploy);
  const auto err = error_of<std::exception>([&] {
    flag.parse({"--client-names", "ok,not ok"});
    flag.options->finish();
  });
  EXPECT_NE(err.find("'not ok' is not a client name"), std::string::npos) << err;
}

// ---------------------------------------------------------------- the registry

TEST(StrategyRegistry, EveryStrategyDeclaresItselfCompletely) {
  const auto specs = strategy_specs();
  ASSERT_GE(specs.size(), 16u);
  for (const auto* s : specs) {
    SCOPED_TRACE(s->name);
    EXPECT_FALSE(s->description.empty());
    EXPECT_EQ(s->description.find('\n'), std::string::npos);
    EXPECT_NE(create_client_algorithm(s->name), nullptr);
    const auto params = complete_strategy_params(s->name, {});
    EXPECT_EQ(params.size(), s->params.size());
    EXPECT_EQ(create_strategy(s->name, params)->name(), s->name);
    for (const auto& p : s->params) EXPECT_FALSE(p.doc.empty()) << p.name;
  }
  EXPECT_NE(strategy_names_text().find("fedcmd"), std::string::npos);
  EXPECT_NE(strategies_text().find("--strategy-param distance=... (or --fedcmd-distance): "), std::string::npos);
}

// The README's strategy table is the registry's, not typed by hand.
TEST(StrategyRegistry, ReadmeTableIsGeneratedFromTheRegistry) {
  std::ifstream in(std::string(FL_SOURCE_DIR) + "/README.md");
  std::stringstream text;
  text << in.rdbuf();
  const std::string readme = text.str();
  const std::string begin = "<!-- strategies:begin (fedsim strategies --markdown) -->\n", end = "<!-- strategies:end -->";
  const auto a = readme.find(begin), b = readme.find(end);
  ASSERT_NE(a, std::string::npos);
  ASSERT_NE(b, std::string::npos);
  EXPECT_EQ(readme.substr(a + begin.size(), b - a - begin.size()), strategies_markdown())
      << "regenerate with: build/bin/fedsim strategies --markdown";
}

TEST(StrategyRegistry, ParametersParseByKind) {
  EXPECT_EQ(parse_strategy_params("fedcmd", {"distance=mean", "first_layer=2"}),
            (StrategyParams{{"distance", 1}, {"first_layer", 2}}));
  EXPECT_NE(error_of([] { parse_strategy_params("fedcmd", {"first_layer=1.5"}); }).find("must be an integer"),
            std::string::npos);
  EXPECT_NE(error_of([] { parse_strategy_params("fedprox", {"mu"}); }).find("not of the form key=value"),
            std::string::npos);
  EXPECT_NE(error_of([] { parse_strategy_params("fedprox", {"mu=1", "mu=2"}); }).find("given twice"), std::string::npos);
  EXPECT_NE(error_of([] { parse_strategy_params("fedprox", {"mue=1"}); }).find("has no parameter 'mue' (it takes: mu)"),
            std::string::npos);
  EXPECT_NE(error_of([] { parse_strategy_params("fedprox", {"mu=inf"}); }).find("finite"), std::string::npos);
}

}  // namespace
}  // namespace fl
