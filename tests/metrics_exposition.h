#pragma once
// For tests: a strict reader of Prometheus' text exposition format (0.0.4) and a raw HTTP/1.1
// GET over a socket, so that what fedcoord and fedclient serve is checked as Prometheus reads it.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace fl::testing_util {

struct Exposition {
  std::map<std::string, std::string> types, help;  // by family name
  // series: metric name + sorted labels -> value
  std::map<std::pair<std::string, std::map<std::string, std::string>>, double> samples;

  bool has(const std::string& name, const std::map<std::string, std::string>& labels) const {
    return samples.count({name, labels}) > 0;
  }
  // Throws std::out_of_range naming the series when absent.
  double value(const std::string& name, const std::map<std::string, std::string>& labels) const {
    auto it = samples.find({name, labels});
    if (it == samples.end()) {
      std::string l;
      for (const auto& [k, v] : labels) l += k + "=" + v + ",";
      throw std::out_of_range("no sample " + name + "{" + l + "}");
    }
    return it->second;
  }
  // Every series of `name`, whatever its labels.
  std::vector<std::pair<std::map<std::string, std::string>, double>> series(const std::string& name) const {
    std::vector<std::pair<std::map<std::string, std::string>, double>> out;
    for (const auto& [key, v] : samples)
      if (key.first == name) out.emplace_back(key.second, v);
    return out;
  }
};

