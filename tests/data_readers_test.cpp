#include <gtest/gtest.h>
#include <torch/torch.h>
#include <zlib.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "common/data/csv.h"
#include "common/data/dataset.h"
#include "common/data/idx.h"
#include "expect_error.h"
#include "file_bytes.h"
#include "temp_dir.h"

namespace fl {
namespace {

using fl::testing_util::expect_error;
using fl::testing_util::expect_error_of;
using fl::testing_util::TempDir;

namespace fs = std::filesystem;

void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary);
  f.write(bytes.data(), bytes.size());
}

void write_gz(const std::string& path, const std::string& bytes) {
  gzFile f = gzopen(path.c_str(), "wb");
  ASSERT_NE(f, nullptr);
  ASSERT_EQ(gzwrite(f, bytes.data(), bytes.size()), static_cast<int>(bytes.size()));
  ASSERT_EQ(gzclose(f), Z_OK);
}

using fl::testing_util::file_bytes;

// IDX header: 0x00 0x00 <type> <ndims>, then big-endian uint32 dims.
std::string idx_header(unsigned char type, const std::vector<uint32_t>& dims) {
  std::string s{'\0', '\0', static_cast<char>(type), static_cast<char>(dims.size())};
  for (uint32_t d : dims)
    for (int shift = 24; shift >= 0; shift -= 8) s += static_cast<char>((d >> shift) & 0xff);
  return s;
}

// Big-endian bytes of a value.
template <class T>
std::string be(T v) {
  char b[sizeof(T)];
  std::memcpy(b, &v, sizeof(T));
  return std::string(std::rbegin(b), std::rend(b));
}

TEST(Idx, ReadsPlainAndGzipFilesOfEveryType) {
  TempDir tmp;
  std::string ubyte = idx_header(0x08, {2, 3});
  for (int i = 0; i < 6; ++i) ubyte += static_cast<char>(i * 50);
  const auto expect_u8 = torch::tensor({0, 50, 100, 150, 200, 250}, torch::kByte).view({2, 3});
  write_file(tmp.file("u8.idx"), ubyte);
  write_gz(tmp.file("u8.idx.gz"), ubyte);
  for (const auto* name : {"u8.idx", "u8.idx.gz"}) {
    auto t = read_idx(tmp.file(name));
    EXPECT_EQ(t.scalar_type(), torch::kByte) << name;
    EXPECT_TRUE(torch::equal(t, expect_u8)) << name;
  }

  const std::string f32 = idx_header(0x0D, {3}) + be(1.5f) + be(-2.0f) + be(3.25f);
  write_file(tmp.file("f32.idx"), f32);
  write_gz(tmp.file("f32.idx.gz"), f32);
  for (const auto* name : {"f32.idx", "f32.idx.gz"}) {
    auto t = read_idx(tmp.file(name));
    EXPECT_EQ(t.scalar_type(), torch::kFloat) << name;
    EXPECT_TRUE(torch::equal(t, torch::tensor({1.5f, -2.0f, 3.25f}))) << name;
  }

  write_file(tmp.file("i8.idx"), idx_header(0x09, {2}) + std::string("\xff\x07", 2));
  EXPECT_TRUE(torch::equal(read_idx(tmp.file("i8.idx")), torch::tensor({-1, 7}, torch::kChar)));
  write_file(tmp.file("i16.idx"), idx_header(0x0B, {2}) + be<int16_t>(-2) + be<int16_t>(300));
  EXPECT_TRUE(torch::equal(read_idx(tmp.file("i16.idx")), torch::tensor({-2, 300}, torch::kShort)));
  write_file(tmp.file("i32.idx"), idx_header(0x0C, {1, 2}) + be<int32_t>(-70000) + be<int32_t>(123456789));
  EXPECT_TRUE(torch::equal(read_idx(tmp.file("i32.idx")), torch::tensor({-70000, 123456789}, torch::kInt).view({1, 2})));
  write_file(tmp.file("f64.idx"), idx_header(0x0E, {2}) + be(0.1) + be(-1e300));
  EXPECT_TRUE(torch::equal(read_idx(tmp.file("f64.idx")), torch::tensor({0.1, -1e300}, torch::kDouble)));
}

