#pragma once
// expect_error(f, needles): f must throw std::runtime_error (or a subclass) whose message
// contains every needle. Tests of input validation use it to pin what an error names.
#include <gtest/gtest.h>

#include <functional>
#include <initializer_list>
#include <stdexcept>
#include <string>
#include <vector>

namespace fl::testing_util {

inline void expect_error(const std::function<void()>& f, const std::vector<std::string>& needles) {
  std::string msg = "<no exception>";
  EXPECT_THROW(
      {
        try {
          f();
        } catch (const std::runtime_error& e) {
          msg = e.what();
          throw;
        }
      },
      std::runtime_error);
  for (const auto& needle : needles)
    EXPECT_NE(msg.find(needle), std::string::npos) << "message '" << msg << "' lacks '" << needle << "'";
}

// Braced lists pick this overload: expect_error(f, {"file", "line 3"}).
inline void expect_error(const std::function<void()>& f, std::initializer_list<std::string> needles) {
  expect_error(f, std::vector<std::string>(needles));
}

inline void expect_error(const std::function<void()>& f, const std::string& needle) {
  expect_error(f, std::vector<std::string>{needle});
}

}  // namespace fl::testing_util
