#pragma once
// JSON values from outside (settings, configs, requests) quoted in error messages.
#include <nlohmann/json.hpp>

#include <string>

#include "common/util/text.h"

namespace fl {

// The value as compact JSON, for a message: invalid UTF-8 replaced instead of dump() throwing
// (a type_error that would escape the caller's error handling), non-ASCII escaped, at most 200
// bytes.
template <typename Json>
std::string json_for_message(const Json& v) {
  return printable(v.dump(-1, ' ', false, Json::error_handler_t::replace), 200);
}

}  // namespace fl