TEST(Idx, MalformedFilesGiveClearErrors) {
  TempDir tmp;
  const std::string ok = idx_header(0x08, {2, 3}) + std::string(6, '\x01');

  write_file(tmp.file("trunc.idx"), ok.substr(0, ok.size() - 1));
  expect_error([&] { read_idx(tmp.file("trunc.idx")); },
               {"trunc.idx", "truncated", "expected 6 bytes of data, found 5"});
  write_file(tmp.file("trunc_dims.idx"), ok.substr(0, 6));
  expect_error([&] { read_idx(tmp.file("trunc_dims.idx")); }, {"truncated", "dimensions"});
  write_file(tmp.file("magic.idx"), "\x01\x02" + ok.substr(2));
  expect_error([&] { read_idx(tmp.file("magic.idx")); }, {"magic.idx", "bad magic"});
  write_file(tmp.file("type.idx"), idx_header(0x07, {1}) + "x");
  expect_error([&] { read_idx(tmp.file("type.idx")); }, {"unknown IDX data type"});
  write_file(tmp.file("nd0.idx"), idx_header(0x08, {}));
  expect_error([&] { read_idx(tmp.file("nd0.idx")); }, {"dimensions 0"});
  write_file(tmp.file("trail.idx"), ok + "xyz");
  expect_error([&] { read_idx(tmp.file("trail.idx")); }, {"trailing bytes", "3 bytes"});
  expect_error([&] { read_idx(tmp.file("missing.idx")); }, {"missing.idx", "no such file"});

  // gzip damage: a cut-off stream, and garbage in the middle of the compressed data.
  std::string big = idx_header(0x08, {4000});
  for (int i = 0; i < 4000; ++i) big += static_cast<char>((i * 7919) % 251);
  write_gz(tmp.file("big.idx.gz"), big);
  const std::string gz = file_bytes(tmp.file("big.idx.gz"));
  ASSERT_GT(gz.size(), 200u);
  write_file(tmp.file("cut.idx.gz"), gz.substr(0, gz.size() / 2));
  expect_error([&] { read_idx(tmp.file("cut.idx.gz")); }, {"cut.idx.gz", "gzip"});
  std::string bad = gz;
  for (size_t i = 40; i < 80; ++i) bad[i] = '\xff';
  write_file(tmp.file("bad.idx.gz"), bad);
  expect_error([&] { read_idx(tmp.file("bad.idx.gz")); }, {"bad.idx.gz", "gzip"});
  // The undamaged one reads.
  EXPECT_EQ(read_idx(tmp.file("big.idx.gz")).numel(), 4000);

  // Dimensions whose product wraps around 2^64 (8 x 0xffffffff), or that claim more than the
  // file could hold: refused from the header, before any allocation of that size.
  write_file(tmp.file("wrap.idx"), idx_header(0x0E, std::vector<uint32_t>(8, 0xffffffffu)) + "x");
  expect_error([&] { read_idx(tmp.file("wrap.idx")); }, {"wrap.idx", "implausibly large", "float64"});
  write_file(tmp.file("claims.idx"), idx_header(0x08, {0x7fffffffu, 4}) + std::string(16, '\x01'));
  expect_error([&] { read_idx(tmp.file("claims.idx")); }, {"claims.idx", "truncated", "found 16"});
}

