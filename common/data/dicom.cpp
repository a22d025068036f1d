#include "common/data/dicom.h"

#include <dcmtk/config/osconfig.h>  // first, as dcmtk requires
#include <dcmtk/dcmdata/dcdatset.h>
#include <dcmtk/dcmdata/dcdeftag.h>
#include <dcmtk/dcmdata/dcfilefo.h>
#include <dcmtk/dcmdata/dcxfer.h>
#include <dcmtk/oflog/oflog.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <limits>
#include <map>
#include <mutex>
#include <stdexcept>

#include "common/data/csv.h"

namespace fl {
namespace {

namespace fs = std::filesystem;

// One listed image: where it is and where the labels CSV lists it, for error messages.
struct Entry {
  std::string name;  // as the CSV spells it
  fs::path path;     // dir / name
  int64_t line = 0;
};

[[noreturn]] void fail(const Entry& e, const std::string& labels_csv, const std::string& msg) {
  throw std::runtime_error("DICOM file " + e.path.string() + " (line " + std::to_string(e.line) + " of " +
                           labels_csv + "): " + msg);
}

// The modality values of one image and the range its stored values can represent.
struct Image {
  at::Tensor v;  // float32 [rows, columns]
  double lo = 0, hi = 0;
};

// An unsigned integer attribute, `fallback` when absent.
Uint16 get_u16(DcmDataset& ds, const DcmTagKey& tag, Uint16 fallback, bool* present = nullptr) {
  Uint16 v = 0;
  const bool ok = ds.findAndGetUint16(tag, v).good();
  if (present) *present = ok;
  return ok ? v : fallback;
}

double get_f64(DcmDataset& ds, const DcmTagKey& tag, double fallback) {
  Float64 v = 0;
  return ds.findAndGetFloat64(tag, v).good() ? v : fallback;
}

Image read_image(const Entry& e, const std::string& labels_csv) {
  // dcmtk logs its parse errors to stderr itself, past our logging (and its JSON lines); our
  // errors carry dcmtk's condition text instead.
  static std::once_flag quiet;
  std::call_once(quiet, [] { OFLog::configure(OFLogger::FATAL_LOG_LEVEL); });
  auto bad = [&](const std::string& msg) { fail(e, labels_csv, msg); };
  std::error_code ec;
  if (!fs::exists(e.path, ec)) bad("does not exist");
  if (!fs::is_regular_file(e.path, ec)) bad("is not a regular file");
  DcmFileFormat file;
  const OFCondition loaded = file.loadFile(e.path.c_str());
  if (loaded.bad()) bad(std::string("is not a DICOM file (dcmtk: ") + loaded.text() + ")");
  DcmDataset& ds = *file.getDataset();

  if (!ds.tagExists(DCM_PixelData)) bad("has no pixel data (no PixelData element (7FE0,0010): not an image)");
  const DcmXfer xfer(ds.getOriginalXfer());
  if (xfer.isEncapsulated())
    bad(std::string("has compressed pixel data (transfer syntax '") + xfer.getXferName() +
        "'): only uncompressed images are supported; decompress it first (e.g. dcmdjpeg, dcmdrle)");
  const Uint16 samples = get_u16(ds, DCM_SamplesPerPixel, 1);
  OFString photometric;
  if (ds.findAndGetOFString(DCM_PhotometricInterpretation, photometric).bad()) photometric = "MONOCHROME2";
  if (samples != 1 || (photometric != "MONOCHROME1" && photometric != "MONOCHROME2"))
    bad("is a colour image (SamplesPerPixel " + std::to_string(samples) + ", PhotometricInterpretation '" +
        photometric.c_str() + "'): only monochrome images (SamplesPerPixel 1, MONOCHROME1 or MONOCHROME2) are supported");
  Sint32 frames = 1;
  if (ds.findAndGetSint32(DCM_NumberOfFrames, frames).bad()) frames = 1;
  if (frames != 1)
    bad("has " + std::to_string(frames) + " frames: only single-frame images are supported");
  const Uint16 rows = get_u16(ds, DCM_Rows, 0), cols = get_u16(ds, DCM_Columns, 0);
  if (rows == 0 || cols == 0)
    bad("has no image size (Rows " + std::to_string(rows) + ", Columns " + std::to_string(cols) + ")");
  bool has_bits = false;
  const Uint16 allocated = get_u16(ds, DCM_BitsAllocated, 0, &has_bits);
  if (!has_bits) bad("has no BitsAllocated");
  if (allocated != 8 && allocated != 16)
    bad("has BitsAllocated " + std::to_string(allocated) + ": only 8 or 16 bits per pixel are supported");
  const Uint16 stored = get_u16(ds, DCM_BitsStored, allocated);
  const Uint16 high_bit = get_u16(ds, DCM_HighBit, static_cast<Uint16>(stored - 1));
  if (stored == 0 || stored > allocated || high_bit != stored - 1)
    bad("has BitsStored " + std::to_string(stored) + " and HighBit " + std::to_string(high_bit) + " with BitsAllocated " +
        std::to_string(allocated) + ": only BitsStored <= BitsAllocated with HighBit = BitsStored - 1 is supported");
  const Uint16 representation = get_u16(ds, DCM_PixelRepresentation, 0);
  if (representation > 1)
    bad("has PixelRepresentation " + std::to_string(representation) + " (0: unsigned, 1: signed)");
  const double slope = get_f64(ds, DCM_RescaleSlope, 1.0);
  const double intercept = get_f64(ds, DCM_RescaleIntercept, 0.0);
  if (!std::isfinite(slope) || slope == 0 || !std::isfinite(intercept))
    bad("has RescaleSlope " + std::to_string(slope) + " and RescaleIntercept " + std::to_string(intercept) +
        ": the slope must be finite and non-zero, the intercept finite");

  const int64_t n = int64_t{rows} * cols;
  unsigned long count = 0;
  const Uint8* p8 = nullptr;
  const Uint16* p16 = nullptr;
  OFCondition got = allocated == 8 ? ds.findAndGetUint8Array(DCM_PixelData, p8, &count)
                                   : ds.findAndGetUint16Array(DCM_PixelData, p16, &count);
  if (got.bad() || (allocated == 8 ? p8 == nullptr : p16 == nullptr))
    bad(std::string("has no readable pixel data (dcmtk: ") + got.text() + ")");
  if (static_cast<int64_t>(count) < n)
    bad("has " + std::to_string(count) + " pixel values; Rows x Columns = " + std::to_string(rows) + " x " +
        std::to_string(cols) + " needs " + std::to_string(n));

  // Stored values: the low BitsStored bits, sign-extended when signed.
  const bool is_signed = representation == 1;
  const uint32_t mask = stored >= 32 ? 0xffffffffu : (uint32_t{1} << stored) - 1;
  const int64_t smin = is_signed ? -(int64_t{1} << (stored - 1)) : 0;
  const int64_t smax = is_signed ? (int64_t{1} << (stored - 1)) - 1 : (int64_t{1} << stored) - 1;
  Image img;
  img.lo = std::min(smin * slope, smax * slope) + intercept;
  img.hi = std::max(smin * slope, smax * slope) + intercept;
  const bool mirror = photometric == "MONOCHROME1";
  img.v = at::empty({rows, cols}, at::kFloat);
  float* out = img.v.data_ptr<float>();
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t raw = (allocated == 8 ? uint32_t{p8[i]} : uint32_t{p16[i]}) & mask;
    int64_t s = raw;
    if (is_signed && (raw >> (stored - 1)) & 1u) s -= int64_t{1} << stored;
    double v = s * slope + intercept;
    if (mirror) v = img.lo + img.hi - v;
    out[i] = static_cast<float>(v);
  }
  return img;
}

std::string size_text(int64_t h, int64_t w) { return std::to_string(h) + " x " + std::to_string(w); }

}  // namespace

