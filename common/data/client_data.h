#pragma once
// One client's share of a partitioned data set: the same code builds a virtual client in
// fedsim and a hospital's local data in fedclient, so that both train on identical examples.
#include <cstdint>
#include <string>
#include <vector>

#include "common/data/dataset.h"
#include "common/data/partition.h"
#include "common/models/model.h"

namespace fl {

// Where a program's examples come from: Fashion-MNIST/MNIST IDX files, CSV tables or DICOM images.
struct DataSource {
  std::string dataset = "fashion-mnist";  // fashion-mnist | mnist | csv | dicom
  std::string data_dir;                   // IDX: default $FASHION_MNIST_DIR or the Debian path
  std::string train_csv, test_csv, label_column = "label";  // label_column: csv and dicom
  // csv: a FeatureStats JSON file (common/data/feature_stats.h, e.g. pooled over the sites): both
  // splits are standardised with its mean/std instead of the training split's own.
  std::string feature_stats;
  // dicom (common/data/dicom.h): a folder of images and a CSV listing the training files (relative
  // to it) with their labels; the test split is a second list, of files in dicom_test_dir
  // (default: dicom_dir), like a MONAI/NVFlare datalist's training and validation lists.
  std::string dicom_dir, dicom_labels, dicom_test_dir, dicom_test_labels, dicom_file_column = "file";
  int64_t dicom_height = 0, dicom_width = 0;  // 0: the first image's size; else every image resized
  int64_t train_limit = -1;               // only the first N training examples (-1: all)
};

struct TrainTest {
  TensorDataset train, test;
};

// Loads both splits; CSV and DICOM test features are standardised with the training statistics
// (CSV with `feature_stats`: both splits with those).
// Errors name the missing option or the file.
TrainTest load_data(const DataSource& source);

struct ClientData {
  TensorDataset train;
  TensorDataset test;  // empty when the partition has no per-client test split
};

// Client `index` of partition `p` over `source` (the data set the partition was made for),
// with the client's feature-skew transform applied. Throws std::invalid_argument when the
// partition was made for a data set of another size or the index is out of range.
ClientData client_data(const TensorDataset& source, const Partition& p, int index, uint64_t seed);

// A model spec for `model` that fits `data` (input shape and number of classes).
ModelSpec model_spec_for(const std::string& model, const TensorDataset& data, const std::string& path = {},
                         const std::vector<int64_t>& hidden = {200, 200});

}  // namespace fl
