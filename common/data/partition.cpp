#include "common/data/partition.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <iterator>
#include <limits>
#include <random>
#include <sstream>
#include <stdexcept>
#include <utility>

#include "common/io/atomic_file.h"
#include "common/util/text.h"

namespace fl {
namespace {

using Rng = std::mt19937_64;
using json = nlohmann::json;

constexpr int kMaxAttempts = 1000;
constexpr double kPi = 3.14159265358979323846;

[[noreturn]] void bad_option(const std::string& field, const std::string& msg) {
  throw std::invalid_argument("PartitionOptions." + field + " " + msg);
}

std::string fmt(double v) {
  std::ostringstream s;
  s << v;
  return s.str();
}

// Own bounded draw and shuffle (instead of std::uniform_int_distribution / std::shuffle,
// whose algorithms are implementation-defined) so index permutations replay across
// standard libraries. Rejection sampling keeps it unbiased.
uint64_t bounded(Rng& rng, uint64_t n) {
  const uint64_t limit = std::numeric_limits<uint64_t>::max() - std::numeric_limits<uint64_t>::max() % n;
  uint64_t r;
  do r = rng();
  while (r >= limit);
  return r % n;
}

template <class T>
void shuffle(std::vector<T>& v, Rng& rng) {
  for (size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[bounded(rng, i)]);
}

// U[0,1) from the top 53 bits (portable, unlike std::uniform_real_distribution).
double uniform01(Rng& rng) { return static_cast<double>(rng() >> 11) * 0x1.0p-53; }

std::vector<double> dirichlet(Rng& rng, double alpha, int k) {
  std::gamma_distribution<double> gamma(alpha, 1.0);
  std::vector<double> p(k);
  double sum = 0;
  for (auto& x : p) sum += (x = gamma(rng));
  // With a tiny alpha every gamma draw can underflow to 0: fall back to uniform.
  if (!(sum > 0)) std::fill(p.begin(), p.end(), 1.0 / k);
  else
    for (auto& x : p) x /= sum;
  return p;
}

// Split points of `len` items at floor(cumsum(p) * len); the last part ends at len.
std::vector<int64_t> split_points(const std::vector<double>& p, int64_t len) {
  std::vector<int64_t> ends(p.size());
  double cum = 0;
  int64_t prev = 0;
  for (size_t j = 0; j < p.size(); ++j) {
    cum += p[j];
    int64_t e = j + 1 == p.size() ? len : static_cast<int64_t>(std::floor(cum * static_cast<double>(len)));
    e = std::clamp(e, prev, len);  // guards rounding drift of the running sum
    ends[j] = prev = e;
  }
  return ends;
}

// Appends consecutive slices of `idx` (cut at `ends`) to the clients, in order.
void distribute(const std::vector<int64_t>& idx, const std::vector<int64_t>& ends,
                std::vector<std::vector<int64_t>>& out) {
  int64_t begin = 0;
  for (size_t j = 0; j < ends.size(); ++j) {
    out[j].insert(out[j].end(), idx.begin() + begin, idx.begin() + ends[j]);
    begin = ends[j];
  }
}

std::vector<int64_t> iota_indices(int64_t n) {
  std::vector<int64_t> v(n);
  for (int64_t i = 0; i < n; ++i) v[i] = i;
  return v;
}

std::vector<std::vector<int64_t>> split_iid(int64_t n, int k, Rng& rng) {
  auto idx = iota_indices(n);
  shuffle(idx, rng);
  std::vector<int64_t> ends(k);
  const int64_t base = n / k, extra = n % k;
  int64_t e = 0;
  for (int j = 0; j < k; ++j) ends[j] = e += base + (j < extra ? 1 : 0);
  std::vector<std::vector<int64_t>> out(k);
  distribute(idx, ends, out);
  return out;
}

std::vector<std::vector<int64_t>> split_dirichlet(const std::vector<int64_t>& labels, int64_t num_classes,
                                                  const PartitionOptions& opt, Rng& rng) {
  const int k = opt.num_clients;
  const int64_t n = static_cast<int64_t>(labels.size());
  std::vector<std::vector<int64_t>> by_class(num_classes);
  for (int64_t i = 0; i < n; ++i) by_class[labels[i]].push_back(i);
  const double cap = static_cast<double>(n) / k;  // NIID-Bench's balance threshold N / K
  for (int attempt = 0; attempt < kMaxAttempts; ++attempt) {
    std::vector<std::vector<int64_t>> out(k);
    for (auto& idx : by_class) {
      shuffle(idx, rng);
      auto p = dirichlet(rng, opt.alpha, k);
      double sum = 0;
      for (int j = 0; j < k; ++j) {
        const bool open = static_cast<double>(out[j].size()) < cap;
        if (!open) p[j] = 0;
        sum += p[j];
      }
      // Only when every open client's share underflowed: spread over the open clients
      // (or over all, which needs every client full and hence an empty class).
      if (!(sum > 0)) {
        for (int j = 0; j < k; ++j) sum += (p[j] = static_cast<double>(out[j].size()) < cap ? 1.0 : 0.0);
        if (sum == 0) {
          std::fill(p.begin(), p.end(), 1.0);
          sum = k;
        }
      }
      for (auto& x : p) x /= sum;
      distribute(idx, split_points(p, static_cast<int64_t>(idx.size())), out);
    }
    size_t smallest = out[0].size();
    for (const auto& c : out) smallest = std::min(smallest, c.size());
    if (static_cast<int64_t>(smallest) >= opt.min_samples) {
      for (auto& c : out) shuffle(c, rng);
      return out;
    }
  }
  throw std::runtime_error("dirichlet partition: no split gave every one of " + std::to_string(k) +
                           " clients >= min_samples=" + std::to_string(opt.min_samples) + " samples in " +
                           std::to_string(kMaxAttempts) + " attempts with alpha=" + fmt(opt.alpha) +
                           "; raise alpha or lower min_samples");
}

std::vector<std::vector<int64_t>> split_shards(const std::vector<int64_t>& labels, const PartitionOptions& opt,
                                               Rng& rng) {
  const int k = opt.num_clients;
  const int64_t n = static_cast<int64_t>(labels.size());
  const int64_t num_shards = static_cast<int64_t>(k) * opt.shards_per_client;
  auto idx = iota_indices(n);
  std::stable_sort(idx.begin(), idx.end(), [&](int64_t a, int64_t b) { return labels[a] < labels[b]; });
  std::vector<int64_t> shard_ids = iota_indices(num_shards);
  shuffle(shard_ids, rng);
  std::vector<std::vector<int64_t>> out(k);
  for (int64_t s = 0; s < num_shards; ++s) {
    const int64_t id = shard_ids[s];
    // Shard id covers [floor(id*N/S), floor((id+1)*N/S)): sizes differ by at most one.
    const int64_t b = id * n / num_shards, e = (id + 1) * n / num_shards;
    auto& c = out[s / opt.shards_per_client];
    c.insert(c.end(), idx.begin() + b, idx.begin() + e);
  }
  for (auto& c : out) shuffle(c, rng);
  return out;
}

std::vector<std::vector<int64_t>> split_quantity(int64_t n, const PartitionOptions& opt, Rng& rng) {
  const int k = opt.num_clients;
  auto idx = iota_indices(n);
  shuffle(idx, rng);
  std::vector<int64_t> ends;
  if (opt.quantity_distribution == "dirichlet") {
    bool ok = false;
    for (int attempt = 0; attempt < kMaxAttempts && !ok; ++attempt) {
      ends = split_points(dirichlet(rng, opt.alpha, k), n);
      ok = true;
      int64_t prev = 0;
      for (auto e : ends) {
        ok = ok && e - prev >= opt.min_samples;
        prev = e;
      }
    }
    if (!ok)
      throw std::runtime_error("quantity partition: no Dirichlet draw gave every one of " + std::to_string(k) +
                               " clients >= min_samples=" + std::to_string(opt.min_samples) + " samples in " +
                               std::to_string(kMaxAttempts) + " attempts with alpha=" + fmt(opt.alpha) +
                               "; raise alpha or lower min_samples");
  } else {  // lognormal: min_samples each, the remainder split by p_j ∝ exp(N(0, sigma))
    std::normal_distribution<double> normal(0.0, opt.lognormal_sigma);
    std::vector<double> p(k);
    double sum = 0;
    for (auto& x : p) sum += (x = std::exp(normal(rng)));
    for (auto& x : p) x /= sum;
    const int64_t rest = n - static_cast<int64_t>(k) * opt.min_samples;
    ends = split_points(p, rest);
    for (int j = 0; j < k; ++j) ends[j] += static_cast<int64_t>(j + 1) * opt.min_samples;
  }
  std::vector<std::vector<int64_t>> out(k);
  distribute(idx, ends, out);
  return out;
}

void check_known(const std::string& field, const std::string& value, const std::vector<std::string>& known) {
  if (std::find(known.begin(), known.end(), value) != known.end()) return;
  bad_option(field, "'" + value + "' is unknown (expected one of: " + join(known) + ")");
}

void check_labels(const std::vector<int64_t>& labels, int64_t num_classes) {
  if (num_classes < 1) throw std::invalid_argument("num_classes must be >= 1, got " + std::to_string(num_classes));
  for (size_t i = 0; i < labels.size(); ++i)
    if (labels[i] < 0 || labels[i] >= num_classes)
      throw std::invalid_argument("labels[" + std::to_string(i) + "] = " + std::to_string(labels[i]) +
                                  " is outside [0, num_classes=" + std::to_string(num_classes) + ")");
}

// ---- JSON ----

json options_to_json(const PartitionOptions& o) {
  return json{{"method", o.method},
              {"num_clients", o.num_clients},
              {"alpha", o.alpha},
              {"min_samples", o.min_samples},
              {"shards_per_client", o.shards_per_client},
              {"quantity_distribution", o.quantity_distribution},
              {"lognormal_sigma", o.lognormal_sigma},
              {"feature_skew", o.feature_skew},
              {"feature_level", o.feature_level},
              {"client_test_fraction", o.client_test_fraction},
              {"seed", o.seed}};
}

// Typed field access with errors naming the path and the JSON field ("options.alpha").
struct Reader {
  std::string path;

