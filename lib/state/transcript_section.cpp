// The TRNS section (format version 2): the conversation's transcript, kept beside the state so a
// checkpoint moved to another server can show its conversation again.
#include <algorithm>
#include <fmt/format.h>

#include "mhla/error.hpp"
#include "state/format.hpp"

namespace mhla::state_format {

namespace {

constexpr size_t kMaxRoleBytes = 32;

// Roles are short names a client branches on; anything else means damage or a writer bug.
bool valid_role(std::string_view role) {
  return !role.empty() && role.size() <= kMaxRoleBytes &&
         std::all_of(role.begin(), role.end(), [](char c) { return c > 0x20 && c < 0x7f; });
}

}  // namespace

std::uint32_t fixed_sections(std::uint32_t version) { return version >= 2 ? 5 : 4; }

std::uint32_t version_for(const std::vector<TranscriptEntry>& transcript) { return transcript.empty() ? 1 : 2; }

std::string encode_transcript(const std::vector<TranscriptEntry>& transcript) {
  state_io::ByteWriter w;
  w.u32(static_cast<std::uint32_t>(transcript.size()));
  for (size_t i = 0; i < transcript.size(); ++i) {
    const auto& e = transcript[i];
    if (!valid_role(e.role))
      throw Error(fmt::format("transcript entry {} has the role '{}': a role is 1 to {} printable ASCII characters", i,
                              e.role, kMaxRoleBytes));
    w.text(e.role);
    w.text(e.content);
  }
  return std::move(w.bytes());
}

std::vector<TranscriptEntry> decode_transcript(state_io::ByteReader& in) {
  const std::uint32_t count = in.u32();
  in.need(count, 8, "the transcript");  // two string lengths per entry at least
  std::vector<TranscriptEntry> out(count);
  for (size_t i = 0; i < out.size(); ++i) {
    out[i].role = in.text();
    if (!valid_role(out[i].role))
      in.fail(fmt::format("transcript entry {} has a role of {} bytes that are not 1 to {} printable ASCII characters",
                          i, out[i].role.size(), kMaxRoleBytes));
    out[i].content = in.text();
  }
  in.expect_end();
  return out;
}

}  // namespace mhla::state_format
