// fedctl model evaluate (coordinator/fedctl/model_commands.cpp), the real program on a tiny CSV
// and a model whose numbers are known: a logistic regression (mlp without hidden layers) whose
// class-1 logit is the first feature after standardisation with the --fit-csv statistics.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <cmath>
#include <fstream>

#include "common/io/safetensors.h"
#include "common/models/model.h"
#include "tests/process_util.h"
#include "tests/temp_dir.h"
#include "model_files.h"

namespace fl {
namespace {

using json = nlohmann::json;
using testing_util::TempDir;

const std::string kFedctl = std::string(FL_BINARY_DIR) + "/bin/fedctl";

struct Row {
  double a, b;
  const char* label;
};
// Training split (the fit source): a has mean 1.5 and population std sqrt(4.25).
const std::vector<Row> kTrain = {{0, 1, "benign"}, {3, 2, "malignant"}, {-1, 3, "benign"}, {4, 4, "malignant"}};
// Test split: with the training statistics class 1 (malignant, the second class sorted) is
// predicted where a > 1.5: right on 2, 1, -2, 3, 1.2 and wrong on -1 and the malignant 1: 5 of 7.
// (Standardised with its own mean, 0.743, it would be 4 of 7.) ROC AUC over the 4 malignant x 3
// benign pairs: 2 and 3 beat all three benign (6), -1 beats -2 (1), the malignant 1 beats -2
// and ties the benign 1 (1.5): 8.5 of 12.
const std::vector<Row> kTest = {{2, 0, "malignant"}, {1, 5, "benign"},   {-1, 1, "malignant"}, {-2, 2, "benign"},
                                {3, 3, "malignant"}, {1, 4, "malignant"}, {1.2, 0, "benign"}};

void write_csv(const std::string& path, const std::vector<Row>& rows, const std::string& extra_column = "",
               const std::string& names = "a,b") {
  std::ofstream f(path);
  f << names << (extra_column.empty() ? "" : "," + extra_column) << ",diagnosis\n";
  for (const auto& r : rows) f << r.a << ',' << r.b << (extra_column.empty() ? "" : ",0") << ',' << r.label << '\n';
}


testing_util::ProgramRun fedctl(const TempDir& tmp, const std::string& args) {
  return testing_util::run_program(kFedctl + " " + args, tmp.file("stderr.txt"));
}

TEST(ModelEvaluate, AccuracyAucAndLossWithTheTrainingStatistics) {
  TempDir tmp;
  write_csv(tmp.file("train.csv"), kTrain);
  write_csv(tmp.file("test.csv"), kTest);
  testing_util::write_first_feature_model(tmp.file("m.safetensors"));
  const auto r = fedctl(tmp, "--json model evaluate --model-file " + tmp.file("m.safetensors") +
                                 " --label-column diagnosis --csv " + tmp.file("test.csv") + " --fit-csv " +
                                 tmp.file("train.csv"));
  ASSERT_EQ(r.code, 0) << r.err;
  const auto j = json::parse(r.out);
  EXPECT_EQ(j["model"], "mlp [2 -> 2]") << j.dump();
  EXPECT_EQ(j["num_classes"], 2);
  EXPECT_EQ(j["auc_positive_class"], "malignant");
  ASSERT_EQ(j["results"].size(), 1u);
  const auto& one = j["results"][0];
  EXPECT_EQ(one["n"], 7);
  EXPECT_NEAR(one["accuracy"].get<double>(), 5.0 / 7.0, 1e-12);
  EXPECT_NEAR(one["auc"].get<double>(), 8.5 / 12.0, 1e-12);
  double loss = 0;
  for (const auto& row : kTest) {
    const double z = (row.a - 1.5) / std::sqrt(4.25), p1 = 1 / (1 + std::exp(-z));
    loss -= std::log(std::string(row.label) == "malignant" ? p1 : 1 - p1);
  }
  EXPECT_NEAR(one["loss"].get<double>(), loss / 7, 1e-5);
  EXPECT_FALSE(j.contains("pooled"));
}

TEST(ModelEvaluate, PoolsSeveralSitesAndPrintsATable) {
  TempDir tmp;
  write_csv(tmp.file("train.csv"), kTrain);
  write_csv(tmp.file("test.csv"), kTest);
  write_csv(tmp.file("test2.csv"), {{5, 0, "malignant"}, {0, 0, "benign"}});  // both right, pos > neg
  testing_util::write_first_feature_model(tmp.file("m.safetensors"));
  const std::string args = "model evaluate --model-file " + tmp.file("m.safetensors") +
                           " --label-column diagnosis --csv " + tmp.file("test.csv") + " --csv " +
                           tmp.file("test2.csv") + " --fit-csv " + tmp.file("train.csv");  // one fit for all
  auto r = fedctl(tmp, "--json " + args);
  ASSERT_EQ(r.code, 0) << r.err;
  const auto j = json::parse(r.out);
  ASSERT_EQ(j["results"].size(), 2u);
  EXPECT_NEAR(j["results"][1]["accuracy"].get<double>(), 1.0, 1e-12);
  EXPECT_NEAR(j["results"][1]["auc"].get<double>(), 1.0, 1e-12);
  EXPECT_EQ(j["pooled"]["n"], 9);
  EXPECT_NEAR(j["pooled"]["accuracy"].get<double>(), 7.0 / 9.0, 1e-12);
  // 5 malignant x 4 benign: 8.5 pairs as above, the new 5 beats all 4 benign, the four old
  // malignant beat the new 0 except -1 (3): 8.5 + 4 + 3 = 15.5 of 20.
  EXPECT_NEAR(j["pooled"]["auc"].get<double>(), 15.5 / 20.0, 1e-12);
  r = fedctl(tmp, args);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("AUC: P(class 'malignant')"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("CSV"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("all (pooled)  "), std::string::npos) << r.out;
  for (const char* v : {"0.7143", "0.7083", "0.7778", "0.7750"})  // test.csv's and the pool's accuracy, AUC
    EXPECT_NE(r.out.find(v), std::string::npos) << v << " not in\n" << r.out;
}

TEST(ModelEvaluate, OneClassHasNoAuc) {
  TempDir tmp;
  write_csv(tmp.file("train.csv"), kTrain);
  write_csv(tmp.file("test.csv"), {{5, 0, "malignant"}, {-3, 0, "malignant"}});
  testing_util::write_first_feature_model(tmp.file("m.safetensors"));
  const auto r = fedctl(tmp, "--json model evaluate --model-file " + tmp.file("m.safetensors") +
                                 " --label-column diagnosis --csv " + tmp.file("test.csv") + " --fit-csv " +
                                 tmp.file("train.csv"));
  ASSERT_EQ(r.code, 0) << r.err;
  const auto j = json::parse(r.out);
  EXPECT_NEAR(j["results"][0]["accuracy"].get<double>(), 0.5, 1e-12);
  EXPECT_TRUE(j["results"][0]["auc"].is_null());
}

TEST(ModelEvaluate, RefusesInputsThatDoNotFit) {
  TempDir tmp;
  write_csv(tmp.file("train.csv"), kTrain);
  write_csv(tmp.file("test.csv"), kTest);
  write_csv(tmp.file("train3.csv"), kTrain, "c");
  write_csv(tmp.file("test3.csv"), kTest, "c");
  write_csv(tmp.file("train_xy.csv"), kTrain, "", "x,y");  // 2 features, other names
  write_csv(tmp.file("test_xy.csv"), kTest, "", "x,y");
  testing_util::write_first_feature_model(tmp.file("m.safetensors"));
  testing_util::write_first_feature_model(tmp.file("m3.safetensors"), 2, 3);
  const std::string m = " --label-column diagnosis --model-file " + tmp.file("m.safetensors");
  const std::string data = " --csv " + tmp.file("test.csv") + " --fit-csv " + tmp.file("train.csv");
  struct Case {
    std::string args;
    int code;
    std::string needle;
  };
  const std::vector<Case> cases = {
      {"model evaluate --label-column diagnosis --model-file " + tmp.file("none.safetensors") + data, 1,
       "none.safetensors does not exist"},
      {"model evaluate" + m + " --csv " + tmp.file("none.csv") + " --fit-csv " + tmp.file("train.csv"), 1,
       "none.csv"},
      {"model evaluate" + m + " --csv " + tmp.file("test3.csv") + " --fit-csv " + tmp.file("train3.csv"), 1,
       "the model takes 2 features and gives 2 classes, the CSV (fit on " + tmp.file("train3.csv") +
           ") has 3 features and 2 classes"},
      {"model evaluate --label-column diagnosis --model-file " + tmp.file("m3.safetensors") + data, 1,
       "the model takes 2 features and gives 3 classes"},
      {"model evaluate" + m + " --csv " + tmp.file("test.csv") + " --csv " + tmp.file("test.csv") + " --fit-csv " +
           tmp.file("train.csv") + " --fit-csv " + tmp.file("train.csv") + " --fit-csv " + tmp.file("train.csv"),
       2, "give one --fit-csv for every --csv (2), or one for all; got 3"},
      {"model evaluate --model-file " + tmp.file("m.safetensors") + data, 1, "label column 'label' not found"},
      {"model evaluate --label-column diagnosis --model-file " + tmp.file("test.csv") + data, 1, "test.csv"},
      {"model evaluate" + m + " --csv " + tmp.file("test.csv") + " --csv " + tmp.file("test3.csv") +
           " --fit-csv " + tmp.file("train.csv") + " --fit-csv " + tmp.file("train3.csv"),
       1, "does not fit"},
      {"model evaluate" + m + " --csv " + tmp.file("test3.csv") + " --fit-csv " + tmp.file("train.csv"), 1,
       "test3.csv: feature columns ('a', 'b', 'c') differ from the fitted data's ('a', 'b')"},
      {"model evaluate" + m + " --csv " + tmp.file("test.csv") + " --csv " + tmp.file("test_xy.csv") +
           " --fit-csv " + tmp.file("train.csv") + " --fit-csv " + tmp.file("train_xy.csv"),
       1, "train_xy.csv has other columns or classes than " + tmp.file("train.csv") + ": cannot pool them"},
  };
  for (const auto& c : cases) {
    const auto r = fedctl(tmp, c.args);
    EXPECT_EQ(r.code, c.code) << c.args << "\n" << r.err;
    EXPECT_NE(r.err.find(c.needle), std::string::npos) << c.args << "\nstderr: " << r.err;
    EXPECT_EQ(r.err.rfind("fedctl: error: ", 0), 0u) << r.err;
  }
}

TEST(ModelEvaluate, HasHelpAndNeedsNoCoordinator) {
  TempDir tmp;
  const auto r = fedctl(tmp, "model evaluate --help");
  EXPECT_EQ(r.code, 0) << r.err;
  for (const char* flag : {"--model-file", "--csv", "--fit-csv", "--label-column", "--hidden"})
    EXPECT_NE(r.out.find(flag), std::string::npos) << flag << " not in\n" << r.out;
}

}  // namespace
}  // namespace fl
