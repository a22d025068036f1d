// Federated feature statistics (common/data/feature_stats.h): counts, sums and sums of squares of
// each site's raw training features, pooled into one mean/std; fedclient --feature-stats-out and
// --feature-stats, load_data with DataSource::feature_stats, fedctl stats pool and fedctl model
// evaluate --feature-stats.
#include "common/data/feature_stats.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <cmath>
#include <fstream>

#include "common/data/client_data.h"
#include "common/data/csv.h"
#include "common/io/safetensors.h"
#include "common/models/model.h"
#include "tests/expect_error.h"
#include "tests/process_util.h"
#include "tests/temp_dir.h"
#include "model_files.h"

namespace fl {
namespace {

using json = nlohmann::json;
using testing_util::expect_error;
using testing_util::expect_error_of;
using testing_util::TempDir;

const std::string kBin = std::string(FL_BINARY_DIR) + "/bin/";

// Site 1: a = 0, 3, -1, 4 (sum 6, squares 26); b = 1, 2, 3, 4 (sum 10, squares 30).
const char* kSite1 = "a,b,diagnosis\n0,1,benign\n3,2,malignant\n-1,3,benign\n4,4,malignant\n";
// Site 2: a = 2, -2 (sum 0, squares 8); b = 0.5, -1.5 (sum -1, squares 2.5).
const char* kSite2 = "a,b,diagnosis\n2,0.5,malignant\n-2,-1.5,benign\n";
const char* kBoth = "a,b,diagnosis\n0,1,benign\n3,2,malignant\n-1,3,benign\n4,4,malignant\n"
                    "2,0.5,malignant\n-2,-1.5,benign\n";

void write(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::trunc);
  f << text;
}

TEST(FederatedFeatureStats, ComputesCountSumsAndSquaresOfTheRawFeatures) {
  TempDir tmp;
  write(tmp.file("site1.csv"), kSite1);
  const FeatureStats s = compute_feature_stats(tmp.file("site1.csv"), "diagnosis");
  EXPECT_EQ(s.names, (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(s.count, 4);
  EXPECT_EQ(s.sum, (std::vector<double>{6, 10}));
  EXPECT_EQ(s.sum_sq, (std::vector<double>{26, 30}));
  // mean 1.5 and 2.5; population std sqrt(26/4 - 2.25) = sqrt(4.25), sqrt(30/4 - 6.25) = sqrt(1.25)
  EXPECT_DOUBLE_EQ(s.mean()[0], 1.5);
  EXPECT_DOUBLE_EQ(s.mean()[1], 2.5);
  EXPECT_DOUBLE_EQ(s.std()[0], std::sqrt(4.25));
  EXPECT_DOUBLE_EQ(s.std()[1], std::sqrt(1.25));
  // The same as read_csv's own standardisation (population std).
  CsvOptions o;
  o.label_column = "diagnosis";
  const CsvData d = read_csv(tmp.file("site1.csv"), o);
  EXPECT_NEAR(d.mean[0].item<double>(), 1.5, 1e-6);
  EXPECT_NEAR(d.std[0].item<double>(), std::sqrt(4.25), 1e-6);
}

TEST(FederatedFeatureStats, PoolOfTwoSitesEqualsTheConcatenatedData) {
  TempDir tmp;
  write(tmp.file("site1.csv"), kSite1);
  write(tmp.file("site2.csv"), kSite2);
  write(tmp.file("both.csv"), kBoth);
  const FeatureStats pooled = pool_feature_stats(
      {compute_feature_stats(tmp.file("site1.csv"), "diagnosis"), compute_feature_stats(tmp.file("site2.csv"), "diagnosis")});
  const FeatureStats all = compute_feature_stats(tmp.file("both.csv"), "diagnosis");
  EXPECT_EQ(pooled.names, all.names);
  EXPECT_EQ(pooled.count, 6);
  EXPECT_EQ(pooled.sum, (std::vector<double>{6, 9}));
  EXPECT_EQ(pooled.sum_sq, (std::vector<double>{34, 32.5}));
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_NEAR(pooled.mean()[i], all.mean()[i], 1e-12);
    EXPECT_NEAR(pooled.std()[i], all.std()[i], 1e-12);
  }
  EXPECT_NEAR(pooled.mean()[0], 1.0, 1e-12);
  EXPECT_NEAR(pooled.std()[0], std::sqrt(34.0 / 6 - 1), 1e-12);
  EXPECT_NEAR(pooled.mean()[1], 1.5, 1e-12);
  EXPECT_NEAR(pooled.std()[1], std::sqrt(32.5 / 6 - 2.25), 1e-12);
}

TEST(FederatedFeatureStats, ConstantColumnHasZeroStdAndIsOnlyCentred) {
  TempDir tmp;
  write(tmp.file("c.csv"), "a,c,y\n1,0.1,0\n2,0.1,1\n3,0.1,0\n");  // 0.1 is not exact in binary
  const FeatureStats s = compute_feature_stats(tmp.file("c.csv"), "y");
  EXPECT_EQ(s.std()[1], 0.0);
  CsvOptions o;
  o.label_column = "y";
  o.standardize = false;
  CsvData d = read_csv(tmp.file("c.csv"), o);
  standardize_with(d, s, tmp.file("c.csv"), "stats");
  EXPECT_FLOAT_EQ(d.std[1].item<float>(), 1.0f);  // like read_csv: divide by 1
  EXPECT_NEAR(d.data.x[0][1].item<float>(), 0.0f, 1e-7);
  EXPECT_NEAR(d.data.x[0][0].item<float>(), -1.0f / std::sqrt(2.0f / 3.0f), 1e-6);
}

TEST(FederatedFeatureStats, JsonRoundTripIsExact) {
  TempDir tmp;
  FeatureStats s;
  s.names = {"mean_radius", "worst area"};
  s.count = 7;
  s.sum = {0.1 + 0.2, -1e300};
  s.sum_sq = {1.0 / 3.0, 1e-300};
  write_feature_stats(tmp.file("s.json"), s);
  const FeatureStats r = read_feature_stats(tmp.file("s.json"));
  EXPECT_EQ(r.names, s.names);
  EXPECT_EQ(r.count, s.count);
  EXPECT_EQ(r.sum, s.sum);
  EXPECT_EQ(r.sum_sq, s.sum_sq);
  const json j = json::parse(std::ifstream(tmp.file("s.json")));
  EXPECT_EQ(j["kind"], "feature_stats");
}

TEST(FederatedFeatureStats, BadInputsAreErrorsNamingTheFileAndField) {
  TempDir tmp;
  auto bad_file = [&](const std::string& name, const std::string& text, const std::vector<std::string>& needles) {
    write(tmp.file(name), text);
    SCOPED_TRACE(name);
    expect_error_of<std::invalid_argument>([&] { read_feature_stats(tmp.file(name)); },
                                           [&] {
                                             auto n = needles;
                                             n.push_back(tmp.file(name));
                                             return n;
                                           }());
  };
  const std::string names = R"("names": ["a", "b"], )";
  bad_file("zero.json", "{" + names + R"("count": 0, "sum": [1, 2], "sum_sq": [1, 2]})", {"'count' must be >= 1", "got 0"});
  bad_file("negative.json", "{" + names + R"("count": -3, "sum": [1, 2], "sum_sq": [1, 2]})", {"'count' must be >= 1", "-3"});
  bad_file("null.json", "{" + names + R"("count": 2, "sum": [1, 2], "sum_sq": [1, null]})",
           {"'sum_sq' value 2 is not a number"});
  bad_file("sizes.json", "{" + names + R"("count": 2, "sum": [1], "sum_sq": [1, 2]})",
           {"'sum' has 1 values, 'names' has 2"});
  bad_file("sq.json", "{" + names + R"("count": 2, "sum": [1, 2], "sum_sq": [1, -2]})",
           {"'sum_sq' of feature 'b' is negative"});
  bad_file("twice.json", R"({"names": ["a", "a"], "count": 2, "sum": [1, 2], "sum_sq": [1, 2]})", {"'a' twice"});
  bad_file("nocount.json", "{" + names + R"("sum": [1, 2], "sum_sq": [1, 2]})", {"field 'count' is missing"});
  // A number beyond a double (no JSON text holds an infinity or NaN: the writer makes them null).
  write(tmp.file("inf.json"), "{" + names + R"("count": 2, "sum": [1e999, 2], "sum_sq": [1, 2]})");
  expect_error([&] { read_feature_stats(tmp.file("inf.json")); }, {tmp.file("inf.json"), "not JSON", "1e999"});
  write(tmp.file("notjson.json"), "count = 3");
  expect_error([&] { read_feature_stats(tmp.file("notjson.json")); }, {tmp.file("notjson.json"), "not JSON"});
  expect_error([&] { read_feature_stats(tmp.file("missing.json")); }, {tmp.file("missing.json"), "no such file"});

  // Pooling sites whose features differ names both.
  FeatureStats a{{"a", "b"}, 2, {1, 2}, {1, 2}}, b{{"a", "c"}, 2, {1, 2}, {1, 2}};
  expect_error_of<std::invalid_argument>([&] { pool_feature_stats({a, b}, {"h1.json", "h2.json"}); },
                                         std::vector<std::string>{"h1.json", "h2.json", "'c'", "cannot pool"});
  // Writing refuses invalid statistics too.
  FeatureStats nan_stats{{"a"}, 1, {NAN}, {1}};
  expect_error_of<std::invalid_argument>([&] { write_feature_stats(tmp.file("w.json"), nan_stats); },
                                         std::vector<std::string>{"w.json", "'sum' of feature 'a' is not a finite number"});

  // A CSV whose columns are not the statistics' (load_data): names the CSV and the statistics file.
  write(tmp.file("site1.csv"), kSite1);
  write(tmp.file("abc.csv"), "a,c,diagnosis\n1,2,benign\n3,4,malignant\n");
  write_feature_stats(tmp.file("stats.json"), compute_feature_stats(tmp.file("site1.csv"), "diagnosis"));
  DataSource src;
  src.dataset = "csv";
  src.train_csv = tmp.file("abc.csv");
  src.test_csv = tmp.file("abc.csv");
  src.label_column = "diagnosis";
  src.feature_stats = tmp.file("stats.json");
  expect_error([&] { load_data(src); }, {tmp.file("abc.csv"), tmp.file("stats.json"), "'c'", "differ"});
  src.dataset = "mnist";
  expect_error_of<std::invalid_argument>([&] { load_data(src); }, "--feature-stats is for --dataset csv only");
}

TEST(FederatedFeatureStats, LoadDataStandardisesBothSplitsWithThePooledStatistics) {
  TempDir tmp;
  write(tmp.file("site1.csv"), kSite1);
  write(tmp.file("site2.csv"), kSite2);
  write(tmp.file("test1.csv"), "a,b,diagnosis\n1,1,benign\n5,2.5,malignant\n");
  write_feature_stats(tmp.file("pooled.json"),
                      pool_feature_stats({compute_feature_stats(tmp.file("site1.csv"), "diagnosis"),
                                          compute_feature_stats(tmp.file("site2.csv"), "diagnosis")}));
  DataSource src;
  src.dataset = "csv";
  src.train_csv = tmp.file("site1.csv");
  src.test_csv = tmp.file("test1.csv");
  src.label_column = "diagnosis";
  src.feature_stats = tmp.file("pooled.json");
  const TrainTest tt = load_data(src);
  // Pooled: a mean 1, std sqrt(34/6 - 1); b mean 1.5, std sqrt(32.5/6 - 2.25).
  const double sa = std::sqrt(34.0 / 6 - 1), sb = std::sqrt(32.5 / 6 - 2.25);
  const std::vector<std::vector<double>> train = {{0, 1}, {3, 2}, {-1, 3}, {4, 4}}, test = {{1, 1}, {5, 2.5}};
  ASSERT_EQ(tt.train.x.sizes(), (std::vector<int64_t>{4, 2}));
  ASSERT_EQ(tt.test.x.sizes(), (std::vector<int64_t>{2, 2}));
  for (size_t r = 0; r < train.size(); ++r) {
    EXPECT_NEAR(tt.train.x[r][0].item<double>(), (train[r][0] - 1) / sa, 1e-6) << r;
    EXPECT_NEAR(tt.train.x[r][1].item<double>(), (train[r][1] - 1.5) / sb, 1e-6) << r;
  }
  for (size_t r = 0; r < test.size(); ++r) {
    EXPECT_NEAR(tt.test.x[r][0].item<double>(), (test[r][0] - 1) / sa, 1e-6) << r;
    EXPECT_NEAR(tt.test.x[r][1].item<double>(), (test[r][1] - 1.5) / sb, 1e-6) << r;
  }
  EXPECT_EQ(tt.train.y[1].item<int64_t>(), 1);  // labels as before: malignant is class 1
  EXPECT_EQ(tt.test.num_classes, 2);
  // Without the statistics the site's own (mean 1.5, std sqrt(4.25)).
  src.feature_stats.clear();
  const TrainTest own = load_data(src);
  EXPECT_NEAR(own.train.x[0][0].item<double>(), -1.5 / std::sqrt(4.25), 1e-6);
}

TEST(FederatedFeatureStats, FedclientWritesItsStatisticsAndFedctlPoolsThem) {
  TempDir tmp;
  write(tmp.file("site1.csv"), kSite1);
  write(tmp.file("site2.csv"), kSite2);
  auto out = [&](const std::string& site) {
    return testing_util::run_program(kBin + "fedclient --dataset csv --train-csv " + tmp.file(site + ".csv") +
                                         " --label-column diagnosis --feature-stats-out " + tmp.file(site + ".json"),
                                     tmp.file("err.txt"));
  };
  for (const std::string site : {"site1", "site2"}) {
    const auto r = out(site);
    ASSERT_EQ(r.code, 0) << r.err;
    EXPECT_NE(r.out.find("written to " + tmp.file(site + ".json")), std::string::npos) << r.out;
  }
  const json j = json::parse(std::ifstream(tmp.file("site1.json")));
  EXPECT_EQ(j["count"], 4);
  EXPECT_EQ(j["names"], json({"a", "b"}));
  EXPECT_EQ(j["sum"], json({6.0, 10.0}));
  EXPECT_EQ(j["sum_sq"], json({26.0, 30.0}));

  const auto p = testing_util::run_program(kBin + "fedctl --json stats pool " + tmp.file("site1.json") + " " +
                                               tmp.file("site2.json") + " --out " + tmp.file("pooled.json"),
                                           tmp.file("err.txt"));
  ASSERT_EQ(p.code, 0) << p.err;
  const json pj = json::parse(p.out);
  EXPECT_EQ(pj["count"], 6);
  EXPECT_EQ(pj["counts"], json({4, 2}));
  EXPECT_NEAR(pj["features"][0]["mean"].get<double>(), 1.0, 1e-12);
  EXPECT_NEAR(pj["features"][1]["std"].get<double>(), std::sqrt(32.5 / 6 - 2.25), 1e-12);
  const FeatureStats pooled = read_feature_stats(tmp.file("pooled.json"));
  EXPECT_EQ(pooled.count, 6);
  EXPECT_EQ(pooled.sum, (std::vector<double>{6, 9}));
  const auto table = testing_util::run_program(
      kBin + "fedctl stats pool " + tmp.file("site1.json") + " " + tmp.file("site2.json"), tmp.file("err.txt"));
  ASSERT_EQ(table.code, 0) << table.err;
  EXPECT_NE(table.out.find("FEATURE"), std::string::npos) << table.out;

  // Sites with other columns: exit 1 naming both files.
  write(tmp.file("other.csv"), "a,c,diagnosis\n1,2,benign\n3,4,malignant\n");
  ASSERT_EQ(out("other").code, 0);
  const auto bad = testing_util::run_program(
      kBin + "fedctl stats pool " + tmp.file("site1.json") + " " + tmp.file("other.json"), tmp.file("err.txt"));
  EXPECT_EQ(bad.code, 1);
  EXPECT_NE(bad.err.find(tmp.file("site1.json")), std::string::npos) << bad.err;
  EXPECT_NE(bad.err.find(tmp.file("other.json")), std::string::npos) << bad.err;
  // --feature-stats-out needs CSV data; fedclient --feature-stats whose names differ from the CSV's.
  const auto no_csv = testing_util::run_program(kBin + "fedclient --feature-stats-out " + tmp.file("x.json"),
                                                tmp.file("err.txt"));
  EXPECT_EQ(no_csv.code, 1);
  EXPECT_NE(no_csv.err.find("--feature-stats-out needs --dataset csv and --train-csv"), std::string::npos) << no_csv.err;
  const auto mismatch = testing_util::run_program(
      kBin + "fedclient --insecure --dataset csv --train-csv " + tmp.file("other.csv") + " --test-csv " +
          tmp.file("other.csv") + " --label-column diagnosis --feature-stats " + tmp.file("pooled.json"),
      tmp.file("err.txt"));
  EXPECT_EQ(mismatch.code, 1);
  EXPECT_NE(mismatch.err.find(tmp.file("pooled.json")), std::string::npos) << mismatch.err;
}

TEST(FederatedFeatureStats, ModelEvaluateWithFeatureStatsStandardisesLikeTheSites) {
  TempDir tmp;
  write(tmp.file("site1.csv"), kSite1);
  write(tmp.file("site2.csv"), kSite2);
  // a = 1.2: above site 1's own mean 1.5? no (benign, right); above the pooled mean 1? yes (wrong).
  write(tmp.file("test.csv"), "a,b,diagnosis\n1.2,0,benign\n3,1,malignant\n-1,1,benign\n");
  testing_util::write_first_feature_model(tmp.file("m.safetensors"));
  write_feature_stats(tmp.file("own.json"), compute_feature_stats(tmp.file("site1.csv"), "diagnosis"));
  write_feature_stats(tmp.file("pooled.json"),
                      pool_feature_stats({compute_feature_stats(tmp.file("site1.csv"), "diagnosis"),
                                          compute_feature_stats(tmp.file("site2.csv"), "diagnosis")}));
  auto eval = [&](const std::string& how) {
    const auto r = testing_util::run_program(kBin + "fedctl --json model evaluate --model-file " +
                                                 tmp.file("m.safetensors") + " --label-column diagnosis --csv " +
                                                 tmp.file("test.csv") + " " + how,
                                             tmp.file("err.txt"));
    EXPECT_EQ(r.code, 0) << r.err;
    return r.code == 0 ? json::parse(r.out) : json();
  };
  const json fit = eval("--fit-csv " + tmp.file("site1.csv"));
  const json own = eval("--feature-stats " + tmp.file("own.json"));
  const json pooled = eval("--feature-stats " + tmp.file("pooled.json"));
  ASSERT_FALSE(fit.is_null());
  ASSERT_FALSE(own.is_null());
  ASSERT_FALSE(pooled.is_null());
  // The site's own statistics as a file: the same as --fit-csv.
  EXPECT_NEAR(own["results"][0]["accuracy"].get<double>(), 1.0, 1e-12);
  EXPECT_NEAR(fit["results"][0]["accuracy"].get<double>(), 1.0, 1e-12);
  EXPECT_NEAR(own["results"][0]["loss"].get<double>(), fit["results"][0]["loss"].get<double>(), 1e-5);
  EXPECT_EQ(own["feature_stats"], tmp.file("own.json"));
  // Pooled statistics (mean 1): 1.2 is now called malignant.
  EXPECT_NEAR(pooled["results"][0]["accuracy"].get<double>(), 2.0 / 3.0, 1e-12);
  // Neither --fit-csv nor --feature-stats: usage error.
  const auto none = testing_util::run_program(kBin + "fedctl model evaluate --model-file " + tmp.file("m.safetensors") +
                                                  " --label-column diagnosis --csv " + tmp.file("test.csv"),
                                              tmp.file("err.txt"));
  EXPECT_EQ(none.code, 2);
  EXPECT_NE(none.err.find("give --fit-csv"), std::string::npos) << none.err;
}

}  // namespace
}  // namespace fl
