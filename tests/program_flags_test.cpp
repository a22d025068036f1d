// Command-line inputs of fedcoord and fedclient that reach integer conversions or the network (issue 19).
#include <gtest/gtest.h>

#include <string>

#include "process_util.h"

namespace {

using namespace fl;

const std::string kFedcoord = std::string(FL_BINARY_DIR) + "/bin/fedcoord";

// Durations and sizes that become integers are bounded on the command line.
TEST(FedcoordFlags, DurationsAndSizesThatWouldOverflowAreRefused) {
  const std::string bin = kFedcoord + " --insecure --data-dir " + ::testing::TempDir() + "/guard_flags ";
  auto r = testing_util::run_command(bin + "--max-upload-mb 1e300 2>&1");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("--max-upload-mb"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("must be > 0 and <= 1048576, got 1e300"), std::string::npos) << r.output;
  r = testing_util::run_command(bin + "--round-deadline-s 1e18 2>&1");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("--round-deadline-s"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("must be > 0 and <= 31622400, got 1e18"), std::string::npos) << r.output;
}

// Without TLS nobody is who they say: fedcoord --insecure listens on loopback unless --listen says otherwise.
TEST(FedcoordFlags, InsecureModeListensOnLoopbackUnlessTold) {
  const std::string dir = ::testing::TempDir() + "/insecure_listen";
  auto r = testing_util::run_command("timeout 60 " + kFedcoord + " --insecure --data-dir " + dir +
                                     " --run-id t --eval-dataset none --registration-timeout-s 0.5 2>&1");
  EXPECT_NE(r.code, 0);  // nobody registered
  // Listening, or the port taken by something else: either way the address is loopback's.
  EXPECT_NE(r.output.find("127.0.0.1:50051"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("0.0.0.0:50051"), std::string::npos) << r.output;
}

TEST(FedcoordFlags, RunIdsAreChecked) {
  const std::string dir = ::testing::TempDir() + "/bad_run_id";
  auto r = testing_util::run_command(kFedcoord + " --insecure --data-dir " + dir + " --run-id 'a/b' 2>&1");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("--run-id: run id 'a?b' (3 bytes) is not valid"), std::string::npos) << r.output;
}

TEST(FedclientFlags, DurationsThatWouldOverflowAreRefused) {
  const std::string bin = std::string(FL_BINARY_DIR) + "/bin/fedclient --insecure ";
  auto r = testing_util::run_command(bin + "--max-backoff-s 1e300 2>&1");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("--max-backoff-s: must be > 0 and <= 3600, got 1e300"), std::string::npos) << r.output;
  r = testing_util::run_command(bin + "--poll-wait-ms 1e12 2>&1");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("--poll-wait-ms: must be > 0 and <= 3600000, got 1e12"), std::string::npos) << r.output;
}

}  // namespace