  [[noreturn]] void fail(const std::string& msg) const { throw std::runtime_error(path + ": " + msg); }

  const json& field(const json& obj, const std::string& key, const std::string& where) const {
    auto it = obj.find(key);
    if (it == obj.end()) fail("missing field \"" + where + key + "\"");
    return *it;
  }
  int64_t integer(const json& v, const std::string& name) const {
    if (!v.is_number_integer()) fail("field \"" + name + "\" must be an integer, got " + v.dump());
    if (v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX))
      fail("field \"" + name + "\" is out of range: " + v.dump());
    return v.get<int64_t>();
  }
  double number(const json& v, const std::string& name) const {
    if (!v.is_number()) fail("field \"" + name + "\" must be a number, got " + v.dump());
    return v.get<double>();
  }
  std::string string(const json& v, const std::string& name) const {
    if (!v.is_string()) fail("field \"" + name + "\" must be a string, got " + v.dump());
    return v.get<std::string>();
  }
  int int32(const json& v, const std::string& name) const {
    const int64_t x = integer(v, name);
    if (x < INT32_MIN || x > INT32_MAX) fail("field \"" + name + "\" is out of range: " + v.dump());
    return static_cast<int>(x);
  }

  PartitionOptions options(const json& j) const {
    if (!j.is_object()) fail("field \"options\" must be an object");
    PartitionOptions o;
    auto opt = [&](const char* key) -> const json* {
      auto it = j.find(key);
      return it == j.end() ? nullptr : &*it;
    };
    const std::string w = "options.";
    o.method = string(field(j, "method", w), "options.method");
    o.num_clients = int32(field(j, "num_clients", w), "options.num_clients");
    const json& seed = field(j, "seed", w);
    if (!seed.is_number_integer() || (!seed.is_number_unsigned() && seed.get<int64_t>() < 0))
      fail("field \"options.seed\" must be a non-negative integer, got " + seed.dump());
    o.seed = seed.get<uint64_t>();
    if (auto v = opt("alpha")) o.alpha = number(*v, "options.alpha");
    if (auto v = opt("min_samples")) o.min_samples = integer(*v, "options.min_samples");
    if (auto v = opt("shards_per_client")) o.shards_per_client = int32(*v, "options.shards_per_client");
    if (auto v = opt("quantity_distribution")) o.quantity_distribution = string(*v, "options.quantity_distribution");
    if (auto v = opt("lognormal_sigma")) o.lognormal_sigma = number(*v, "options.lognormal_sigma");
    if (auto v = opt("feature_skew")) o.feature_skew = string(*v, "options.feature_skew");
    if (auto v = opt("feature_level")) o.feature_level = number(*v, "options.feature_level");
    if (auto v = opt("client_test_fraction")) o.client_test_fraction = number(*v, "options.client_test_fraction");
    try {
      o.validate();
    } catch (const std::invalid_argument& e) {
      fail(e.what());
    }
    return o;
  }

