#pragma once
// Little-endian encoding of state-file fields, and a reader that checks every length against
// the bytes that are really there before it allocates or copies anything.
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <utility>

namespace mhla::state_io {

// fp32 -> bf16 with round-to-nearest-even (NaN stays NaN), and back.
std::uint16_t to_bf16(float x);
float from_bf16(std::uint16_t b);
// x rounded to the nearest bf16 value, as fp32.
inline float round_bf16(float x) { return from_bf16(to_bf16(x)); }

class ByteWriter {
public:
  void u8(std::uint8_t v) { out_.push_back(static_cast<char>(v)); }
  void u32(std::uint32_t v) { le(v, 4); }
  void u64(std::uint64_t v) { le(v, 8); }
  void i32(std::int32_t v) { le(static_cast<std::uint32_t>(v), 4); }
  void i64(std::int64_t v) { le(static_cast<std::uint64_t>(v), 8); }
  void f32(float v);
  void f64(double v);
  void raw(std::string_view bytes) { out_.append(bytes); }
  void text(std::string_view s);  // u32 length, then the bytes
  void f32s(std::span<const float> v);
  void bf16s(std::span<const float> v);
  void i32s(std::span<const int> v);

  std::string& bytes() { return out_; }

private:
  void le(std::uint64_t v, int n);
  std::string out_;
};

// Reads a section's payload; `where` names it in messages ("section 3 ('SEQN')").
class ByteReader {
public:
  ByteReader(std::string_view data, std::string where) : data_(data), where_(std::move(where)) {}

  std::uint8_t u8() { return static_cast<std::uint8_t>(le(1)); }
  std::uint32_t u32() { return static_cast<std::uint32_t>(le(4)); }
  std::uint64_t u64() { return le(8); }
  std::int32_t i32() { return static_cast<std::int32_t>(static_cast<std::uint32_t>(le(4))); }
  std::int64_t i64() { return static_cast<std::int64_t>(le(8)); }
  float f32();
  double f64();
  std::string text();  // u32 length, then the bytes
  void f32s(std::span<float> out);
  void bf16s(std::span<float> out);
  void i32s(std::span<int> out);

  // Throws unless `count` items of `size` bytes remain (checked before any allocation).
  void need(std::uint64_t count, std::uint64_t size, std::string_view what) const;
  // Throws unless every byte was read.
  void expect_end() const;
  [[noreturn]] void fail(std::string_view what) const;

private:
  std::uint64_t le(int n);
  std::string_view data_;
  size_t at_ = 0;
  std::string where_;
};

}  // namespace mhla::state_io
