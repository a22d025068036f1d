// fedctl model evaluate: a model file (`fedctl model export`'s safetensors) on labelled CSV files,
// here, without a coordinator. Each CSV is standardised with the statistics of the training CSV
// its site's fedclient fitted (read_csv's fit_from), so the model sees what it was trained on, or
// with --feature-stats, with shared (pooled federated) statistics, as fedclient --feature-stats did.
#include <torch/torch.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <stdexcept>

#include "common/data/client_data.h"
#include "common/data/csv.h"
#include "common/data/feature_stats.h"
#include "common/io/safetensors.h"
#include "common/models/model.h"
#include "common/train/classification_metrics.h"
#include "coordinator/fedctl/cli.h"

namespace fl::fedctl {
namespace {

namespace fs = std::filesystem;

std::string fixed(double v, int digits = 4) {
  if (!std::isfinite(v)) return "-";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}

nlohmann::ordered_json number_or_null(double v) {
  return std::isfinite(v) ? nlohmann::ordered_json(v) : nlohmann::ordered_json(nullptr);
}

std::string join(const std::vector<int64_t>& v, const std::string& sep) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) s += (i ? sep : "") + std::to_string(v[i]);
  return s;
}

// "mlp [30 -> 32, 16 -> 2]": input shape, hidden widths, classes.
std::string mlp_desc(const std::vector<int64_t>& input, const std::vector<int64_t>& widths, int64_t classes) {
  return "mlp [" + join(input, "x") + (widths.empty() ? "" : " -> " + join(widths, ", ")) + " -> " +
         std::to_string(classes) + "]";
}

// What a classifier did on a set of examples: scores kept so that sets can be pooled.
struct Scored {
  int64_t n = 0, correct = 0;
  double loss_sum = 0;             // summed cross-entropy
  std::vector<float> positive;     // P(class 1), binary only
  std::vector<int64_t> labels;     // binary only
  int64_t num_classes = 0;

  void add(const Scored& o) {
    n += o.n;
    correct += o.correct;
    loss_sum += o.loss_sum;
    positive.insert(positive.end(), o.positive.begin(), o.positive.end());
    labels.insert(labels.end(), o.labels.begin(), o.labels.end());
    num_classes = o.num_classes;
  }
  double accuracy() const { return n ? static_cast<double>(correct) / static_cast<double>(n) : NAN; }
  double loss() const { return n ? loss_sum / static_cast<double>(n) : NAN; }
  // NaN where there is no AUC: more than 2 classes, or one class absent from these examples.
  double auc() const {
    if (num_classes != 2) return NAN;
    try {
      return roc_auc(positive, labels);
    } catch (const std::invalid_argument&) {
      return NAN;
    }
  }
};

Scored score(Model& model, const TensorDataset& d) {
  torch::NoGradGuard no_grad;
  model.train(false);
  Scored s;
  s.num_classes = d.num_classes;
  const int64_t batch = 4096;
  for (int64_t from = 0; from < d.size(); from += batch) {
    const int64_t to = std::min(d.size(), from + batch);
    const auto x = d.x.slice(0, from, to);
    const auto y = d.y.slice(0, from, to);
    const auto logits = model.forward(x);
    s.loss_sum += torch::nn::functional::cross_entropy(
                      logits, y, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum))
                      .item<double>();
    s.correct += logits.argmax(1).eq(y).sum().item<int64_t>();
    if (d.num_classes == 2) {
      const auto p = torch::softmax(logits, 1).select(1, 1).contiguous().to(torch::kFloat32);
      s.positive.insert(s.positive.end(), p.data_ptr<float>(), p.data_ptr<float>() + p.numel());
      const auto yc = y.contiguous();
      s.labels.insert(s.labels.end(), yc.data_ptr<int64_t>(), yc.data_ptr<int64_t>() + yc.numel());
    }
  }
  s.n = d.size();
  return s;
}

// The 2-D weights of a state in order: an mlp's layers (in-features, widths, classes).
std::vector<std::vector<int64_t>> matrices(const ModelState& st) {
  std::vector<std::vector<int64_t>> out;
  for (const auto& e : st.entries())
    if (e.tensor.dim() == 2) out.push_back(e.tensor.sizes().vec());
  return out;
}

}  // namespace