// A tiny Fashion-MNIST-shaped directory.
void write_fake_fashion(const TempDir& tmp, const std::string& prefix, int n, int max_label, bool gz) {
  std::string images = idx_header(0x08, {static_cast<uint32_t>(n), 28, 28});
  for (int i = 0; i < n * 784; ++i) images += static_cast<char>(i % 784 == 0 ? 255 : 0);
  std::string labels = idx_header(0x08, {static_cast<uint32_t>(n)});
  for (int i = 0; i < n; ++i) labels += static_cast<char>(i % (max_label + 1));
  if (gz) {
    write_gz(tmp.file(prefix + "-images-idx3-ubyte.gz"), images);
    write_gz(tmp.file(prefix + "-labels-idx1-ubyte.gz"), labels);
  } else {
    write_file(tmp.file(prefix + "-images-idx3-ubyte"), images);
    write_file(tmp.file(prefix + "-labels-idx1-ubyte"), labels);
  }
}

TEST(FashionMnist, LoadsNormalisesAndLimitsASmallDirectory) {
  TempDir tmp;
  write_fake_fashion(tmp, "train", 5, 9, /*gz=*/true);
  write_fake_fashion(tmp, "t10k", 3, 9, /*gz=*/false);
  auto train = load_fashion_mnist(tmp.path(), "train");
  EXPECT_EQ(train.size(), 5);
  EXPECT_EQ(train.x.sizes(), (std::vector<int64_t>{5, 1, 28, 28}));
  EXPECT_EQ(train.x.scalar_type(), torch::kFloat);
  EXPECT_EQ(train.y.scalar_type(), torch::kLong);
  EXPECT_EQ(train.num_classes, 10);
  EXPECT_NEAR(train.x[0][0][0][0].item<float>(), (1.0 - 0.2860) / 0.3530, 1e-5);
  EXPECT_NEAR(train.x[0][0][0][1].item<float>(), -0.2860 / 0.3530, 1e-5);
  EXPECT_TRUE(torch::equal(train.y, torch::arange(5, torch::kLong)));
  auto test = load_fashion_mnist(tmp.path(), "test", 2);
  EXPECT_EQ(test.size(), 2);
  EXPECT_TRUE(torch::equal(test.y, torch::tensor({0, 1}, torch::kLong)));
  EXPECT_THROW(load_fashion_mnist(tmp.path(), "validation"), std::invalid_argument);
}

TEST(FashionMnist, RejectsMismatchedCountsBadLabelsAndMissingFiles) {
  TempDir tmp;
  expect_error([&] { load_fashion_mnist(tmp.path(), "train"); }, {"not found", "train-images-idx3-ubyte"});
  write_fake_fashion(tmp, "train", 4, 9, false);
  write_file(tmp.file("train-labels-idx1-ubyte"), idx_header(0x08, {3}) + std::string(3, '\0'));
  expect_error([&] { load_fashion_mnist(tmp.path(), "train"); }, {"4 images but 3 labels"});
  write_file(tmp.file("train-labels-idx1-ubyte"), idx_header(0x08, {4}) + std::string("\0\1\x0c\2", 4));
  expect_error([&] { load_fashion_mnist(tmp.path(), "train"); }, {"label 12", "[0, 10)"});
}

TEST(FashionMnist, RealTestSplitHasTenBalancedClasses) {
  const auto dir = default_fashion_mnist_dir();
  if (!fs::exists(dir)) GTEST_SKIP() << "Fashion-MNIST not installed at " << dir;
  auto test = load_fashion_mnist(dir, "test");
  EXPECT_EQ(test.x.sizes(), (std::vector<int64_t>{10000, 1, 28, 28}));
  EXPECT_EQ(test.num_classes, 10);
  EXPECT_EQ(test.y.min().item<int64_t>(), 0);
  EXPECT_EQ(test.y.max().item<int64_t>(), 9);
  EXPECT_TRUE(torch::equal(torch::bincount(test.y), torch::full({10}, 1000, torch::kLong)));
  // Normalised: the pixel mean is near zero, the extremes match 0 and 255.
  EXPECT_NEAR(test.x.mean().item<double>(), 0.0, 0.05);
  EXPECT_NEAR(test.x.min().item<double>(), -0.2860 / 0.3530, 1e-5);
  EXPECT_NEAR(test.x.max().item<double>(), (1 - 0.2860) / 0.3530, 1e-5);
}