// Parses `text`, throwing std::runtime_error naming the line for anything the format does not
// allow: a sample before its family's # TYPE, a bad name or label, an unparsable value, a series
// twice, histogram buckets that are not cumulative or whose +Inf bucket differs from _count.
inline Exposition parse_exposition(const std::string& text) {
  static const std::regex name_re("[a-zA-Z_:][a-zA-Z0-9_:]*");
  static const std::regex label_name_re("[a-zA-Z_][a-zA-Z0-9_]*");
  static const std::set<std::string> kTypes = {"counter", "gauge", "histogram", "summary", "untyped"};
  Exposition e;
  std::istringstream in(text);
  int n = 0;
  const auto fail = [&](const std::string& why, const std::string& line) {
    throw std::runtime_error("exposition line " + std::to_string(n) + ": " + why + ": " + line);
  };
  if (!text.empty() && text.back() != '\n') throw std::runtime_error("exposition does not end with a newline");
  for (std::string line; std::getline(in, line);) {
    ++n;
    if (line.empty()) continue;
    if (line[0] == '#') {
      std::istringstream c(line.substr(1));
      std::string kw, name;
      c >> kw >> name;
      if (kw != "HELP" && kw != "TYPE") continue;  // other comments are allowed
      if (!std::regex_match(name, name_re)) fail("bad metric name", line);
      std::string rest;
      std::getline(c, rest);
      if (!rest.empty() && rest[0] == ' ') rest.erase(0, 1);
      if (kw == "TYPE") {
        if (!kTypes.count(rest)) fail("unknown type", line);
        if (e.types.count(name)) fail("second # TYPE", line);
        e.types[name] = rest;
      } else {
        e.help[name] = rest;
      }
      continue;
    }
    size_t p = 0;
    while (p < line.size() && line[p] != '{' && line[p] != ' ') ++p;
    const std::string name = line.substr(0, p);
    if (!std::regex_match(name, name_re)) fail("bad metric name", line);
    std::map<std::string, std::string> labels;
    if (p < line.size() && line[p] == '{') {
      ++p;
      while (p < line.size() && line[p] != '}') {
        size_t eq = line.find('=', p);
        if (eq == std::string::npos) fail("label without '='", line);
        const std::string lname = line.substr(p, eq - p);
        if (!std::regex_match(lname, label_name_re)) fail("bad label name", line);
        p = eq + 1;
        if (p >= line.size() || line[p] != '"') fail("label value not quoted", line);
        ++p;
        std::string value;
        for (;; ++p) {
          if (p >= line.size()) fail("unterminated label value", line);
          if (line[p] == '"') break;
          if (line[p] == '\\') {
            ++p;
            if (p >= line.size()) fail("dangling escape", line);
            if (line[p] == 'n') value += '\n';
            else if (line[p] == '\\' || line[p] == '"') value += line[p];
            else fail("bad escape", line);
          } else {
            value += line[p];
          }
        }
        ++p;  // closing quote
        if (labels.count(lname)) fail("label twice", line);
        labels[lname] = value;
        if (p < line.size() && line[p] == ',') ++p;
      }
      if (p >= line.size()) fail("unterminated label set", line);
      ++p;  // }
    }
    if (p >= line.size() || line[p] != ' ') fail("no value", line);
    std::istringstream vs(line.substr(p + 1));
    std::string value_text, timestamp;
    vs >> value_text >> timestamp;
    double value;
    if (value_text == "+Inf") value = HUGE_VAL;
    else if (value_text == "-Inf") value = -HUGE_VAL;
    else if (value_text == "NaN") value = NAN;
    else {
      char* end = nullptr;
      value = std::strtod(value_text.c_str(), &end);
      if (value_text.empty() || *end != '\0') fail("bad value", line);
    }
    // The family: the name itself, or a histogram's / summary's without its suffix.
    std::string family = name;
    for (const char* suffix : {"_bucket", "_sum", "_count"}) {
      const std::string s(suffix);
      if (name.size() > s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0) {
        const std::string base = name.substr(0, name.size() - s.size());
        auto t = e.types.find(base);
        if (t != e.types.end() && (t->second == "histogram" || t->second == "summary")) family = base;
      }
    }
    if (!e.types.count(family)) fail("sample before its # TYPE", line);
    if (!e.samples.emplace(std::make_pair(name, labels), value).second) fail("series twice", line);
  }
  // Histograms: cumulative buckets, +Inf == _count.
  for (const auto& [family, type] : e.types) {
    if (type != "histogram") continue;
    std::map<std::map<std::string, std::string>, std::vector<std::pair<double, double>>> by_series;
    for (const auto& [labels, v] : e.series(family + "_bucket")) {
      auto rest = labels;
      const std::string le = rest.at("le");
      rest.erase("le");
      by_series[rest].emplace_back(le == "+Inf" ? HUGE_VAL : std::stod(le), v);
    }
    for (auto& [labels, buckets] : by_series) {
      std::sort(buckets.begin(), buckets.end());
      for (size_t i = 1; i < buckets.size(); ++i)
        if (buckets[i].second < buckets[i - 1].second)
          throw std::runtime_error("histogram " + family + ": buckets are not cumulative");
      if (buckets.back().first != HUGE_VAL) throw std::runtime_error("histogram " + family + ": no +Inf bucket");
      if (buckets.back().second != e.value(family + "_count", labels))
        throw std::runtime_error("histogram " + family + ": +Inf bucket differs from _count");
    }
  }
  return e;
}

struct HttpReply {
  int status = 0;
  std::string headers, body, raw;
};

// Sends `request` as is to 127.0.0.1:port and reads until the server closes (or 10 s).
inline HttpReply http_get(int port, const std::string& request) {
  HttpReply r;
  const int s = socket(AF_INET, SOCK_STREAM, 0);
  timeval tv{10, 0};
  setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(s, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    close(s);
    return r;
  }
  for (size_t sent = 0; sent < request.size();) {
    const ssize_t k = send(s, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
    if (k <= 0) break;
    sent += static_cast<size_t>(k);
  }
  char buf[65536];
  for (ssize_t k; (k = recv(s, buf, sizeof buf, 0)) > 0;) r.raw.append(buf, static_cast<size_t>(k));
  close(s);
  const auto head_end = r.raw.find("\r\n\r\n");
  if (r.raw.rfind("HTTP/1.1 ", 0) == 0) r.status = std::atoi(r.raw.c_str() + 9);
  if (head_end != std::string::npos) {
    r.headers = r.raw.substr(0, head_end);
    r.body = r.raw.substr(head_end + 4);
  }
  return r;
}

}  // namespace fl::testing_util
