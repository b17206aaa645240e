#include "state/state_file.hpp"

#include <algorithm>
#include <filesystem>
#include <fmt/format.h>
#include <xxhash.h>

#include "mhla/checkpoint.hpp"
#include "mhla/error.hpp"
#include "state/byte_io.hpp"
#include "state/format.hpp"

namespace mhla::state_format {

namespace {

std::uint64_t checksum(std::string_view header, std::string_view payload) {
  XXH3_state_t* st = XXH3_createState();
  if (!st) throw Error("out of memory creating a checksum");
  XXH3_64bits_reset(st);
  XXH3_64bits_update(st, header.data(), header.size());
  XXH3_64bits_update(st, payload.data(), payload.size());
  const std::uint64_t h = XXH3_64bits_digest(st);
  XXH3_freeState(st);
  return h;
}

std::uint64_t load_le(const char* p, int n) {
  std::uint64_t v = 0;
  for (int i = 0; i < n; ++i) v |= static_cast<std::uint64_t>(static_cast<unsigned char>(p[i])) << (8 * i);
  return v;
}

std::string printable(std::string_view tag) {
  std::string s(tag);
  std::replace_if(
      s.begin(), s.end(), [](char c) { return c < 0x20 || c > 0x7e; }, '?');
  return s;
}

}  // namespace

void write_preamble(state_io::AtomicFile& file, std::uint32_t version, std::uint32_t section_count) {
  state_io::ByteWriter w;
  w.raw(kMagic);
  w.u32(version);
  w.u32(kByteOrderMark);
  w.u32(section_count);
  w.u64(checksum(w.bytes(), {}));
  file.write(w.bytes());
}

void write_section(state_io::AtomicFile& file, std::string_view tag, std::string_view payload) {
  state_io::ByteWriter header;
  header.raw(tag);
  header.u64(payload.size());
  file.write(header.bytes());
  file.write(payload);
  state_io::ByteWriter sum;
  sum.u64(checksum(header.bytes(), payload));
  file.write(sum.bytes());
}

std::uint64_t RawSection::bytes() const { return kSectionHeaderBytes + payload.size() + kChecksumBytes; }

StateFileReader::StateFileReader(const std::string& path) : path_(path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) throw Error(fmt::format("{} is a directory, not a state file", where()));
  in_.open(path, std::ios::binary);
  if (!in_) throw Error(fmt::format("cannot open {}: no such file or no permission", where()));
  in_.seekg(0, std::ios::end);
  size_ = static_cast<std::uint64_t>(in_.tellg());
  in_.seekg(0);
  if (size_ == 0)
    throw Error(
        fmt::format("{} is empty: it holds no saved session (an interrupted copy?); save the session again", where()));
  std::string pre(static_cast<size_t>(std::min<std::uint64_t>(size_, kPreambleBytes)), '\0');
  in_.read(pre.data(), static_cast<std::streamsize>(pre.size()));
  const size_t magic_part = std::min(pre.size(), kMagic.size());
  if (!in_ || pre.compare(0, magic_part, kMagic, 0, magic_part) != 0)
    throw Error(
        fmt::format("{} is not an mhla state file (it does not start with '{}'): give a file written by "
                    "'mhla generate --save-state'",
                    where(), kMagic));
  if (pre.size() < kPreambleBytes)
    damaged(where(), fmt::format("it is truncated: {} bytes, less than the {}-byte preamble", size_, kPreambleBytes));
  version_ = static_cast<std::uint32_t>(load_le(pre.data() + 8, 4));
  if (version_ > kStateFormatVersion)
    throw Error(
        fmt::format("{} has format version {}, newer than this engine reads (1 to {}): load it with a newer "
                    "mhla",
                    where(), version_, kStateFormatVersion));
  if (version_ == 0) damaged(where(), "its format version is 0");
  if (const auto mark = load_le(pre.data() + 12, 4); mark != kByteOrderMark)
    damaged(where(), fmt::format("its byte-order mark is {:#010x}, not {:#010x}", mark, kByteOrderMark));
  if (load_le(pre.data() + 20, 8) != checksum(std::string_view(pre).substr(0, 20), {}))
    damaged(where(), "the preamble fails its checksum");
  count_ = static_cast<std::uint32_t>(load_le(pre.data() + 16, 4));
  at_ = kPreambleBytes;
  const std::uint64_t least = std::uint64_t{count_} * (kSectionHeaderBytes + kChecksumBytes);
  if (least > size_ - at_)
    damaged(where(), fmt::format("it is truncated: {} sections need at least {} bytes after the preamble, the file "
                                 "has {}",
                                 count_, least, size_ - at_));
}

std::optional<RawSection> StateFileReader::next() {
  if (read_ == count_) {
    finish();
    return std::nullopt;
  }
  const std::string section = fmt::format("section {} of {}", read_ + 1, count_);
  const std::uint64_t left = size_ - at_;
  if (left < kSectionHeaderBytes + kChecksumBytes)
    damaged(where(), fmt::format("it is truncated: it ends inside {} (offset {})", section, at_));
  char header[kSectionHeaderBytes];
  in_.read(header, sizeof header);
  RawSection s;
  s.index = read_ + 1;
  s.tag = printable({header, 4});
  s.offset = at_;
  const std::uint64_t length = load_le(header + 4, 8);
  if (length > left - kSectionHeaderBytes - kChecksumBytes)
    damaged(where(), fmt::format("it is truncated: {} ('{}', offset {}) claims {} payload bytes but only {} are left",
                                 section, s.tag, at_, length, left - kSectionHeaderBytes - kChecksumBytes));
  s.payload.resize(static_cast<size_t>(length));
  in_.read(s.payload.data(), static_cast<std::streamsize>(length));
  char sum[kChecksumBytes];
  in_.read(sum, sizeof sum);
  if (!in_) throw Error(fmt::format("cannot read {}: an I/O error at offset {}", where(), at_));
  s.checksum_ok = load_le(sum, 8) == checksum({header, sizeof header}, s.payload);
  at_ += s.bytes();
  ++read_;
  return s;
}

void StateFileReader::finish() const {
  if (read_ != count_) throw Error(fmt::format("internal: {} of {} sections read", read_, count_));
  if (at_ != size_) damaged(where(), fmt::format("{} bytes follow the last section", size_ - at_));
}

std::string StateFileReader::where() const { return fmt::format("state file '{}'", path_); }

std::string StateFileReader::where(const RawSection& s) const {
  return fmt::format("state file '{}', section {} of {} ('{}', offset {})", path_, s.index, count_, s.tag, s.offset);
}

}  // namespace mhla::state_format
