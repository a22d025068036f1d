#include <gtest/gtest.h>
#include <torch/torch.h>

#include <nlohmann/json.hpp>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <functional>
#include <iterator>
#include <numeric>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "common/data/partition.h"
#include "temp_dir.h"

namespace fl {
namespace {

using fl::testing_util::TempDir;

using json = nlohmann::json;

// Balanced, interleaved labels (i % classes): sorting by label actually moves indices.
std::vector<int64_t> balanced_labels(int64_t n, int64_t classes) {
  std::vector<int64_t> y(n);
  for (int64_t i = 0; i < n; ++i) y[i] = i % classes;
  return y;
}

// Skewed, irregular labels (class k has weight k+1) so class sizes differ.
std::vector<int64_t> irregular_labels(int64_t n, int64_t classes) {
  std::vector<int64_t> y(n);
  uint64_t s = 12345;
  const int64_t total = classes * (classes + 1) / 2;
  for (int64_t i = 0; i < n; ++i) {
    s = s * 6364136223846793005ULL + 1442695040888963407ULL;
    int64_t r = static_cast<int64_t>((s >> 33) % total), k = 0;
    while (r >= k + 1) r -= ++k;
    y[i] = k;
  }
  return y;
}

PartitionOptions opts(const std::string& method, int clients = 10, uint64_t seed = 1) {
  PartitionOptions o;
  o.method = method;
  o.num_clients = clients;
  o.seed = seed;
  return o;
}

// Every index in [0, n) appears exactly once over all clients' train and test lists.
void expect_disjoint_cover(const Partition& p, int64_t n) {
  ASSERT_EQ(p.dataset_size, n);
  ASSERT_EQ(static_cast<int64_t>(p.clients.size()), p.options.num_clients);
  std::vector<int> count(n, 0);
  int64_t total = 0;
  for (const auto& c : p.clients)
    for (const auto* list : {&c.train, &c.test})
      for (auto i : *list) {
        ASSERT_GE(i, 0);
        ASSERT_LT(i, n);
        ++count[i];
        ++total;
      }
  EXPECT_EQ(total, n);
  for (int64_t i = 0; i < n; ++i) ASSERT_EQ(count[i], 1) << "index " << i;
}

std::vector<int64_t> class_counts(const std::vector<int64_t>& idx, const std::vector<int64_t>& y, int64_t classes) {
  std::vector<int64_t> c(classes, 0);
  for (auto i : idx) ++c[y[i]];
  return c;
}

// Mean over clients of the largest class share of the client's data.
double mean_max_class_share(const Partition& p, const std::vector<int64_t>& y, int64_t classes) {
  double sum = 0;
  for (const auto& c : p.clients) {
    auto counts = class_counts(c.train, y, classes);
    sum += static_cast<double>(*std::max_element(counts.begin(), counts.end())) / c.train.size();
  }
  return sum / p.clients.size();
}

template <class E>
std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const E& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected an exception";
  return "";
}

#define EXPECT_CONTAINS(msg, needle) \
  EXPECT_NE(std::string(msg).find(needle), std::string::npos) << "'" << (msg) << "' lacks '" << (needle) << "'"

void write_text(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f << text;
}

TEST(PartitionMethods, EveryMethodIsADisjointCover) {
  const int64_t n = 1003;  // not divisible by the client or shard count
  for (const auto& y : {balanced_labels(n, 10), irregular_labels(n, 10)})
    for (const std::string m : {"iid", "dirichlet", "shards", "quantity", "feature"}) {
      SCOPED_TRACE(m);
      auto p = make_partition(y, 10, opts(m, 7, 3));
      EXPECT_EQ(p.options, opts(m, 7, 3));
      expect_disjoint_cover(p, n);
      for (const auto& c : p.clients) {
        EXPECT_TRUE(c.test.empty());
        EXPECT_FALSE(c.train.empty());
      }
    }
  PartitionOptions lognormal = opts("quantity", 7, 3);
  lognormal.quantity_distribution = "lognormal";
  expect_disjoint_cover(make_partition(balanced_labels(n, 10), 10, lognormal), n);
}

TEST(PartitionMethods, IidSizesAreNearlyEqual) {
  auto p = make_partition(balanced_labels(1003, 10), 10, opts("iid", 10));
  for (size_t j = 0; j < p.clients.size(); ++j)
    EXPECT_EQ(p.clients[j].train.size(), j < 3 ? 101u : 100u) << "client " << j;
  // Shuffled: client 0 is not just the first 101 indices.
  auto first = p.clients[0].train;
  std::sort(first.begin(), first.end());
  EXPECT_GT(first.back(), 500);
}

TEST(PartitionMethods, SameSeedReplaysDifferentSeedDiffers) {
  const auto y = irregular_labels(800, 5);
  for (const std::string m : {"iid", "dirichlet", "shards", "quantity", "feature"}) {
    SCOPED_TRACE(m);
    auto a = opts(m, 8, 42), b = opts(m, 8, 42), c = opts(m, 8, 43);
    a.client_test_fraction = b.client_test_fraction = c.client_test_fraction = 0.2;
    const auto pa = make_partition(y, 5, a), pb = make_partition(y, 5, b), pc = make_partition(y, 5, c);
    EXPECT_EQ(pa, pb);
    EXPECT_NE(pa.clients, pc.clients);
  }
}

TEST(PartitionDirichlet, SmallAlphaIsMoreSkewedThanLargeAlpha) {
  const int64_t classes = 10;
  const auto y = balanced_labels(2000, classes);
  auto skewed = opts("dirichlet", 10, 7);
  skewed.alpha = 0.1;
  auto even = opts("dirichlet", 10, 7);
  even.alpha = 100;
  const auto ps = make_partition(y, classes, skewed), pe = make_partition(y, classes, even);
  expect_disjoint_cover(ps, 2000);
  expect_disjoint_cover(pe, 2000);
  const double share_skewed = mean_max_class_share(ps, y, classes);
  const double share_even = mean_max_class_share(pe, y, classes);
  // alpha=100 is close to iid (max share ~0.1-0.15); alpha=0.1 gives clients a dominant class.
  EXPECT_LT(share_even, 0.2);
  EXPECT_GT(share_skewed, 0.4);
  EXPECT_GT(share_skewed, 2 * share_even);
  for (const auto* p : {&ps, &pe})
    for (const auto& c : p->clients) EXPECT_GE(static_cast<int64_t>(c.train.size()), 10);
}

TEST(PartitionDirichlet, MinSamplesIsHonouredOrReported) {
  const auto y = balanced_labels(1000, 10);
  auto o = opts("dirichlet", 10, 5);
  o.alpha = 0.3;
  o.min_samples = 40;
  auto p = make_partition(y, 10, o);
  for (const auto& c : p.clients) EXPECT_GE(static_cast<int64_t>(c.train.size()), 40);
  // Half the data is class 0, which extreme skew hands to one client whole; the other nine
  // then share 500 samples but would need 9 x 60 = 540: impossible, so it must be reported.
  std::vector<int64_t> skewed(1000);
  for (int i = 0; i < 1000; ++i) skewed[i] = i < 500 ? 0 : 1 + i % 9;
  o.alpha = 0.001;
  o.min_samples = 60;
  const auto msg = error_of<std::runtime_error>([&] { make_partition(skewed, 10, o); });
  EXPECT_CONTAINS(msg, "alpha=0.001");
  EXPECT_CONTAINS(msg, "min_samples=60");
}

TEST(PartitionShards, LabelPureShardsGiveAtMostShardsPerClientLabels) {
  const int64_t classes = 10;
  const auto y = balanced_labels(1000, classes);  // 20 shards of 50 inside classes of 100: pure
  auto o = opts("shards", 10, 9);
  o.shards_per_client = 2;
  const auto p = make_partition(y, classes, o);
  expect_disjoint_cover(p, 1000);
  int two_label_clients = 0;
  for (const auto& c : p.clients) {
    EXPECT_EQ(c.train.size(), 100u);
    auto counts = class_counts(c.train, y, classes);
    const auto distinct = std::count_if(counts.begin(), counts.end(), [](int64_t x) { return x > 0; });
    EXPECT_LE(distinct, 2);
    for (auto x : counts) EXPECT_TRUE(x == 0 || x == 50 || x == 100) << x;
    two_label_clients += distinct == 2;
  }
  EXPECT_GT(two_label_clients, 0);  // shards are dealt randomly, not label by label
}

TEST(PartitionQuantity, SizesDifferLabelsStayIid) {
  const int64_t classes = 10, n = 5000;
  const auto y = balanced_labels(n, classes);
  auto o = opts("quantity", 10, 11);
  o.alpha = 1.0;
  const auto p = make_partition(y, classes, o);
  expect_disjoint_cover(p, n);
  size_t lo = n, hi = 0;
  for (const auto& c : p.clients) {
    lo = std::min(lo, c.train.size());
    hi = std::max(hi, c.train.size());
    EXPECT_GE(c.train.size(), 10u);
    if (c.train.size() >= 200) {
      auto counts = class_counts(c.train, y, classes);
      EXPECT_LT(static_cast<double>(*std::max_element(counts.begin(), counts.end())) / c.train.size(), 0.25);
    }
  }
  EXPECT_GT(hi, 2 * lo);  // real quantity skew
  EXPECT_LT(mean_max_class_share(p, y, classes), 0.3);

  o.quantity_distribution = "lognormal";
  o.lognormal_sigma = 1.5;
  o.min_samples = 50;
  const auto pl = make_partition(y, classes, o);
  expect_disjoint_cover(pl, n);
  lo = n, hi = 0;
  for (const auto& c : pl.clients) {
    lo = std::min(lo, c.train.size());
    hi = std::max(hi, c.train.size());
  }
  EXPECT_GE(lo, 50u);
  EXPECT_GT(hi, 2 * lo);
}

TEST(PartitionFeature, TransformsInRangeAndDiffer) {
  const auto y = balanced_labels(500, 10);
  auto o = opts("feature", 10, 4);
  o.feature_skew = "noise";
  o.feature_level = 0.3;
  const auto pn = make_partition(y, 10, o);
  expect_disjoint_cover(pn, 500);
  std::set<double> noise;
  for (const auto& c : pn.clients) {
    EXPECT_GE(c.noise_std, 0.0);
    EXPECT_LT(c.noise_std, 0.3);
    EXPECT_EQ(c.rotation_deg, 0.0);
    noise.insert(c.noise_std);
  }
  EXPECT_EQ(noise.size(), 10u);

  o.feature_skew = "rotation";
  o.feature_level = 30;
  o.seed = 5;  // seed 4 happens to draw 10 negative angles (p = 2^-9)
  const auto pr = make_partition(y, 10, o);
  bool neg = false, pos = false;
  for (const auto& c : pr.clients) {
    EXPECT_GE(c.rotation_deg, -30.0);
    EXPECT_LE(c.rotation_deg, 30.0);
    EXPECT_EQ(c.noise_std, 0.0);
    neg |= c.rotation_deg < 0;
    pos |= c.rotation_deg > 0;
  }
  EXPECT_TRUE(neg && pos);
  // The index split is the iid split for the same seed.
  EXPECT_EQ(pr.clients[3].train, make_partition(y, 10, opts("iid", 10, 5)).clients[3].train);
}

TEST(PartitionFeature, NoiseChangesABatchReproducibly) {
  const auto images = torch::rand({64, 1, 8, 8});
  ClientShard shard;
  EXPECT_TRUE(apply_feature_skew(images, shard, 1).equal(images));  // identity
  shard.noise_std = 0.2;
  const auto a = apply_feature_skew(images, shard, 1);
  const auto b = apply_feature_skew(images, shard, 1);
  const auto c = apply_feature_skew(images, shard, 2);
  EXPECT_EQ(a.sizes(), images.sizes());
  EXPECT_TRUE(a.equal(b));
  EXPECT_FALSE(a.equal(c));
  EXPECT_NEAR((a - images).std().item<double>(), 0.2, 0.01);
  EXPECT_NEAR((a - images).mean().item<double>(), 0.0, 0.02);
  // float64 input stays float64.
  EXPECT_EQ(apply_feature_skew(images.to(torch::kFloat64), shard, 1).scalar_type(), torch::kFloat64);
}

TEST(PartitionFeature, RotationIsCounterClockwise) {
  // 1 2 3      3 6 9
  // 4 5 6  ->  2 5 8   (+90 deg: counter-clockwise as displayed, like numpy.rot90 / torchvision)
  // 7 8 9      1 4 7
  const auto img = torch::arange(1, 10, torch::kFloat32).view({1, 1, 3, 3});
  ClientShard shard;
  shard.rotation_deg = 90;
  const auto ccw = apply_feature_skew(img, shard, 0);
  const auto want_ccw = torch::tensor({3.f, 6.f, 9.f, 2.f, 5.f, 8.f, 1.f, 4.f, 7.f}).view({1, 1, 3, 3});
  EXPECT_TRUE(ccw.allclose(want_ccw, 1e-5, 1e-5)) << ccw;
  shard.rotation_deg = -90;
  const auto cw = apply_feature_skew(img, shard, 0);
  const auto want_cw = torch::tensor({7.f, 4.f, 1.f, 8.f, 5.f, 2.f, 9.f, 6.f, 3.f}).view({1, 1, 3, 3});
  EXPECT_TRUE(cw.allclose(want_cw, 1e-5, 1e-5)) << cw;

  // Non-square 3x5 (value = 5*row + col): the rotation is in pixels, so the middle row turns
  // into the middle column without being stretched; samples from outside the image are 0.
  const auto wide = torch::arange(0, 15, torch::kFloat32).view({1, 1, 3, 5});
  shard.rotation_deg = 90;
  const auto r = apply_feature_skew(wide, shard, 0)[0][0];
  EXPECT_NEAR(r[0][2].item<float>(), 8.f, 1e-4);
  EXPECT_NEAR(r[1][2].item<float>(), 7.f, 1e-4);
  EXPECT_NEAR(r[2][2].item<float>(), 6.f, 1e-4);
  EXPECT_NEAR(r[1][1].item<float>(), 2.f, 1e-4);
  EXPECT_NEAR(r[1][3].item<float>(), 12.f, 1e-4);
  EXPECT_NEAR(r[1][0].item<float>(), 0.f, 1e-4);

  EXPECT_THROW(apply_feature_skew(torch::zeros({3, 3}), shard, 0), std::invalid_argument);
  EXPECT_THROW(apply_feature_skew(torch::zeros({1, 1, 3, 3}, torch::kLong), shard, 0), std::invalid_argument);
}

TEST(PartitionTestSplit, HalfOfEachClientGoesToTest) {
  const auto y = irregular_labels(1001, 10);
  for (const std::string m : {"iid", "dirichlet", "shards", "quantity"}) {
    SCOPED_TRACE(m);
    auto o = opts(m, 10, 2);
    o.client_test_fraction = 0.5;
    const auto p = make_partition(y, 10, o);
    expect_disjoint_cover(p, 1001);
    for (const auto& c : p.clients) {
      const auto n = static_cast<int64_t>(c.train.size() + c.test.size());
      EXPECT_EQ(static_cast<int64_t>(c.test.size()), std::llround(0.5 * n));
      EXPECT_LE(std::abs(static_cast<int64_t>(c.train.size()) - static_cast<int64_t>(c.test.size())), 1);
    }
  }
  // Tiny clients: 2 indices -> 1 test; 3 at f=0.9 -> train keeps 1.
  auto o = opts("iid", 2, 0);
  o.client_test_fraction = 0.01;
  for (const auto& c : make_partition(balanced_labels(4, 2), 2, o).clients) EXPECT_EQ(c.test.size(), 1u);
  o.client_test_fraction = 0.9;
  for (const auto& c : make_partition(balanced_labels(6, 2), 2, o).clients) {
    EXPECT_EQ(c.test.size(), 2u);
    EXPECT_EQ(c.train.size(), 1u);
  }
}

TEST(PartitionIo, SaveLoadRoundTrip) {
  TempDir tmp;
  const auto y = irregular_labels(600, 6);
  for (const std::string m : {"dirichlet", "feature"}) {
    auto o = opts(m, 6, 99);
    o.alpha = 0.37;
    o.feature_skew = "rotation";
    o.feature_level = 17.5;
    o.client_test_fraction = 0.25;
    o.seed = 18446744073709551615ULL;  // full uint64 range survives JSON
    const auto p = make_partition(y, 6, o);
    const auto path = tmp.file(m + ".json");
    save_partition(p, path);
    EXPECT_EQ(tmp.entries().size(), m == "dirichlet" ? 1u : 2u) << "a temporary was left behind";
    const auto q = load_partition(path);
    EXPECT_EQ(q.options, p.options);
    EXPECT_EQ(q.dataset_size, 600);
    EXPECT_EQ(q, p);
  }
}

TEST(PartitionIo, CorruptFilesGiveClearErrors) {
  TempDir tmp;
  const auto p = make_partition(balanced_labels(100, 5), 5, opts("iid", 4, 1));
  const auto good = tmp.file("good.json");
  save_partition(p, good);
  json j;
  std::ifstream(good) >> j;
  const auto bad = tmp.file("bad.json");
  auto load_error = [&](const json& doc) {
    write_text(bad, doc.dump());
    return error_of<std::runtime_error>([&] { load_partition(bad); });
  };

  write_text(bad, "{\"format\": \"fl-partition\", \"clients\": [1, 2");
  auto msg = error_of<std::runtime_error>([&] { load_partition(bad); });
  EXPECT_CONTAINS(msg, bad);
  EXPECT_CONTAINS(msg, "invalid JSON");

  msg = error_of<std::runtime_error>([&] { load_partition(tmp.file("missing.json")); });
  EXPECT_CONTAINS(msg, "missing.json");

  auto d = j;
  d["clients"][1]["train"][0] = 100;
  msg = load_error(d);
  EXPECT_CONTAINS(msg, "index 100");
  EXPECT_CONTAINS(msg, "clients[1].train[0]");
  EXPECT_CONTAINS(msg, "dataset_size=100");

  d = j;
  d["clients"][2]["test"] = json::array({j["clients"][0]["train"][3]});
  msg = load_error(d);
  EXPECT_CONTAINS(msg, "duplicate index " + std::to_string(j["clients"][0]["train"][3].get<int64_t>()));
  EXPECT_CONTAINS(msg, "client 0 train");
  EXPECT_CONTAINS(msg, "client 2 test");

  d = j;
  d.erase("clients");
  EXPECT_CONTAINS(load_error(d), "missing field \"clients\"");
  d = j;
  d["options"].erase("method");
  EXPECT_CONTAINS(load_error(d), "missing field \"options.method\"");
  d = j;
  d["clients"][3].erase("train");
  EXPECT_CONTAINS(load_error(d), "missing field \"clients[3].train\"");
  d = j;
  d["clients"][0]["train"][0] = "7";
  EXPECT_CONTAINS(load_error(d), "clients[0].train[0]\" must be an integer");
  d = j;
  d["clients"].erase(3);
  EXPECT_CONTAINS(load_error(d), "\"clients\" has 3 entries but options.num_clients is 4");
  d = j;
  d["options"]["alpha"] = -1;
  EXPECT_CONTAINS(load_error(d), "PartitionOptions.alpha");
  d = j;
  d.erase("format");
  EXPECT_CONTAINS(load_error(d), "not a partition file");
  d = j;
  d["clients"][0]["noise_std"] = -0.5;
  EXPECT_CONTAINS(load_error(d), "clients[0].noise_std");
}

TEST(PartitionTable, HeaderAndCountsSumToTrainSize) {
  const int64_t classes = 4;
  const auto y = irregular_labels(400, classes);
  auto o = opts("dirichlet", 5, 8);
  o.client_test_fraction = 0.2;
  const auto p = make_partition(y, classes, o);
  const auto table = partition_table(p, y, classes);
  std::istringstream in(table);
  std::string line;
  std::vector<std::string> lines;
  while (std::getline(in, line)) lines.push_back(line);
  ASSERT_EQ(lines.size(), 6u);
  std::istringstream header(lines[0]);
  std::vector<std::string> cols{std::istream_iterator<std::string>(header), std::istream_iterator<std::string>()};
  EXPECT_EQ(cols, (std::vector<std::string>{"client", "n_train", "n_test", "c0", "c1", "c2", "c3"}));
  for (size_t j = 0; j < p.clients.size(); ++j) {
    EXPECT_EQ(lines[j + 1].size(), lines[0].size());  // aligned
    std::istringstream row(lines[j + 1]);
    int64_t id, n_train, n_test, sum = 0, v;
    row >> id >> n_train >> n_test;
    std::vector<int64_t> counts;
    while (row >> v) {
      counts.push_back(v);
      sum += v;
    }
    EXPECT_EQ(id, static_cast<int64_t>(j));
    EXPECT_EQ(n_train, static_cast<int64_t>(p.clients[j].train.size()));
    EXPECT_EQ(n_test, static_cast<int64_t>(p.clients[j].test.size()));
    EXPECT_EQ(sum, n_train);
    EXPECT_EQ(counts, class_counts(p.clients[j].train, y, classes));
  }
  EXPECT_THROW(partition_table(p, balanced_labels(10, classes), classes), std::invalid_argument);
}

TEST(PartitionValidation, ErrorsNameTheField) {
  const auto y = balanced_labels(100, 10);
  auto expect_field = [&](const std::function<void(PartitionOptions&)>& edit, const std::string& field) {
    PartitionOptions o;
    edit(o);
    const auto msg = error_of<std::invalid_argument>([&] { make_partition(y, 10, o); });
    EXPECT_CONTAINS(msg, field);
  };
  expect_field([](auto& o) { o.method = "random"; }, "PartitionOptions.method");
  expect_field([](auto& o) { o.method = "random"; }, "iid, dirichlet, shards, quantity, feature");
  expect_field([](auto& o) { o.num_clients = 0; }, "PartitionOptions.num_clients");
  expect_field([](auto& o) { o.num_clients = 101; }, "PartitionOptions.num_clients");
  expect_field([](auto& o) { o.alpha = 0; }, "PartitionOptions.alpha");
  expect_field([](auto& o) { o.alpha = std::nan(""); }, "PartitionOptions.alpha");
  expect_field([](auto& o) { o.min_samples = -1; }, "PartitionOptions.min_samples");
  expect_field(
      [](auto& o) {
        o.method = "dirichlet";
        o.min_samples = 11;
      },
      "PartitionOptions.min_samples");
  expect_field([](auto& o) { o.shards_per_client = 0; }, "PartitionOptions.shards_per_client");
  expect_field(
      [](auto& o) {
        o.method = "shards";
        o.shards_per_client = 11;
      },
      "PartitionOptions.shards_per_client");
  expect_field([](auto& o) { o.quantity_distribution = "zipf"; }, "PartitionOptions.quantity_distribution");
  expect_field([](auto& o) { o.quantity_distribution = "zipf"; }, "dirichlet, lognormal");
  expect_field([](auto& o) { o.lognormal_sigma = -1; }, "PartitionOptions.lognormal_sigma");
  expect_field([](auto& o) { o.feature_skew = "blur"; }, "PartitionOptions.feature_skew");
  expect_field([](auto& o) { o.feature_skew = "blur"; }, "noise, rotation");
  expect_field([](auto& o) { o.feature_level = -0.1; }, "PartitionOptions.feature_level");
  expect_field([](auto& o) { o.client_test_fraction = 1.0; }, "PartitionOptions.client_test_fraction");
  expect_field([](auto& o) { o.client_test_fraction = -0.1; }, "PartitionOptions.client_test_fraction");

  auto labels = y;
  labels[17] = 10;
  auto msg = error_of<std::invalid_argument>([&] { make_partition(labels, 10, PartitionOptions{}); });
  EXPECT_CONTAINS(msg, "labels[17] = 10");
  labels[17] = -1;
  EXPECT_THROW(make_partition(labels, 10, PartitionOptions{}), std::invalid_argument);
  PartitionOptions ok;
  EXPECT_NO_THROW(ok.validate());
}

TEST(PartitionLabels, TensorToVector) {
  EXPECT_EQ(labels_to_vector(torch::tensor({3, 1, 2}, torch::kInt32)), (std::vector<int64_t>{3, 1, 2}));
  EXPECT_THROW(labels_to_vector(torch::zeros({2, 2}, torch::kLong)), std::invalid_argument);
  EXPECT_THROW(labels_to_vector(torch::zeros({2})), std::invalid_argument);
}

}  // namespace
}  // namespace fl