  std::vector<int64_t> indices(const json& v, const std::string& name, int64_t dataset_size) const {
    if (!v.is_array()) fail("field \"" + name + "\" must be an array of indices");
    std::vector<int64_t> out;
    out.reserve(v.size());
    for (size_t i = 0; i < v.size(); ++i) {
      const std::string at = name + "[" + std::to_string(i) + "]";
      const int64_t x = integer(v[i], at);
      if (x < 0 || x >= dataset_size)
        fail("index " + std::to_string(x) + " at \"" + at + "\" is out of range [0, dataset_size=" +
             std::to_string(dataset_size) + ")");
      out.push_back(x);
    }
    return out;
  }
};

}  // namespace

void PartitionOptions::validate() const {
  check_known("method", method, {"iid", "dirichlet", "shards", "quantity", "feature"});
  check_known("quantity_distribution", quantity_distribution, {"dirichlet", "lognormal"});
  check_known("feature_skew", feature_skew, {"noise", "rotation"});
  if (num_clients < 1) bad_option("num_clients", "must be >= 1, got " + std::to_string(num_clients));
  if (!(alpha > 0) || !std::isfinite(alpha)) bad_option("alpha", "must be a finite number > 0, got " + fmt(alpha));
  if (min_samples < 0) bad_option("min_samples", "must be >= 0, got " + std::to_string(min_samples));
  if (shards_per_client < 1)
    bad_option("shards_per_client", "must be >= 1, got " + std::to_string(shards_per_client));
  if (!(lognormal_sigma >= 0) || !std::isfinite(lognormal_sigma))
    bad_option("lognormal_sigma", "must be a finite number >= 0, got " + fmt(lognormal_sigma));
  if (!(feature_level >= 0) || !std::isfinite(feature_level))
    bad_option("feature_level", "must be a finite number >= 0, got " + fmt(feature_level));
  if (!(client_test_fraction >= 0 && client_test_fraction < 1))
    bad_option("client_test_fraction", "must be in [0, 1), got " + fmt(client_test_fraction));
}