void add_model_commands(CLI::App& app, Context& ctx) {
  auto* model = app.get_subcommand("model");  // made by add_admin_commands (model export)
  static std::string model_file, arch = "mlp", model_path, label_column = "label", feature_stats;
  static std::vector<std::string> csvs, fit_csvs;
  static std::vector<int64_t> hidden;
  auto* ev = model->add_subcommand(
      "evaluate", "a model file (from `model export`) on labelled CSV files, here: accuracy, ROC AUC (2 classes), N");
  ev->add_option("--model-file", model_file, "the model's safetensors file")->required();
  ev->add_option("--csv", csvs, "a labelled CSV file to evaluate on (repeatable: one row each, and their pool)")
      ->required();
  ev->add_option("--fit-csv", fit_csvs,
                 "the training CSV of the site whose data --csv is (repeatable, in --csv order; one serves all): "
                 "features are standardised with its mean/std and labels encoded with its classes, as that "
                 "site's fedclient did");
  ev->add_option("--feature-stats", feature_stats,
                 "instead of (or besides) --fit-csv: standardise every --csv with this feature statistics file's "
                 "mean/std (fedctl stats pool's, as fedclient --feature-stats did); without --fit-csv the classes "
                 "are those of all --csv labels together")
      ->check(CLI::ExistingFile);
  ev->add_option("--label-column", label_column, "name of the label column")->capture_default_str();
  ev->add_option("--model", arch, "the architecture the file holds (the run's --model)")->capture_default_str();
  ev->add_option("--hidden", hidden, "mlp: hidden layer widths (default: read from the file)");
  ev->add_option("--model-path", model_path, "torchscript: the .pt file");
  auto* c = &ctx;
  on_run(ev, ctx, [c] {
    if (fit_csvs.empty() && feature_stats.empty())
      throw CommandError(kUsage, "give --fit-csv (the sites' training CSVs) or --feature-stats (shared statistics)");
    if (!fit_csvs.empty() && fit_csvs.size() != 1 && fit_csvs.size() != csvs.size())
      throw CommandError(kUsage, "give one --fit-csv for every --csv (" + std::to_string(csvs.size()) +
                                     "), or one for all; got " + std::to_string(fit_csvs.size()));
    if (!fs::is_regular_file(model_file)) throw CommandError(kError, "model file " + model_file + " does not exist");
    const ModelState state = read_safetensors(model_file);
    const auto mats = matrices(state);
    std::vector<int64_t> widths = hidden;
    if (arch == "mlp" && hidden.empty()) {
      if (mats.empty()) throw CommandError(kError, "model file " + model_file + " holds no mlp (no 2-D weight)");
      for (size_t i = 0; i + 1 < mats.size(); ++i) widths.push_back(mats[i][0]);
    }
    CsvOptions o;
    o.label_column = label_column;
    FeatureStats stats;
    CsvData classes_of_all;  // without --fit-csv: the label encoding of all --csv files together
    if (!feature_stats.empty()) {
      o.standardize = false;  // standardize_with below
      try {
        stats = read_feature_stats(feature_stats);
      } catch (const std::exception& e) {
        throw CommandError(kError, e.what());
      }
      if (fit_csvs.empty()) {
        std::vector<std::string> labels;
        std::vector<int64_t> lines;
        for (const auto& csv : csvs) {
          const CsvTable t = read_csv_table(csv, o.delimiter);
          const size_t col = t.column(label_column, "label");
          std::vector<std::string> names;
          for (size_t k = 0; k < t.header.size(); ++k)
            if (k != col) names.push_back(t.header[k]);
          if (names != stats.names)
            throw CommandError(kError, csv + ": feature columns differ from those of the feature statistics " +
                                           feature_stats + " (" + std::to_string(names.size()) + " vs " +
                                           std::to_string(stats.names.size()) + " features, or other names/order)");
          for (size_t r = 0; r < t.rows.size(); ++r) {
            labels.push_back(t.rows[r][col]);
            lines.push_back(t.lines[r]);
          }
        }
        ClassEncoding enc;
        encode_labels(labels, lines, "the --csv files", nullptr, &enc);
        classes_of_all.feature_names = stats.names;
        classes_of_all.class_names = enc.class_names;
        classes_of_all.data.num_classes = enc.num_classes;
      }
    }
    struct Row {
      std::string csv, fit;
      Scored s;
    };
    std::vector<Row> rows;
    std::unique_ptr<Model> net;
    std::vector<std::string> classes, features;
    Scored pooled;
    for (size_t i = 0; i < csvs.size(); ++i) {
      const std::string fit = fit_csvs.empty() ? "" : fit_csvs.size() == 1 ? fit_csvs[0] : fit_csvs[i];
      const CsvData train = fit.empty() ? classes_of_all : read_csv(fit, o);
      CsvData test = read_csv(csvs[i], o, &train);
      if (!feature_stats.empty()) standardize_with(test, stats, csvs[i], feature_stats);
      const ModelSpec spec = model_spec_for(arch, test.data, model_path, widths);
      if (arch == "mlp" && !mats.empty()) {
        const int64_t in = test.data.x.size(1), k = test.data.num_classes;
        if (mats.front()[1] != in || mats.back()[0] != k)
          throw CommandError(kError, "model file " + model_file + " does not fit " + csvs[i] + ": the model takes " +
                                         std::to_string(mats.front()[1]) + " features and gives " +
                                         std::to_string(mats.back()[0]) + " classes, the CSV (fit on " + fit +
                                         ") has " + std::to_string(in) + " features and " + std::to_string(k) +
                                         " classes");
      }
      if (!net) {
        net = build_model(spec);
        try {
          net->load_state(state);
        } catch (const std::exception& e) {
          throw CommandError(kError, "model file " + model_file + " does not fit " +
                                         (arch == "mlp" ? mlp_desc(spec.input_shape, widths, spec.num_classes) : arch) +
                                         " for " + csvs[i] + ": " + e.what());
        }
        classes = train.class_names;
        features = train.feature_names;
      } else if (train.class_names != classes || train.feature_names != features ||
                 test.data.num_classes != pooled.num_classes) {
        throw CommandError(kError, "--fit-csv " + fit + " has other columns or classes than " + fit_csvs[0] +
                                       ": cannot pool them");
      }
      rows.push_back({csvs[i], fit, score(*net, test.data)});
      pooled.add(rows.back().s);
    }
    const std::string positive = classes.size() > 1 ? classes[1] : "1";
    const std::string model_desc =
        arch == "mlp" ? mlp_desc(net->spec().input_shape, widths, net->spec().num_classes) : arch;
    if (c->json) {
      auto one = [](const std::string& csv, const std::string& fit, const Scored& s) {
        nlohmann::ordered_json j;
        if (!csv.empty()) j["csv"] = csv;
        if (!fit.empty()) j["fit_csv"] = fit;
        j["n"] = s.n;
        j["accuracy"] = number_or_null(s.accuracy());
        j["auc"] = number_or_null(s.auc());
        j["loss"] = number_or_null(s.loss());
        return j;
      };
      nlohmann::ordered_json j;
      j["model_file"] = model_file;
      j["model"] = model_desc;
      if (!feature_stats.empty()) j["feature_stats"] = feature_stats;
      j["num_classes"] = pooled.num_classes;
      if (pooled.num_classes == 2) j["auc_positive_class"] = positive;
      j["results"] = nlohmann::ordered_json::array();
      for (const auto& r : rows) j["results"].push_back(one(r.csv, r.fit, r.s));
      if (rows.size() > 1) j["pooled"] = one("", "", pooled);
      print_json(std::cout, j);
      return kOk;
    }
    std::vector<std::vector<std::string>> table;
    auto line = [](const std::string& csv, const std::string& fit, const Scored& s) {
      return std::vector<std::string>{csv, fit, std::to_string(s.n), fixed(s.accuracy()), fixed(s.auc()),
                                      fixed(s.loss())};
    };
    for (const auto& r : rows) table.push_back(line(r.csv, r.fit, r.s));
    if (rows.size() > 1) table.push_back(line("all (pooled)", "", pooled));
    std::cout << "model: " << model_file << " (" << model_desc << ")";
    if (!feature_stats.empty()) std::cout << "; features standardised with " << feature_stats;
    if (pooled.num_classes == 2) std::cout << "; AUC: P(class '" << positive << "')";
    std::cout << "\n";
    print_table(std::cout, {"CSV", "FIT", "N", "ACCURACY", "AUC", "LOSS"}, table);
    return kOk;
  });
}

}  // namespace fl::fedctl
