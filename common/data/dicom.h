#pragma once
// Labelled medical images from a folder of DICOM files (read with dcmtk) and a CSV that lists
// each file with its class: a hospital's local training or test split as a TensorDataset.
#include <cstdint>
#include <string>
#include <vector>

#include "common/data/dataset.h"

namespace fl {

struct DicomOptions {
  std::string dir;                        // the files' folder: the labels CSV names files relative to it
  std::string labels_csv;                 // header row, then one row per image
  std::string file_column = "file";
  std::string label_column = "label";     // integer class ids, or class names (sorted, like read_csv)
  // 0 and 0: every image must have the first one's size (an error names a file that does not).
  // Both > 0: every image is resized to height x width (bilinear) instead.
  int64_t height = 0, width = 0;
  bool standardize = true;                // one mean and std over all pixels of the split
};

struct DicomData {
  TensorDataset data;                     // x float32 [N, 1, H, W], y int64 [N]
  std::vector<std::string> files;         // the CSV's file names, in its order (= the examples')
  std::vector<std::string> class_names;   // string labels (sorted); empty for integer labels
  double mean = 0, std = 1;               // of the modality values; x = (value - mean) / std
};

// Reads every listed file with dcmtk. Supported: uncompressed single-frame monochrome images
// (SamplesPerPixel 1, MONOCHROME1 or MONOCHROME2), BitsAllocated 8 or 16, unsigned or signed
// (PixelRepresentation), BitsStored <= BitsAllocated with HighBit = BitsStored - 1.
//
// Pixel values: each stored value s becomes the modality value v = s * RescaleSlope +
// RescaleIntercept (1 and 0 when absent; Hounsfield units for CT), so that images of one
// modality from different scanners share a scale. MONOCHROME1 images (where higher means darker)
// are mirrored within the image's representable range [vmin, vmax] (v -> vmin + vmax - v), so
// that higher is brighter everywhere. No VOI window is applied. With `standardize`, x = (v -
// mean) / std with one mean and (population) std over every pixel of the split, like
// Fashion-MNIST's single mean/std; `fit_from` (the training split) supplies them, its classes,
// and its image size, for a test split. data.domain is the representable range in those units
// (unit: 1 / std), so adversarial radii are in modality units.
//
// Errors are std::runtime_error naming the file and the problem: labels CSV missing or
// malformed, a column missing, no rows, a file listed twice, a listed file missing or not DICOM,
// no pixel data, unsupported bits, colour or multi-frame or compressed images, a size that
// differs from the first image's (or from fit_from's).
DicomData read_dicom(const DicomOptions& options, const DicomData* fit_from = nullptr);

// read_dicom(options).data.
TensorDataset read_dicom_folder(const DicomOptions& options);

}  // namespace fl
