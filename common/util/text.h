#pragma once
// Small text helpers shared by error messages and help texts.
#include <cstdio>
#include <map>
#include <string>
#include <vector>

namespace fl {

// "a, b, c" (or with another separator: "a | b | c").
inline std::string join(const std::vector<std::string>& items, const std::string& sep = ", ") {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) out += (i == 0 ? "" : sep) + items[i];
  return out;
}

// " key 0.6123 key2 0.5000" (a leading space per entry; empty for no entries): metrics appended to
// a log line.
inline std::string metrics_text(const std::map<std::string, double>& metrics) {
  std::string out;
  char buf[32];
  for (const auto& [key, value] : metrics) {
    std::snprintf(buf, sizeof buf, "%.4f", value);
    out += " " + key + " " + buf;
  }
  return out;
}

// The one rule for names that become file names, certificate CNs and keys (certificate names,
// client names, run ids): 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or a
// digit.
inline bool is_plain_name(const std::string& name) {
  auto alnum = [](char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'); };
  bool ok = !name.empty() && name.size() <= 64 && alnum(name[0]);
  for (char c : name) ok = ok && (alnum(c) || c == '.' || c == '_' || c == '-');
  return ok;
}

// Why `name` cannot be a client's (certificate) name, or "" (is_plain_name, what `fedctl pki
// issue` accepts).
inline std::string client_name_problem(const std::string& name) {
  return is_plain_name(name)
             ? ""
             : "is not a client name (1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit)";
}

// A string from outside (a client's error text, a task id, a certificate name) made safe to
// log or print: control bytes and bytes >= 0x7f as \xNN (no ESC sequence or forged newline
// reaches a terminal or a log line), at most `max_bytes` of the input, then how much was cut.
// Its output is printable ASCII, which it leaves as it is: escaping twice changes nothing.
inline std::string printable(const std::string& s, size_t max_bytes = 256) {
  std::string out;
  const size_t n = s.size() < max_bytes ? s.size() : max_bytes;
  out.reserve(n + 16);
  for (size_t i = 0; i < n; ++i) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c < 0x7f) {
      out += static_cast<char>(c);
    } else {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    }
  }
  if (n < s.size()) out += "...(" + std::to_string(s.size() - n) + " more bytes)";
  return out;
}

}  // namespace fl