TEST(Csv, DatasetSubsetAndTo) {
  TempDir tmp;
  write_file(tmp.file("a.csv"), "a,b,y\n0,1,0\n2,3,1\n4,5,2\n6,7,0\n8,9,1\n");
  CsvOptions opt;
  opt.label_column = "y";
  opt.standardize = false;
  const TensorDataset d = read_csv(tmp.file("a.csv"), opt).data;
  auto s = d.subset(torch::tensor({4, 0}, torch::kLong));
  EXPECT_EQ(s.size(), 2);
  EXPECT_TRUE(torch::equal(s.x, torch::tensor({8.f, 9.f, 0.f, 1.f}).view({2, 2})));
  EXPECT_TRUE(torch::equal(s.y, torch::tensor({1, 0}, torch::kLong)));
  EXPECT_EQ(s.num_classes, 3);
  EXPECT_EQ(d.subset(torch::tensor({1}, torch::kInt)).size(), 1);
  EXPECT_THROW(d.subset(torch::tensor({0.5f})), std::invalid_argument);
  EXPECT_EQ(d.to(torch::kCPU).size(), 5);
  EXPECT_EQ(TensorDataset{}.size(), 0);
}

TEST(Csv, DatasetConcatKeepsOrderAndChecksParts) {
  TensorDataset a{torch::tensor({1.f, 2.f, 3.f, 4.f}).view({2, 2}), torch::tensor({0, 1}, torch::kLong), 3, {}};
  TensorDataset b{torch::tensor({5.f, 6.f}).view({1, 2}), torch::tensor({2}, torch::kLong), 3, {}};
  auto c = concat({a, TensorDataset{}, b});
  EXPECT_EQ(c.size(), 3);
  EXPECT_TRUE(torch::equal(c.x, torch::tensor({1.f, 2.f, 3.f, 4.f, 5.f, 6.f}).view({3, 2})));
  EXPECT_TRUE(torch::equal(c.y, torch::tensor({0, 1, 2}, torch::kLong)));
  EXPECT_EQ(c.num_classes, 3);
  EXPECT_EQ(concat({}).size(), 0);
  TensorDataset wide{torch::zeros({1, 3}), torch::tensor({0}, torch::kLong), 3, {}};
  expect_error_of<std::invalid_argument>([&] { concat({a, wide}); }, "part 1 has examples of shape [3]");
  TensorDataset classes{torch::zeros({1, 2}), torch::tensor({0}, torch::kLong), 10, {}};
  expect_error_of<std::invalid_argument>([&] { concat({a, classes}); }, "part 1 has 10 classes");
  TensorDataset doubles{torch::zeros({1, 2}, torch::kDouble), torch::tensor({0}, torch::kLong), 3, {}};
  expect_error_of<std::invalid_argument>([&] { concat({a, doubles}); }, "dtype");
}

// ---- CSV ----

TEST(Csv, NumericLabelsWithoutStandardisation) {
  TempDir tmp;
  // CRLF line ends and trailing empty lines are accepted.
  write_file(tmp.file("a.csv"), "f1,label,f2\r\n1,0,10\r\n2,2,20\r\n3,1,30\r\n4,2,40\r\n\r\n\n");
  CsvOptions opt;
  opt.label_column = "label";
  opt.standardize = false;
  auto d = read_csv(tmp.file("a.csv"), opt);
  EXPECT_EQ(d.feature_names, (std::vector<std::string>{"f1", "f2"}));
  EXPECT_TRUE(d.class_names.empty());
  EXPECT_EQ(d.data.num_classes, 3);
  EXPECT_TRUE(torch::equal(d.data.x, torch::tensor({1.f, 10.f, 2.f, 20.f, 3.f, 30.f, 4.f, 40.f}).view({4, 2})));
  EXPECT_TRUE(torch::equal(d.data.y, torch::tensor({0, 2, 1, 2}, torch::kLong)));
  EXPECT_FALSE(d.mean.defined());
}

