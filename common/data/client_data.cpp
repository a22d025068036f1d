#include "common/data/client_data.h"

#include <torch/torch.h>

#include <stdexcept>

#include "common/data/csv.h"
#include "common/data/dicom.h"
#include "common/data/feature_stats.h"
#include "common/data/idx.h"
#include "common/engine/round_engine.h"

namespace fl {
namespace {

at::Tensor index_tensor(const std::vector<int64_t>& idx) {
  return torch::tensor(idx, torch::TensorOptions().dtype(torch::kLong));
}

}  // namespace

TrainTest load_data(const DataSource& s) {
  if (s.dataset == "csv") {
    if (s.train_csv.empty() || s.test_csv.empty())
      throw std::invalid_argument("--dataset csv needs --train-csv and --test-csv");
    CsvOptions o;
    o.label_column = s.label_column;
    if (!s.feature_stats.empty()) {  // shared (e.g. pooled federated) statistics instead of the site's own
      const FeatureStats stats = read_feature_stats(s.feature_stats);
      o.standardize = false;
      auto train = read_csv(s.train_csv, o);
      auto test = read_csv(s.test_csv, o, &train);
      standardize_with(train, stats, s.train_csv, s.feature_stats);
      standardize_with(test, stats, s.test_csv, s.feature_stats);
      return {train.data, test.data};
    }
    auto train = read_csv(s.train_csv, o);
    auto test = read_csv(s.test_csv, o, &train);
    return {train.data, test.data};
  }
  if (!s.feature_stats.empty())
    throw std::invalid_argument("--feature-stats is for --dataset csv only (got '" + s.dataset + "')");
  if (s.dataset == "dicom") {
    if (s.dicom_dir.empty() || s.dicom_labels.empty() || s.dicom_test_labels.empty())
      throw std::invalid_argument("--dataset dicom needs --dicom-dir (the images' folder), --dicom-labels (the training "
                                  "list: file,label) and --dicom-test-labels (the test list; its files are in "
                                  "--dicom-test-dir, default --dicom-dir)");
    if ((s.dicom_height == 0) != (s.dicom_width == 0))
      throw std::invalid_argument("--dicom-height and --dicom-width go together (both 0: every image must have the "
                                  "first one's size)");
    DicomOptions o;
    o.dir = s.dicom_dir;
    o.labels_csv = s.dicom_labels;
    o.file_column = s.dicom_file_column;
    o.label_column = s.label_column;
    o.height = s.dicom_height;
    o.width = s.dicom_width;
    auto train = read_dicom(o);
    o.dir = s.dicom_test_dir.empty() ? s.dicom_dir : s.dicom_test_dir;
    o.labels_csv = s.dicom_test_labels;
    auto test = read_dicom(o, &train);
    return {train.data, test.data};
  }
  if (s.dataset != "fashion-mnist" && s.dataset != "mnist")
    throw std::invalid_argument("--dataset '" + s.dataset + "' is unknown (fashion-mnist, mnist, csv, dicom)");
  const std::string dir = s.data_dir.empty() ? default_fashion_mnist_dir() : s.data_dir;
  return {load_fashion_mnist(dir, "train", s.train_limit), load_fashion_mnist(dir, "test")};
}

ClientData client_data(const TensorDataset& source, const Partition& p, int index, uint64_t seed) {
  if (p.dataset_size != source.size())
    throw std::invalid_argument("the partition was made for " + std::to_string(p.dataset_size) +
                                " examples, the data set has " + std::to_string(source.size()));
  if (index < 0 || index >= static_cast<int>(p.clients.size()))
    throw std::invalid_argument("client index " + std::to_string(index) + " is outside the partition's " +
                                std::to_string(p.clients.size()) + " clients");
  const auto& shard = p.clients[index];
  ClientData c;
  c.train = source.subset(index_tensor(shard.train));
  if (!shard.test.empty()) c.test = source.subset(index_tensor(shard.test));
  if (shard.noise_std > 0 || shard.rotation_deg != 0) {  // feature skew: a fixed per-client transform
    c.train.x = apply_feature_skew(c.train.x, shard, mix_seed(seed, 0xfea7, index));
    if (c.test.size() > 0) c.test.x = apply_feature_skew(c.test.x, shard, mix_seed(seed, 0xfea8, index));
  }
  return c;
}

ModelSpec model_spec_for(const std::string& model, const TensorDataset& data, const std::string& path,
                         const std::vector<int64_t>& hidden) {
  ModelSpec spec;
  spec.name = model;
  spec.path = path;
  spec.hidden = hidden;
  spec.num_classes = data.num_classes;
  spec.input_shape.assign(data.x.sizes().begin() + 1, data.x.sizes().end());
  return spec;
}

}  // namespace fl
