// DICOM images + a labels CSV as a data set (common/data/dicom.h): the test writes its own
// DICOM files with dcmtk (8 and 16 bits, signed, rescaled, MONOCHROME1), reads them back value
// for value, checks every bad input's message, and trains fedsim on a few of them.
#include <dcmtk/config/osconfig.h>
#include <dcmtk/dcmdata/dcdatset.h>
#include <dcmtk/dcmdata/dcdeftag.h>
#include <dcmtk/dcmdata/dcfilefo.h>
#include <dcmtk/dcmdata/dcuid.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "common/data/client_data.h"
#include "common/data/dicom.h"
#include "expect_error.h"
#include "process_util.h"
#include "temp_dir.h"

namespace {

using fl::testing_util::expect_error;
using fl::testing_util::expect_error_of;
using fl::testing_util::TempDir;

// One image to write: stored values (masked to BitsAllocated bits, so -1 is 0xffff at 16 bits).
struct Img {
  int rows = 2, cols = 3;
  int bits = 8;     // BitsAllocated
  int stored = 0;   // BitsStored (0: bits)
  bool is_signed = false;
  std::vector<int64_t> pixels;  // rows * cols values
  std::string slope, intercept;  // empty: no such element
  std::string photometric = "MONOCHROME2";
  int samples = 1;
  std::string frames;  // NumberOfFrames, empty: none
  bool pixel_data = true;
};

void write_dicom(const std::string& path, const Img& img) {
  std::filesystem::create_directories(std::filesystem::path(path).parent_path());
  DcmFileFormat file;
  DcmDataset* ds = file.getDataset();
  ASSERT_TRUE(ds->putAndInsertString(DCM_SOPClassUID, UID_SecondaryCaptureImageStorage).good());
  ASSERT_TRUE(ds->putAndInsertString(DCM_SOPInstanceUID, "1.2.826.0.1.3680043.9.7433.1.1").good());
  ds->putAndInsertUint16(DCM_Rows, static_cast<Uint16>(img.rows));
  ds->putAndInsertUint16(DCM_Columns, static_cast<Uint16>(img.cols));
  ds->putAndInsertUint16(DCM_BitsAllocated, static_cast<Uint16>(img.bits));
  ds->putAndInsertUint16(DCM_BitsStored, static_cast<Uint16>(img.stored ? img.stored : img.bits));
  ds->putAndInsertUint16(DCM_HighBit, static_cast<Uint16>((img.stored ? img.stored : img.bits) - 1));
  ds->putAndInsertUint16(DCM_PixelRepresentation, img.is_signed ? 1 : 0);
  ds->putAndInsertUint16(DCM_SamplesPerPixel, static_cast<Uint16>(img.samples));
  ds->putAndInsertString(DCM_PhotometricInterpretation, img.photometric.c_str());
  if (!img.slope.empty()) ds->putAndInsertString(DCM_RescaleSlope, img.slope.c_str());
  if (!img.intercept.empty()) ds->putAndInsertString(DCM_RescaleIntercept, img.intercept.c_str());
  if (!img.frames.empty()) ds->putAndInsertString(DCM_NumberOfFrames, img.frames.c_str());
  if (img.pixel_data) {
    if (img.bits == 8) {
      std::vector<Uint8> px;
      for (int64_t v : img.pixels) px.push_back(static_cast<Uint8>(v & 0xff));
      ASSERT_TRUE(ds->putAndInsertUint8Array(DCM_PixelData, px.data(), px.size()).good());
    } else {
      std::vector<Uint16> px;
      for (int64_t v : img.pixels) px.push_back(static_cast<Uint16>(v & 0xffff));
      ASSERT_TRUE(ds->putAndInsertUint16Array(DCM_PixelData, px.data(), px.size()).good());
    }
  }
  const OFCondition saved = file.saveFile(path.c_str(), EXS_LittleEndianExplicit);
  ASSERT_TRUE(saved.good()) << path << ": " << saved.text();
}

void write_text(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
}

std::vector<float> values(const at::Tensor& t) {
  auto c = t.contiguous().to(at::kFloat);
  return std::vector<float>(c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
}

// The four images of the main test and their modality values, row by row.
struct Fixture {
  TempDir tmp;
  std::vector<std::vector<double>> expected;
  Fixture() {
    // a: 8-bit unsigned, no rescale.
    Img a;
    a.pixels = {0, 1, 2, 3, 254, 255};
    write_dicom(tmp.file("a.dcm"), a);
    expected.push_back({0, 1, 2, 3, 254, 255});
    // b: 16-bit signed with 12 bits stored (junk above them is ignored), v = 2 s - 1024.
    Img b;
    b.bits = 16;
    b.stored = 12;
    b.is_signed = true;
    b.slope = "2";
    b.intercept = "-1024";
    b.pixels = {0x0800 /* -2048 */, 0x0fff /* -1 */, 0, 0x3001 /* junk + 1 */, 2047, 100};
    write_dicom(tmp.file("b.dcm"), b);
    expected.push_back({-5120, -1026, -1024, -1022, 3070, -824});
    // c: MONOCHROME1, 8-bit, v = 0.5 s + 10 in [10, 137.5], mirrored: 147.5 - v.
    Img c;
    c.photometric = "MONOCHROME1";
    c.slope = "0.5";
    c.intercept = "10";
    c.pixels = {0, 10, 20, 100, 200, 255};
    write_dicom(tmp.file("c.dcm"), c);
    expected.push_back({137.5, 132.5, 127.5, 87.5, 37.5, 10});
    // d: 16-bit unsigned, all 16 bits, in a subfolder.
    Img d;
    d.bits = 16;
    d.pixels = {0, 65535, 1000, 4095, 32768, 7};
    write_dicom(tmp.file("sub/d.dcm"), d);
    expected.push_back({0, 65535, 1000, 4095, 32768, 7});
    write_text(tmp.file("labels.csv"), "file,label\na.dcm,0\nb.dcm,2\nc.dcm,1\nsub/d.dcm,0\n");
  }
  fl::DicomOptions options(bool standardize = true) const {
    fl::DicomOptions o;
    o.dir = tmp.path();
    o.labels_csv = tmp.file("labels.csv");
    o.standardize = standardize;
    return o;
  }
};

TEST(Dicom, ReadsEightAndSixteenBitSignedRescaledAndMonochrome1Exactly) {
  Fixture f;
  const fl::DicomData raw = fl::read_dicom(f.options(/*standardize=*/false));
  ASSERT_EQ(raw.data.x.sizes(), (std::vector<int64_t>{4, 1, 2, 3}));
  EXPECT_EQ(raw.data.x.scalar_type(), at::kFloat);
  EXPECT_EQ(raw.data.y.scalar_type(), at::kLong);
  EXPECT_EQ(values(raw.data.y.to(at::kFloat)), (std::vector<float>{0, 2, 1, 0}));
  EXPECT_EQ(raw.data.num_classes, 3);
  EXPECT_TRUE(raw.class_names.empty());
  EXPECT_EQ(raw.files, (std::vector<std::string>{"a.dcm", "b.dcm", "c.dcm", "sub/d.dcm"}));
  for (size_t i = 0; i < 4; ++i) {
    std::vector<float> want(f.expected[i].begin(), f.expected[i].end());
    EXPECT_EQ(values(raw.data.x[i]), want) << "image " << i;
  }
  EXPECT_EQ(raw.mean, 0);
  EXPECT_EQ(raw.std, 1);
  EXPECT_EQ(raw.data.domain.lo, -2048 * 2 - 1024);  // b's representable range...
  EXPECT_EQ(raw.data.domain.hi, 65535);             // ...and d's

  // Standardised: one mean and population std over every pixel.
  const fl::DicomData std_data = fl::read_dicom(f.options());
  double sum = 0, ss = 0, n = 0;
  for (const auto& img : f.expected)
    for (double v : img) sum += v, n += 1;
  const double mean = sum / n;
  for (const auto& img : f.expected)
    for (double v : img) ss += (v - mean) * (v - mean);
  const double sd = std::sqrt(ss / n);
  EXPECT_NEAR(std_data.mean, mean, 1e-9 * std::abs(mean));
  EXPECT_NEAR(std_data.std, sd, 1e-9 * sd);
  for (size_t i = 0; i < 4; ++i) {
    const auto got = values(std_data.data.x[i]);
    for (size_t j = 0; j < got.size(); ++j)
      EXPECT_NEAR(got[j], (f.expected[i][j] - mean) / sd, 1e-6) << "image " << i << " pixel " << j;
  }
  EXPECT_DOUBLE_EQ(std_data.data.domain.unit, 1 / sd);
  EXPECT_DOUBLE_EQ(std_data.data.domain.lo, (-5120 - mean) / sd);
  EXPECT_DOUBLE_EQ(std_data.data.domain.hi, (65535 - mean) / sd);
  EXPECT_TRUE(fl::read_dicom_folder(f.options()).x.equal(std_data.data.x));
}

TEST(Dicom, NamedClassesSortedAndTheTestSplitUsesTheTrainingEncoding) {
  TempDir tmp;
  Img img;
  for (int i = 0; i < 3; ++i) {
    img.pixels = {i, i, i, 10 + i, 10 + i, 10 + i};
    write_dicom(tmp.file("train/" + std::to_string(i) + ".dcm"), img);
    write_dicom(tmp.file("test/" + std::to_string(i) + ".dcm"), img);
  }
  // Other column names and order, quoted fields, CRLF: parsed like read_csv.
  write_text(tmp.file("train.csv"), "diagnosis,path\r\npneumonia,0.dcm\r\n\"normal\",1.dcm\r\ncovid,\"2.dcm\"\r\n");
  write_text(tmp.file("test.csv"), "diagnosis,path\nnormal,2.dcm\ncovid,0.dcm\n");
  fl::DicomOptions o;
  o.dir = tmp.file("train");
  o.labels_csv = tmp.file("train.csv");
  o.file_column = "path";
  o.label_column = "diagnosis";
  const auto train = fl::read_dicom(o);
  EXPECT_EQ(train.class_names, (std::vector<std::string>{"covid", "normal", "pneumonia"}));
  EXPECT_EQ(train.data.num_classes, 3);
  EXPECT_EQ(values(train.data.y.to(at::kFloat)), (std::vector<float>{2, 1, 0}));

  o.dir = tmp.file("test");
  o.labels_csv = tmp.file("test.csv");
  const auto test = fl::read_dicom(o, &train);
  EXPECT_EQ(test.class_names, train.class_names);
  EXPECT_EQ(test.data.num_classes, 3);
  EXPECT_EQ(values(test.data.y.to(at::kFloat)), (std::vector<float>{1, 0}));
  EXPECT_EQ(test.mean, train.mean);
  EXPECT_EQ(test.std, train.std);
  // Test image 0 is training image 0: the same features.
  EXPECT_TRUE(test.data.x[1].equal(train.data.x[0]));

  write_text(tmp.file("test.csv"), "diagnosis,path\nflu,2.dcm\n");
  expect_error([&] { fl::read_dicom(o, &train); }, {"test.csv", "line 2", "'flu'", "not one of the fitted data's classes"});
  // A test image of another size than the training images'.
  img.rows = 4;
  img.pixels.assign(12, 1);
  write_dicom(tmp.file("test/big.dcm"), img);
  write_text(tmp.file("test.csv"), "diagnosis,path\nnormal,big.dcm\n");
  expect_error([&] { fl::read_dicom(o, &train); }, {"big.dcm", "is 4 x 3 pixels", "the training images' size is 2 x 3"});
}

TEST(Dicom, HeightAndWidthResizeEveryImage) {
  TempDir tmp;
  Img small;
  small.rows = 2;
  small.cols = 2;
  small.pixels = {7, 7, 7, 7};
  write_dicom(tmp.file("small.dcm"), small);
  Img large;
  large.rows = 4;
  large.cols = 4;
  for (int i = 0; i < 16; ++i) large.pixels.push_back(i * 10);
  write_dicom(tmp.file("large.dcm"), large);
  write_text(tmp.file("labels.csv"), "file,label\nsmall.dcm,0\nlarge.dcm,1\n");
  fl::DicomOptions o;
  o.dir = tmp.path();
  o.labels_csv = tmp.file("labels.csv");
  o.standardize = false;
  o.height = 4;
  o.width = 4;
  const auto d = fl::read_dicom(o);
  ASSERT_EQ(d.data.x.sizes(), (std::vector<int64_t>{2, 1, 4, 4}));
  EXPECT_EQ(values(d.data.x[0]), std::vector<float>(16, 7.0f));  // a constant image stays constant
  std::vector<float> want;
  for (int i = 0; i < 16; ++i) want.push_back(i * 10.0f);
  EXPECT_EQ(values(d.data.x[1]), want);  // already 4 x 4: untouched
  // Without a size the first image's is the rule.
  o.height = o.width = 0;
  expect_error([&] { fl::read_dicom(o); }, {"large.dcm", "line 3", "is 4 x 4 pixels", "the first image's size (small.dcm) is 2 x 2",
                                            "give a height and width"});
  o.height = 4;
  expect_error_of<std::invalid_argument>([&] { fl::read_dicom(o); }, "height and width must both be 0");
}

// One bad input per test: a folder with two good images and a labels CSV to break.
class DicomBadInput : public ::testing::Test {
 protected:
  void SetUp() override {
    Img img;
    img.pixels = {1, 2, 3, 4, 5, 6};
    write_dicom(tmp.file("a.dcm"), img);
    write_dicom(tmp.file("b.dcm"), img);
  }
  // Reads the folder with `csv` as its labels (the header added).
  void labels(const std::string& rows, const std::string& header = "file,label") {
    write_text(tmp.file("labels.csv"), header + "\n" + rows);
  }
  fl::DicomData read() {
    fl::DicomOptions o;
    o.dir = tmp.path();
    o.labels_csv = tmp.file("labels.csv");
    return fl::read_dicom(o);
  }
  void write(const std::string& name, const Img& img) { write_dicom(tmp.file(name), img); }
  TempDir tmp;
};

TEST_F(DicomBadInput, MissingLabelsCsv) { expect_error([&] { read(); }, {"labels.csv", "no such file"}); }

TEST_F(DicomBadInput, MissingFolder) {
  fl::DicomOptions o;
  o.dir = tmp.file("nowhere");
  o.labels_csv = tmp.file("labels.csv");
  expect_error([&] { fl::read_dicom(o); }, {"DICOM folder", "nowhere", "does not exist"});
}

TEST_F(DicomBadInput, MissingFileColumn) {
  labels("a.dcm,0\n", "name,label");
  expect_error([&] { read(); }, {"labels.csv", "file column 'file' not found", "available columns: 'name', 'label'"});
}

TEST_F(DicomBadInput, MissingLabelColumn) {
  labels("a.dcm,0\n", "file,class");
  expect_error([&] { read(); }, {"labels.csv", "label column 'label' not found", "'file', 'class'"});
}

TEST_F(DicomBadInput, EmptyList) {
  labels("");
  expect_error([&] { read(); }, {"labels.csv", "no data rows after the header"});
}

TEST_F(DicomBadInput, DuplicateFileEntry) {
  labels("a.dcm,0\nb.dcm,1\n./a.dcm,1\n");
  expect_error([&] { read(); }, {"labels.csv", "line 4", "file './a.dcm' is listed twice (first on line 2)"});
}

TEST_F(DicomBadInput, EmptyFileNameOrLabel) {
  labels("a.dcm,0\n,1\n");
  expect_error([&] { read(); }, {"labels.csv", "line 3", "empty file name"});
  labels("a.dcm,\n");
  expect_error([&] { read(); }, {"labels.csv", "line 2", "empty label", "a.dcm"});
}

TEST_F(DicomBadInput, NegativeLabel) {
  labels("a.dcm,0\nb.dcm,-1\n");
  expect_error([&] { read(); }, {"labels.csv", "line 3", "negative"});
}

TEST_F(DicomBadInput, ListedFileMissing) {
  labels("a.dcm,0\nmissing.dcm,1\n");
  expect_error([&] { read(); }, {"missing.dcm", "line 3 of", "labels.csv", "does not exist"});
}

TEST_F(DicomBadInput, FileIsNotDicom) {
  write_text(tmp.file("notes.txt"), "this is not an image, just some text that is long enough to look like a file\n");
  labels("a.dcm,0\nnotes.txt,1\n");
  expect_error([&] { read(); }, {"notes.txt", "line 3", "is not a DICOM file"});
  write_text(tmp.file("empty.dcm"), "");
  labels("empty.dcm,1\n");
  expect_error([&] { read(); }, {"empty.dcm", "is not a DICOM file"});
}

TEST_F(DicomBadInput, NoPixelData) {
  Img img;
  img.pixel_data = false;
  write("report.dcm", img);
  labels("a.dcm,0\nreport.dcm,1\n");
  expect_error([&] { read(); }, {"report.dcm", "has no pixel data"});
}

TEST_F(DicomBadInput, TooFewPixelValues) {
  Img img;
  img.rows = 4;  // 12 pixels announced, 6 stored
  img.pixels = {1, 2, 3, 4, 5, 6};
  write("short.dcm", img);
  labels("short.dcm,0\n");
  expect_error([&] { read(); }, {"short.dcm", "has 6 pixel values", "needs 12"});
}

TEST_F(DicomBadInput, UnsupportedBits) {
  // 12 bits allocated (packed): not 8 or 16.
  Img img;
  img.bits = 16;
  img.pixels = {1, 2, 3, 4, 5, 6};
  write("odd.dcm", img);
  {
    DcmFileFormat file;
    ASSERT_TRUE(file.loadFile(tmp.file("odd.dcm").c_str()).good());
    file.getDataset()->putAndInsertUint16(DCM_BitsAllocated, 12);
    ASSERT_TRUE(file.saveFile(tmp.file("odd.dcm").c_str(), EXS_LittleEndianExplicit).good());
  }
  labels("a.dcm,0\nodd.dcm,1\n");
  expect_error([&] { read(); }, {"odd.dcm", "BitsAllocated 12", "only 8 or 16"});
  // BitsStored beyond BitsAllocated.
  Img wide;
  wide.stored = 10;  // with 8 bits allocated
  wide.pixels = {1, 2, 3, 4, 5, 6};
  write("wide.dcm", wide);
  labels("wide.dcm,1\n");
  expect_error([&] { read(); }, {"wide.dcm", "BitsStored 10", "BitsAllocated 8"});
}

TEST_F(DicomBadInput, ColourImage) {
  Img rgb;
  rgb.samples = 3;
  rgb.photometric = "RGB";
  rgb.pixels.assign(18, 9);
  write("rgb.dcm", rgb);
  labels("a.dcm,0\nrgb.dcm,1\n");
  expect_error([&] { read(); }, {"rgb.dcm", "colour image", "SamplesPerPixel 3", "'RGB'", "only monochrome"});
  Img palette;
  palette.photometric = "PALETTE COLOR";
  palette.pixels = {1, 2, 3, 4, 5, 6};
  write("palette.dcm", palette);
  labels("palette.dcm,1\n");
  expect_error([&] { read(); }, {"palette.dcm", "colour image", "'PALETTE COLOR'"});
}

TEST_F(DicomBadInput, MultiFrame) {
  Img img;
  img.frames = "2";
  img.pixels = {1, 2, 3, 4, 5, 6, 1, 2, 3, 4, 5, 6};
  write("cine.dcm", img);
  labels("cine.dcm,1\n");
  expect_error([&] { read(); }, {"cine.dcm", "has 2 frames", "single-frame"});
}

TEST_F(DicomBadInput, ZeroRescaleSlope) {
  Img img;
  img.slope = "0";
  img.pixels = {1, 2, 3, 4, 5, 6};
  write("flat.dcm", img);
  labels("flat.dcm,1\n");
  expect_error([&] { read(); }, {"flat.dcm", "RescaleSlope 0", "non-zero"});
}

TEST_F(DicomBadInput, SizeMismatch) {
  Img img;
  img.cols = 2;
  img.pixels = {1, 2, 3, 4};
  write("narrow.dcm", img);
  labels("a.dcm,0\nb.dcm,1\nnarrow.dcm,0\n");
  expect_error([&] { read(); }, {"narrow.dcm", "line 4", "is 2 x 2 pixels", "the first image's size (a.dcm) is 2 x 3"});
}

// The data source: fedsim's and fedclient's --dataset dicom.
TEST(DicomDataSource, LoadsTrainAndTestListsAndNamesWhatIsMissing) {
  Fixture f;
  write_text(f.tmp.file("test.csv"), "file,label\nc.dcm,1\na.dcm,2\n");
  fl::DataSource s;
  s.dataset = "dicom";
  s.dicom_dir = f.tmp.path();
  s.dicom_labels = f.tmp.file("labels.csv");
  s.dicom_test_labels = f.tmp.file("test.csv");
  const auto tt = fl::load_data(s);
  EXPECT_EQ(tt.train.x.sizes(), (std::vector<int64_t>{4, 1, 2, 3}));
  EXPECT_EQ(tt.test.x.sizes(), (std::vector<int64_t>{2, 1, 2, 3}));
  EXPECT_EQ(tt.test.num_classes, 3);
  EXPECT_TRUE(tt.test.x[1].equal(tt.train.x[0]));  // standardised with the training statistics
  EXPECT_EQ(fl::model_spec_for("cnn", tt.train).input_shape, (std::vector<int64_t>{1, 2, 3}));

  auto without = [&](std::string fl::DataSource::*field) {
    fl::DataSource t = s;
    t.*field = "";
    return [t] { fl::load_data(t); };
  };
  for (auto field : {&fl::DataSource::dicom_dir, &fl::DataSource::dicom_labels, &fl::DataSource::dicom_test_labels})
    expect_error_of<std::invalid_argument>(without(field), {"--dataset dicom needs --dicom-dir", "--dicom-labels",
                                                            "--dicom-test-labels"});
  fl::DataSource t = s;
  t.dicom_height = 8;
  expect_error_of<std::invalid_argument>([&] { fl::load_data(t); }, "--dicom-height and --dicom-width go together");
  t = s;
  t.dicom_test_dir = f.tmp.file("elsewhere");
  expect_error([&] { fl::load_data(t); }, {"DICOM folder", "elsewhere", "does not exist"});
}

// A few DICOM images through the real fedsim: two classes (bright left half or right half).
TEST(DicomDataSource, FedsimTrainsOnDicomImages) {
  TempDir tmp;
  std::string train = "file,label\n", test = "file,label\n";
  for (int i = 0; i < 24; ++i) {
    Img img;
    img.rows = img.cols = 8;
    img.bits = 16;
    const int cls = i % 2;
    for (int r = 0; r < 8; ++r)
      for (int c = 0; c < 8; ++c) img.pixels.push_back(((c < 4) == (cls == 0) ? 3000 : 200) + (i * 37 + r * 11 + c * 5) % 300);
    const std::string name = "img" + std::to_string(i) + ".dcm";
    write_dicom(tmp.file("images/" + name), img);
    (i < 16 ? train : test) += name + "," + (cls ? "right" : "left") + "\n";
  }
  write_text(tmp.file("train.csv"), train);
  write_text(tmp.file("test.csv"), test);
  const std::string report = tmp.file("run.json");
  const auto r = fl::testing_util::run_command(
      std::string(FL_BINARY_DIR) + "/bin/fedsim --dataset dicom --dicom-dir " + tmp.file("images") +
      " --dicom-labels " + tmp.file("train.csv") + " --dicom-test-labels " + tmp.file("test.csv") +
      " --model mlp --partition iid --clients 2 --rounds 3 --local-epochs 2 --batch-size 4 --lr 0.05 --seed 1"
      " --workers 1 --threads 1 --no-progress --report " + report + " 2>&1");
  ASSERT_EQ(r.code, 0) << r.output;
  std::ifstream in(report);
  const auto j = nlohmann::json::parse(in);
  EXPECT_EQ(j["rounds"].size(), 3u);
  EXPECT_GE(j["final"]["global_accuracy"].get<double>(), 0.99) << r.output;

  const auto bad = fl::testing_util::run_command(std::string(FL_BINARY_DIR) +
                                                 "/bin/fedsim --dataset dicom --rounds 1 --no-progress 2>&1");
  EXPECT_NE(bad.code, 0);
  EXPECT_NE(bad.output.find("--dataset dicom needs --dicom-dir"), std::string::npos) << bad.output;
}

}  // namespace