TEST(Csv, StandardisesWithPopulationStatistics) {
  TempDir tmp;
  write_file(tmp.file("a.csv"), "f1,const,f2,y\n1,7,10,0\n2,7,20,1\n3,7,30,0\n4,7,40,1");  // no final newline
  CsvOptions opt;
  opt.label_column = "y";
  auto d = read_csv(tmp.file("a.csv"), opt);
  // f1: mean 2.5, std sqrt(1.25); const: std 0 -> 1; f2: mean 25, std sqrt(125).
  EXPECT_TRUE(torch::allclose(d.mean, torch::tensor({2.5f, 7.f, 25.f})));
  EXPECT_TRUE(torch::allclose(d.std, torch::tensor({1.1180340f, 1.f, 11.180340f})));
  const float z1 = 1.5f / 1.1180340f, z2 = 0.5f / 1.1180340f;  // 1.341641, 0.447214
  auto expected = torch::tensor({-z1, 0.f, -z1, -z2, 0.f, -z2, z2, 0.f, z2, z1, 0.f, z1}).view({4, 3});
  EXPECT_TRUE(torch::allclose(d.data.x, expected, 1e-5, 1e-6)) << d.data.x;
  EXPECT_NEAR(d.data.x[0][0].item<float>(), -1.3416408f, 1e-5);
  EXPECT_EQ(d.data.num_classes, 2);
}

TEST(Csv, StringLabelsQuotedFieldsAndFitFrom) {
  TempDir tmp;
  write_file(tmp.file("train.csv"),
             "name;h;\"w; kg\";species\n"
             "x;1;2;dog\n"
             "y;3;4;\"cat\"\n"
             "z;5;6;\"ant \"\"a\"\"\"\n");
  // `name` would not parse as a number: pick a file without it.
  write_file(tmp.file("train2.csv"),
             "h;\"w; kg\";species\n"
             "1;2;dog\n"
             "3;4;\"cat\"\n"
             "5;6;\"ant \"\"a\"\"\"\n");
  CsvOptions opt;
  opt.label_column = "species";
  opt.delimiter = ';';
  expect_error([&] { read_csv(tmp.file("train.csv"), opt); }, {"line 2", "column 'name'", "'x'", "not a finite number"});
  auto train = read_csv(tmp.file("train2.csv"), opt);
  EXPECT_EQ(train.feature_names, (std::vector<std::string>{"h", "w; kg"}));
  EXPECT_EQ(train.class_names, (std::vector<std::string>{"ant \"a\"", "cat", "dog"}));
  EXPECT_EQ(train.data.num_classes, 3);
  EXPECT_TRUE(torch::equal(train.data.y, torch::tensor({2, 1, 0}, torch::kLong)));
  // h: mean 3, std sqrt(8/3); w: mean 4, std sqrt(8/3).
  const float s = std::sqrt(8.f / 3.f);
  EXPECT_TRUE(torch::allclose(train.mean, torch::tensor({3.f, 4.f})));
  EXPECT_TRUE(torch::allclose(train.std, torch::tensor({s, s})));

  // The test split is scaled and encoded with the training statistics.
  write_file(tmp.file("test.csv"), "h;\"w; kg\";species\n7;4;cat\n3;10;dog\n");
  auto test = read_csv(tmp.file("test.csv"), opt, &train);
  EXPECT_EQ(test.class_names, train.class_names);
  EXPECT_EQ(test.data.num_classes, 3);
  EXPECT_TRUE(torch::equal(test.data.y, torch::tensor({1, 2}, torch::kLong)));
  EXPECT_TRUE(torch::allclose(test.data.x, torch::tensor({4.f / s, 0.f, 0.f, 6.f / s}).view({2, 2})));
  EXPECT_TRUE(torch::equal(test.mean, train.mean));

  write_file(tmp.file("test_bad.csv"), "h;\"w; kg\";species\n7;4;cow\n");
  expect_error([&] { read_csv(tmp.file("test_bad.csv"), opt, &train); }, {"line 2", "'cow'", "classes"});
  write_file(tmp.file("test_cols.csv"), "w;h;species\n7;4;cat\n");
  expect_error([&] { read_csv(tmp.file("test_cols.csv"), opt, &train); }, {"differ"});
}