bool PartitionOptions::operator==(const PartitionOptions& o) const {
  return method == o.method && num_clients == o.num_clients && alpha == o.alpha && min_samples == o.min_samples &&
         shards_per_client == o.shards_per_client && quantity_distribution == o.quantity_distribution &&
         lognormal_sigma == o.lognormal_sigma && feature_skew == o.feature_skew &&
         feature_level == o.feature_level && client_test_fraction == o.client_test_fraction && seed == o.seed;
}

bool ClientShard::operator==(const ClientShard& o) const {
  return train == o.train && test == o.test && noise_std == o.noise_std && rotation_deg == o.rotation_deg;
}

bool Partition::operator==(const Partition& o) const {
  return options == o.options && dataset_size == o.dataset_size && clients == o.clients;
}

Partition make_partition(const std::vector<int64_t>& labels, int64_t num_classes, const PartitionOptions& opt) {
  opt.validate();
  check_labels(labels, num_classes);
  const int64_t n = static_cast<int64_t>(labels.size());
  const int k = opt.num_clients;
  if (k > n)
    bad_option("num_clients", "(" + std::to_string(k) + ") exceeds the data set size (" + std::to_string(n) + ")");
  if (opt.method == "shards" && static_cast<int64_t>(k) * opt.shards_per_client > n)
    bad_option("shards_per_client", "(" + std::to_string(opt.shards_per_client) + ") x num_clients (" +
                                        std::to_string(k) + ") exceeds the data set size (" + std::to_string(n) +
                                        "): shards would be empty");
  if ((opt.method == "dirichlet" || opt.method == "quantity") && static_cast<int64_t>(k) * opt.min_samples > n)
    bad_option("min_samples", "(" + std::to_string(opt.min_samples) + ") x num_clients (" + std::to_string(k) +
                                  ") exceeds the data set size (" + std::to_string(n) + ")");

  Rng rng(opt.seed);
  std::vector<std::vector<int64_t>> parts;
  if (opt.method == "iid" || opt.method == "feature") parts = split_iid(n, k, rng);
  else if (opt.method == "dirichlet") parts = split_dirichlet(labels, num_classes, opt, rng);
  else if (opt.method == "shards") parts = split_shards(labels, opt, rng);
  else parts = split_quantity(n, opt, rng);

  Partition p;
  p.options = opt;
  p.dataset_size = n;
  p.clients.resize(k);
  // Transforms are drawn after the split (which consumed the stream the same way as iid).
  if (opt.method == "feature")
    for (auto& c : p.clients) {
      const double u = uniform01(rng);
      if (opt.feature_skew == "noise") c.noise_std = u * opt.feature_level;
      else c.rotation_deg = (2 * u - 1) * opt.feature_level;
    }
  for (int j = 0; j < k; ++j) {
    auto& idx = parts[j];
    auto& c = p.clients[j];
    const int64_t m = static_cast<int64_t>(idx.size());
    int64_t n_test = 0;
    if (opt.client_test_fraction > 0 && m > 0) {
      shuffle(idx, rng);
      n_test = std::llround(opt.client_test_fraction * static_cast<double>(m));
      if (m >= 2) n_test = std::max<int64_t>(n_test, 1);
      n_test = std::min<int64_t>(n_test, m - 1);  // a client always keeps something to train on
    }
    c.test.assign(idx.begin(), idx.begin() + n_test);
    c.train.assign(idx.begin() + n_test, idx.end());
  }
  return p;
}

