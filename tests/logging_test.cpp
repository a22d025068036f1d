#include "common/util/logging.h"

#include <gtest/gtest.h>
#include <spdlog/spdlog.h>

#include <nlohmann/json.hpp>

#include <sstream>
#include <stdexcept>
#include <thread>
#include <string>

namespace {

// Restores the default logger so later tests log as before.
class LoggingInit : public ::testing::Test {
  protected:
    void TearDown() override {
        spdlog::set_default_logger(saved_);
        spdlog::set_level(saved_level_);
    }
    std::shared_ptr<spdlog::logger> saved_ = spdlog::default_logger();
    spdlog::level::level_enum saved_level_ = spdlog::get_level();
};

TEST_F(LoggingInit, RejectsUnknownLevelListingAllowed) {
    try {
        fl::init_logging("loud", "fl_tests");
        FAIL() << "no exception";
    } catch (const std::invalid_argument& e) {
        const std::string msg = e.what();
        EXPECT_NE(msg.find("'loud'"), std::string::npos) << msg;
        for (const char* level : {"trace", "debug", "info", "warn", "error", "off"})
            EXPECT_NE(msg.find(level), std::string::npos) << msg;
    }
    EXPECT_EQ(spdlog::default_logger(), saved_);  // a bad level leaves logging alone
}

TEST_F(LoggingInit, AcceptsDebug) {
    fl::init_logging("debug", "fl_tests");
    EXPECT_EQ(spdlog::get_level(), spdlog::level::debug);
    EXPECT_EQ(spdlog::default_logger()->name(), "fl_tests");
    testing::internal::CaptureStderr();
    spdlog::debug("hello {}", 42);
    const std::string out = testing::internal::GetCapturedStderr();
    // Only pieces: colour codes may surround the level when run in a terminal.
    EXPECT_NE(out.find("[fl_tests] ["), std::string::npos) << out;
    EXPECT_NE(out.find("debug"), std::string::npos) << out;
    EXPECT_NE(out.find("] hello 42"), std::string::npos) << out;
}

TEST_F(LoggingInit, LevelIsCaseInsensitive) {
    fl::init_logging("WARN", "fl_tests");
    EXPECT_EQ(spdlog::get_level(), spdlog::level::warn);
}

TEST_F(LoggingInit, RejectsUnknownFormatListingAllowed) {
    try {
        fl::init_logging("info", "fl_tests", "xml");
        FAIL() << "no exception";
    } catch (const std::invalid_argument& e) {
        const std::string msg = e.what();
        EXPECT_NE(msg.find("'xml'"), std::string::npos) << msg;
        EXPECT_NE(msg.find("text|json"), std::string::npos) << msg;
    }
    EXPECT_EQ(spdlog::default_logger(), saved_);
}

// Every JSON line parses, carries the context set for it, and escapes what a client chose.
TEST_F(LoggingInit, JsonLinesCarryRunRoundAndClientAndEscapeEverything) {
    fl::init_logging("info", "fl_tests", "json");
    testing::internal::CaptureStderr();
    spdlog::info("no context yet");
    fl::set_log_run("run-7");
    fl::set_log_round(3);
    {
        fl::LogClientScope scope;
        fl::set_thread_log_client("hospital-\"2\"");
        spdlog::warn("task from {}: \"quoted\"\nnewline \x01 and bad utf8 \xff", "x");
        // Another thread serves nobody: the client is this thread's only.
        std::thread([] { spdlog::info("other thread"); }).join();
    }
    spdlog::info("after the scope");
    fl::set_log_run("");
    fl::set_log_round(0);
    const std::string out = testing::internal::GetCapturedStderr();
    std::istringstream in(out);
    std::vector<nlohmann::json> lines;
    for (std::string line; std::getline(in, line);) lines.push_back(nlohmann::json::parse(line));
    ASSERT_EQ(lines.size(), 4u) << out;
    EXPECT_EQ(lines[0]["msg"], "no context yet");
    EXPECT_EQ(lines[0]["program"], "fl_tests");
    EXPECT_EQ(lines[0]["level"], "info");
    EXPECT_FALSE(lines[0].contains("run"));
    EXPECT_FALSE(lines[0].contains("round"));
    EXPECT_EQ(lines[1]["run"], "run-7");
    EXPECT_EQ(lines[1]["round"], 3);
    EXPECT_EQ(lines[1]["client"], "hospital-\"2\"");
    EXPECT_EQ(lines[1]["level"], "warning");
    const std::string msg = lines[1]["msg"];
    EXPECT_EQ(msg.rfind("task from x: \"quoted\"\nnewline \x01 and bad utf8 ", 0), 0u) << msg;
    EXPECT_NE(msg.find("\xEF\xBF\xBD"), std::string::npos) << "invalid UTF-8 becomes U+FFFD";
    EXPECT_FALSE(lines[2].contains("client"));
    EXPECT_EQ(lines[2]["run"], "run-7");
    EXPECT_FALSE(lines[3].contains("client"));
    const std::string time = lines[0]["time"];
    EXPECT_EQ(time.size(), 24u) << time;  // 2026-12-03T12:00:00.123Z
    EXPECT_EQ(time.back(), 'Z');
}

TEST_F(LoggingInit, TextLinesShowTheContextBeforeTheMessage) {
    fl::init_logging("info", "fl_tests");
    testing::internal::CaptureStderr();
    fl::set_log_run("r1");
    fl::set_log_round(12);
    spdlog::info("aggregated");
    fl::set_log_run("");
    fl::set_log_round(0);
    spdlog::info("plain");
    const std::string out = testing::internal::GetCapturedStderr();
    EXPECT_NE(out.find("[run=r1 round=12] aggregated"), std::string::npos) << out;
    EXPECT_NE(out.find("] plain"), std::string::npos) << out;
    EXPECT_EQ(out.find("[run=] plain"), std::string::npos) << out;
}

TEST(LoggingTerminal, Callable) {
    (void)fl::stderr_is_terminal();  // value depends on how the tests are run
}

}  // namespace
