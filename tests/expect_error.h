#pragma once
// expect_error(f, needles): f must throw std::runtime_error (or a subclass) whose message
// contains every needle. Tests of input validation use it to pin what an error names.
// expect_error_of<E>(f, needles) does the same for another exception type (e.g.
// std::invalid_argument, which is a std::logic_error).
#include <gtest/gtest.h>

#include <functional>
#include <initializer_list>
#include <stdexcept>
#include <string>
#include <vector>

namespace fl::testing_util {

template <typename E>
void expect_error_of(const std::function<void()>& f, const std::vector<std::string>& needles) {
  std::string msg = "<no exception>";
  EXPECT_THROW(
      {
        try {
          f();
        } catch (const E& e) {
          msg = e.what();
          throw;
        }
      },
      E);
  for (const auto& needle : needles)
    EXPECT_NE(msg.find(needle), std::string::npos) << "message '" << msg << "' lacks '" << needle << "'";
}

template <typename E>
void expect_error_of(const std::function<void()>& f, const std::string& needle) {
  expect_error_of<E>(f, std::vector<std::string>{needle});
}

inline void expect_error(const std::function<void()>& f, const std::vector<std::string>& needles) {
  expect_error_of<std::runtime_error>(f, needles);
}

// Braced lists pick this overload: expect_error(f, {"file", "line 3"}).
inline void expect_error(const std::function<void()>& f, std::initializer_list<std::string> needles) {
  expect_error(f, std::vector<std::string>(needles));
}

inline void expect_error(const std::function<void()>& f, const std::string& needle) {
  expect_error(f, std::vector<std::string>{needle});
}

}  // namespace fl::testing_util