void save_partition(const Partition& p, const std::string& path) {
  json clients = json::array();
  for (const auto& c : p.clients)
    clients.push_back(
        json{{"train", c.train}, {"test", c.test}, {"noise_std", c.noise_std}, {"rotation_deg", c.rotation_deg}});
  const json j{{"format", "fl-partition"},
               {"version", 1},
               {"options", options_to_json(p.options)},
               {"dataset_size", p.dataset_size},
               {"clients", std::move(clients)}};
  write_file_atomically(path, j.dump(1));
}

Partition load_partition(const std::string& path) {
  const Reader r{path};
  std::ifstream f(path, std::ios::binary);
  if (!f) r.fail(std::string("cannot open partition file: ") + std::strerror(errno));
  const std::string text((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  json j;
  try {
    j = json::parse(text);
  } catch (const json::parse_error& e) {
    r.fail(std::string("invalid JSON: ") + e.what());
  }
  if (!j.is_object()) r.fail("not a partition file (top level is not a JSON object)");
  auto fmt_it = j.find("format");
  if (fmt_it == j.end() || *fmt_it != "fl-partition")
    r.fail("not a partition file (missing \"format\": \"fl-partition\")");
  if (auto v = j.find("version"); v != j.end() && *v != 1)
    r.fail("unsupported partition file version " + v->dump() + " (expected 1)");

  Partition p;
  p.options = r.options(r.field(j, "options", ""));
  p.dataset_size = r.integer(r.field(j, "dataset_size", ""), "dataset_size");
  if (p.dataset_size < 0) r.fail("field \"dataset_size\" must be >= 0, got " + std::to_string(p.dataset_size));
  const json& clients = r.field(j, "clients", "");
  if (!clients.is_array()) r.fail("field \"clients\" must be an array");
  if (static_cast<int64_t>(clients.size()) != p.options.num_clients)
    r.fail("\"clients\" has " + std::to_string(clients.size()) + " entries but options.num_clients is " +
           std::to_string(p.options.num_clients));

  // (index, owner) pairs, sorted, expose duplicates without an O(dataset_size) table.
  std::vector<std::pair<int64_t, int64_t>> seen;
  for (size_t i = 0; i < clients.size(); ++i) {
    const json& cj = clients[i];
    const std::string w = "clients[" + std::to_string(i) + "].";
    if (!cj.is_object()) r.fail("\"clients[" + std::to_string(i) + "]\" must be an object");
    ClientShard c;
    c.train = r.indices(r.field(cj, "train", w), w + "train", p.dataset_size);
    if (auto v = cj.find("test"); v != cj.end()) c.test = r.indices(*v, w + "test", p.dataset_size);
    if (auto v = cj.find("noise_std"); v != cj.end()) c.noise_std = r.number(*v, w + "noise_std");
    if (auto v = cj.find("rotation_deg"); v != cj.end()) c.rotation_deg = r.number(*v, w + "rotation_deg");
    if (!(c.noise_std >= 0) || !std::isfinite(c.noise_std))
      r.fail("field \"" + w + "noise_std\" must be a finite number >= 0, got " + fmt(c.noise_std));
    if (!std::isfinite(c.rotation_deg)) r.fail("field \"" + w + "rotation_deg\" must be finite");
    for (auto x : c.train) seen.emplace_back(x, 2 * static_cast<int64_t>(i));
    for (auto x : c.test) seen.emplace_back(x, 2 * static_cast<int64_t>(i) + 1);
    p.clients.push_back(std::move(c));
  }
  std::sort(seen.begin(), seen.end());
  auto owner = [](int64_t o) { return "client " + std::to_string(o / 2) + (o % 2 ? " test" : " train"); };
  for (size_t i = 1; i < seen.size(); ++i)
    if (seen[i].first == seen[i - 1].first)
      r.fail("duplicate index " + std::to_string(seen[i].first) + " (in " + owner(seen[i - 1].second) + " and " +
             owner(seen[i].second) + ")");
  return p;
}

std::string partition_table(const Partition& p, const std::vector<int64_t>& labels, int64_t num_classes) {
  if (static_cast<int64_t>(labels.size()) != p.dataset_size)
    throw std::invalid_argument("partition_table: labels has " + std::to_string(labels.size()) +
                                " entries but the partition's dataset_size is " + std::to_string(p.dataset_size));
  check_labels(labels, num_classes);
  std::vector<std::vector<std::string>> rows;
  std::vector<std::string> header{"client", "n_train", "n_test"};
  for (int64_t k = 0; k < num_classes; ++k) header.push_back("c" + std::to_string(k));
  rows.push_back(header);
  for (size_t j = 0; j < p.clients.size(); ++j) {
    const auto& c = p.clients[j];
    std::vector<int64_t> counts(num_classes, 0);
    for (auto i : c.train) {
      if (i < 0 || i >= p.dataset_size)
        throw std::invalid_argument("partition_table: client " + std::to_string(j) + " index " + std::to_string(i) +
                                    " is outside [0, " + std::to_string(p.dataset_size) + ")");
      ++counts[labels[i]];
    }
    std::vector<std::string> row{std::to_string(j), std::to_string(c.train.size()), std::to_string(c.test.size())};
    for (auto n : counts) row.push_back(std::to_string(n));
    rows.push_back(std::move(row));
  }
  std::vector<size_t> width(header.size(), 0);
  for (const auto& row : rows)
    for (size_t i = 0; i < row.size(); ++i) width[i] = std::max(width[i], row[i].size());
  std::string out;
  for (const auto& row : rows) {
    for (size_t i = 0; i < row.size(); ++i) {
      if (i > 0) out += "  ";
      out.append(width[i] - row[i].size(), ' ');  // right-aligned: numbers line up
      out += row[i];
    }
    out += '\n';
  }
  return out;
}

at::Tensor apply_feature_skew(const at::Tensor& images, const ClientShard& shard, uint64_t seed) {
  if (!images.defined() || images.dim() != 4)
    throw std::invalid_argument("apply_feature_skew: images must be a 4-D [N,C,H,W] tensor, got " +
                                (images.defined() ? std::to_string(images.dim()) + "-D" : std::string("undefined")));
  if (!at::isFloatingType(images.scalar_type()))
    throw std::invalid_argument("apply_feature_skew: images must be floating point, got " +
                                std::string(c10::toString(images.scalar_type())));
  if (!(shard.noise_std >= 0) || !std::isfinite(shard.noise_std))
    throw std::invalid_argument("apply_feature_skew: noise_std must be a finite number >= 0, got " +
                                fmt(shard.noise_std));
  if (!std::isfinite(shard.rotation_deg))
    throw std::invalid_argument("apply_feature_skew: rotation_deg must be finite");
  if (shard.noise_std == 0 && shard.rotation_deg == 0) return images;

  at::Tensor out = images;
  if (shard.rotation_deg != 0 && images.numel() > 0) {
    const int64_t n = images.size(0), h = images.size(2), w = images.size(3);
    const double rad = shard.rotation_deg * kPi / 180.0;
    const double c = std::cos(rad), s = std::sin(rad);
    // affine_grid maps output (x right, y down, normalised to [-1,1]) to input coordinates.
    // A counter-clockwise turn on screen (y down) is out = [[c,s],[-s,c]] in, so the sampling
    // matrix is its inverse [[c,-s],[s,c]]; the H/W factors make it a rotation in pixels
    // rather than in normalised coordinates, which would shear non-square images.
    const double hw = static_cast<double>(h) / static_cast<double>(w);
    auto theta = torch::tensor({c, -s * hw, 0.0, s / hw, c, 0.0}, torch::kFloat64)
                     .view({1, 2, 3})
                     .expand({n, 2, 3})
                     .to(images.options());
    auto grid = at::affine_grid_generator(theta, images.sizes(), /*align_corners=*/false);
    out = at::grid_sampler(images, grid, /*bilinear*/ 0, /*zeros*/ 0, /*align_corners=*/false);
  }
  if (shard.noise_std > 0) {
    // Drawn on the CPU so the noise for a seed does not depend on the device.
    auto gen = at::detail::createCPUGenerator(seed);
    auto noise = at::randn(images.sizes(), gen, at::TensorOptions().dtype(at::kFloat));
    out = out + noise.to(images.options()).mul_(shard.noise_std);
  }
  return out;
}

std::vector<int64_t> labels_to_vector(const at::Tensor& labels) {
  if (!labels.defined() || labels.dim() != 1 || at::isFloatingType(labels.scalar_type()) ||
      labels.scalar_type() == at::kBool)
    throw std::invalid_argument("labels_to_vector: labels must be a 1-D integer tensor");
  auto t = labels.to(at::kCPU, at::kLong).contiguous();
  const int64_t* d = t.data_ptr<int64_t>();
  return std::vector<int64_t>(d, d + t.numel());
}

}  // namespace fl
