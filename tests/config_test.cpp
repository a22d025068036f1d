#include "common/config/yaml_config.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

namespace fs = std::filesystem;

namespace {

struct Options {
    int rounds = 10;
    double lr = 0.01;
    std::string strategy = "fedavg";
    int local_epochs = 1;
    bool verbose = false;
    std::vector<int> layers;
    int port = 0;
};

// The options a real program would declare; "serve" shows a subcommand's section.
void declare(CLI::App& app, Options& o) {
    app.add_option("--rounds", o.rounds, "Federated rounds")->check(CLI::PositiveNumber);
    app.add_option("--lr", o.lr, "Learning rate");
    app.add_option("--strategy", o.strategy, "Aggregation strategy")
        ->check(CLI::IsMember({"fedavg", "fedprox"}));
    app.add_option("--local-epochs", o.local_epochs, "Local epochs per round");
    app.add_flag("--verbose", o.verbose, "Chatty output");
    app.add_option("--layers", o.layers, "Hidden layer sizes");
    CLI::App* serve = app.add_subcommand("serve", "Serve");
    serve->add_option("--port", o.port, "Port")->check(CLI::Range(1, 65535));
    fl::add_config_option(app);
}

class ConfigYaml : public ::testing::Test {
  protected:
    void SetUp() override {
        std::random_device rd;
        dir_ = fs::temp_directory_path() / ("fl_config_test_" + std::to_string(rd()));
        fs::create_directories(dir_);
        declare(app_, opts_);
    }
    void TearDown() override {
        std::error_code ec;
        fs::remove_all(dir_, ec);
    }

    std::string write(const std::string& text, const std::string& name = "run.yaml") {
        const fs::path path = dir_ / name;
        std::ofstream(path) << text;
        return path.string();
    }

    void parse(std::vector<std::string> args) {
        args.insert(args.begin(), "prog");
        std::vector<const char*> argv;
        for (const auto& a : args) argv.push_back(a.c_str());
        app_.parse(static_cast<int>(argv.size()), argv.data());
    }

    // The ParseError message from parsing a config file holding text.
    std::string error_for(const std::string& text) {
        const std::string path = write(text);
        try {
            parse({"--config", path});
        } catch (const CLI::ParseError& e) {
            return e.what();
        }
        ADD_FAILURE() << "no error for:\n" << text;
        return {};
    }