TEST(Csv, IntegerFitFromChecksRange) {
  TempDir tmp;
  write_file(tmp.file("train.csv"), "a,y\n1,0\n3,2\n");
  write_file(tmp.file("test.csv"), "a,y\n5,1\n");
  write_file(tmp.file("test_big.csv"), "a,y\n5,3\n");
  CsvOptions opt;
  opt.label_column = "y";
  auto train = read_csv(tmp.file("train.csv"), opt);
  EXPECT_EQ(train.data.num_classes, 3);
  auto test = read_csv(tmp.file("test.csv"), opt, &train);
  EXPECT_EQ(test.data.num_classes, 3);
  EXPECT_NEAR(test.data.x[0][0].item<float>(), 3.0f, 1e-6);  // (5 - 2) / 1
  expect_error([&] { read_csv(tmp.file("test_big.csv"), opt, &train); }, {"line 2", "'3'", "3 classes"});
}

TEST(Csv, ErrorsNameTheProblem) {
  TempDir tmp;
  CsvOptions opt;
  opt.label_column = "label";
  write_file(tmp.file("nolabel.csv"), "f1,f2,target\n1,2,0\n");
  expect_error([&] { read_csv(tmp.file("nolabel.csv"), opt); },
               {"nolabel.csv", "label column 'label' not found", "'f1', 'f2', 'target'"});
  write_file(tmp.file("nan.csv"), "f1,f2,label\n1,2,0\n3,abc,1\n");
  expect_error([&] { read_csv(tmp.file("nan.csv"), opt); }, {"nan.csv", "line 3", "column 'f2'", "'abc'"});
  write_file(tmp.file("empty_field.csv"), "f1,f2,label\n1,,0\n");
  expect_error([&] { read_csv(tmp.file("empty_field.csv"), opt); }, {"line 2", "column 'f2'", "''"});
  write_file(tmp.file("ragged.csv"), "f1,f2,label\n1,2,0\n3,1\n4,5,1\n");
  expect_error([&] { read_csv(tmp.file("ragged.csv"), opt); }, {"line 3", "2 fields, expected 3", "ragged"});
  write_file(tmp.file("neg.csv"), "f1,label\n1,-1\n2,0\n");
  expect_error([&] { read_csv(tmp.file("neg.csv"), opt); }, {"line 2", "negative"});
  // INT64_MAX as a class id would make the class count overflow (and a model that large).
  write_file(tmp.file("huge_label.csv"), "f1,label\n1,9223372036854775807\n2,0\n");
  expect_error([&] { read_csv(tmp.file("huge_label.csv"), opt); }, {"line 2", "too large", "<= 1048575"});
  write_file(tmp.file("blank_mid.csv"), "f1,label\n1,0\n\n2,1\n");
  expect_error([&] { read_csv(tmp.file("blank_mid.csv"), opt); }, {"line 3", "empty"});
  write_file(tmp.file("quote.csv"), "f1,label\n1,\"abc\n");
  expect_error([&] { read_csv(tmp.file("quote.csv"), opt); }, {"unterminated", "line 2"});
  write_file(tmp.file("header_only.csv"), "f1,label\n");
  expect_error([&] { read_csv(tmp.file("header_only.csv"), opt); }, {"no data rows"});
  expect_error([&] { read_csv(tmp.file("absent.csv"), opt); }, {"absent.csv", "no such file"});
}

}  // namespace
}  // namespace fl
