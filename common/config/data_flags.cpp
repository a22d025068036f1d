#include "common/config/data_flags.h"

#include "common/config/validators.h"

namespace fl {

void add_dicom_options(CLI::App& app, DataSource& s) {
  app.add_option("--dicom-dir", s.dicom_dir, "dicom: folder of the DICOM files");
  app.add_option("--dicom-labels", s.dicom_labels, "dicom: training list, a CSV of file (relative to --dicom-dir) and label");
  app.add_option("--dicom-test-labels", s.dicom_test_labels, "dicom: test list, a CSV like --dicom-labels");
  app.add_option("--dicom-test-dir", s.dicom_test_dir, "dicom: folder of the test list's files (default: --dicom-dir)");
  app.add_option("--dicom-file-column", s.dicom_file_column, "dicom: name of the file column")->capture_default_str();
  app.add_option("--dicom-height", s.dicom_height, "dicom: resize every image to this height (0: all must match the first)")
      ->check(non_negative());
  app.add_option("--dicom-width", s.dicom_width, "dicom: resize every image to this width (0: all must match the first)")
      ->check(non_negative());
}

}  // namespace fl
