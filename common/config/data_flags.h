#pragma once
// Flags that name a program's data, defined once for fedsim and fedclient.
#include <CLI/CLI.hpp>

#include "common/data/client_data.h"

namespace fl {

// --dicom-dir, --dicom-labels, --dicom-test-labels, --dicom-test-dir, --dicom-file-column,
// --dicom-height and --dicom-width into `source` (load_data checks that they go together).
void add_dicom_options(CLI::App& app, DataSource& source);

}  // namespace fl
