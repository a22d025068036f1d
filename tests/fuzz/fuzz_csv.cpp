// A CSV file as a hospital's data set (label column "label"): read on its own, then as the test
// split fitted to a small training split. Errors are std::runtime_error / std::invalid_argument.
#include <cstdint>
#include <fstream>
#include <stdexcept>

#include "common/data/csv.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string train_path = [] {
    const std::string p = fl::fuzz::scratch_file("-train.csv");
    std::ofstream(p) << "a,b,label\n1,2,0\n3,4,1\n5,6,2\n";
    return p;
  }();
  const std::string& path = fl::fuzz::write_scratch(".csv", data, size);
  fl::CsvOptions opt;
  opt.label_column = "label";
  try {
    fl::read_csv(path, opt);
  } catch (const std::runtime_error&) {
  } catch (const std::invalid_argument&) {
  }
  try {
    const fl::CsvData train = fl::read_csv(train_path, opt);
    fl::read_csv(path, opt, &train);
  } catch (const std::runtime_error&) {
  } catch (const std::invalid_argument&) {
  }
  return 0;
}
