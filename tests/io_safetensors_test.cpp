#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>

#include "common/io/safetensors.h"
#include "expect_error.h"
#include "temp_dir.h"

namespace fl {
namespace {

using fl::testing_util::expect_error;
using fl::testing_util::TempDir;

namespace fs = std::filesystem;

std::string le64(uint64_t n) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return s;
}

// Length prefix + header (unpadded: the reader must not require padding) + data.
std::string file_of(const std::string& json, const std::string& data) { return le64(json.size()) + json + data; }

std::string zeros(size_t n) { return std::string(n, '\0'); }

TEST(Safetensors, RoundTripKeepsNamesShapesDtypesAndBytes) {
  ModelState s({{"conv.weight", torch::randn({2, 3, 3})},
                {"half", torch::randn({4}).to(torch::kHalf)},
                {"bn.num_batches_tracked", torch::tensor({int64_t{123456789012}}, torch::kLong)},
                {"bf", torch::randn({2, 2}).to(torch::kBFloat16)},
                {"mask", torch::tensor({true, false, true})},
                {"u8", torch::arange(5, torch::kByte)},
                {"scalar", torch::tensor(2.5, torch::kDouble)},
                {"i32", torch::tensor({-7, 8}, torch::kInt)}});
  const std::map<std::string, std::string> md{{"format", "pt"}, {"round", "3"}};
  std::map<std::string, std::string> md_back;
  ModelState back = from_safetensors_bytes(to_safetensors_bytes(s, md), &md_back);
  EXPECT_EQ(back.names(), s.names());
  for (const auto& e : s.entries()) {
    const auto& t = back.at(e.name);
    EXPECT_EQ(t.scalar_type(), e.tensor.scalar_type()) << e.name;
    EXPECT_EQ(t.sizes(), e.tensor.sizes()) << e.name;
    EXPECT_TRUE(torch::equal(t, e.tensor)) << e.name;
  }
  EXPECT_TRUE(back.equal(s));
  EXPECT_EQ(md_back, md);

  // Through a file: no temporary is left behind.
  TempDir dir;
  const auto path = dir.file("model.safetensors");
  write_safetensors(path, s, md);
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"model.safetensors"});
  EXPECT_EQ(fs::file_size(path), to_safetensors_bytes(s, md).size());
  md_back.clear();
  EXPECT_TRUE(read_safetensors(path, &md_back).equal(s));
  EXPECT_EQ(md_back, md);
}

TEST(Safetensors, WritesExactlyTheReferenceBytes) {
  ModelState s({{"a", torch::tensor({1.0f, 2.0f})}, {"b", torch::tensor({int64_t{3}})}});
  const std::string json =
      R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"I64","shape":[1],"data_offsets":[8,16]}})";
  ASSERT_EQ(json.size(), 108u);
  std::string expected;
  expected += std::string("\x70\0\0\0\0\0\0\0", 8);  // 112 = 108 + 4 spaces of padding
  expected += json + "    ";
  expected += std::string("\x00\x00\x80\x3f\x00\x00\x00\x40", 8);  // 1.0f, 2.0f little-endian
  expected += std::string("\x03\0\0\0\0\0\0\0", 8);                // int64 3
  EXPECT_EQ(to_safetensors_bytes(s), expected);

  // Metadata comes first.
  const std::string json_md =
      R"({"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"I64","shape":[1],"data_offsets":[8,16]}})";
  ASSERT_EQ(json_md.size(), 139u);
  std::string expected_md = std::string("\x90\0\0\0\0\0\0\0", 8) + json_md + "     " + expected.substr(8 + 112);
  EXPECT_EQ(to_safetensors_bytes(s, {{"format", "pt"}}), expected_md);

  // An empty state is just an (aligned) empty object.
  EXPECT_EQ(to_safetensors_bytes(ModelState()), std::string("\x08\0\0\0\0\0\0\0{}      ", 16));
}