DicomData read_dicom(const DicomOptions& o, const DicomData* fit_from) {
  if (o.dir.empty()) throw std::invalid_argument("read_dicom: no DICOM folder given (options.dir is empty)");
  if (o.labels_csv.empty()) throw std::invalid_argument("read_dicom: no labels CSV given (options.labels_csv is empty)");
  if (o.height < 0 || o.width < 0 || (o.height == 0) != (o.width == 0))
    throw std::invalid_argument("read_dicom: height and width must both be 0 (the first image's size) or both > 0, got " +
                                size_text(o.height, o.width));
  std::error_code ec;
  if (!fs::is_directory(o.dir, ec))
    throw std::runtime_error("DICOM folder " + o.dir + (fs::exists(o.dir, ec) ? " is not a directory" : " does not exist"));
  if (fit_from && (!fit_from->data.x.defined() || fit_from->data.x.dim() != 4))
    throw std::invalid_argument("read_dicom: fit_from holds no images");

  const CsvTable table = read_csv_table(o.labels_csv);
  const std::string& csv = o.labels_csv;
  const size_t file_col = table.column(o.file_column, "file");
  const size_t label_col = table.column(o.label_column, "label");
  const size_t n = table.rows.size();

  DicomData out;
  std::vector<Entry> entries(n);
  std::vector<std::string> labels(n);
  std::map<std::string, int64_t> first_line;  // normalised name -> the line listing it first
  for (size_t r = 0; r < n; ++r) {
    const std::string line = "line " + std::to_string(table.lines[r]);
    Entry& e = entries[r];
    e.name = table.rows[r][file_col];
    e.line = table.lines[r];
    labels[r] = table.rows[r][label_col];
    if (e.name.empty()) throw std::runtime_error(csv + ": " + line + ": empty file name in column '" + o.file_column + "'");
    if (labels[r].empty())
      throw std::runtime_error(csv + ": " + line + ": empty label in column '" + o.label_column + "' (file '" + e.name + "')");
    const auto [it, fresh] = first_line.emplace(fs::path(e.name).lexically_normal().string(), e.line);
    if (!fresh)
      throw std::runtime_error(csv + ": " + line + ": file '" + e.name + "' is listed twice (first on line " +
                               std::to_string(it->second) + ")");
    e.path = fs::path(o.dir) / e.name;
    out.files.push_back(e.name);
  }

  ClassEncoding fitted, enc;
  if (fit_from) {
    fitted.num_classes = fit_from->data.num_classes;
    fitted.class_names = fit_from->class_names;
  }
  at::Tensor y = encode_labels(labels, table.lines, csv, fit_from ? &fitted : nullptr, &enc);

  // The size every image must have (or is resized to).
  const bool resize = o.height > 0;
  int64_t height = o.height, width = o.width;
  std::string size_origin = resize ? "the requested size" : "";
  if (!resize && fit_from) {
    height = fit_from->data.x.size(2);
    width = fit_from->data.x.size(3);
    size_origin = "the training images' size";
  }
  std::vector<at::Tensor> images;
  images.reserve(n);
  double lo = std::numeric_limits<double>::infinity(), hi = -lo;
  for (size_t r = 0; r < n; ++r) {
    Image img = read_image(entries[r], csv);
    const int64_t h = img.v.size(0), w = img.v.size(1);
    if (height == 0) {
      height = h;
      width = w;
      size_origin = "the first image's size (" + entries[0].name + ")";
    }
    if (h != height || w != width) {
      if (!resize)
        fail(entries[r], csv, "is " + size_text(h, w) + " pixels (Rows x Columns), " + size_origin + " is " +
                                  size_text(height, width) + ": give a height and width to resize every image");
      namespace F = torch::nn::functional;
      img.v = F::interpolate(img.v.view({1, 1, h, w}), F::InterpolateFuncOptions()
                                                           .size(std::vector<int64_t>{height, width})
                                                           .mode(torch::kBilinear)
                                                           .align_corners(false))
                  .view({height, width});
    }
    lo = std::min(lo, img.lo);
    hi = std::max(hi, img.hi);
    images.push_back(std::move(img.v));
  }
  at::Tensor x = at::stack(images).unsqueeze(1);  // [N, 1, H, W]
  images.clear();

  double mean = 0, sd = 1;
  if (o.standardize) {
    if (fit_from) {
      mean = fit_from->mean;
      sd = fit_from->std;
    } else {  // in double: 16-bit values over many pixels
      mean = x.sum(at::kDouble).item<double>() / static_cast<double>(x.numel());
      double ss = 0;
      for (int64_t i = 0; i < x.size(0); ++i) ss += (x[i].to(at::kDouble) - mean).pow(2).sum().item<double>();
      sd = std::sqrt(ss / static_cast<double>(x.numel()));
      if (!(sd > 0)) sd = 1;  // every pixel alike: centre only
    }
    for (int64_t i = 0; i < x.size(0); ++i) x[i].copy_((x[i].to(at::kDouble) - mean) / sd);  // rounded once
  }
  out.mean = mean;
  out.std = sd;
  out.data.x = x;
  out.data.y = y;
  out.data.num_classes = enc.num_classes;
  out.data.domain.lo = (lo - mean) / sd;
  out.data.domain.hi = (hi - mean) / sd;
  out.data.domain.unit = 1.0 / sd;
  out.class_names = std::move(enc.class_names);
  return out;
}

TensorDataset read_dicom_folder(const DicomOptions& options) { return read_dicom(options).data; }

}  // namespace fl
