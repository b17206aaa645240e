#pragma once
// Reading and writing safetensors files.
//
// Layout (little-endian): 8 bytes N (u64, header length), N bytes of UTF-8 JSON
//   { "name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...,
//     "__metadata__": {"key": "value", ...} }   (metadata optional, string values)
// then the data buffer; offsets are relative to the start of the buffer.
// Every header field is checked on open: a malformed, truncated or inconsistent file throws
// mhla::Error naming the file, the tensor and what is wrong.
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

namespace mhla {

enum class DType { F64, F32, F16, BF16 };
std::string_view to_string(DType d);
size_t dtype_size(DType d);

struct TensorView {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  const std::byte* data = nullptr;  // into the mapped file
  size_t bytes = 0;
  int64_t elements() const;
};

// A read-only, memory-mapped safetensors file. Tensors stay valid while the object lives.
class SafetensorsFile {
public:
  static SafetensorsFile open(const std::string& path);
  SafetensorsFile(SafetensorsFile&&) noexcept;
  SafetensorsFile& operator=(SafetensorsFile&&) noexcept;
  ~SafetensorsFile();

  const std::string& path() const;
  bool contains(const std::string& name) const;
  // Throws mhla::Error naming the file and tensor when absent.
  const TensorView& tensor(const std::string& name) const;
  std::vector<std::string> names() const;  // sorted
  const std::map<std::string, std::string>& metadata() const;

  // The tensor converted to fp32 / fp64 (F32, F16, BF16 and F64 accepted).
  std::vector<float> read_f32(const std::string& name) const;
  std::vector<double> read_f64(const std::string& name) const;

private:
  struct Impl;
  explicit SafetensorsFile(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Converts `count` elements of `dtype` at `src` into fp32 / fp64.
void convert_to_f32(DType dtype, const std::byte* src, size_t count, float* dst);
void convert_to_f64(DType dtype, const std::byte* src, size_t count, double* dst);

struct TensorToWrite {
  std::vector<int64_t> shape;
  std::vector<float> values;  // written as F32
};

// Writes an F32 safetensors file atomically: a temporary file beside `path` is written,
// flushed and fsynced, then renamed over `path`; a failure never leaves a partial file there.
void write_safetensors(const std::string& path, const std::map<std::string, TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace mhla