    fs::path dir_;
    CLI::App app_{"test program", "prog"};
    Options opts_;
};

TEST_F(ConfigYaml, ValuesArrive) {
    parse({"--config", write("rounds: 7\n"
                             "lr: 0.5\n"
                             "strategy: fedprox\n"
                             "local-epochs: 3\n"
                             "verbose: true\n"
                             "layers: [64, 32]\n")});
    EXPECT_EQ(opts_.rounds, 7);
    EXPECT_DOUBLE_EQ(opts_.lr, 0.5);
    EXPECT_EQ(opts_.strategy, "fedprox");
    EXPECT_EQ(opts_.local_epochs, 3);
    EXPECT_TRUE(opts_.verbose);
    EXPECT_EQ(opts_.layers, (std::vector<int>{64, 32}));
}

TEST_F(ConfigYaml, BlockListAndFalseFlag) {
    parse({"--config", write("verbose: false\nlayers:\n  - 8\n  - 4\n  - 2\n")});
    EXPECT_FALSE(opts_.verbose);
    EXPECT_EQ(opts_.layers, (std::vector<int>{8, 4, 2}));
}

TEST_F(ConfigYaml, CommandLineOverridesFile) {
    parse({"--config", write("rounds: 7\nlr: 0.5\nlayers: [1, 2]\n"), "--rounds", "9", "--layers",
           "5"});
    EXPECT_EQ(opts_.rounds, 9);
    EXPECT_DOUBLE_EQ(opts_.lr, 0.5);
    EXPECT_EQ(opts_.layers, (std::vector<int>{5}));
}

TEST_F(ConfigYaml, UnderscoreKeys) {
    parse({"--config", write("local_epochs: 4\n")});
    EXPECT_EQ(opts_.local_epochs, 4);
}

TEST_F(ConfigYaml, EmptyFileSetsNothing) {
    parse({"--config", write("# nothing yet\n")});
    EXPECT_EQ(opts_.rounds, 10);
}

TEST_F(ConfigYaml, SubcommandSection) {
    parse({"--config", write("rounds: 3\nserve:\n  port: 7000\n"), "serve"});
    EXPECT_EQ(opts_.rounds, 3);
    EXPECT_EQ(opts_.port, 7000);
}

TEST_F(ConfigYaml, UnknownKeyNamesKeyAndFile) {
    const std::string msg = error_for("rounds: 3\nlokal-epochs: 2\n");
    EXPECT_NE(msg.find("unknown key 'lokal-epochs'"), std::string::npos) << msg;
    EXPECT_NE(msg.find("run.yaml"), std::string::npos) << msg;
    EXPECT_NE(msg.find("line 2"), std::string::npos) << msg;
}

TEST_F(ConfigYaml, UnknownKeyInSubcommandSection) {
    const std::string msg = error_for("serve:\n  prot: 7000\n");
    EXPECT_NE(msg.find("unknown key 'serve.prot'"), std::string::npos) << msg;
    const std::string msg2 = error_for("srve:\n  port: 7000\n");
    EXPECT_NE(msg2.find("unknown key 'srve'"), std::string::npos) << msg2;
}

TEST_F(ConfigYaml, UnknownKeyIsParseErrorType) {
    const std::string path = write("lokal_epochs: 2\n");
    EXPECT_THROW(parse({"--config", path}), CLI::ConfigError);
}

TEST_F(ConfigYaml, BadValuesNameTheKey) {
    for (const char* text : {"rounds: abc\n", "rounds: -3\n", "rounds: 0\n"}) {
        const std::string msg = error_for(text);
        EXPECT_NE(msg.find("rounds"), std::string::npos) << text << " -> " << msg;
    }
    const std::string msg = error_for("strategy: foo\n");
    EXPECT_NE(msg.find("strategy"), std::string::npos) << msg;
    const std::string lr = error_for("lr: fast\n");
    EXPECT_NE(lr.find("lr"), std::string::npos) << lr;
    const std::string port = error_for("serve:\n  port: 70000\n");
    EXPECT_NE(port.find("port"), std::string::npos) << port;
}

TEST_F(ConfigYaml, MissingValueAndNestedListAndDuplicates) {
    std::string msg = error_for("rounds:\n");
    EXPECT_NE(msg.find("'rounds'"), std::string::npos) << msg;
    msg = error_for("layers: [[1, 2]]\n");
    EXPECT_NE(msg.find("'layers'"), std::string::npos) << msg;
    msg = error_for("local_epochs: 1\nlocal-epochs: 2\n");
    EXPECT_NE(msg.find("given twice"), std::string::npos) << msg;
    msg = error_for("config: other.yaml\n");
    EXPECT_NE(msg.find("'config'"), std::string::npos) << msg;
}

TEST_F(ConfigYaml, InvalidYamlNamesLine) {
    const std::string msg = error_for("rounds: 3\nlr: 0.1\nlayers: [1, 2\n");
    EXPECT_NE(msg.find("run.yaml: invalid YAML at line"), std::string::npos) << msg;
    const std::string tab = error_for("rounds: 3\nlr: 0.1\n  strategy: fedavg\n");
    EXPECT_NE(tab.find("invalid YAML at line 3"), std::string::npos) << tab;
}

TEST_F(ConfigYaml, TopLevelMustBeMapping) {
    std::string msg = error_for("- rounds\n- 3\n");
    EXPECT_NE(msg.find("mapping"), std::string::npos) << msg;
    msg = error_for("just text\n");
    EXPECT_NE(msg.find("mapping"), std::string::npos) << msg;
}

TEST_F(ConfigYaml, MissingFileIsError) {
    EXPECT_THROW(parse({"--config", (dir_ / "nope.yaml").string()}), CLI::FileError);
}

TEST_F(ConfigYaml, LastConfigWins) {
    const std::string a = write("rounds: 3\n", "a.yaml");
    const std::string b = write("rounds: 4\n", "b.yaml");
    parse({"--config", a, "--config", b});
    EXPECT_EQ(opts_.rounds, 4);
}

TEST_F(ConfigYaml, WrittenConfigReadsBack) {
    parse({"--rounds", "12", "--lr", "0.25", "--layers", "3", "4", "--verbose", "serve", "--port",
           "8080"});
    const std::string text = app_.config_to_str(true, true);
    const std::string path = write(text, "round_trip.yaml");

    CLI::App again{"again", "prog"};
    Options o;
    declare(again, o);
    const std::string p = path;
    const char* argv[] = {"prog", "--config", p.c_str(), "serve"};
    ASSERT_NO_THROW(again.parse(4, argv)) << text;
    EXPECT_EQ(o.rounds, 12) << text;
    EXPECT_DOUBLE_EQ(o.lr, 0.25);
    EXPECT_EQ(o.layers, (std::vector<int>{3, 4})) << text;
    EXPECT_TRUE(o.verbose) << text;
    EXPECT_EQ(o.port, 8080) << text;
}

// Values from flags go through the same conversion and validators.
TEST(ConfigFlags, BadFlagValuesNameTheOption) {
    auto error_for = [](std::vector<const char*> argv) -> std::string {
        CLI::App app{"t", "prog"};
        Options o;
        declare(app, o);
        argv.insert(argv.begin(), "prog");
        try {
            app.parse(static_cast<int>(argv.size()), argv.data());
        } catch (const CLI::ParseError& e) {
            return e.what();
        }
        return "no error";
    };
    EXPECT_NE(error_for({"--lr", "abc"}).find("--lr"), std::string::npos);
    EXPECT_NE(error_for({"--rounds=-3"}).find("--rounds"), std::string::npos);
    EXPECT_NE(error_for({"--strategy", "foo"}).find("--strategy"), std::string::npos);
}

class ConfigRunCli : public ::testing::Test {
  protected:
    int run(std::vector<const char*> args, std::function<int()> body) {
        CLI::App app{"t", "prog"};
        declare(app, opts_);
        args.insert(args.begin(), "prog");
        std::vector<char*> argv;
        for (const char* a : args) argv.push_back(const_cast<char*>(a));
        return fl::run_cli(app, static_cast<int>(argv.size()), argv.data(), std::move(body));
    }
    Options opts_;
};

TEST_F(ConfigRunCli, ExitCodes) {
    bool ran = false;
    auto ok = [&] {
        ran = true;
        return 0;
    };
    testing::internal::CaptureStderr();
    EXPECT_EQ(run({"--bogus"}, ok), 2);
    EXPECT_EQ(run({"--rounds", "abc"}, ok), 2);
    EXPECT_EQ(run({"--config", "/nonexistent/x.yaml"}, ok), 2);
    const std::string usage = testing::internal::GetCapturedStderr();
    EXPECT_FALSE(ran);
    EXPECT_NE(usage.find("--bogus"), std::string::npos) << usage;

    testing::internal::CaptureStdout();
    EXPECT_EQ(run({"--help"}, ok), 0);
    const std::string help = testing::internal::GetCapturedStdout();
    EXPECT_NE(help.find("--config"), std::string::npos) << help;
    EXPECT_FALSE(ran);

    EXPECT_EQ(run({"--rounds", "5"}, [&] { return opts_.rounds; }), 5);

    testing::internal::CaptureStderr();
    EXPECT_EQ(run({}, []() -> int { throw std::runtime_error("boom"); }), 1);
    const std::string err = testing::internal::GetCapturedStderr();
    EXPECT_NE(err.find("error: boom"), std::string::npos) << err;
}

}  // namespace
