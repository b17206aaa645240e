#include "state/byte_io.hpp"

#include <bit>
#include <cmath>
#include <cstring>
#include <fmt/format.h>

#include "state/format.hpp"

namespace mhla::state_io {

std::uint16_t to_bf16(float x) {
  const auto bits = std::bit_cast<std::uint32_t>(x);
  if (std::isnan(x)) return static_cast<std::uint16_t>((bits >> 16) | 0x40);  // stays a quiet NaN
  return static_cast<std::uint16_t>((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
}

float from_bf16(std::uint16_t b) { return std::bit_cast<float>(static_cast<std::uint32_t>(b) << 16); }

void ByteWriter::le(std::uint64_t v, int n) {
  for (int i = 0; i < n; ++i) out_.push_back(static_cast<char>(v >> (8 * i)));
}

void ByteWriter::f32(float v) { u32(std::bit_cast<std::uint32_t>(v)); }
void ByteWriter::f64(double v) { u64(std::bit_cast<std::uint64_t>(v)); }

void ByteWriter::text(std::string_view s) {
  u32(static_cast<std::uint32_t>(s.size()));
  raw(s);
}

void ByteWriter::f32s(std::span<const float> v) {
  if constexpr (std::endian::native == std::endian::little) {
    out_.append(reinterpret_cast<const char*>(v.data()), v.size_bytes());
  } else {
    for (const float x : v) f32(x);
  }
}

void ByteWriter::bf16s(std::span<const float> v) {
  for (const float x : v) le(to_bf16(x), 2);
}

void ByteWriter::i32s(std::span<const int> v) {
  for (const int x : v) i32(x);
}

void ByteReader::need(std::uint64_t count, std::uint64_t size, std::string_view what) const {
  const std::uint64_t left = data_.size() - at_;
  if (size != 0 && count > left / size)
    fail(fmt::format("{} needs {} x {} bytes but only {} bytes are left in the section", what, count, size, left));
}

void ByteReader::expect_end() const {
  if (at_ != data_.size()) fail(fmt::format("{} unexplained bytes at the end of the section", data_.size() - at_));
}

void ByteReader::fail(std::string_view what) const { state_format::damaged(where_, what); }

std::uint64_t ByteReader::le(int n) {
  need(1, static_cast<std::uint64_t>(n), "a field");
  std::uint64_t v = 0;
  for (int i = 0; i < n; ++i) v |= static_cast<std::uint64_t>(static_cast<unsigned char>(data_[at_ + i])) << (8 * i);
  at_ += static_cast<size_t>(n);
  return v;
}

float ByteReader::f32() { return std::bit_cast<float>(u32()); }
double ByteReader::f64() { return std::bit_cast<double>(u64()); }

std::string ByteReader::text() {
  const std::uint32_t n = u32();
  need(n, 1, "a string");
  std::string s(data_.substr(at_, n));
  at_ += n;
  return s;
}

void ByteReader::f32s(std::span<float> out) {
  need(out.size(), 4, "a float array");
  if constexpr (std::endian::native == std::endian::little) {
    if (!out.empty()) std::memcpy(out.data(), data_.data() + at_, out.size_bytes());
    at_ += out.size_bytes();
  } else {
    for (float& x : out) x = f32();
  }
}

void ByteReader::bf16s(std::span<float> out) {
  need(out.size(), 2, "a bf16 array");
  for (float& x : out) x = from_bf16(static_cast<std::uint16_t>(le(2)));
}

void ByteReader::i32s(std::span<int> out) {
  need(out.size(), 4, "an int array");
  for (int& x : out) x = i32();
}

}  // namespace mhla::state_io
