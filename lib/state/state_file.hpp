#pragma once
// The framing of a state file: the preamble, and sections as tag, length, payload, checksum.
// The reader checks the framing only; what a payload means is format.hpp's business.
#include <cstdint>
#include <fstream>
#include <optional>
#include <string>
#include <string_view>

#include "state/atomic_file.hpp"

namespace mhla::state_format {

void write_preamble(state_io::AtomicFile& file, std::uint32_t version, std::uint32_t section_count);
void write_section(state_io::AtomicFile& file, std::string_view tag, std::string_view payload);

struct RawSection {
  std::uint32_t index = 0;  // 1-based position in the file
  std::string tag;          // printable (other bytes shown as '?')
  std::uint64_t offset = 0;
  std::string payload;
  bool checksum_ok = false;
  std::uint64_t bytes() const;  // framing included
};

class StateFileReader {
public:
  // Opens the file and checks the preamble (magic, version, byte order, checksum, a section
  // count the file size can hold); throws mhla::Error saying which and what to do.
  explicit StateFileReader(const std::string& path);

  std::uint32_t version() const { return version_; }
  std::uint32_t section_count() const { return count_; }
  std::uint64_t file_bytes() const { return size_; }

  // The next section, or nothing after the last (after checking that nothing follows it).
  // Throws when the file ends inside a section; a checksum mismatch is only flagged.
  std::optional<RawSection> next();
  // Throws unless every counted section was read and nothing follows the last one.
  void finish() const;

  std::string where() const;                     // "state file 'P'"
  std::string where(const RawSection& s) const;  // "state file 'P', section 3 of 6 ('SEQN')"

private:
  std::string path_;
  std::ifstream in_;
  std::uint64_t size_ = 0;
  std::uint64_t at_ = 0;
  std::uint32_t version_ = 0;
  std::uint32_t count_ = 0;
  std::uint32_t read_ = 0;
};

}  // namespace mhla::state_format
