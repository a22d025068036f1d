#include "common/util/logging.h"

#include <gtest/gtest.h>
#include <spdlog/spdlog.h>

#include <stdexcept>
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

TEST(LoggingTerminal, Callable) {
    (void)fl::stderr_is_terminal();  // value depends on how the tests are run
}

}  // namespace
