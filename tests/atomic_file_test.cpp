#include <gtest/gtest.h>
#include <sys/stat.h>

#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/io/atomic_file.h"
#include "expect_error.h"
#include "temp_dir.h"

namespace fl {
namespace {

using fl::testing_util::expect_error;
using fl::testing_util::TempDir;

std::string read_all(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

mode_t mode_of(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) throw std::runtime_error("stat failed: " + path);
  return st.st_mode & 07777;
}

TEST(AtomicFile, WritesTheChunksInOrderAndReplacesTheOldFile) {
  TempDir dir;
  const auto path = dir.file("out.bin");
  write_file_atomically(path, std::string("old content"));
  EXPECT_EQ(read_all(path), "old content");

  // Several chunks, one of them large enough to need more than one write(2) on some systems.
  const std::string big(3 << 20, 'x');
  write_file_atomically(path, [&](const ChunkSink& out) {
    out("ab", 2);
    out(big.data(), big.size());
    out("", 0);
    out("\0z", 2);
  });
  const std::string back = read_all(path);
  ASSERT_EQ(back.size(), 2 + big.size() + 2);
  EXPECT_EQ(back.substr(0, 2), "ab");
  EXPECT_EQ(back.substr(2, big.size()), big);
  EXPECT_EQ(back.substr(2 + big.size()), std::string("\0z", 2));
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"out.bin"});
}

TEST(AtomicFile, AFailedWriteKeepsTheOldFileAndLeavesNoTemporary) {
  TempDir dir;
  const auto path = dir.file("state.json");
  write_file_atomically(path, std::string("{\"round\": 7}"));
  expect_error(
      [&] {
        write_file_atomically(path, [](const ChunkSink& out) {
          out("{\"round\": 8", 11);
          throw std::runtime_error("serialiser ran out of memory");
        });
      },
      {path, "serialiser ran out of memory"});
  EXPECT_EQ(read_all(path), "{\"round\": 7}");
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"state.json"});

  // A directory that does not exist: the error names the file.
  const auto missing = dir.file("no/such/dir/state.json");
  expect_error([&] { write_file_atomically(missing, std::string("x")); }, {missing, "cannot create"});
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"state.json"});
}

TEST(AtomicFile, ModeIsFilteredByTheUmaskUnlessExact) {
  TempDir dir;
  const mode_t old_umask = ::umask(077);
  write_file_atomically(dir.file("plain"), std::string("a"), 0644);
  write_file_atomically(dir.file("exact"), std::string("b"), 0644, /*exact_mode=*/true);
  write_file_atomically(dir.file("key"), std::string("c"), 0600, /*exact_mode=*/true);
  ::umask(old_umask);
  EXPECT_EQ(mode_of(dir.file("plain")), 0600u);
  EXPECT_EQ(mode_of(dir.file("exact")), 0644u);
  EXPECT_EQ(mode_of(dir.file("key")), 0600u);
}

}  // namespace
}  // namespace fl