TEST(Safetensors, ReadsHandBuiltFileOrderedByOffset) {
  // Keys deliberately out of offset order, no padding, metadata last.
  const std::string json =
      R"({"second":{"dtype":"U8","shape":[3],"data_offsets":[8,11]},)"
      R"("first":{"data_offsets":[0,8],"shape":[2,1],"dtype":"I32"},)"
      R"("empty":{"dtype":"F32","shape":[0,4],"data_offsets":[11,11]},)"
      R"("third":{"dtype":"BF16","shape":[],"data_offsets":[11,13]},)"
      R"("__metadata__":{"k":"v"}})";
  std::string data;
  data += std::string("\x05\x00\x00\x00\xfe\xff\xff\xff", 8);  // int32 5, -2
  data += std::string("\x01\x02\xff", 3);
  data += std::string("\x80\x3f", 2);  // bf16 1.0
  TempDir dir;
  const auto path = dir.file("hand.safetensors");
  {
    std::ofstream f(path, std::ios::binary);
    const auto bytes = file_of(json, data);
    f.write(bytes.data(), bytes.size());
  }
  std::map<std::string, std::string> md;
  ModelState s = read_safetensors(path, &md);
  EXPECT_EQ(s.names(), (std::vector<std::string>{"first", "second", "empty", "third"}));
  EXPECT_TRUE(torch::equal(s.at("first"), torch::tensor({5, -2}, torch::kInt).view({2, 1})));
  EXPECT_TRUE(torch::equal(s.at("second"), torch::tensor({1, 2, 255}, torch::kByte)));
  EXPECT_EQ(s.at("empty").sizes(), (std::vector<int64_t>{0, 4}));
  EXPECT_EQ(s.at("third").scalar_type(), torch::kBFloat16);
  EXPECT_EQ(s.at("third").dim(), 0);
  EXPECT_EQ(s.at("third").item<float>(), 1.0f);
  EXPECT_EQ(md, (std::map<std::string, std::string>{{"k", "v"}}));
}

TEST(Safetensors, RejectsMalformedInputWithClearErrors) {
  auto parse = [](const std::string& bytes) { return [bytes] { from_safetensors_bytes(bytes, nullptr, "x.st"); }; };
  const std::string a4 = R"("a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]})";
  const std::string four = zeros(4);

  expect_error(parse("abc"), "too short");
  expect_error(parse("abc"), "x.st");
  expect_error(parse(le64(1000) + "{}"), "exceeds the file size");
  expect_error(parse(le64(200'000'000) + "{}"), "too large");
  expect_error(parse(file_of("{nope", "")), "invalid JSON");
  expect_error(parse(file_of("[1,2]", "")), "not a JSON object");
  expect_error(parse(file_of(R"({"a":{"shape":[1],"data_offsets":[0,4]}})", four)), "missing dtype");
  expect_error(parse(file_of(R"({"a":{"dtype":"F32","data_offsets":[0,4]}})", four)), "missing shape");
  expect_error(parse(file_of(R"({"a":{"dtype":"F32","shape":[1]}})", four)), "missing data_offsets");
  expect_error(parse(file_of(R"({"a":{"dtype":"F128","shape":[1],"data_offsets":[0,4]}})", four)),
               "unknown dtype 'F128'");
  expect_error(parse(file_of(R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", four)), "negative");
  expect_error(parse(file_of(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}})", four)), "< begin");
  expect_error(parse(file_of(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}})", four)),
               "does not match");
  expect_error(parse(file_of(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", four)),
               "beyond the data buffer");
  expect_error(parse(file_of(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                             R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                             zeros(12))),
               "overlaps");
  expect_error(parse(file_of(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                             R"("b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})",
                             zeros(12))),
               "hole");
  expect_error(parse(file_of("{" + a4 + "}", zeros(8))), "not covered");
  expect_error(parse(file_of("{" + a4 + "," + a4 + "}", four)), "duplicate tensor name 'a'");
  expect_error(parse(file_of(R"({"__metadata__":{"k":1}})", "")), "__metadata__");
  expect_error([] { read_safetensors("/nonexistent/dir/m.safetensors"); }, "no such file");
  // A well-formed minimal file parses.
  EXPECT_EQ(from_safetensors_bytes(file_of("{" + a4 + "}", four)).names(), std::vector<std::string>{"a"});
}

}  // namespace
}  // namespace fl
